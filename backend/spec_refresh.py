"""Teachers inspected by an older version lack architecture fields added since (`max_positions`, the
sliding window...): the checks that read them (sequence lengths, memory) then know less than they could.
When the API starts it queues an `inspect` job for each such teacher, which reads its config again (no
weights) and rewrites its spec; the teacher stays ready throughout, and keeps its own inspect job.

Hub teachers are left as they are: reading their config again may need the internet."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import lifecycle
from backend.dispatch import choose_queue
from backend.models import Job, Teacher
from backend.paths import stored_source
from worker.engine.spec import ArchSpec  # pydantic only: the fields a spec written today holds

log = logging.getLogger(__name__)
REFRESH = "refresh"  # the inspect job's param: rewrite the spec of a ready teacher, nothing else


def stale_teachers(session: Session) -> list[Teacher]:
    """Ready teachers whose spec misses a field of today's `ArchSpec`, whose files are on this host and
    that were never refreshed: one that failed is not tried again at every start (deleting that job, or
    registering the teacher again, allows another try)."""
    fields = set(ArchSpec.model_fields)
    stale = [
        t
        for t in session.scalars(select(Teacher).where(Teacher.status == "ready").order_by(Teacher.id))
        if t.spec and not fields <= set(t.spec) and _readable_here(t.source)
    ]
    tried = {
        job.teacher_id
        for job in session.scalars(
            select(Job).where(Job.kind == "inspect", Job.teacher_id.in_([t.id for t in stale]))
        )
        if job.params.get(REFRESH)
    }
    return [t for t in stale if t.id not in tried]


def _readable_here(source: str) -> bool:
    stored = stored_source(source)
    return stored.kind == "demo" or (stored.kind == "path" and (Path(stored.value) / "config.json").is_file())


def refresh_stale_specs(app) -> list[int]:
    """Queue one refresh per stale teacher; the ids of the jobs queued."""
    queued = []
    for teacher_id in _stale_ids(app):
        with app.state.sessionmaker() as session:
            teacher = session.get(Teacher, teacher_id)
            queue = choose_queue(app.state.settings, "inspect", {})
            params = {"source": teacher.source, REFRESH: True}
            job = lifecycle.create(session, "inspect", params, queue=queue, teacher_id=teacher.id)
            lifecycle.send(app, session, job)
            queued.append(job.id)
            log.info(
                "teacher %s: its spec predates this version; job %s reads its config again",
                teacher_id,
                job.id,
            )
    return queued


async def refresh_at_start(app) -> None:
    """`refresh_stale_specs` once, off the event loop (the API's lifespan starts it); a broker or database
    not up yet only delays the refresh to the next start."""
    from starlette.concurrency import run_in_threadpool

    try:
        await run_in_threadpool(refresh_stale_specs, app)
    except Exception as exc:
        log.warning("spec refresh: %s", exc)


def _stale_ids(app) -> list[int]:
    with app.state.sessionmaker() as session:
        return [t.id for t in stale_teachers(session)]
