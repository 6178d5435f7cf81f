"""Rows -> JSON for what is not an HTTP answer: the payload of a job's status event (workers, reaper,
dispatch) and timestamps of registry records. The answers themselves are the models of
backend/responses.py; a status event carries exactly a `JobOut`."""

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


def job(j: m.Job) -> dict[str, Any]:
    from backend.responses import JobOut  # imported here: responses reads is_resumable from this module

    return JobOut.of(j).model_dump(mode="json")


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
