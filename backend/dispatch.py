"""Route a job to a queue, create its row and hand it to Celery. The row is committed before the message
is sent, so a worker always finds its job; if the broker refuses the message a new job is withdrawn
with what was created with it (a failed submit leaves nothing behind) and a resumed one is marked
failed (never left queued)."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from sqlalchemy import delete
from sqlalchemy.orm import Session

from backend import fleet, serialize
from backend.events import add_event, publish_wakeup
from backend.models import Event, ImportanceRun, Job, Student, Teacher, utcnow
from backend.queue import RUN_JOB
from backend.routing import HEAVY_KINDS, NoWorkerForDevice, requirement_of, route
from backend.settings import Settings


def choose_queue(settings: Settings, kind: str, params: dict[str, Any]) -> str:
    """The queue for a new (or resumed) job, by backend.routing's rules and the live workers (backend.fleet).

    Call it before writing anything: 409 when the job needs a device no live worker serves, 503 when
    the registry (Redis) cannot be read.
    """
    live: set[str] = set()
    if kind in HEAVY_KINDS:
        try:
            live = fleet.live_queues(settings)
        except Exception as exc:
            raise HTTPException(
                503, f"could not read the worker registry: broker unreachable ({exc})"
            ) from exc
    try:
        return route(kind, requirement_of(params), live)
    except NoWorkerForDevice as exc:
        raise HTTPException(409, f"device: {exc}") from exc


def new_job(session: Session, kind: str, params: dict[str, Any], *, queue: str, **links: Any) -> Job:
    job = Job(kind=kind, params=params, queue=queue, status="queued", progress=0.0, attempts=1, **links)
    session.add(job)
    session.flush()
    add_event(session, job, "status", serialize.job(job))
    return job


def publish(app, job: Job) -> None:
    """Publish the task for the job's current attempt (raises when the broker refuses it)."""
    app.state.celery.send_task(RUN_JOB, args=[job.id, job.attempts], queue=job.queue)


def send(app, session: Session, job: Job) -> None:
    """Commit, then publish the task for the job's current attempt. When the broker refuses it, a new
    job is withdrawn with the row created with it (503, nothing left behind); a resumed one is marked
    failed, resumable as before."""
    session.commit()
    try:
        publish(app, job)
    except Exception as exc:
        if job.attempts > 1 or not _withdraw(session, job.id):
            job.status, job.error, job.finished_at = "failed", f"broker unreachable: {exc}", utcnow()
            add_event(session, job, "status", serialize.job(job))
            session.commit()
        raise HTTPException(503, f"could not queue the job: broker unreachable ({exc})") from exc
    publish_wakeup(app.state.settings, job.id, job.teacher_id)


def _withdraw(session: Session, job_id: int) -> bool:
    """Delete a new job whose message was never sent, with its events and the teacher / student /
    importance run created with it; False when a worker took the job after all (it then runs)."""
    session.rollback()
    session.execute(delete(Event).where(Event.job_id == job_id))
    if not session.execute(delete(Job).where(Job.id == job_id, Job.status == "queued")).rowcount:
        session.rollback()
        return False
    for owner in (Teacher, Student, ImportanceRun):
        session.execute(delete(owner).where(owner.job_id == job_id))
    session.commit()
    return True
