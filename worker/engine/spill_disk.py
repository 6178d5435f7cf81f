"""The spill disk of a layer-streamed importance pass: where its disk tier's files go and how much of
that disk the tier may take when no spill limit is set (its free space less a reserve).

Torch-free, so the worker's registry entry (worker.presence) publishes the same limit the activation
stores (importance/activation_store.py) will get, and the API predicts a run's passes from it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

DISK_RESERVE_BYTES = 2 << 30  # free space the disk tier leaves on the spill directory's file system


def spill_root(spill_dir: str | os.PathLike | None) -> Path:
    """The directory the disk tier's files go under: `spill_dir`, else the system temporary one."""
    return Path(spill_dir) if spill_dir else Path(tempfile.gettempdir())


def free_disk_bytes(spill_dir: str | os.PathLike | None) -> int:
    """Free space of the file system that holds the spill directory (or would: its nearest parent)."""
    path = spill_root(spill_dir).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return int(shutil.disk_usage(path).free)


def default_disk_limit(free_bytes: int) -> int:
    """The disk tier's limit without a spill limit: the spill disk's free space less the reserve."""
    return max(0, free_bytes - DISK_RESERVE_BYTES)


def disk_tier_limit(free_bytes: int, disk_bytes: int | None) -> int:
    """The disk tier's limit: the spill limit `disk_bytes` (a job's spill_limit_gb, else
    PRUNESCOPE_SPILL_LIMIT_GB), but never more than the free space less the reserve: a larger limit
    would fill the disk mid-run; None: that free space less the reserve (`default_disk_limit`).
    backend/memcheck.disk_budget (and jobmemory.js's diskBudget) apply the same cap to a worker's entry."""
    room = default_disk_limit(free_bytes)
    return room if disk_bytes is None else min(max(0, disk_bytes), room)


def spill_disk(spill_dir: str | os.PathLike | None, disk_bytes: int | None = None) -> dict:
    """{"path", "free_bytes", "limit_bytes"}: the spill directory, its file system's free space, and the
    disk tier's limit a run without its own spill limit gets (`disk_tier_limit` of the worker's
    configured limit `disk_bytes`)."""
    free = free_disk_bytes(spill_dir)
    return {
        "path": str(spill_root(spill_dir)),
        "free_bytes": free,
        "limit_bytes": disk_tier_limit(free, disk_bytes),
    }
