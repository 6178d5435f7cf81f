"""Write a sharded safetensors checkpoint one tensor at a time.

`safetensors.torch.save_file` needs every tensor of a file in memory at once. Here all shapes and
dtypes are known before any data is read, so each shard's header is written first and each tensor's
bytes are streamed after it as it is produced: writing keeps one tensor in memory. The files are
standard safetensors (read by `safe_open` and `from_pretrained`), sharded the way `save_pretrained`
shards: `model.safetensors` when one shard suffices, else `model-0000k-of-0000n.safetensors` plus
`model.safetensors.index.json`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from pathlib import Path

import torch

from worker.engine.checkpoint_reader import INDEX_FILE, SINGLE_FILE
from worker.engine.dtypes import SAFETENSORS_CODES

DEFAULT_SHARD_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(entries: list[TensorEntry], max_shard_bytes: int) -> list[list[TensorEntry]]:
    """Consecutive entries packed into shards of at most `max_shard_bytes` (a bigger tensor: alone)."""
    if max_shard_bytes < 1:
        raise ValueError(f"shard size must be positive, got {max_shard_bytes}")
    shards: list[list[TensorEntry]] = [[]]
    size = 0
    for entry in entries:
        if shards[-1] and size + entry.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards


def _header(entries: list[TensorEntry]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        header[e.name] = {
            "dtype": SAFETENSORS_CODES[e.dtype],
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def _write_shard(path: Path, entries: list[TensorEntry], produce: Callable[[TensorEntry], torch.Tensor]):
    with open(path, "wb") as f:
        f.write(_header(entries))
        for e in entries:
            tensor = produce(e)
            if tensor.dtype != e.dtype or tuple(tensor.shape) != e.shape:
                raise ValueError(
                    f"{e.name}: produced {tensor.dtype} {tuple(tensor.shape)}, planned {e.dtype} {e.shape}"
                )
            f.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            del tensor  # else it stays alive while the next one is produced: two tensors, not one


def write_sharded(
    out_dir: Path,
    entries: list[TensorEntry],
    produce: Callable[[TensorEntry], torch.Tensor],
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> list[str]:
    """Write `entries` (in order; `produce(entry)` gives each tensor) into shards; the file names."""
    shards = plan_shards(entries, max_shard_bytes)
    if len(shards) == 1:
        _write_shard(out_dir / SINGLE_FILE, shards[0], produce)
        return [SINGLE_FILE]
    files = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    for file, shard in zip(files, shards, strict=True):
        _write_shard(out_dir / file, shard, produce)
    index = {
        "metadata": {"total_size": sum(e.nbytes for e in entries)},
        "weight_map": {e.name: file for file, shard in zip(files, shards, strict=True) for e in shard},
    }
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return files


__all__ = ["DEFAULT_SHARD_BYTES", "TensorEntry", "plan_shards", "write_sharded"]
