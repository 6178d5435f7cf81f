"""Total and free memory of a worker's device, and of its host RAM, for its worker-registry entry
(refreshed with it).

CUDA: `nvidia-smi` for the worker's GPU (no CUDA context in the worker's own process: that would hold
a few hundred MiB of the GPU for as long as the worker lives), else `torch.cuda.mem_get_info`. CPU: MemTotal and MemAvailable from /proc/meminfo, since RAM is
shared with every other process on the machine. The memory planner (worker/engine/memplan/fit.py
`usable_bytes`) turns this into what a job may use.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from backend.routing import device_type


def _meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[name] = int(parts[0]) * 1024  # kB
    return out


def _nvidia_smi(index: int) -> tuple[int, int] | None:
    """(free, total) bytes of CUDA device `index` as this process numbers it, or None without nvidia-smi."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    physical = visible[index] if index < len(visible) else str(index)
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=memory.free,memory.total",
                "--format=csv,noheader,nounits",
                "-i",
                physical,
            ],
            capture_output=True,
            text=True,
            timeout=5,
        )
        free_mib, total_mib = (int(x) for x in out.stdout.strip().splitlines()[0].split(","))
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None
    return free_mib << 20, total_mib << 20


def device_memory(device: str) -> dict | None:
    """{"kind": "cuda"|"cpu", "total_bytes", "free_bytes"}, or None where it cannot be read."""
    if device_type(device) == "cuda":
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        read = _nvidia_smi(index)
        if read is None:
            import torch

            read = torch.cuda.mem_get_info(index)
        free, total = read
        return {"kind": "cuda", "total_bytes": int(total), "free_bytes": int(free)}
    return host_memory()


def host_memory() -> dict | None:
    """{"kind": "cpu", "total_bytes", "free_bytes"} of the worker's host RAM (MemTotal, MemAvailable), or
    None where /proc/meminfo cannot be read. On a CUDA worker too: an out-of-core cut and a streamed
    pass's pinned activation stores live there, not on the GPU."""
    try:
        info = _meminfo()
        return {"kind": "cpu", "total_bytes": info["MemTotal"], "free_bytes": info["MemAvailable"]}
    except (OSError, KeyError):
        return None
