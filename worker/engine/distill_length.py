"""A distillation's length as the worker counts it, and the warning when all of it is LR warm-up.

Torch-free (the API warns with it; frontend/js/distillmath.js says the same, held equal by
tests/ui/test_distill_warmup.py): a token budget is ceil(tokens / (batch_size x seq_len)) steps.
"""

from __future__ import annotations

import math
from typing import Any


def total_steps(p: dict[str, Any]) -> int:
    """The optimizer steps of distill params {steps | tokens, batch_size, seq_len}, at least 1."""
    if p.get("tokens"):
        return max(1, math.ceil(p["tokens"] / (p["batch_size"] * p["seq_len"])))
    return p["steps"]


def warmup_warning(p: dict[str, Any]) -> str:
    """ "" or the sentence saying the run ends within its LR warm-up (the rate rises linearly for `warmup`
    steps: worker/engine/distill/schedule.py), so it barely trains: a short bake-off then reports "no
    flips" that say nothing about distillation. A warning, not a refusal: a smoke run may want it."""
    steps, warmup = total_steps(p), p.get("warmup")
    if warmup is None or steps > warmup:
        return ""
    return (
        f"The run's {steps} steps are all LR warm-up ({warmup} steps): the learning rate is still rising "
        "when it ends, so the students barely train and a ranking after it says little about "
        "distillation. Give more steps (tokens), or a shorter warm-up."
    )
