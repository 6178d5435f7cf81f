"""Route a job to a queue, create its row and hand it to Celery. The row is committed before the message
is sent, so a worker always finds its job; if the broker refuses the message the job is marked failed
(never left queued)."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from sqlalchemy.orm import Session

from backend import fleet, serialize
from backend.events import add_event, publish_wakeup
from backend.models import Job, utcnow
from backend.settings import Settings
from worker.celery_app import RUN_JOB
from worker.routing import HEAVY_KINDS, NoWorkerForDevice, requirement_of, route


def choose_queue(settings: Settings, kind: str, params: dict[str, Any]) -> str:
    """The queue for a new (or resumed) job, by worker.routing's rules and the live workers (backend.fleet).

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
