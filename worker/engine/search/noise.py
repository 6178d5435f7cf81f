"""How far a candidate's held-out loss is from the best one's, in standard errors of that difference.

Every candidate is scored on the same held-out windows, so the difference is paired: per window i,
d_i = NLL_c,i - NLL_best,i (summed over its tokens). The difference of the two mean losses is the ratio
D = sum(d_i) / sum(t_i), whose standard error over windows drawn at random is, by the usual ratio
(linearisation) estimate, sqrt(n / (n - 1) * sum((d_i - D t_i)^2)) / sum(t_i); with windows of equal
length this is the standard deviation of the per-window loss differences over sqrt(n). Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# A candidate whose loss is within this many standard errors of the best's is "within noise" of it:
# the held-out sample cannot tell the two apart (audit: ranks 1 and 2 swapped at 64 samples, 0.2 SE apart).
NOISE_SES = 2.0


def paired_difference(
    nll: Sequence[float], best_nll: Sequence[float], tokens: Sequence[float]
) -> tuple[float, float | None]:
    """(loss - best loss, its paired standard error) from per-window NLL sums and target-token counts
    (the same windows for both); the error is None from fewer than two windows."""
    if not (len(nll) == len(best_nll) == len(tokens)):
        raise ValueError("paired_difference: the candidate and the best were scored on different windows")
    total = float(sum(tokens))
    if total <= 0:
        return 0.0, None
    d = [a - b for a, b in zip(nll, best_nll)]
    diff = sum(d) / total
    n = len(d)
    if n < 2:
        return diff, None
    spread = sum((di - diff * ti) ** 2 for di, ti in zip(d, tokens))
    return diff, math.sqrt(n / (n - 1) * spread) / total


def within_noise(diff: float, se: float | None) -> bool | None:
    """Whether |diff| < NOISE_SES standard errors, or none at all (None when no error could be estimated)."""
    if se is None:
        return None
    return diff == 0 or abs(diff) < NOISE_SES * se
