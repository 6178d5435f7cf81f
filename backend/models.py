"""The database schema (SQLAlchemy 2.0 typed ORM). Alembic migrations in `backend/migrations/` create it.

Large arrays and weights live in the artifact store; rows keep only their location.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


JobKind = Literal[
    "inspect", "importance", "preview", "prune", "distill", "evaluate", "benchmark", "workflow", "search"
]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES = get_args(JobStatus)
FINISHED = ("succeeded", "failed", "cancelled")


class Teacher(Base):
    __tablename__ = "teachers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(Text)
    trust_remote_code: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | ready | failed
    error: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[dict[str, Any] | None]
    job_id: Mapped[int | None] = mapped_column(Integer)
    # A teacher promoted from a student (iterative compression, 8B -> 4B -> 2B): whose weights `source`
    # points at — its distillation's, or the pruned ones when no distill job is named. Deleting them is
    # refused while this row uses them (backend/removal.py).
    parent_student_id: Mapped[int | None] = mapped_column(Integer)
    parent_distill_job_id: Mapped[int | None] = mapped_column(Integer)
    # The evaluation protocol of this teacher and its students (worker/engine/eval_protocol.py);
    # null: the default protocol.
    eval_protocol: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ImportanceRun(Base):
    __tablename__ = "importance_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    teacher_id: Mapped[int] = mapped_column(ForeignKey("teachers.id"), index=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    params: Mapped[dict[str, Any]]
    job_id: Mapped[int | None] = mapped_column(Integer)
    artifact: Mapped[str | None] = mapped_column(Text)  # artifact-store key of the exported scores
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Plan(Base):
    """A prune plan of a teacher. Names are unique per teacher (migration 0006): two requests saving the
    same name at once (a search candidate saved twice) cannot both insert."""

    __tablename__ = "plans"
    __table_args__ = (Index("uq_plans_teacher_name", "teacher_id", "name", unique=True),)
    id: Mapped[int] = mapped_column(primary_key=True)
    teacher_id: Mapped[int] = mapped_column(ForeignKey("teachers.id"), index=True)
    importance_run_id: Mapped[int | None] = mapped_column(ForeignKey("importance_runs.id"))
    name: Mapped[str] = mapped_column(String(200))
    # Optimistic concurrency: every update must name the version it started from.
    version: Mapped[int] = mapped_column(Integer, default=1)
    plan: Mapped[dict[str, Any]]
    stats: Mapped[dict[str, Any] | None]
    messages: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Student(Base):
    __tablename__ = "students"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id"))
    teacher_id: Mapped[int] = mapped_column(ForeignKey("teachers.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | ready | failed
    error: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(Integer)
    spec: Mapped[dict[str, Any] | None]
    path: Mapped[str | None] = mapped_column(Text)  # artifact-store key of the saved model directory
    # The search candidate (its id in the search report) a workflow cut this student from; null otherwise.
    candidate_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    eta_s: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]]
    result: Mapped[dict[str, Any] | None]
    queue: Mapped[str] = mapped_column(String(32), default="default")
    device: Mapped[str | None] = mapped_column(String(32))
    worker: Mapped[str | None] = mapped_column(String(200))
    # Each (re)submission gets a new attempt number; a task message for an older attempt is ignored, so a
    # redelivered message never runs a job twice.
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    checkpoint_step: Mapped[int | None] = mapped_column(Integer)
    checkpoint: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    heartbeat_at: Mapped[datetime | None]
    teacher_id: Mapped[int | None] = mapped_column(ForeignKey("teachers.id"), index=True)
    student_id: Mapped[int | None] = mapped_column(ForeignKey("students.id"), index=True)
    importance_run_id: Mapped[int | None] = mapped_column(ForeignKey("importance_runs.id"))
    plan_id: Mapped[int | None] = mapped_column(ForeignKey("plans.id"))
    # The workflow (a job of kind "workflow", backend.workflows) this job is a step of.
    parent_id: Mapped[int | None] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Run management (the dashboard's runs table): a user's name for the run and its tags.
    name: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[list[Any] | None]


class WorkflowStep(Base):
    """One try of one step of one branch of a workflow (backend.workflows): which job runs it, or why no
    job could be created. Unique per (workflow, branch, step, try): two concurrent advances cannot both
    create the same step (the second insert fails and rolls back with its job)."""

    __tablename__ = "workflow_steps"
    __table_args__ = (
        UniqueConstraint("workflow_id", "branch", "step", "try_number", name="uq_workflow_step_try"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    workflow_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    branch: Mapped[str] = mapped_column(String(32))
    step: Mapped[str] = mapped_column(String(32))
    try_number: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MetricPoint(Base):
    __tablename__ = "metric_points"
    __table_args__ = (UniqueConstraint("job_id", "name", "step", name="uq_metric_job_name_step"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    name: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    tokens: Mapped[int | None] = mapped_column(BigInteger)
    t: Mapped[float | None] = mapped_column(Float)  # seconds since the job started


class Event(Base):
    """The ordered log behind the SSE streams: ids are the `id:` of each server-sent event."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_job_id_id", "job_id", "id"),
        Index("ix_events_teacher_id_id", "teacher_id", "id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    teacher_id: Mapped[int | None] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(16))  # metric | status | log
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BenchmarkResult(Base):
    """Results of evaluate / benchmark jobs, kept per model for the compare view."""

    __tablename__ = "benchmark_results"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    kind: Mapped[str] = mapped_column(String(16))  # evaluate | benchmark
    teacher_id: Mapped[int | None] = mapped_column(Integer, index=True)
    student_id: Mapped[int | None] = mapped_column(Integer, index=True)
    result: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Artifact(Base):
    """Every file tree a job wrote to the artifact store (importance results, student weights, checkpoints)."""

    __tablename__ = "artifacts"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# Ids are never reused on SQLite (deleted plans/students/jobs; links and SSE Last-Event-IDs stay valid):
# AUTOINCREMENT, as migration 0002 sets up. PostgreSQL sequences never reuse ids anyway.
for _table in Base.metadata.tables.values():
    _table.dialect_kwargs["sqlite_autoincrement"] = True
