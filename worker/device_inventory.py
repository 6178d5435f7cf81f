"""The devices a worker offers a multi-rank job, for its worker-registry entry (refreshed with it).

CUDA: every GPU this process sees (CUDA_VISIBLE_DEVICES), each with its name and total / free memory,
from `nvidia-smi` (no CUDA context in the worker), else torch.cuda. CPU: `worker_cpu_ranks` gloo ranks
(default one per core) and no per-device list, since the ranks share the host's RAM (`memory`).
"""

from __future__ import annotations

import os
import subprocess

from backend.routing import device_type


def _nvidia_smi_gpus() -> list[dict] | None:
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    query = ["nvidia-smi", "--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = {}
    for line in out.strip().splitlines():
        index, name, total, free = (part.strip() for part in line.split(","))
        rows[index] = {"name": name, "total_bytes": int(total) << 20, "free_bytes": int(free) << 20}
    chosen = [rows[v] for v in visible if v in rows] if visible else [rows[k] for k in sorted(rows, key=int)]
    return [{"index": i, **row} for i, row in enumerate(chosen)]


def _torch_gpus() -> list[dict]:
    import torch

    gpus = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        gpus.append(
            {"index": i, "name": torch.cuda.get_device_name(i), "total_bytes": total, "free_bytes": free}
        )
    return gpus


def device_inventory(device: str, cpu_ranks: int = 0) -> dict:
    """{"device_count": N, "gpus": [{index, name, total_bytes, free_bytes}, ...]} ("gpus" empty on CPU)."""
    if device_type(device) == "cuda":
        gpus = _nvidia_smi_gpus()
        if gpus is None:
            gpus = _torch_gpus()
        return {"device_count": len(gpus), "gpus": gpus}
    return {"device_count": cpu_ranks if cpu_ranks > 0 else (os.cpu_count() or 1), "gpus": []}
