"""Request bodies of the API (pydantic): a bad field is a 422 naming it, before anything is written."""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from backend.data_reading import DataReading
from backend.routing import Requirement
from worker.engine.distill_defaults import DEFAULTS as DISTILL
from worker.engine.eval_protocol import EvalProtocol
from worker.engine.importance.result import DEFAULT_SCANS, SCANS
from worker.engine.importance.stats import BATCH_REDUCTIONS, SEQ_REDUCTIONS
from worker.engine.plan import PlanTargets, PrunePlan

# The engine's names, one definition each (a tuple in Literal[...] spreads into its values).
Scan = Literal[SCANS]
BatchAgg = Literal[BATCH_REDUCTIONS]
SeqAgg = Literal[SEQ_REDUCTIONS]


# Row ids are SQL INTEGER columns (32-bit on PostgreSQL); a larger id is a 422, not a database error.
MAX_ID = 2**31 - 1
MAX_INT64 = 2**63 - 1  # SQL BIGINT (list offsets)
NAME_MAX = 255  # bytes in one path component (Linux NAME_MAX)
NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]*$"  # for free-text query parameters


def plain_text(value: str) -> str:
    """Text every database stores alike: PostgreSQL refuses NUL, UTF-8 cannot hold a lone surrogate."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if any("\ud800" <= c <= "\udfff" for c in value):
        raise ValueError("must not contain unpaired surrogate characters (not valid Unicode)")
    return value


def _refuse_control_characters(value: str) -> None:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters (newlines, tabs...)")


def source_text(value: str) -> str:
    """A path or hub id exactly as typed: no stray whitespace or control characters, names that fit."""
    plain_text(value)
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    _refuse_control_characters(value)
    long = next((part for part in value.split("/") if len(part.encode()) > NAME_MAX), None)
    if long is not None:
        raise ValueError(f"path component {long[:40]!r}... is over {NAME_MAX} bytes")
    return value


def not_blank(value: str) -> str:
    """A name someone reads in lists: spaces alone name nothing, and around it they only make "p1" and
    "p1 " two names that read alike (trimmed); a newline or tab would break the line it is shown on."""
    if not value.strip():
        raise ValueError("must not be blank")
    _refuse_control_characters(value)
    return value.strip()


Text = Annotated[str, AfterValidator(plain_text)]
Name = Annotated[Text, AfterValidator(not_blank)]  # the name of a teacher, dataset, plan, student...
SourceText = Annotated[str, AfterValidator(source_text)]
RowId = Annotated[int, Field(ge=1, le=MAX_ID)]
Count = Annotated[int, Field(ge=0, le=MAX_ID)]  # steps, intervals: a job's Integer-sized counters


def _takes_numbers_only(annotation) -> bool:
    """int, float or an optional one: a field where true means nothing."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = [_bare(o) for o in (typing.get_args(annotation) if union else (annotation,))]
    return all(o in (int, float, type(None)) for o in options) and any(o in (int, float) for o in options)


