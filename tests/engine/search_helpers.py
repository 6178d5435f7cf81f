"""A tiny teacher, its importance run and held-out batches for the search tests (built in seconds)."""

from __future__ import annotations

import functools

from tests.tiny_models import tiny_model
from worker.engine.search import SearchSettings

# Small steps: the tiny models are 32 wide with an MLP of 48, so the default 64 would leave no choice.
TINY_SETTINGS = dict(mlp_step=8, hidden_step=8, max_width_cut=0.5, max_depth_cut=0.5, eval_batch_size=4)


def settings(**overrides) -> SearchSettings:
    return SearchSettings(**{**TINY_SETTINGS, **overrides})


@functools.cache
def teacher_and_importance(family: str = "llama"):
    """(model, importance result, held-out batches): the importance run sees other samples than the
    held-out batches (different seeds), as calibration and validation text never overlap."""
    from tests.engine.test_importance_scores import padded_batches
    from worker.engine.importance import compute_importance

    model = tiny_model(family)
    _, calibration = padded_batches([11, 9, 11, 7, 11, 10], batch_size=3, seed=1)
    result = compute_importance(model, calibration, scans=("bi", "drop", "block", "angular"), block_size=1)
    _, heldout = padded_batches([11, 11, 8, 11, 9, 11], batch_size=3, seed=2)
    return model, result, heldout
