"""Learning-rate schedule: linear warm-up to the peak, then cosine decay to the minimum."""

from __future__ import annotations

import math


def lr_at(step: int, *, peak: float, minimum: float, warmup: int, total: int) -> float:
    """LR used for optimizer step `step` (0-based) of `total`."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    decay_steps = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return minimum + 0.5 * (peak - minimum) * (1.0 + math.cos(math.pi * progress))


def lambda_for(*, peak: float, minimum: float, warmup: int, total: int):
    """A `LambdaLR` multiplier (the optimizer's base LR must be `peak`)."""
    if peak <= 0:
        raise ValueError("peak learning rate must be > 0")
    return lambda step: lr_at(step, peak=peak, minimum=minimum, warmup=warmup, total=total) / peak
