"""Learning-rate schedule: linear warm-up to the peak, then cosine decay to the minimum.

The one schedule of every trainer here: distillation (`loop.py`, through `lambda_for`) and the demo
teacher's recipe (`teacher.lr_at`). They differ only in where the decay ends, and that is a parameter:
distillation reaches the minimum one step after its last (`total`), the shipped demo teacher reaches it
at its last step (`minimum_at_last_step`), which its committed weights and model card were trained with.
"""

from __future__ import annotations

import math


def lr_at(
    step: int, *, peak: float, minimum: float, warmup: int, total: int, minimum_at_last_step: bool = False
) -> float:
    """LR used for optimizer step `step` (0-based) of `total`."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    decay_end = total - 1 if minimum_at_last_step else total
    decay_steps = max(1, decay_end - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return minimum + 0.5 * (peak - minimum) * (1.0 + math.cos(math.pi * progress))


def lambda_for(*, peak: float, minimum: float, warmup: int, total: int):
    """A `LambdaLR` multiplier (the optimizer's base LR must be `peak`)."""
    if peak <= 0:
        raise ValueError("peak learning rate must be > 0")
    return lambda step: lr_at(step, peak=peak, minimum=minimum, warmup=warmup, total=total) / peak
