"""In memory or layer-streamed: which importance pass runs, and why (`--offload`, the job's `offload`).

- "never":  load the whole model (`compute_importance`);
- "always": stream it one layer at a time (`compute_importance_streamed`; a local safetensors
  checkpoint is needed);
- "auto" (default): stream when the in-memory pass does not fit: its peak at the run's own batch,
  sequence length and scans (`memplan.importance_memory`, the weights in the dtype the model would load
  in) over the memory the device may use (`memplan.usable_bytes`; on CUDA never more than is free now).
  This is `memplan.importance_streams`, the rule the API's memory check and the dashboard predict by.
  Sources that cannot be streamed (a hub id, .bin weights) load whole.

Choosing reads the config and the tensor index only, no weight.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from worker.engine import memplan
from worker.engine.dtypes import dtype_name
from worker.engine.importance.activation_store import free_device_bytes
from worker.engine.memplan import format_bytes

OFFLOAD_CHOICES = ("auto", "never", "always")


@dataclass(frozen=True)
class ImportanceMode:
    streamed: bool
    reason: str

    @property
    def name(self) -> str:
        return "streamed" if self.streamed else "in_memory"

    def record(self) -> dict:
        """The manifest's `execution` entry of an in-memory pass (the streamed pass writes its own)."""
        return {"mode": self.name, "reason": self.reason}

    def describe(self) -> str:
        return f"{'streamed, one layer at a time' if self.streamed else 'in memory'} ({self.reason})"


def decide(
    offload: str, need_bytes: int | None, capacity: int | None, device: str = "the device"
) -> ImportanceMode:
    """The mode for a requested `offload` given the in-memory pass's peak (`in_memory_need`; None: the
    source cannot be streamed) and the memory the device may use (`device_capacity`)."""
    if offload not in OFFLOAD_CHOICES:
        raise ValueError(f"offload must be one of {', '.join(OFFLOAD_CHOICES)}, got {offload!r}")
    if offload == "never":
        return ImportanceMode(False, "offload=never")
    if need_bytes is None:
        if offload == "always":
            raise ValueError(
                "streamed importance needs a local model directory with safetensors weights "
                "(download a hub model first, e.g. `hf download ID --local-dir DIR`)"
            )
        return ImportanceMode(False, "not a local safetensors checkpoint, so it cannot be streamed")
    if offload == "always":
        return ImportanceMode(True, "offload=always")
    need, room = format_bytes(need_bytes), format_bytes(capacity or 0)
    if memplan.importance_streams(need_bytes, capacity):
        return ImportanceMode(True, f"the in-memory pass needs {need} > {room} usable on {device}")
    return ImportanceMode(False, f"the in-memory pass needs {need} of {room} usable on {device}")


def in_memory_need(
    source: str | os.PathLike, params: Mapping[str, Any], dtype=None, device: str = "cpu"
) -> int | None:
    """Peak bytes of the in-memory pass of a run with `params` (batch_size, seq_len, samples, scans,
    block_size, stream: memplan.importance_options) on `source` loaded in `dtype`; None when `source`
    is not a local directory of safetensors weights (it cannot be streamed)."""
    from worker.engine.checkpoint_reader import INDEX_FILE, SINGLE_FILE
    from worker.engine.out_of_core import open_checkpoint

    path = Path(source).expanduser()
    if not (path / "config.json").is_file() or not any(
        (path / f).is_file() for f in (INDEX_FILE, SINGLE_FILE)
    ):
        return None  # a hub id, or .bin weights only
    ckpt = open_checkpoint(path, dtype=dtype)  # a damaged checkpoint (a missing shard) says so here
    options = memplan.importance_options(params, torch.device(device).type)
    return memplan.importance_memory(
        ckpt.spec, **options, streamed=False, weights_dtype=dtype_name(ckpt.dtype)
    )["total"]


def device_capacity(device: torch.device) -> int:
    """What a pass may use on `device` now, as `memplan.usable_bytes` reads a worker's registry entry:
    a CPU's available RAM; a GPU's total less the reserve, and no more than is free now."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)  # one query gives both
        return min(int(free), memplan.usable_bytes({"kind": "cuda", "total_bytes": int(total)}))
    return memplan.usable_bytes({"kind": "cpu", "free_bytes": free_device_bytes(device)})


def choose_mode(
    source: str | os.PathLike,
    params: Mapping[str, Any],
    *,
    offload: str = "auto",
    dtype=None,
    device: str = "cpu",
) -> ImportanceMode:
    """`decide` for a run with `params` on a model source and device (reads only the config and the
    tensor index)."""
    if offload not in OFFLOAD_CHOICES:
        raise ValueError(f"offload must be one of {', '.join(OFFLOAD_CHOICES)}, got {offload!r}")
    if offload == "never":
        return decide(offload, None, None)
    need = in_memory_need(source, params, dtype, device)
    capacity = device_capacity(torch.device(device)) if need is not None else None
    return decide(offload, need, capacity, device)


__all__ = ["OFFLOAD_CHOICES", "ImportanceMode", "choose_mode", "decide", "device_capacity", "in_memory_need"]
