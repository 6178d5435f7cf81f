"""The one prune-plan schema, its validation, its cost preview and its filling from importance scores.

Torch-free (pydantic + numpy): the backend and the dashboard import it to check a plan and show its
cost before anything is cut, and `surgery.apply_plan` cuts exactly what it describes.

Modules, one job each: `schema` (PrunePlan, PlanTargets, PlanMessage, PlanError, ImportanceScores:
the plan format, documented there), `shape` (what a plan keeps: kept layers, the resulting ArchSpec,
`plan_stats`, the families' alignment rules), `validate` (`validate_plan` / `check_plan` and their
messages), `fill` (targets to explicit removals by importance: `fill_plan`, `fill_warnings`, the
parameter-budget fit).
"""

from __future__ import annotations

from worker.engine.plan.fill import fill_plan, fill_warnings
from worker.engine.plan.schema import ImportanceScores, PlanError, PlanMessage, PlanTargets, PrunePlan
from worker.engine.plan.shape import (
    expert_alignment,
    expert_widths,
    hidden_alignment,
    kept_experts,
    kept_layers,
    layer_head_removal,
    plan_stats,
    resulting_spec,
    vanilla_loadable,
)
from worker.engine.plan.validate import check_plan, validate_plan

__all__ = [
    "ImportanceScores",
    "PlanError",
    "PlanMessage",
    "PlanTargets",
    "PrunePlan",
    "check_plan",
    "expert_alignment",
    "expert_widths",
    "fill_plan",
    "fill_warnings",
    "hidden_alignment",
    "kept_experts",
    "kept_layers",
    "layer_head_removal",
    "plan_stats",
    "resulting_spec",
    "validate_plan",
    "vanilla_loadable",
]
