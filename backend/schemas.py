"""Request bodies of the API (pydantic): a bad field is a 422 naming it, before anything is written."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from backend.data_reading import DataReading
from worker.engine.plan import PlanTargets, PrunePlan
from worker.routing import Requirement

Scan = Literal["bi", "drop", "block", "angular"]  # worker.engine.importance.result.SCANS
BatchAgg = Literal["l2", "mean", "var"]
SeqAgg = Literal["mean", "l2"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OnDevice(Strict):
    """A heavy job's device requirement (stored in the job's params)."""

    device: Requirement = Field(
        "auto",
        description='"cuda" (a GPU worker; 409 when none is live), "cpu", or "auto" (GPU when a GPU worker '
        "is live, else CPU); see worker/routing.py",
    )


class TeacherCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=1000, description='"demo", a local directory, or a hub id')
    trust_remote_code: bool = False


class TeacherPromote(Strict):
    """A student that becomes the teacher of the next compression round."""

    name: str | None = Field(None, min_length=1, max_length=200, description="default: from the student's")
    distill_job_id: int | None = Field(
        None,
        ge=1,
        description="a succeeded distillation of the student whose weights to use; default: the newest "
        "succeeded one, else the pruned weights",
    )


class DatasetCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=1000, description='"demo" or a local file / directory')


class ImportanceRunCreate(OnDevice, DataReading):
    teacher_id: int
    dataset_id: int
    samples: int = Field(64, ge=1, le=100_000)
    seq_len: int = Field(128, ge=2, le=131_072)
    batch_size: int = Field(8, ge=1, le=4096)
    scans: list[Scan] = Field(default_factory=lambda: ["bi", "drop", "block"])
    block_size: int = Field(2, ge=1, le=512)
    seed: int = Field(0, ge=0)

    @field_validator("scans")
    @classmethod
    def _unique(cls, scans: list[str]) -> list[str]:
        return list(dict.fromkeys(scans))


class PlanValidate(Strict):
    teacher_id: int
    plan: PrunePlan


class PlanFill(Strict):
    teacher_id: int
    importance_run_id: int
    targets: PlanTargets
    batch: BatchAgg = "l2"
    seq: SeqAgg = "mean"


class PlanCreate(Strict):
    teacher_id: int
    importance_run_id: int | None = None
    name: str = Field(min_length=1, max_length=200)
    plan: PrunePlan


class PlanUpdate(Strict):
    version: int = Field(ge=1)
    plan: PrunePlan | None = None
    name: str | None = Field(None, min_length=1, max_length=200)


class PreviewCreate(OnDevice):
    dataset_id: int | None = None
    samples: int = Field(16, ge=1, le=4096)
    seq_len: int = Field(128, ge=2, le=131_072)


class StudentCreate(OnDevice):
    plan_id: int
    name: str = Field(min_length=1, max_length=200)
    out_of_core: Literal["auto", "never", "always"] = Field(
        "auto",
        description="cut tensor by tensor from the checkpoint instead of loading the teacher; auto: when "
        "the teacher is bigger than PRUNESCOPE_OUT_OF_CORE_THRESHOLD_GB (default half the worker's free RAM)",
    )


class DistillParams(OnDevice, DataReading):
    dataset_id: int | None = None
    steps: int = Field(200, ge=1, le=10_000_000)
    tokens: int | None = Field(None, ge=1)
    lr: float = Field(1e-4, gt=0, le=1.0)
    min_lr: float = Field(1e-5, ge=0, le=1.0, validate_default=True)  # checked against lr when omitted too
    warmup: int = Field(20, ge=0)
    temperature: float = Field(1.0, gt=0, le=100)
    ce_weight: float = Field(0.0, ge=0)
    teacher_correction_steps: int = Field(0, ge=0)
    baseline: bool = False
    batch_size: int = Field(8, ge=1, le=4096)
    seq_len: int = Field(128, ge=2, le=131_072)
    val_every: int = Field(50, ge=0)
    val_batches: int = Field(8, ge=1, le=10_000)
    checkpoint_every: int = Field(50, ge=0)
    seed: int = Field(0, ge=0)

    @field_validator("min_lr")
    @classmethod
    def _lr_order(cls, min_lr: float, info: ValidationInfo) -> float:
        # A field validator (lr is declared first), so the 422 names min_lr and the form marks that input.
        if "lr" in info.data and min_lr > info.data["lr"]:
            raise ValueError("min_lr must not exceed lr")
        return min_lr


class OnWeights(OnDevice):
    """Which of a student's weights an evaluate / benchmark job measures (ignored for a teacher)."""

    weights: Literal["latest", "pruned"] = Field(
        "latest",
        description='"latest": the weights of the student\'s newest distillation that has not failed or been '
        'cancelled (the job waits for it to finish), else the pruned weights; "pruned": as cut',
    )
    distill_job_id: int | None = Field(
        None, ge=1, description="measure the weights of this distillation of the student (overrides weights)"
    )


class EvaluateParams(OnWeights):
    dataset_id: int | None = None
    split: Literal["train", "validation", "calibration", "test"] = "test"
    max_documents: int = Field(64, ge=1, le=100_000)
    seq_len: int = Field(128, ge=2, le=131_072)
    tasks: list[str] = Field(default_factory=list)
    limit: int | None = Field(50, ge=1, description="samples per lm-eval task")


class BenchmarkParams(OnWeights):
    batch_size: int = Field(1, ge=1, le=1024)
    seq_len: int = Field(128, ge=1, le=131_072)
    new_tokens: int = Field(32, ge=1, le=8192)
    repeats: int = Field(3, ge=1, le=100)


PARAMS = {"distill": DistillParams, "evaluate": EvaluateParams, "benchmark": BenchmarkParams}


class JobCreate(Strict):
    kind: Literal["distill", "evaluate", "benchmark"]
    student_id: int | None = None
    teacher_id: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)
