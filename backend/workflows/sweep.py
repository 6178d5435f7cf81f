"""The API's periodic advance of every workflow that may move (backend.workflows.runner.sweep): the
safety net behind the workers' advance on each child's finish — a worker killed before it advanced, a
child cancelled or reaped by the API, an advance lost with a restarted API are all taken up here."""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from backend import lifecycle
from backend.workflows.runner import sweep

log = logging.getLogger(__name__)


async def sweep_forever(app) -> None:
    settings = app.state.settings
    period = settings.workflow_sweep_s
    if period <= 0:
        return

    def send(job_id: int, attempt: int, queue: str) -> None:
        lifecycle.publish(app, job_id, attempt, queue)

    while True:
        try:
            await run_in_threadpool(sweep, app.state.sessionmaker, settings, send)
        except Exception as exc:  # the DB briefly away: look again later
            log.warning("workflow sweep: %s", exc)
        await asyncio.sleep(period)
