"""Where a layer-streamed pass keeps every calibration batch's hidden states between two layers.

A store holds one [B, S, D] tensor per batch (the main stream's current activations, a loss scan's
branch, an angular block's input). Each new store goes, whole, to the first tier with room left:

- "device": on the compute device, by reference (no copy; on a CPU run this is plain RAM);
- "host":   pinned CPU memory (CUDA runs only), copied back per batch while the layer runs;
- "disk":   a memory-mapped file per batch under a temporary directory (`torch.from_file`), for when
  RAM is short too: the kernel pages it in and out, the process's resident memory stays small.

Budgets are bytes per tier (`StoreBudget`); `StoreBudget.measure` derives them from the free memory
at the start of the pass, and a zero budget forces the next tier (the tests force the disk tier so).
The disk tier is bounded too: by `disk_bytes`, and always by the free space of the spill directory's
file system less `DISK_RESERVE_BYTES` (measured when the stores are set up; a larger `disk_bytes` is
capped there, with a warning in the log). `capacity()` is how many
stores the three tiers hold at once; a pass that needs more runs its loss scans in several passes
(`streamed.py`), and one that cannot fit even one pass is refused before any weight is read.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from worker.engine.memplan import HOST_RESERVE_BYTES, format_bytes

# The spill disk's rule, shared with the worker's registry entry (torch-free there).
from worker.engine.spill_disk import DISK_RESERVE_BYTES, disk_tier_limit, free_disk_bytes, spill_root

log = logging.getLogger(__name__)
TIERS = ("device", "host", "disk")


def available_ram_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:  # no /proc (not Linux) or unreadable: ask psutil below
        pass
    import psutil

    return int(psutil.virtual_memory().available)


def free_device_bytes(device: torch.device) -> int:
    """Free memory of the device now: CUDA's mem_get_info, a CPU's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return available_ram_bytes()


@dataclass(frozen=True)
class StoreBudget:
    device_bytes: int  # activations kept on the compute device
    host_bytes: int = 0  # pinned CPU memory (CUDA runs only)
    spill_dir: str | None = None  # parent of the disk tier's temporary directory (default: $TMPDIR)
    # Bytes the disk tier may take (the spill limit), never more than the spill directory's free space
    # less DISK_RESERVE_BYTES; None: that free space.
    disk_bytes: int | None = None

    def disk_limit(self) -> int:
        return self.disk_tier()[0]

    def disk_tier(self) -> tuple[int, str]:
        """(bytes, which limit held): the spill limit, or the spill disk's free space less the reserve
        when no limit is set or the limit exceeds it (spill_disk.disk_tier_limit; logged when capped)."""
        free = free_disk_bytes(self.spill_dir)
        limit = disk_tier_limit(free, self.disk_bytes)
        if self.disk_bytes is not None and limit == max(0, self.disk_bytes):
            return limit, "spill limit"
        if self.disk_bytes is not None:
            log.warning(
                "activation stores: the spill limit of %.4g GB (%s) exceeds the %s free under %s less a %s "
                "reserve: the disk tier is capped at %s (the free space holds, not the limit)",
                self.disk_bytes / 1e9,  # the setting as given (spill_limit_gb is in GB), then in GiB
                format_bytes(self.disk_bytes),
                format_bytes(free),
                spill_root(self.spill_dir),
                format_bytes(DISK_RESERVE_BYTES),
                format_bytes(limit),
            )
            return limit, "free space (capped the spill limit)"
        return limit, "free space"

    @classmethod
    def measure(
        cls,
        device: torch.device,
        reserve_bytes: int,
        spill_dir: str | None = None,
        disk_bytes: int | None = None,
    ) -> StoreBudget:
        """From the free memory now, keeping `reserve_bytes` on the device for the weights and
        working tensors the pass still has to allocate; `disk_bytes` caps the disk tier (None: the
        spill directory's free space less DISK_RESERVE_BYTES)."""
        device_free = max(0, free_device_bytes(device) - reserve_bytes)
        if device.type != "cuda":
            return cls(max(0, device_free - HOST_RESERVE_BYTES), 0, spill_dir, disk_bytes)
        return cls(device_free, max(0, available_ram_bytes() - HOST_RESERVE_BYTES), spill_dir, disk_bytes)


