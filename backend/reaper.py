"""Marks jobs whose worker died as failed, with the reason, so the user sees it and can resume.

A running job's worker writes a heartbeat every few seconds. When a worker process is killed (OOM,
SIGKILL, a lost machine) nothing updates the row any more; after `heartbeat_timeout_s` the API marks the
job failed (backend.lifecycle.reap). A distill job with a checkpoint is then `resumable`
(POST /jobs/{id}/resume).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from backend import lifecycle
from backend.db import transaction
from backend.events import publish_wakeup
from backend.settings import Settings

log = logging.getLogger(__name__)


async def reap_forever(app) -> None:
    """Look every third of the heartbeat timeout (0.5 s to 10 s); the API's lifespan runs it."""
    settings: Settings = app.state.settings
    period = max(min(settings.heartbeat_timeout_s / 3, 10.0), 0.5)

    def reap() -> list:
        with transaction(app.state.sessionmaker) as session:
            return [(j.id, j.teacher_id) for j in lifecycle.reap(session, settings.heartbeat_timeout_s)]

    while True:
        await asyncio.sleep(period)
        try:
            for job_id, teacher_id in await run_in_threadpool(reap):
                log.warning("job %s: worker lost, marked failed", job_id)
                publish_wakeup(settings, job_id, teacher_id)
        except Exception as exc:  # never let the reaper die with the DB briefly unavailable
            log.warning("reaper: %s", exc)
