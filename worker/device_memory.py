"""Total and free memory of a worker's device, for its worker-registry entry (refreshed with it).

CUDA: `torch.cuda.mem_get_info` of the worker's GPU (torch is imported only then: a CPU worker's
presence thread stays torch-free). CPU: MemTotal and MemAvailable from /proc/meminfo, since RAM is
shared with every other process on the machine. The memory planner (worker/engine/memplan.py
`usable_bytes`) turns this into what a job may use.
"""

from __future__ import annotations

from pathlib import Path

from worker.routing import device_type


def _meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[name] = int(parts[0]) * 1024  # kB
    return out


def device_memory(device: str) -> dict | None:
    """{"kind": "cuda"|"cpu", "total_bytes", "free_bytes"}, or None where it cannot be read."""
    if device_type(device) == "cuda":
        import torch

        index = int(device.split(":", 1)[1]) if ":" in device else 0
        free, total = torch.cuda.mem_get_info(index)
        return {"kind": "cuda", "total_bytes": int(total), "free_bytes": int(free)}
    try:
        info = _meminfo()
        return {"kind": "cpu", "total_bytes": info["MemTotal"], "free_bytes": info["MemAvailable"]}
    except (OSError, KeyError):
        return None
