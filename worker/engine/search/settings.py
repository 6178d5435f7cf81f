"""What a search is asked to do: budgets, search-space alignment and limits, evaluation data.

Torch-free (pydantic): the API validates a search job's parameters with it, and a bad value comes
back as a ValidationError whose location names the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worker.engine.search.budgets import parse_budget

AXES = ("heads", "mlp", "hidden", "depth")


class SearchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    budgets: list[str] = Field(..., min_length=1, description="KIND=VALUE[@BATCH,CONTEXT] strings")
    tolerance: float = Field(0.02, ge=0, le=0.5, description="a cost may exceed its limit by this fraction")
    frontier_only: bool = Field(
        True, description="keep only candidates where no axis can grow by one step and still fit"
    )
    mlp_step: int = Field(64, ge=1, description="MLP sizes are multiples of this")
    hidden_step: int = Field(
        64, ge=1, description="hidden sizes are multiples of this (and of the family's rule)"
    )
    max_width_cut: float = Field(0.4, ge=0, lt=1, description="largest fraction of a width axis cut")
    max_depth_cut: float = Field(0.2, ge=0, lt=1, description="largest fraction of the layers dropped")
    max_cut: dict[Literal["heads", "mlp", "hidden", "depth"], float] = Field(
        default_factory=dict, description="per-axis override of max_width_cut / max_depth_cut"
    )
    head_modes: list[Literal["whole_groups", "within_groups"]] = Field(
        default_factory=lambda: ["whole_groups", "within_groups"], min_length=1
    )
    layer_methods: list[Literal["block", "drop", "bi", "angular"]] = Field(
        default_factory=lambda: ["block", "drop", "bi", "angular"], min_length=1
    )
    data: str = Field("demo", description="held-out text source (see worker/engine/data.py)")
    split: Literal["train", "validation", "calibration", "test"] = "validation"
    eval_samples: int = Field(16, ge=1, le=4096)
    eval_seq_len: int = Field(128, ge=2, le=32768)
    eval_batch_size: int = Field(8, ge=1, le=1024)
    seed: int = Field(0, ge=0)  # numpy's generators refuse a negative seed
    latency_batch: int = Field(1, ge=1, description="batch of latency budgets given without @B,C")
    latency_context: int = Field(128, ge=1, description="context of latency budgets given without @B,C")
    latency_new_tokens: int = Field(16, ge=1, description="decode steps timed per measurement")
    lm_eval_task: str | None = Field(
        None,
        description="an lm-eval task scored on the top candidates too (e.g. the offline prunescope_cloze)",
    )
    lm_eval_top: int = Field(5, ge=1, description="how many of the best-loss candidates get the lm-eval task")
    lm_eval_limit: int | None = Field(100, ge=1, description="samples of the lm-eval task (None: all)")
    max_candidates: int = Field(
        2000, ge=1, description="refuse a search with more candidates to score (after budgets and frontier)"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="dtype the teacher is scored (and shapes timed) in; memory is priced in the teacher's "
        "stored dtype whatever this is",
    )

    @field_validator("budgets")
    @classmethod
    def _parse_budgets(cls, values: list[str]) -> list[str]:
        kinds = set()
        for text in values:
            budget = parse_budget(text)  # ValueError -> ValidationError at ("budgets", i)
            key = (budget.kind, budget.batch, budget.context)
            if key in kinds:
                raise ValueError(f"budget {text!r} repeats the kind {budget.kind!r}")
            kinds.add(key)
        return values

    @field_validator("max_cut")
    @classmethod
    def _fractions(cls, value: dict) -> dict:
        for axis, fraction in value.items():
            if not 0 <= fraction < 1:
                raise ValueError(f"max_cut[{axis}] must be in [0, 1), got {fraction}")
        return value

    def cut_limit(self, axis: str) -> float:
        default = self.max_depth_cut if axis == "depth" else self.max_width_cut
        return self.max_cut.get(axis, default)
