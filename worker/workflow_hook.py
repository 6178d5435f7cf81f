"""A worker advances the workflow of a job it ran as soon as the job ended (finished, refused, or its
process died), so the next step starts without waiting for the API's sweep. Torch-free."""

from __future__ import annotations

import logging

from sqlalchemy import select

from backend.db import session_factory
from backend.models import Job
from backend.queue import RUN_JOB
from backend.settings import Settings
from backend.workflows.runner import advance_now

log = logging.getLogger(__name__)


def advance_parent(settings: Settings, job_id: int, send_task) -> None:
    """Advance the job's workflow if it has one; `send_task` is the worker's Celery app's. Never raises:
    the API's sweep takes the step if this fails."""
    try:
        factory = session_factory(settings.resolved_database_url)
        with factory() as session:
            parent_id = session.scalar(select(Job.parent_id).where(Job.id == job_id))
        if parent_id is None:
            return

        def send(child_id: int, attempt: int, queue: str) -> None:
            send_task(RUN_JOB, args=[child_id, attempt], queue=queue)

        advance_now(factory, settings, parent_id, send)
    except Exception:
        log.exception("job %s: advancing its workflow failed (the API's sweep will)", job_id)
