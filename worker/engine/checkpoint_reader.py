"""Read single tensors (or parts of them) from a safetensors checkpoint without loading the model.

A checkpoint directory holds either one `model.safetensors` or shards listed by
`model.safetensors.index.json`. Every read opens its shard, copies the wanted part out of the
memory map and closes it again, so the pages of tensors already read are released: reading a whole
checkpoint this way keeps about one tensor in memory, whatever its size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open

INDEX_FILE = "model.safetensors.index.json"
MAX_RUNS = 16  # more runs of kept rows than this: read the tensor whole, then gather the rows
SINGLE_FILE = "model.safetensors"


class CheckpointReader:
    """Names, shapes and contents of the tensors of one safetensors checkpoint directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        index = self.path / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.path / SINGLE_FILE).is_file():
            with safe_open(str(self.path / SINGLE_FILE), "pt") as f:
                weight_map = dict.fromkeys(f.keys(), SINGLE_FILE)
        else:
            raise FileNotFoundError(f"{self.path} has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE})")
        self.weight_map: dict[str, str] = dict(weight_map)
        self._meta: dict[str, tuple[str, tuple[int, ...]]] = {}
        for file in sorted(set(self.weight_map.values())):
            with safe_open(str(self.path / file), "pt") as f:
                for name in f.keys():
                    sl = f.get_slice(name)
                    self._meta[name] = (sl.get_dtype(), tuple(sl.get_shape()))

    def names(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][1]

    def dtype_name(self, name: str) -> str:
        """safetensors' dtype code, e.g. "BF16", "F32"."""
        return self._meta[name][0]

    def total_bytes(self) -> int:
        return sum((self.path / f).stat().st_size for f in set(self.weight_map.values()))

    def read(self, name: str, keep: Sequence[Sequence[int] | None] | None = None) -> torch.Tensor:
        """The tensor `name`, restricted to the indices `keep[d]` along each dim d (None: all of it).

        Rows are read as contiguous runs straight from the file (only the kept rows are copied), or, when
        they are scattered over more than MAX_RUNS runs, the tensor is read whole and the rows gathered;
        the other dims are then selected in memory. The peak is about one tensor (at most the tensor
        plus its cut).
        """
        file = self.path / self.weight_map[name]
        shape = self.shape(name)
        keep = list(keep) if keep is not None else []
        keep += [None] * (len(shape) - len(keep))
        with safe_open(str(file), "pt") as f:
            sl = f.get_slice(name)
            if not shape:  # a scalar
                return sl[:]
            rows = keep[0]
            runs = [(0, shape[0])] if rows is None else _runs(rows)
            if len(runs) > MAX_RUNS:  # scattered rows: one read and a gather beat many small reads
                parts = [sl[:].index_select(0, torch.as_tensor(list(rows), dtype=torch.long))]
            else:
                parts = [sl[a:b] for a, b in runs]
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
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


__all__ = ["INDEX_FILE", "SINGLE_FILE", "CheckpointReader"]
