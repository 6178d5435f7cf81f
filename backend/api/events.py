"""Server-Sent Events per job and per teacher, resumable with Last-Event-ID (no gaps, no duplicates).

The stream is a cursor over the `events` table: replay every row with id > Last-Event-ID, then wait for a
Redis wake-up (or a short poll timeout) and read again. Because rows are only ever appended in id order
(see backend/events.py), "id > cursor" never skips or repeats an event across reconnects.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from backend.api.errors import errors
from backend.deps import PathId, field_error, get_or_404
from backend.models import FINISHED, Event, Job, Teacher
from backend.responses import STREAM_EVENTS
from backend.schemas import MAX_ID

router = APIRouter(tags=["events"])
POLL_S = 2.0  # safety net when a wake-up is lost
KEEPALIVE_S = 15.0
BATCH = 500
LastEventId = Annotated[int | None, Query(ge=0, le=MAX_ID, description="resume after this event id")]


def _format(event: Event) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.data, separators=(',', ':'))}\n\n"


def _cursor(last_event_id: str | None, query_last: int | None) -> int | None:
    raw = last_event_id if last_event_id not in (None, "") else query_last
    try:
        cursor = int(raw) if raw is not None else None
    except ValueError:  # never an id we sent (a browser echoes ours): a hand-made client's mistake
        cursor = -1
    if cursor is not None and not 0 <= cursor <= MAX_ID:
        raise field_error(["header", "Last-Event-ID"], f"must be an event id between 0 and {MAX_ID}")
    return cursor


async def _stream(request: Request, scope: str, key: int, cursor: int):
    sessionmaker = request.app.state.sessionmaker
    notifier = request.app.state.notifier
    column = Event.job_id if scope == "job" else Event.teacher_id

    def fetch(after: int):
        with sessionmaker() as s:
            # Read the job's status BEFORE the rows: if it was finished then, its final status event
            # is already among the rows, so "finished and nothing new" really is the end.
            status = s.get(Job, key).status if scope == "job" else None
            finished = status if status in FINISHED else None
            rows = s.scalars(
                select(Event).where(column == key, Event.id > after).order_by(Event.id).limit(BATCH)
            ).all()
            return finished, rows

    yield "retry: 1000\n\n"
    idle = 0.0
    while not await request.is_disconnected():
        finished, rows = await run_in_threadpool(fetch, cursor)
        for event in rows:
            cursor = event.id
            yield _format(event)
        if rows:
            idle = 0.0
            continue
        if finished:
            yield f"event: end\ndata: {json.dumps({'job_id': key, 'status': finished})}\n\n"
            return
        woke = await notifier.wait((scope, key), POLL_S)
        idle = 0.0 if woke else idle + POLL_S
        if idle >= KEEPALIVE_S:
            idle = 0.0
            yield ": keepalive\n\n"


def _stream_doc(what: str) -> dict:
    """The OpenAPI answer of a stream: `text/event-stream`, each event's `data:` a JSON object whose
    schema is listed under `x-sse-events` by event name (a schema cannot describe a stream itself)."""
    events = {name: model.model_json_schema() for name, model in STREAM_EVENTS.items()}
    return {
        200: {
            "description": f"Server-Sent Events of {what}: `status` (a JobOut), `metric`, `log`, and for a job "
            "stream `end` once it finished; each with `id:` to resume from (Last-Event-ID)",
            "content": {"text/event-stream": {"schema": {"type": "string"}, "x-sse-events": events}},
        },
        **errors(404),
    }


def _response(gen) -> StreamingResponse:
    return StreamingResponse(
        gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse, responses=_stream_doc("one job"))
async def job_events(
    job_id: PathId,
    request: Request,
    last_event_id: LastEventId = None,
    last_event_id_header: str | None = Header(None, alias="Last-Event-ID"),
) -> StreamingResponse:
    await run_in_threadpool(_exists, request, Job, job_id)
    cursor = _cursor(last_event_id_header, last_event_id)
    return _response(_stream(request, "job", job_id, cursor if cursor is not None else 0))


@router.get(
    "/teachers/{teacher_id}/events",
    response_class=StreamingResponse,
    responses=_stream_doc("every job of a teacher"),
)
async def teacher_events(
    teacher_id: PathId,
    request: Request,
    last_event_id: LastEventId = None,
    last_event_id_header: str | None = Header(None, alias="Last-Event-ID"),
) -> StreamingResponse:
    await run_in_threadpool(_exists, request, Teacher, teacher_id)
    cursor = _cursor(last_event_id_header, last_event_id)
    if cursor is None:  # a fresh teacher stream starts now: only new events
        cursor = await run_in_threadpool(_max_event_id, request)
    return _response(_stream(request, "teacher", teacher_id, cursor))


def _exists(request: Request, model, pk: int) -> None:
    with request.app.state.sessionmaker() as session:
        get_or_404(session, model, pk)


def _max_event_id(request: Request) -> int:
    with request.app.state.sessionmaker() as s:
        return s.scalar(select(func.max(Event.id))) or 0
