"""Read single tensors (or parts of them) from a safetensors checkpoint without loading the model.

A checkpoint directory holds either one `model.safetensors` or shards listed by
`model.safetensors.index.json`. The reader parses each shard's header once (the safetensors format:
an 8-byte little-endian length, a JSON table of names, dtypes, shapes and byte offsets, then the
data) and reads every tensor with plain file reads straight into a buffer it allocates: what it
returns owns its memory. Nothing is memory-mapped (safetensors' `get_slice()[:]` on CPU returns a
tensor that keeps the whole shard's map alive for as long as the tensor lives, so a loaded layer
would pin one map per parameter and the process's mapped size and resident file pages would grow
with what it holds), and the file is closed when the read returns. Reading a whole checkpoint this
way keeps about one tensor in memory, whatever its size; a freed tensor leaves nothing behind.

Buffers of `MMAP_MIN_BYTES` or more are anonymous memory maps of their own (`mmap.mmap(-1, n)`,
no file behind them), unmapped when the last tensor viewing them dies. From glibc's heap they would
not reliably go back to the system: freeing a block raises malloc's dynamic mmap threshold, later
blocks of layer size come from the heap, and a streamed pass that loads and frees layers saw its
resident memory grow by about a layer's size per load (measured: +264 MiB per sweep over 8 layers of a
0.64 GB model, flat with the maps).
"""

from __future__ import annotations

import json
import math
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from worker.engine.dtypes import SAFETENSORS_DTYPES

INDEX_FILE = "model.safetensors.index.json"
MAX_RUNS = 16  # more runs of kept rows than this: read the tensor whole, then gather the rows
SINGLE_FILE = "model.safetensors"
READ_CHUNK = 1 << 30  # bytes per read call (Linux returns at most ~2 GiB from one read)
MMAP_MIN_BYTES = 1 << 20  # buffers this big get an anonymous map of their own (module docstring)


@dataclass(frozen=True)
class _Entry:
    file: str  # the shard, relative to the checkpoint directory
    dtype: str  # safetensors' code
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the shard
    end: int