class ActivationStore:
    """One tensor per batch; `store[b]` returns it on the compute device."""

    def __init__(self, tier: str, device: torch.device, directory: Path | None):
        self.tier, self.device, self.directory = tier, device, directory
        self._items: dict[int, torch.Tensor] = {}

    def __setitem__(self, b: int, x: torch.Tensor) -> None:
        if self.tier == "device":
            self._items[b] = x  # a reference: layers never write into their inputs
            return
        buf = self._items.get(b)
        if buf is None or buf.shape != x.shape:
            buf = self._items[b] = self._allocate(b, x)
        buf.copy_(x)

    def __getitem__(self, b: int) -> torch.Tensor:
        x = self._items[b]
        if self.tier == "device":
            return x
        # A copy on the device (or in RAM): the next write into this slot must not change it.
        return x.to(self.device, non_blocking=self.tier == "host", copy=True)

    def _allocate(self, b: int, x: torch.Tensor) -> torch.Tensor:
        if self.tier == "host":
            return torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        path = self.directory / f"batch-{b}.bin"
        with open(path, "wb") as f:
            f.truncate(x.numel() * x.element_size())
        return torch.from_file(str(path), shared=True, size=x.numel(), dtype=x.dtype).view(x.shape)

    def clear(self) -> None:
        self._items.clear()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


class ActivationStores:
    """Hands out stores of `store_bytes` each, tier by tier as the budgets allow (module docstring)."""

    def __init__(self, budget: StoreBudget, device: torch.device, store_bytes: int):
        self.budget, self.device, self.store_bytes = budget, device, store_bytes
        self.used = Counter()
        self.created = Counter()
        self.peak = Counter()
        self._tmp: Path | None = None
        self._open: dict[int, ActivationStore] = {}
        self.disk_bytes, self.disk_held = budget.disk_tier()  # measured once, when the pass starts

    @staticmethod
    def bytes_for(shapes, dtype: torch.dtype) -> int:
        size = torch.empty((), dtype=dtype).element_size()
        return sum(math.prod(shape) for shape in shapes) * size

    def capacity(self) -> int | None:
        """How many stores the tiers hold at once (first fit, each whole in one tier); None: any number
        (stores of no bytes)."""
        if self.store_bytes <= 0:
            return None
        host = self.budget.host_bytes if self.device.type == "cuda" else 0
        limits = (self.budget.device_bytes, host, self.disk_bytes)
        return sum(max(0, limit) // self.store_bytes for limit in limits)

    def _tier(self) -> str:
        if self.used["device"] + self.store_bytes <= self.budget.device_bytes:
            return "device"
        if self.device.type == "cuda" and self.used["host"] + self.store_bytes <= self.budget.host_bytes:
            return "host"
        if self.used["disk"] + self.store_bytes <= self.disk_bytes or self.store_bytes <= 0:
            return "disk"
        raise RuntimeError(
            f"activation stores: no tier has room for another {self.store_bytes} bytes "
            f"(open: {dict(self.used)}, disk limit {self.disk_bytes})"
        )

    def new(self) -> ActivationStore:
        tier = self._tier()
        directory = None
        if tier == "disk":
            if self._tmp is None:
                self._tmp = Path(
                    tempfile.mkdtemp(prefix="prunescope-activations-", dir=self.budget.spill_dir)
                )
            directory = Path(tempfile.mkdtemp(dir=self._tmp))
        store = ActivationStore(tier, self.device, directory)
        self.used[tier] += self.store_bytes
        self.created[tier] += 1
        self.peak[tier] = max(self.peak[tier], self.used[tier])
        self._open[id(store)] = store
        return store

    def release(self, store: ActivationStore) -> None:
        if self._open.pop(id(store), None) is not None:
            self.used[store.tier] -= self.store_bytes
            store.clear()

    def close(self) -> None:
        for store in list(self._open.values()):
            self.release(store)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def summary(self) -> dict:
        """For the manifest: the size of one store and how many went to each tier."""
        return {
            "store_bytes": self.store_bytes,
            "stores": {tier: self.created[tier] for tier in TIERS if self.created[tier]},
            "peak_bytes": {tier: self.peak[tier] for tier in TIERS if self.peak[tier]},
            "budget_bytes": {
                "device": self.budget.device_bytes,
                "host": self.budget.host_bytes,
                "disk": self.disk_bytes,
            },
            "disk_limit": self.disk_held,  # which held: the spill limit or the spill disk's free space
            "capacity": self.capacity(),
        }


__all__ = [
    "DISK_RESERVE_BYTES",
    "ActivationStore",
    "ActivationStores",
    "StoreBudget",
    "TIERS",
    "available_ram_bytes",
    "free_device_bytes",
    "free_disk_bytes",
    "spill_root",
]
