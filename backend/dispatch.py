"""Create a job row and hand it to Celery. The row is committed before the message is sent, so a worker
always finds its job; if the broker refuses the message the job is marked failed (never left queued)."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from sqlalchemy.orm import Session

from backend import serialize
from backend.events import add_event, publish_wakeup
from backend.models import Job, utcnow
from worker.celery_app import RUN_JOB, queue_for


def new_job(session: Session, kind: str, params: dict[str, Any], **links: Any) -> Job:
    job = Job(
        kind=kind, params=params, queue=queue_for(kind), status="queued", progress=0.0, attempts=1, **links
    )
    session.add(job)
    session.flush()
    add_event(session, job, "status", serialize.job(job))
    return job


def send(app, session: Session, job: Job) -> None:
    """Commit, then publish the task for the job's current attempt."""
    session.commit()
    try:
        app.state.celery.send_task(RUN_JOB, args=[job.id, job.attempts], queue=job.queue)
    except Exception as exc:
        job.status, job.error, job.finished_at = "failed", f"broker unreachable: {exc}", utcnow()
        add_event(session, job, "status", serialize.job(job))
        session.commit()
        raise HTTPException(503, f"could not queue job {job.id}: broker unreachable ({exc})") from exc
    publish_wakeup(app.state.settings, job.id, job.teacher_id)
