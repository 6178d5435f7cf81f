"""The FastAPI application: /api/v1 (see backend/API.md), the dashboard at /, plotly.js from the
installed `plotly` package. Never imports torch (tests/platform/test_no_torch.py checks it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import plotly
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from backend.api import compare, events, importance, jobs, plans, students, system, teachers
from backend.db import session_factory, transaction
from backend.events import publish_wakeup
from backend.guard import PREFIX, Guard, validation_error
from backend.notifier import Notifier
from backend.queue import make_celery
from backend.reaper import reap_lost_jobs
from backend.resender import resend_forever
from backend.settings import Settings, get_settings

log = logging.getLogger(__name__)
REPO_FRONTEND = Path(__file__).resolve().parent.parent / "frontend"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if settings.requires_token() and not settings.token:
        raise RuntimeError(
            f"refusing to serve on {settings.host} without PRUNESCOPE_TOKEN: set a token for non-loopback addresses"
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await app.state.notifier.start()
        loops = [asyncio.create_task(_reap_forever(app)), asyncio.create_task(resend_forever(app))]
        try:
            yield
        finally:
            for loop in loops:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            await app.state.notifier.stop()

    app = FastAPI(
        title="Prunescope",
        version=system.VERSION,
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=f"{PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessionmaker = session_factory(settings.resolved_database_url)
    app.state.notifier = Notifier(settings.broker_url, settings.redis_prefix)
    app.state.celery = make_celery(settings.broker_url, settings.redis_prefix)

    app.add_middleware(Guard, settings=settings)
    app.add_exception_handler(RequestValidationError, validation_error)

    for module in (system, teachers, importance, plans, students, jobs, events, compare):
        app.include_router(module.router, prefix=PREFIX)

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js():
        return FileResponse(PLOTLY_JS, media_type="application/javascript")

    frontend = settings.frontend_dir or REPO_FRONTEND
    if frontend.is_dir():
        app.mount("/", StaticFiles(directory=frontend, html=True), name="frontend")
    return app


async def _reap_forever(app: FastAPI) -> None:
    settings: Settings = app.state.settings
    period = max(min(settings.heartbeat_timeout_s / 3, 10.0), 0.5)

    def reap() -> list:
        with transaction(app.state.sessionmaker) as session:
            return [(j.id, j.teacher_id) for j in reap_lost_jobs(session, settings.heartbeat_timeout_s)]

    while True:
        await asyncio.sleep(period)
        try:
            for job_id, teacher_id in await run_in_threadpool(reap):
                log.warning("job %s: worker lost, marked failed", job_id)
                publish_wakeup(settings, job_id, teacher_id)
        except Exception as exc:  # never let the reaper die with the DB briefly unavailable
            log.warning("reaper: %s", exc)
