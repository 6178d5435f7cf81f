"""Torch-free arithmetic on the running sums: how stored sums become scores.

Every per-token quantity x (a head's L2 norm, a neuron's |value|, a channel's |norm output|, a layer's
1 - cos, a block's angular distance) is first reduced over each sample's real (unpadded) tokens in two ways:

    seq "mean": m_b = sum_t x_bt / n_b          seq "l2": l_b = sqrt(sum_t x_bt^2)

and then, across samples, only four running sums are kept (in float32), separately for the two halves
of the calibration set (sample i goes to half i % 2, for rank stability):

    SUM_MEAN = sum_b m_b    SQ_MEAN = sum_b m_b^2    SUM_L2 = sum_b l_b    SQ_L2 = sum_b l_b^2

From these, any batch reduction follows without per-sample tensors:
    batch "mean" = S/N      batch "l2" = sqrt(Q)      batch "var" = Q/N - (S/N)^2   (population variance)

Stored layout of one axis: float32 array [2 halves, 4 sums, *unit_shape].
"""

from __future__ import annotations

import numpy as np

SUM_MEAN, SQ_MEAN, SUM_L2, SQ_L2 = range(4)
NUM_SUMS = 4
BATCH_REDUCTIONS = ("mean", "l2", "var")
SEQ_REDUCTIONS = ("mean", "l2")


def check_reductions(batch: str, seq: str) -> None:
    if batch not in BATCH_REDUCTIONS:
        raise ValueError(f"batch reduction must be one of {', '.join(BATCH_REDUCTIONS)}, got {batch!r}")
    if seq not in SEQ_REDUCTIONS:
        raise ValueError(f"sequence reduction must be one of {', '.join(SEQ_REDUCTIONS)}, got {seq!r}")


def reduce_sums(sums: np.ndarray, count: float, batch: str, seq: str) -> np.ndarray:
    """Scores from one set of sums [4, *units] over `count` samples (float64 for the arithmetic)."""
    check_reductions(batch, seq)
    s = sums[SUM_MEAN if seq == "mean" else SUM_L2].astype(np.float64)
    q = sums[SQ_MEAN if seq == "mean" else SQ_L2].astype(np.float64)
    if batch == "l2":
        return np.sqrt(q)
    n = max(float(count), 1.0)
    if batch == "mean":
        return s / n
    return np.maximum(q / n - (s / n) ** 2, 0.0)  # rounding can make a zero variance slightly negative


def reduce_axis(stats: np.ndarray, counts: np.ndarray, batch: str, seq: str, half: int | None = None):
    """Scores of one axis from its [2, 4, *units] sums: both halves together, or one half."""
    if half is None:
        return reduce_sums(stats.sum(axis=0), float(counts.sum()), batch, seq)
    return reduce_sums(stats[half], float(counts[half]), batch, seq)
