"""Rows -> JSON payloads of the API (see backend/API.md). Used by the API and by workers (status events)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from backend import models as m


def ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite drops the zone; everything we store is UTC
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _fields(row, names: str) -> dict[str, Any]:
    """The named columns of a row; timestamps as ISO-8601 UTC strings."""
    values = {n: getattr(row, n) for n in names.split()}
    return {n: ts(v) if isinstance(v, datetime) else v for n, v in values.items()}


def job(j: m.Job) -> dict[str, Any]:
    return {
        **_fields(
            j,
            "id kind status progress eta_s message error params result queue device attempts checkpoint_step"
            " teacher_id student_id importance_run_id plan_id created_at started_at finished_at",
        ),
        "resumable": is_resumable(j),
    }


def duration_s(j: m.Job) -> float | None:
    """Seconds a job ran: until it finished, or until now while it runs; None before it started."""
    if j.started_at is None:
        return None
    start, end = j.started_at, j.finished_at or datetime.now(timezone.utc)
    start = start if start.tzinfo else start.replace(tzinfo=timezone.utc)
    end = end if end.tzinfo else end.replace(tzinfo=timezone.utc)
    return max(0.0, (end - start).total_seconds())


def is_resumable(j: m.Job) -> bool:
    """A distill job with a checkpoint, or a job that failed before any worker claimed it (a worker
    refused it, or the broker was unreachable): running it again from scratch repeats nothing."""
    if j.status == "failed" and j.started_at is None and j.heartbeat_at is None:
        return True
    return j.kind == "distill" and j.status in ("failed", "cancelled") and j.checkpoint is not None


def teacher(t: m.Teacher) -> dict[str, Any]:
    return _fields(
        t,
        "id name source trust_remote_code status error job_id parent_student_id parent_distill_job_id"
        " created_at spec",
    )


def dataset(d: m.Dataset) -> dict[str, Any]:
    return _fields(d, "id name source created_at")


def importance_run(r: m.ImportanceRun, j: m.Job | None) -> dict[str, Any]:
    """The run with its job's state (a run whose job row is not there yet counts as queued)."""
    return {
        **_fields(r, "id teacher_id dataset_id params job_id created_at"),
        "status": j.status if j else "queued",
        "progress": j.progress if j else 0.0,
        "error": j.error if j else None,
        "finished_at": ts(j.finished_at) if j else None,
    }


def plan(p: m.Plan) -> dict[str, Any]:
    return _fields(
        p, "id teacher_id importance_run_id name version plan stats messages created_at updated_at"
    )


def student(s: m.Student) -> dict[str, Any]:
    return _fields(s, "id name plan_id teacher_id status error job_id spec path created_at")
