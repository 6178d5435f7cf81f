"""Heatmap-ready payloads from an importance artifact: layers x heads, layers x neurons (server-side
binning, sorting, layer range and zoom), hidden channels, layer scores, rank stability, and for
mixture-of-experts runs layers x experts (routed share, router probability, contribution).

Results are cached per (artifact, aggregation) because the dashboard re-requests the same run while
the user zooms; numbers are rounded to 4 significant digits to keep payloads small, so every ranking
(`rank`, `neuron_order`) is computed here from the exact scores, never by clients from rounded values.
"""

from __future__ import annotations

import base64
import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from worker.engine.importance.result import ImportanceResult
from worker.engine.plan import ImportanceScores

_lock = threading.Lock()
_results: OrderedDict[str, ImportanceResult] = OrderedDict()
_scores: OrderedDict[tuple, ImportanceScores] = OrderedDict()
_sorted: OrderedDict[tuple, np.ndarray] = OrderedDict()
CACHE = 8


class RangeError(ValueError):
    """A layer or zoom range outside the run; `field` names the query parameter to blame."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _remember(cache: OrderedDict, key, make):
    with _lock:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = make()
    with _lock:
        cache[key] = value
        while len(cache) > CACHE:
            cache.popitem(last=False)
    return value


def result(path: Path) -> ImportanceResult:
    return _remember(_results, str(path), lambda: ImportanceResult.load(path))


def scores(path: Path, batch: str, seq: str, expert_metric: str = "contribution") -> ImportanceScores:
    return _remember(
        _scores,
        (str(path), batch, seq, expert_metric),
        lambda: result(path).scores(batch, seq, expert_metric=expert_metric),
    )


def compact(values: np.ndarray) -> list:
    """4 significant digits, NaN/inf -> null (JSON has neither)."""
    arr = np.asarray(values, dtype=np.float64)
    out = np.where(np.isfinite(arr), arr, 0.0)
    nz = out != 0
    mag = np.zeros_like(out)
    mag[nz] = np.floor(np.log10(np.abs(out[nz])))
    scale = 10.0 ** (3 - mag)
    rounded = np.round(out * scale) / scale
    listed = rounded.tolist()
    if not np.isfinite(arr).all():
        listed = _nullify(listed, np.isfinite(arr))
    return listed


def _nullify(listed, finite):
    if isinstance(listed, list):
        return [_nullify(v, f) for v, f in zip(listed, finite)]
    return listed if finite else None


def _padding_last(values: np.ndarray) -> np.ndarray:
    """float64 scores with NaN (the padding of a non-uniform model's narrower layers) below every score."""
    arr = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(arr), -np.inf, arr)


def ranks(values: np.ndarray) -> np.ndarray:
    """Rank along the last axis, 0 = least important; padding (NaN scores) ranks -1."""
    arr = _padding_last(values)
    order = np.argsort(np.argsort(arr, axis=-1, kind="stable"), axis=-1, kind="stable")
    padding = np.isnan(np.asarray(values, dtype=np.float64))
    if not padding.any():
        return order
    return np.where(padding, -1, order - padding.sum(axis=-1, keepdims=True))


def descending_order(values: np.ndarray) -> np.ndarray:
    """Unit indices along the last axis, most important first, ties broken as `fill_plan` breaks them.

    `fill_plan` removes the first n of a stable ascending argsort of the float64 scores, so this is
    that argsort reversed: the last n positions of each row are exactly the units it would remove
    (the browser must not re-rank the 4-digit payload values, near-ties would come out differently).
    Padding (NaN scores of a non-uniform model's narrower layers) comes last.
    """
    return np.argsort(_padding_last(values), axis=-1, kind="stable")[..., ::-1]


def index_dtype(width: int) -> str:
    """The smallest little-endian unsigned type holding every index 0..width-1."""
    return "uint16" if width <= 1 << 16 else "uint32"


def encode_indices(order: np.ndarray) -> tuple[str, list[str]]:
    """Each row of an index matrix as base64 of little-endian uint16 (uint32 past 65536 columns): a third
    of the JSON list's size for real widths (32 x 14336: 1.2 MB instead of 2.9 MB), and the browser
    decodes it straight into a typed array."""
    dtype = index_dtype(order.shape[-1])
    packed = np.ascontiguousarray(order, dtype="<u2" if dtype == "uint16" else "<u4")
    return dtype, [base64.b64encode(row.tobytes()).decode("ascii") for row in packed]


def neuron_order(path: Path, batch: str, seq: str) -> dict:
    """Each layer's neuron indices in sorted-view order (position p of the sorted map = order[l][p]),
    packed by `encode_indices`."""
    full = scores(path, batch, seq).neurons
    order = _remember(_sorted, (str(path), batch, seq), lambda: descending_order(full))
    dtype, rows = encode_indices(order)
    return {
        "layers": int(full.shape[0]),
        "width": int(full.shape[1]),
        "widths": widths(full),
        "dtype": dtype,
        "encoding": "base64",
        "order": rows,
    }


