"""The event log behind the SSE streams, shared by the API and the workers.

Every status change, metric step and log line of a job becomes one `events` row, committed together with
the change it describes; the row id is the SSE `id:`. After the commit the writer publishes a wake-up on
Redis so open streams query at once instead of waiting for their next poll. Because a reader resumes with
"id > Last-Event-ID", ids must become visible in increasing order: SQLite serialises writers anyway, and
on PostgreSQL event inserts take a transaction-scoped advisory lock so that commit order == id order.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from backend import broker
from backend.models import Event, Job
from backend.settings import Settings

log = logging.getLogger(__name__)
EVENT_LOCK_KEY = 7_202_611  # arbitrary constant naming "the events table" for pg_advisory_xact_lock


def add_event(session: Session, job: Job, type_: str, data: dict[str, Any]) -> Event:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": EVENT_LOCK_KEY})
    event = Event(job_id=job.id, teacher_id=job.teacher_id, type=type_, data=data)
    session.add(event)
    return event


def publish_wakeup(settings: Settings, job_id: int, teacher_id: int | None) -> None:
    """Tell SSE streams that job `job_id` has new events; best effort (streams also poll)."""
    if not settings.broker_url:
        return
    try:
        client = broker.shared_client(settings.broker_url)
        message = json.dumps({"job_id": job_id, "teacher_id": teacher_id})
        client.publish(broker.channel(settings.redis_prefix), message)
    except Exception as exc:  # the DB row is the truth; a lost wake-up only delays the stream
        log.warning("event wake-up not published: %s", exc)
