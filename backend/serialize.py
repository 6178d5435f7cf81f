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


def job(j: m.Job) -> dict[str, Any]:
    return {
        "id": j.id,
        "kind": j.kind,
        "status": j.status,
        "progress": j.progress,
        "eta_s": j.eta_s,
        "message": j.message,
        "error": j.error,
        "params": j.params,
        "result": j.result,
        "queue": j.queue,
        "device": j.device,
        "attempts": j.attempts,
        "resumable": is_resumable(j),
        "checkpoint_step": j.checkpoint_step,
        "teacher_id": j.teacher_id,
        "student_id": j.student_id,
        "importance_run_id": j.importance_run_id,
        "plan_id": j.plan_id,
        "created_at": ts(j.created_at),
        "started_at": ts(j.started_at),
        "finished_at": ts(j.finished_at),
    }


def is_resumable(j: m.Job) -> bool:
    return j.kind == "distill" and j.status in ("failed", "cancelled") and j.checkpoint is not None


def teacher(t: m.Teacher) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "source": t.source,
        "trust_remote_code": t.trust_remote_code,
        "status": t.status,
        "error": t.error,
        "job_id": t.job_id,
        "created_at": ts(t.created_at),
        "spec": t.spec,
    }


def dataset(d: m.Dataset) -> dict[str, Any]:
    return {"id": d.id, "name": d.name, "source": d.source, "created_at": ts(d.created_at)}


def importance_run(r: m.ImportanceRun, j: m.Job | None) -> dict[str, Any]:
    return {
        "id": r.id,
        "teacher_id": r.teacher_id,
        "dataset_id": r.dataset_id,
        "params": r.params,
        "job_id": r.job_id,
        "status": j.status if j else "queued",
        "progress": j.progress if j else 0.0,
        "error": j.error if j else None,
        "created_at": ts(r.created_at),
        "finished_at": ts(j.finished_at) if j else None,
    }


def plan(p: m.Plan) -> dict[str, Any]:
    return {
        "id": p.id,
        "teacher_id": p.teacher_id,
        "importance_run_id": p.importance_run_id,
        "name": p.name,
        "version": p.version,
        "plan": p.plan,
        "stats": p.stats,
        "messages": p.messages,
        "created_at": ts(p.created_at),
        "updated_at": ts(p.updated_at),
    }


def student(s: m.Student) -> dict[str, Any]:
    return {
        "id": s.id,
        "name": s.name,
        "plan_id": s.plan_id,
        "teacher_id": s.teacher_id,
        "status": s.status,
        "error": s.error,
        "job_id": s.job_id,
        "spec": s.spec,
        "path": s.path,
        "created_at": ts(s.created_at),
    }
