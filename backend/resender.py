"""Re-dispatches jobs the database says are queued but whose message the broker no longer holds.

The database is the source of truth for jobs, the broker is not: a Redis that lost its data (killed
before it wrote its append-only file, wiped, replaced) leaves `queued` rows no worker will ever receive.
On API start and then every `resend_interval_s`, the API compares the queued rows with the run-job
messages waiting in the queues or delivered and not yet acknowledged (backend.broker.held_attempts; a
delivery older than `resend_unacked_after_s` whose job is still queued counts as lost: its worker died
before claiming it). A job missing from both for `resend_grace_s` (two looks apart, so a message between
a commit and its publish, or between kombu's pop and its unacked bookkeeping, is not taken for lost) is
published again for the same attempt. A duplicate is harmless: the worker's claim is a conditional
update on that attempt (backend.lifecycle.claim), so a second message of one attempt finds the job no longer queued and skips it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from backend import broker, lifecycle
from backend.db import transaction
from backend.models import Job
from backend.routing import QUEUES

log = logging.getLogger(__name__)


@dataclass
class Resender:
    grace_s: float
    # (job id, attempt) -> when it was first seen queued with no message held
    missing_since: dict[tuple[int, int], float] = field(default_factory=dict)

    def due(self, queued: dict[tuple[int, int], str], held: set[tuple[int, int]], now: float) -> list:
        """The queued (job id, attempt) keys to publish again now; remembers the others still missing."""
        missing = {key: self.missing_since.get(key, now) for key in queued if key not in held}
        self.missing_since = missing
        due = [key for key, since in missing.items() if now - since >= self.grace_s]
        for key in due:  # if still missing after another grace period, send again
            missing[key] = now
        return due

    def waiting(self) -> bool:
        """Whether some job is missing but not yet due (look again after the grace period)."""
        return bool(self.missing_since)


def queued_attempts(session: Session) -> dict[tuple[int, int], str]:
    rows = session.execute(select(Job.id, Job.attempts, Job.queue).where(Job.status == "queued"))
    return {(job_id, attempt): queue for job_id, attempt, queue in rows}


def resend_once(app, resender: Resender) -> list[int]:
    """One look: publish the messages of queued jobs the broker lost; returns the re-sent job ids."""
    settings = app.state.settings
    with transaction(app.state.sessionmaker) as session:
        queued = queued_attempts(session)
    if not queued:
        resender.missing_since.clear()
        return []
    client = broker.shared_client(settings.broker_url)
    queues = {*QUEUES, *queued.values()}
    held = broker.held_attempts(client, settings.redis_prefix, queues, settings.resend_unacked_after_s)
    sent = []
    for job_id, attempt in resender.due(queued, held, time.monotonic()):
        lifecycle.resend_lost(app, job_id, attempt, queued[(job_id, attempt)])
        sent.append(job_id)
    return sent


async def resend_forever(app) -> None:
    settings = app.state.settings
    interval, grace = settings.resend_interval_s, max(settings.resend_grace_s, 0.0)
    if interval <= 0 or not settings.broker_url:
        return
    resender = Resender(grace)
    while True:
        try:
            for job_id in await run_in_threadpool(resend_once, app, resender):
                log.warning("job %s: the broker had lost its message; re-sent", job_id)
        except Exception as exc:  # the broker or the DB briefly away: look again later
            log.warning("re-sender: %s", exc)
        await asyncio.sleep(max(min(grace, interval), 0.2) if resender.waiting() else interval)
