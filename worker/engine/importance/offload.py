"""In memory or layer-streamed: which importance pass runs, and why (`--offload`, the job's `offload`).

- "never":  load the whole model (`compute_importance`);
- "always": stream it one layer at a time (`compute_importance_streamed`; a local safetensors
  checkpoint is needed);
- "auto" (default): stream when the weights in the job's dtype plus a margin (activations, the
  hooks' buffers, allocator slack) exceed the device's free memory: CUDA's `mem_get_info`, a CPU's
  available RAM (/proc/meminfo). Sources that cannot be streamed (a hub id, .bin weights) load whole.

The weights' size comes from the checkpoint's tensor shapes and the dtype the model would load in,
so choosing reads no weight.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from worker.engine.importance.activation_store import free_device_bytes
from worker.engine.memplan import format_bytes

OFFLOAD_CHOICES = ("auto", "never", "always")
FIT_MARGIN_FRACTION = 0.2
FIT_MARGIN_BYTES = 1 << 30


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
    offload: str, weight_bytes: int | None, free_bytes: int | None, device: str = "the device"
) -> ImportanceMode:
    """The mode for a requested `offload` given the weights' size (None: the source cannot be
    streamed) and the device's free memory."""
    if offload not in OFFLOAD_CHOICES:
        raise ValueError(f"offload must be one of {', '.join(OFFLOAD_CHOICES)}, got {offload!r}")
    if offload == "never":
        return ImportanceMode(False, "offload=never")
    if weight_bytes is None:
        if offload == "always":
            raise ValueError(
                "streamed importance needs a local model directory with safetensors weights "
                "(download a hub model first, e.g. `hf download ID --local-dir DIR`)"
            )
        return ImportanceMode(False, "not a local safetensors checkpoint, so it cannot be streamed")
    if offload == "always":
        return ImportanceMode(True, "offload=always")
    needed = int(weight_bytes * (1 + FIT_MARGIN_FRACTION)) + FIT_MARGIN_BYTES
    if needed > free_bytes:
        return ImportanceMode(
            True,
            f"weights {format_bytes(weight_bytes)} + margin > {format_bytes(free_bytes)} free on {device}",
        )
    return ImportanceMode(
        False,
        f"weights {format_bytes(weight_bytes)} + margin fit in {format_bytes(free_bytes)} free on {device}",
    )


def streamable_weight_bytes(source: str | os.PathLike, dtype=None) -> int | None:
    """Bytes of the checkpoint's weights once loaded in `dtype` (as `load_model` resolves it), or
    None when `source` is not a local directory of safetensors weights."""
    from transformers import AutoConfig

    from worker.engine.checkpoint_reader import CheckpointReader
    from worker.engine.layer_loader import checkpoint_dtype

    path = Path(source).expanduser()
    if not (path / "config.json").is_file():
        return None
    try:
        reader = CheckpointReader(path)
    except FileNotFoundError:  # .bin weights only
        return None
    config = AutoConfig.from_pretrained(str(path))
    size = torch.empty((), dtype=checkpoint_dtype(reader, config, dtype)).element_size()
    return sum(math.prod(reader.shape(name)) for name in reader.names()) * size


def choose_mode(
    source: str | os.PathLike, *, offload: str = "auto", dtype=None, device: str = "cpu"
) -> ImportanceMode:
    """`decide` for a model source and device (reads only the config and the tensor index)."""
    if offload not in OFFLOAD_CHOICES:
        raise ValueError(f"offload must be one of {', '.join(OFFLOAD_CHOICES)}, got {offload!r}")
    if offload == "never":
        return decide(offload, None, None)
    weight_bytes = streamable_weight_bytes(source, dtype)
    free = free_device_bytes(torch.device(device)) if weight_bytes is not None else None
    return decide(offload, weight_bytes, free, device)


__all__ = ["OFFLOAD_CHOICES", "ImportanceMode", "choose_mode", "decide", "streamable_weight_bytes"]