def widths(z: np.ndarray) -> list[int]:
    """Real units of each layer (a non-uniform model's narrower layers end in NaN padding)."""
    return (~np.isnan(np.asarray(z, dtype=np.float64))).sum(axis=1).astype(int).tolist()


def heads(path: Path, batch: str, seq: str, kv_groups: int | None) -> dict:
    z = scores(path, batch, seq).heads
    return {
        "layers": int(z.shape[0]),
        "heads": int(z.shape[1]),
        "widths": widths(z),
        "kv_groups": kv_groups,
        "z": compact(z),
        "rank": ranks(z).tolist(),
    }


def hidden(path: Path, batch: str, seq: str) -> dict:
    z = scores(path, batch, seq).hidden
    return {"z": compact(z), "rank": ranks(z).tolist()}


def neurons(
    path: Path,
    batch: str,
    seq: str,
    *,
    bins: int,
    order: str,
    layer_start: int,
    layer_end: int | None,
    start: int,
    end: int | None,
) -> dict:
    full = scores(path, batch, seq).neurons
    num_layers, width = full.shape
    layer_end = num_layers if layer_end is None else layer_end
    end = width if end is None else end
    if not 0 <= layer_start < layer_end <= num_layers:
        raise RangeError(
            "layer_end", f"layer range must satisfy 0 <= layer_start < layer_end <= {num_layers}"
        )
    if not 0 <= start < end <= width:
        raise RangeError("end", f"neuron range must satisfy 0 <= start < end <= {width}")
    if order == "sorted":  # descending score per layer: x = rank position, in `neuron_order`'s order
        perm = _remember(_sorted, (str(path), batch, seq), lambda: descending_order(full))
        data = np.take_along_axis(full, perm, axis=1)
    else:
        data = full
    block = data[layer_start:layer_end, start:end]
    n = min(bins, end - start)
    edges = np.unique(np.linspace(0, end - start, n + 1).round().astype(np.int64))
    # Means over each bin's real neurons (padding of a non-uniform model's narrower layers is NaN and
    # left out; a bin of padding only stays NaN -> null).
    real = ~np.isnan(block)
    count = np.add.reduceat(real, edges[:-1], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.add.reduceat(np.where(real, block, 0.0), edges[:-1], axis=1) / count
    zmax = np.fmax.reduceat(block, edges[:-1], axis=1)
    return {
        "layers": list(range(layer_start, layer_end)),
        "bins": int(len(edges) - 1),
        "bin_edges": (edges + start).tolist(),
        "z": compact(z),
        "zmax": compact(zmax),
        "start": start,
        "end": end,
        "width": int(width),
        "widths": widths(full[layer_start:layer_end]),
        "order": order,
    }


class NoExperts(ValueError):
    """The run's model has no mixture-of-experts layers."""


def experts(path: Path, batch: str, seq: str) -> dict:
    """Layers x experts, one matrix per metric, with each row's ranks (0 = least important, the order
    `fill_plan` removes in for that metric) and the experts' FFN width."""
    res = result(path)
    if not res.is_moe:
        raise NoExperts(
            "this importance run has no expert scores: its model has no mixture-of-experts layers"
        )
    per_metric = res.expert_scores(batch, seq)
    L, E = next(iter(per_metric.values())).shape
    return {
        "layers": int(L),
        "experts": int(E),
        "expert_width": int(res.arrays["expert_neurons"].shape[-1] // E),
        "metrics": {m: compact(z) for m, z in per_metric.items()},
        "rank": {m: ranks(np.asarray(z, dtype=np.float64)).tolist() for m, z in per_metric.items()},
    }


def layers(path: Path, batch: str = "l2", seq: str = "mean") -> dict:
    """Layer scores; the aggregation applies to Block Importance and the block angular distance (the
    loss scans are plain means). `block_loss` and `block_angular` are keyed by block size k."""
    res = result(path)
    layer = res.layer_scores(batch, seq)
    block_loss = {
        name.removeprefix("block_loss_k"): compact(values)
        for name, values in layer.items()
        if name.startswith("block_loss_k")
    }
    block_angular = {
        name.removeprefix("block_angular_k"): compact(values)
        for name, values in layer.items()
        if name.startswith("block_angular_k")
    }
    base = (
        res.base_loss() if "loss_base" in res.arrays and float(res.arrays["loss_tokens"].sum()) > 0 else None
    )
    return {
        "block_importance": compact(layer["block_importance"]) if "block_importance" in layer else None,
        "drop_loss": compact(layer["drop_loss"]) if "drop_loss" in layer else None,
        "block_loss": block_loss,
        "block_angular": block_angular,
        "base_loss": base,
    }


def stability(path: Path, batch: str = "l2", seq: str = "mean") -> dict:
    rho = result(path).rank_stability(batch, seq)
    return {k: (None if v is None or not math.isfinite(v) else round(v, 4)) for k, v in rho.items()}
