"""The FastAPI application: /api/v1 (see backend/API.md), the dashboard at /, plotly.js from the
installed `plotly` package. Never imports torch (tests/platform/test_no_torch.py checks it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import plotly
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from backend.api import (
    compare,
    docs,
    errors,
    events,
    importance,
    jobs,
    plans,
    runs,
    searches,
    students,
    system,
    teachers,
    workflows,
)
from backend.db import session_factory
from backend.guard import PREFIX, Guard
from backend.head import HeadAsGet
from backend.notifier import Notifier
from backend.queue import make_celery
from backend.reaper import reap_forever
from backend.resender import resend_forever
from backend.settings import Settings, get_settings
from backend.spec_refresh import refresh_at_start
from backend.workflows.sweep import sweep_forever

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
        loops = [
            asyncio.create_task(reap_forever(app)),
            asyncio.create_task(resend_forever(app)),
            asyncio.create_task(sweep_forever(app)),  # workflows' steps (backend.workflows)
            asyncio.create_task(refresh_at_start(app)),  # specs of teachers inspected by an older version
        ]
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
        docs_url=None,  # our own page (backend/api/docs.py): Swagger UI would load from a CDN
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessionmaker = session_factory(settings.resolved_database_url)
    app.state.notifier = Notifier(settings.broker_url, settings.redis_prefix)
    app.state.celery = make_celery(settings.broker_url, settings.redis_prefix)

    app.add_middleware(Guard, settings=settings)
    app.add_middleware(HeadAsGet)  # outermost: Guard's own refusals lose their body on HEAD too
    errors.install(app)
    docs.install(app, f"{PREFIX}/docs")

    # Every route answers bad input with the error body of backend/api/errors.py (declared once here).
    typed_422 = errors.errors(422)
    for module in (system, teachers, importance, plans, students, jobs, runs, events, compare):
        app.include_router(module.router, prefix=PREFIX, responses=typed_422)
    app.include_router(searches.router, prefix=PREFIX, responses=typed_422)  # architecture search (issue 12)
    app.include_router(
        workflows.router, prefix=PREFIX, responses=typed_422
    )  # bake-offs, the depth-vs-width study

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js():
        return FileResponse(PLOTLY_JS, media_type="application/javascript")

    frontend = settings.frontend_dir or REPO_FRONTEND
    if frontend.is_dir():
        app.mount("/", StaticFiles(directory=frontend, html=True), name="frontend")
    return app