def _bare(annotation):
    """int for Annotated[int, ...] (RowId inside `RowId | None` keeps its Annotated)."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation


class Strict(BaseModel):
    # NaN and Infinity are valid Python JSON but no database's JSON: refused like any bad number.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value, info: ValidationInfo):
        # pydantic's lax mode stores "samples": true as 1
        if isinstance(value, bool) and _takes_numbers_only(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"must be a number, not {str(value).lower()}")
        return value


class OnDevice(Strict):
    """A heavy job's device requirement (stored in the job's params)."""

    device: Requirement = Field(
        "auto",
        description='"cuda" (a GPU worker; 409 when none is live), "cpu", or "auto" (GPU when a GPU worker '
        "is live, else CPU); see backend/routing.py",
    )


class GangWait(BaseModel):
    """How long a job over several nodes waits for its workers (worker/gang.py)."""

    gang_timeout_s: float | None = Field(
        None,
        ge=5,
        le=7 * 86400,
        description="with nodes > 1: how long node 0 waits for every node's worker to join, counted from "
        "its first try across the rounds it gives way to queued jobs; then the job fails, unstarted and "
        "resumable. Default: the worker's PRUNESCOPE_GANG_TIMEOUT_S (300 s)",
    )


class TeacherCreate(Strict):
    name: Name = Field(min_length=1, max_length=200)
    source: SourceText = Field(
        min_length=1,
        max_length=1000,
        description='"demo", a local directory (absolute, ./relative, ~, or existing under the allowed roots), '
        "or an org/name hub id (backend/paths.py)",
    )
    trust_remote_code: bool = False
    eval_protocol: EvalProtocol | None = Field(
        None,
        description="the split, context, stride and documents every perplexity of this teacher and its "
        "students is measured on by default (worker/engine/eval_protocol.py); default: demo test split, "
        "64 documents, windows of 128 tokens every 64",
    )


class TeacherPromote(Strict):
    """A student that becomes the teacher of the next compression round."""

    name: Name | None = Field(None, min_length=1, max_length=200, description="default: from the student's")
    distill_job_id: RowId | None = Field(
        None,
        description="a succeeded distillation of the student whose weights to use; default: the newest "
        "succeeded one, else the pruned weights",
    )


class DatasetCreate(Strict):
    name: Name = Field(min_length=1, max_length=200)
    source: SourceText = Field(
        min_length=1, max_length=1000, description='"demo" or a local file / directory'
    )


class ImportanceRunCreate(OnDevice, DataReading, GangWait):
    teacher_id: RowId
    dataset_id: RowId
    samples: int = Field(64, ge=1, le=100_000)
    seq_len: int = Field(128, ge=2, le=MAX_ID, description="at most PRUNESCOPE_MAX_SEQ_LEN")
    batch_size: int = Field(8, ge=1, le=MAX_ID, description="at most PRUNESCOPE_MAX_BATCH_SIZE")
    scans: list[Scan] = Field(default_factory=lambda: list(DEFAULT_SCANS))
    block_size: int = Field(2, ge=1, le=512)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    gpus: int = Field(
        1,
        ge=1,
        le=1024,
        description="data-parallel ranks on one worker (torchrun; gloo ranks on a CPU worker): each scores "
        "every N-th calibration batch and the sums are all-reduced, so the scores are one process's; the "
        "teacher is loaded whole on each rank; 409 when no live worker has that many devices",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=256,
        description="workers (machines), each running `gpus` data-parallel ranks that meet at one torchrun "
        "rendezvous (a gang, worker/gang.py); the scores are still one process's; 409 when fewer live "
        "workers have `gpus` devices and the memory for them",
    )
    offload: Literal["auto", "never", "always"] = Field(
        "auto",
        description='"always": stream the teacher one decoder layer at a time from its safetensors '
        'checkpoint; "never": load it whole; "auto": stream when its weights do not fit the worker '
        "device's free memory (worker/engine/importance/offload.py). Same scores either way. With gpus "
        '> 1 the teacher is loaded whole ("auto" means "never")',
    )
    spill_limit_gb: float | None = Field(
        None,
        gt=0,
        le=1e6,
        description="a streamed pass: at most this many GB of activation stores on the worker's spill disk; "
        "scans that need more run in several passes over the checkpoint (default: PRUNESCOPE_SPILL_LIMIT_GB, "
        "else the spill directory's free space less 2 GiB)",
    )

    @field_validator("scans")
    @classmethod
    def _unique(cls, scans: list[str]) -> list[str]:
        return list(dict.fromkeys(scans))

    @field_validator("offload")
    @classmethod
    def _streamed_in_one_process(cls, offload: str, info: ValidationInfo) -> str:
        if offload == "always" and (info.data.get("gpus", 1) > 1 or info.data.get("nodes", 1) > 1):
            raise ValueError(
                'a layer-streamed pass runs in one process: "auto" or "never" with gpus > 1 or nodes > 1'
            )
        return offload

    def size_factors(self) -> list[tuple[str, int]]:
        """The job's token count as a product; the first factor is the field a too-large job names."""
        return [("samples", self.samples), ("seq_len", self.seq_len)]


class PlanValidate(Strict):
    teacher_id: RowId
    plan: PrunePlan


class PlanFill(Strict):
    teacher_id: RowId
    importance_run_id: RowId
    targets: PlanTargets
    batch: BatchAgg = "l2"
    seq: SeqAgg = "mean"
    # Mixture of experts: which per-expert score ranks experts (experts_per_layer).
    expert_metric: Literal["routed", "prob", "contribution"] = "contribution"


class PlanCreate(Strict):
    teacher_id: RowId
    importance_run_id: RowId | None = None
    name: Name = Field(min_length=1, max_length=200)
    plan: PrunePlan


class PlanUpdate(Strict):
    version: int = Field(ge=1, le=MAX_ID - 1)
    plan: PrunePlan | None = None
    name: Name | None = Field(None, min_length=1, max_length=200)


class PreviewCreate(OnDevice):
    dataset_id: RowId | None = None
    samples: int = Field(16, ge=1, le=4096)
    seq_len: int = Field(128, ge=2, le=MAX_ID, description="at most PRUNESCOPE_MAX_SEQ_LEN")

    def size_factors(self) -> list[tuple[str, int]]:
        return [("samples", self.samples), ("seq_len", self.seq_len)]


class StudentCreate(OnDevice):
    plan_id: RowId
    name: Name = Field(min_length=1, max_length=200)
    out_of_core: Literal["auto", "never", "always"] = Field(
        "auto",
        description="cut tensor by tensor from the checkpoint instead of loading the teacher; auto: when "
        "the teacher is bigger than PRUNESCOPE_OUT_OF_CORE_THRESHOLD_GB (default half the worker's free RAM)",
    )


