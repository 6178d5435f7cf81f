"""Marks jobs whose worker died as failed, with the reason, so the user sees it and can resume.

A running job's worker writes a heartbeat every few seconds. When a worker process is killed (OOM,
SIGKILL, a lost machine) nothing updates the row any more; after `heartbeat_timeout_s` the API marks the
job failed. A distill job with a checkpoint is then `resumable` (POST /jobs/{id}/resume).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import serialize
from backend.events import add_event
from backend.models import Job, Student, Teacher, utcnow


def reap_lost_jobs(session: Session, timeout_s: float) -> list[Job]:
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    stale = session.scalars(
        select(Job)
        .where(Job.status == "running", Job.heartbeat_at < cutoff)
        .with_for_update(skip_locked=True)
    ).all()
    for job in stale:
        job.status = "failed"
        job.finished_at = utcnow()
        job.eta_s = None
        job.error = (
            f"worker lost: no heartbeat from {job.worker or 'the worker'} for over {timeout_s:g} s"
            + (f"; resumable from the checkpoint at step {job.checkpoint_step}" if job.checkpoint else "")
        )
        add_event(session, job, "status", serialize.job(job))
        if job.kind == "inspect" and job.teacher_id:
            _fail(session.get(Teacher, job.teacher_id), job.error)
        if job.kind == "prune" and job.student_id:
            _fail(session.get(Student, job.student_id), job.error)
    return list(stale)


def _fail(row, error: str) -> None:
    if row is not None and row.status == "pending":
        row.status, row.error = "failed", error
