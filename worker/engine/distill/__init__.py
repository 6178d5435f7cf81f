"""Knowledge distillation of pruned students (logit KD, optional CE and hidden-state losses).

Public API: `DistillConfig`, `distill`, `DistillResult`, `validate`, `correct_teacher`, and the losses
(`chunked_distill_loss`, `reference_distill_loss`, `cosine_state_loss`, `LossWeights`, plan helpers).
"""

from worker.engine.distill.config import DistillConfig
from worker.engine.distill.loop import DistillResult, batch_loss, correct_teacher, distill, validate
from worker.engine.distill.losses import (
    LossWeights,
    chunked_distill_loss,
    cosine_state_loss,
    hidden_channels_from_plan,
    layer_map_from_plan,
    reference_distill_loss,
)


def config_for_plan(plan, teacher_spec, **overrides) -> DistillConfig:
    """A DistillConfig whose layer map / kept hidden channels come from a prune plan."""
    updates = {
        "layer_map": layer_map_from_plan(plan.drop_layers, teacher_spec.num_layers),
        "hidden_channels": hidden_channels_from_plan(plan.remove_hidden, teacher_spec.hidden_size),
    }
    updates.update(overrides)
    return DistillConfig(**updates)


__all__ = [
    "DistillConfig",
    "DistillResult",
    "LossWeights",
    "batch_loss",
    "chunked_distill_loss",
    "config_for_plan",
    "correct_teacher",
    "cosine_state_loss",
    "distill",
    "hidden_channels_from_plan",
    "layer_map_from_plan",
    "reference_distill_loss",
    "validate",
]
