"""Run one advance in its own transaction and publish what it queued (used by the workers, the API's
sweep and the routes). A race lost to another advance (the same step inserted first, SQLite's writer
lock) is tried again a few times; what is still left is done by the next sweep."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from backend.errors import Unavailable
from backend.events import publish_wakeup
from backend.models import Job
from backend.settings import Settings
from backend.workflows.advance import ACTIVE, advance

log = logging.getLogger(__name__)
# Publishes one attempt's run-job message: (job id, attempt, queue). The API sends with its Celery app,
# a worker with its own.
Send = Callable[[int, int, str], None]
RACE_RETRIES = 3


def publish(settings: Settings, send: Send, jobs: Iterable[Job]) -> None:
    """Send the committed jobs' messages; a refused one stays queued in the database and is re-sent by
    backend.resender, so a broker hiccup here loses nothing."""
    for job in jobs:
        try:
            send(job.id, job.attempts, job.queue)
        except Exception as exc:
            log.warning("workflow child %s: could not publish (%s); the re-sender will", job.id, exc)
        publish_wakeup(settings, job.id, job.teacher_id)


def advance_now(factory: sessionmaker[Session], settings: Settings, workflow_id: int, send: Send) -> int:
    """Advance, commit, publish; returns how many jobs were queued."""
    for attempt in range(RACE_RETRIES):
        session = factory()
        try:
            jobs = advance(session, settings, workflow_id)
            workflow = session.get(Job, workflow_id)
            teacher_id = workflow.teacher_id if workflow is not None else None
            session.commit()
        except (IntegrityError, OperationalError) as exc:
            session.rollback()
            log.info("workflow %s: advance raced another (%s); again", workflow_id, exc.__class__.__name__)
            time.sleep(0.05 * (attempt + 1))
            continue
        except Unavailable as exc:  # the worker registry is away: the next sweep tries again
            session.rollback()
            log.warning("workflow %s: %s", workflow_id, exc.message)
            return 0
        finally:
            session.close()
        publish(settings, send, jobs)
        publish_wakeup(settings, workflow_id, teacher_id)  # its status event (progress, step, outcome)
        return len(jobs)
    return 0


def due(session: Session) -> list[int]:
    """Workflows an advance may move: running ones, and failed ones a child of which was resumed by hand."""
    running = session.scalars(select(Job.id).where(Job.kind == "workflow", Job.status == "running"))
    revived = session.scalars(
        select(Job.parent_id)
        .where(Job.parent_id.is_not(None), Job.status.in_(ACTIVE))
        .where(Job.parent_id.in_(select(Job.id).where(Job.kind == "workflow", Job.status == "failed")))
        .distinct()
    )
    return sorted({*running, *revived})


def sweep(factory: sessionmaker[Session], settings: Settings, send: Send) -> int:
    """Advance every workflow that may move (the API's periodic look); returns the jobs queued."""
    with factory() as session:
        ids = due(session)
    return sum(advance_now(factory, settings, workflow_id, send) for workflow_id in ids)