class DistillParams(OnDevice, DataReading, GangWait):
    dataset_id: RowId | None = None
    gpus: int = Field(
        1,
        ge=1,
        le=1024,
        description="ranks on one worker (torchrun over its GPUs; gloo ranks on a CPU worker); 409 when no "
        "live worker has that many devices (GET /workers: device_count)",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=256,
        description="workers (machines), each running `gpus` ranks: a gang of that many workers meets at "
        "one torchrun rendezvous (worker/gang.py); 409 when fewer live workers have `gpus` devices",
    )
    init_distill_job_id: RowId | None = Field(
        None,
        description="start from the weights a succeeded distillation of the same student saved (a bake-off "
        "winner's: continue it to a full run); default: the pruned weights",
    )
    steps: int = Field(DISTILL.steps, ge=1, le=10_000_000)
    tokens: int | None = Field(None, ge=1, le=MAX_INT64, description="overrides steps")
    lr: float = Field(DISTILL.lr, gt=0, le=1.0)
    # validate_default: checked against lr when omitted too
    min_lr: float = Field(DISTILL.min_lr, ge=0, le=1.0, validate_default=True)
    warmup: Count = DISTILL.warmup_steps
    temperature: float = Field(DISTILL.temperature, gt=0, le=100)
    ce_weight: float = Field(DISTILL.ce_weight, ge=0, le=1e6)
    teacher_correction_steps: Count = DISTILL.teacher_correction_steps
    baseline: bool = False
    batch_size: int = Field(
        DISTILL.batch_size, ge=1, le=MAX_ID, description="at most PRUNESCOPE_MAX_BATCH_SIZE"
    )
    gradient_checkpointing: bool = Field(
        DISTILL.gradient_checkpointing,
        description="recompute each student layer's activations in backward: less memory, more compute",
    )
    weights_dtype: Literal["float32", "bfloat16"] = Field(
        DISTILL.weights_dtype,
        description="student and teacher weights, gradients and AdamW states (bf16: half the memory)",
    )
    seq_len: int = Field(DISTILL.seq_len, ge=2, le=MAX_ID, description="at most PRUNESCOPE_MAX_SEQ_LEN")
    val_every: Count = DISTILL.val_every
    val_batches: int = Field(DISTILL.val_batches, ge=1, le=10_000)
    checkpoint_every: Count = DISTILL.checkpoint_every
    seed: int = Field(DISTILL.seed, ge=0, le=2**32 - 1)

    @field_validator("batch_size")
    @classmethod
    def _fits_ranks(cls, value: int, info: ValidationInfo) -> int:
        # gpus and nodes are declared first, so the 422 names the field to change (batch_size is the
        # global batch, split over gpus x nodes ranks).
        gpus, nodes = info.data.get("gpus", 1), info.data.get("nodes", 1)
        ranks, what = gpus * nodes, f"gpus x nodes ({gpus} x {nodes})" if nodes > 1 else f"gpus ({gpus})"
        if ranks > 1 and value % ranks:
            fits = sorted({max(ranks, value // ranks * ranks), (value // ranks + 1) * ranks})
            # ctx["nearby"]: the error body's nearby values (backend/api/errors.py)
            raise PydanticCustomError(
                "value_error",
                "must be a multiple of {what}, e.g. {fits}",
                {"what": what, "fits": " or ".join(map(str, fits)), "nearby": fits},
            )
        return value

    @field_validator("min_lr")
    @classmethod
    def _lr_order(cls, min_lr: float, info: ValidationInfo) -> float:
        # A field validator (lr is declared first), so the 422 names min_lr and the form marks that input.
        if "lr" in info.data and min_lr > info.data["lr"]:
            raise ValueError("min_lr must not exceed lr")
        return min_lr

    def size_factors(self) -> list[tuple[str, int]]:
        if self.tokens is not None:
            return [("tokens", self.tokens)]
        return [("steps", self.steps), ("batch_size", self.batch_size), ("seq_len", self.seq_len)]


class OnWeights(OnDevice):
    """Which of a student's weights an evaluate / benchmark job measures (ignored for a teacher)."""

    weights: Literal["latest", "pruned"] = Field(
        "latest",
        description='"latest": the weights of the student\'s newest distillation that has not failed or been '
        'cancelled (the job waits for it to finish), else the pruned weights; "pruned": as cut',
    )
    distill_job_id: RowId | None = Field(
        None, description="measure the weights of this distillation of the student (overrides weights)"
    )


LM_EVAL_TASK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


def _task_name(name: str) -> str:
    # lm-eval's registry is the worker's to read (it imports torch); the shape of a name is checked here.
    if not LM_EVAL_TASK.fullmatch(name):
        raise ValueError("not an lm-eval task name (letters, digits, _ . : -), e.g. prunescope_cloze")
    return name


class EvaluateParams(OnWeights, GangWait):
    """Perplexity (and lm-eval tasks). The perplexity fields left out are the teacher's evaluation
    protocol's (`Teacher.eval_protocol`; the defaults below are the default protocol's)."""

    dataset_id: RowId | None = None
    gpus: int = Field(
        1,
        ge=1,
        le=1024,
        description="data-parallel ranks on one worker (each scores every N-th batch of perplexity windows, "
        "NLL sums and token counts all-reduced, and answers every N-th batch of each lm-eval model call, the "
        "answers gathered: the one-process numbers); 409 when no live worker has that many devices",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=256,
        description="workers (machines), each running `gpus` perplexity ranks at one torchrun rendezvous "
        "(worker/gang.py); 409 when fewer live workers have `gpus` devices",
    )
    split: Literal["train", "validation", "calibration", "test"] = "test"
    max_documents: int = Field(64, ge=1, le=100_000)
    seq_len: int = Field(128, ge=2, le=MAX_ID, description="window (context), at most PRUNESCOPE_MAX_SEQ_LEN")
    stride: int | None = Field(
        None,
        ge=1,
        le=MAX_ID,
        description="a window starts every `stride` tokens (< seq_len); null: seq_len // 2",
    )
    tasks: list[Annotated[Text, Field(min_length=1, max_length=200), AfterValidator(_task_name)]] = Field(
        default_factory=list,
        max_length=100,
        description="lm-eval task names: the offline prunescope_cloze, prunescope_rolling, or any task of "
        "lm-eval's registry (its dataset must be reachable); a name lm-eval does not know fails the job at its start",
    )
    limit: int | None = Field(50, ge=1, le=1_000_000, description="samples per lm-eval task")

    @model_validator(mode="after")
    def _stride_below_window(self):
        # Only against a window the request gave: one left out is the teacher's protocol's (filled in,
        # and these params validated again, by the API's `on_protocol`), not this field's default.
        if self.stride is not None and "seq_len" in self.model_fields_set and self.stride >= self.seq_len:
            error = PydanticCustomError(
                "value_error", "must be below seq_len ({seq_len})", {"seq_len": self.seq_len}
            )
            detail = InitErrorDetails(type=error, loc=("stride",), input=self.stride)
            raise ValidationError.from_exception_data(
                type(self).__name__, [detail]
            )  # at stride, not the model
        return self

    def size_factors(self) -> list[tuple[str, int]]:
        return [("max_documents", self.max_documents), ("seq_len", self.seq_len)]


# EvaluateParams field -> the EvalProtocol field it takes when left out.
PROTOCOL_PARAMS = {
    "dataset_id": "dataset_id",
    "split": "split",
    "max_documents": "max_documents",
    "seq_len": "context",
    "stride": "stride",
}


class BenchmarkParams(OnWeights):
    batch_size: int = Field(1, ge=1, le=MAX_ID, description="at most PRUNESCOPE_MAX_BATCH_SIZE")
    seq_len: int = Field(128, ge=1, le=MAX_ID, description="at most PRUNESCOPE_MAX_SEQ_LEN")
    new_tokens: int = Field(32, ge=1, le=8192)
    repeats: int = Field(3, ge=1, le=100)

    def size_factors(self) -> list[tuple[str, int]]:
        return [
            ("repeats", self.repeats),
            ("batch_size", self.batch_size),
            ("seq_len + new_tokens", self.seq_len + self.new_tokens),
        ]


PARAMS = {"distill": DistillParams, "evaluate": EvaluateParams, "benchmark": BenchmarkParams}


TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.:+/=-]{0,39}$"
Tag = Annotated[str, Field(min_length=1, max_length=40, pattern=TAG_PATTERN)]


class JobUpdate(Strict):
    """PATCH /jobs/{id}: a run's name and tags (the runs table); fields left out stay as they are."""

    name: Text | None = Field(
        None, min_length=1, max_length=200, description="null: back to the default name (kind and model)"
    )
    tags: list[Tag] | None = Field(
        None, max_length=20, description="replaces the tags; letters, digits, space and _ . : + / = -"
    )

    @field_validator("name")
    @classmethod
    def _trimmed(cls, name: str | None) -> str | None:
        if name is not None and not name.strip():
            raise ValueError("must not be blank")
        return name.strip() if name is not None else None

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, tags: list[str] | None) -> list[str] | None:
        return list(dict.fromkeys(t.strip() for t in tags)) if tags is not None else None


class JobCreate(Strict):
    kind: Literal["distill", "evaluate", "benchmark"]
    student_id: RowId | None = None
    teacher_id: RowId | None = None
    params: dict[str, Any] = Field(default_factory=dict)