def read_header(file: str | os.PathLike) -> tuple[dict, int]:
    """A safetensors file's header table (without `__metadata__`) and where its data begins."""
    with open(file, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{file} is not a safetensors file (shorter than its header length)")
        n = int.from_bytes(prefix, "little")
        # Checked before reading: a damaged file's first 8 bytes can claim exabytes (a MemoryError).
        if n > os.fstat(f.fileno()).st_size - 8:
            raise ValueError(f"{file} is not a safetensors file (its header is cut short)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except ValueError:  # JSON or UTF-8 errors: bytes that are no safetensors header
        raise ValueError(f"{file} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{file} is not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    return header, 8 + n


def read_weight_map(index: Path) -> dict[str, str]:
    """The index file's tensor -> shard table; a damaged index is a ValueError naming the file."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{index} is not a safetensors index ({type(exc).__name__}: {exc})") from None
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index} is not a safetensors index (its weight_map is not an object)")
    return weight_map


def owned_buffer(nbytes: int) -> torch.Tensor:
    """An uninitialised uint8 tensor of `nbytes` whose memory goes back to the system when it dies."""
    if nbytes < MMAP_MIN_BYTES:
        return torch.empty(nbytes, dtype=torch.uint8)
    # Populated at once: faulting its pages in one call, not one fault per page as the read fills it
    # (1.6x faster reads from the page cache, measured; as fast as reusing heap blocks).
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    return torch.frombuffer(mmap.mmap(-1, nbytes, flags=flags), dtype=torch.uint8)  # the tensor keeps the map


def _read_into(f, buffer: torch.Tensor, offset: int) -> None:
    """Fill the uint8 `buffer` from byte `offset` of the open file `f`."""
    view = memoryview(buffer.numpy())
    f.seek(offset)
    done = 0
    while done < len(view):
        n = f.readinto(view[done : done + READ_CHUNK])
        if not n:
            raise OSError(f"{f.name}: unexpected end of file at byte {offset + done}")
        done += n


class MissingTensor(ValueError):
    """A tensor the model needs that the checkpoint (its index, or the shard the index names) does not
    hold: a damaged or hand-edited checkpoint, said in one line like any bad input (a ValueError)."""


class CheckpointReader:
    """Names, shapes and contents of the tensors of one safetensors checkpoint directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        index = self.path / INDEX_FILE
        if index.is_file():
            weight_map = read_weight_map(index)
        elif (self.path / SINGLE_FILE).is_file():
            weight_map = None
        else:
            raise FileNotFoundError(f"{self.path} has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE})")
        files = sorted(set(weight_map.values())) if weight_map is not None else [SINGLE_FILE]
        self._meta: dict[str, _Entry] = {}
        for file in files:
            header, data_start = read_header(self.path / file)
            for name, info in header.items():
                begin, end = info["data_offsets"]
                self._meta[name] = _Entry(
                    file, info["dtype"], tuple(info["shape"]), data_start + begin, data_start + end
                )
        if weight_map is None:
            weight_map = {name: SINGLE_FILE for name in self._meta}
        self.weight_map: dict[str, str] = dict(weight_map)

    def names(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name].shape

    def dtype_name(self, name: str) -> str:
        """safetensors' dtype code, e.g. "BF16", "F32"."""
        return self._meta[name].dtype

    def total_bytes(self) -> int:
        return sum((self.path / f).stat().st_size for f in set(self.weight_map.values()))

    def read(self, name: str, keep: Sequence[Sequence[int] | None] | None = None) -> torch.Tensor:
        """The tensor `name`, restricted to the indices `keep[d]` along each dim d (None: all of it).

        Rows are read as contiguous runs straight from the file (only the kept rows are copied), or, when
        they are scattered over more than MAX_RUNS runs, the tensor is read whole and the rows gathered;
        the other dims are then selected in memory. The peak is about one tensor (at most the tensor
        plus its cut). The result owns its memory (module docstring).
        """
        file = self.weight_map.get(name)
        if file is None:
            raise MissingTensor(f"{self.path}: the checkpoint's index has no tensor {name}")
        entry = self._meta.get(name)
        if entry is None or entry.file != file:
            raise MissingTensor(
                f"{self.path}: the index puts {name} in {file}, which has no such tensor (a damaged "
                "model.safetensors.index.json? transformers reads every shard and may not notice)"
            )
        dtype = SAFETENSORS_DTYPES.get(entry.dtype)
        if dtype is None:
            raise ValueError(f"{self.path}: {name} has dtype {entry.dtype}, which this torch cannot hold")
        shape = entry.shape
        keep = list(keep) if keep is not None else []
        keep += [None] * (len(shape) - len(keep))
        numel = math.prod(shape)
        if numel == 0:
            tensor = torch.empty(shape, dtype=dtype)
        else:
            item = (entry.end - entry.start) // numel
            if item * numel != entry.end - entry.start or item != torch.empty((), dtype=dtype).element_size():
                raise ValueError(f"{self.path}: {name}'s byte range does not match its shape and dtype")
            row_bytes = item * numel // shape[0] if shape else item
            rows = keep[0] if shape else None
            runs = [(0, shape[0] if shape else 1)] if rows is None else _runs(rows)
            gather = len(runs) > MAX_RUNS  # scattered rows: one read and a gather beat many small reads
            if gather:
                runs = [(0, shape[0])]
            buffer = owned_buffer(sum(b - a for a, b in runs) * row_bytes)
            with open(self.path / entry.file, "rb", buffering=0) as f:
                at = 0
                for a, b in runs:
                    _read_into(f, buffer[at : at + (b - a) * row_bytes], entry.start + a * row_bytes)
                    at += (b - a) * row_bytes
            count = at // row_bytes
            tensor = buffer.view(dtype).reshape((count, *shape[1:]) if shape else ())
            if gather:
                tensor = tensor.index_select(0, torch.as_tensor(list(rows), dtype=torch.long))
        for dim, idx in enumerate(keep[1:], start=1):
            if idx is not None and list(idx) != list(range(shape[dim])):
                tensor = tensor.index_select(dim, torch.as_tensor(list(idx), dtype=torch.long))
        return tensor.contiguous()


def _runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive indices as [start, stop) pairs, in the given order."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    if not runs:
        raise ValueError("an empty selection")
    return runs


__all__ = ["INDEX_FILE", "SINGLE_FILE", "CheckpointReader", "MissingTensor", "read_header"]
