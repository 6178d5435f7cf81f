"""Live Server-Sent Events from a real worker: resume with Last-Event-ID (no gaps, no duplicates),
the teacher stream, and live delivery (the latency is printed here; its target is checked by
bench/sse_latency.py, not by a timed test)."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timezone

import numpy as np

from backend.responses import STREAM_EVENTS
from tests.platform.helpers import make_student, read_sse, start_distill


def test_job_stream_resumes_without_gaps_or_duplicates(live_app):
    student = make_student(live_app)
    job = start_distill(live_app, student["id"], steps=16)
    url = f"{live_app.url}/api/v1/jobs/{job['id']}/events"

    first = read_sse(url, stop=lambda ev: sum(e.type == "metric" for e in ev) >= 4)
    assert sum(e.type == "metric" for e in first) >= 4, [(e.type, e.data.get("error")) for e in first][-2:]
    time.sleep(1.0)  # the job keeps writing while this client is away
    second = read_sse(url, last_event_id=first[-1].id)
    assert second[-1].type == "end" and second[-1].data["status"] == "succeeded"

    ids = [e.id for e in first + second if e.id is not None]
    assert ids == sorted(set(ids)), "ids must strictly increase across the reconnect"
    replay = [e.id for e in read_sse(url) if e.id is not None]
    assert replay == ids, "resumed streams together must equal one full replay (no gaps)"

    steps = [e.data["step"] for e in first + second if e.type == "metric" and "kd_loss" in e.data["values"]]
    assert steps == list(range(1, 17))
    stored = live_app.api.get(f"/jobs/{job['id']}/metrics?names=kd_loss").json()["series"]["kd_loss"]
    assert [p["step"] for p in stored] == steps
    streamed = {
        e.data["step"]: e.data["values"]["kd_loss"]
        for e in first + second
        if e.type == "metric" and "kd_loss" in e.data["values"]
    }
    assert all(abs(streamed[p["step"]] - p["value"]) < 1e-9 for p in stored)

    statuses = [e.data["status"] for e in first + second if e.type == "status"]
    assert statuses[0] in ("queued", "running") and statuses[-1] == "succeeded"
    assert "running" in statuses
    # Each event's data is the model the OpenAPI schema documents for its type (x-sse-events).
    for e in first + second:
        STREAM_EVENTS[e.type].model_validate(e.data, strict=False)


def test_teacher_stream_and_latency(live_app):
    student = make_student(live_app)
    url = f"{live_app.url}/api/v1/teachers/{student['teacher_id']}/events"
    import threading

    collected: list = []
    reader = threading.Thread(
        target=lambda: collected.extend(
            read_sse(
                url,
                stop=lambda ev: any(
                    e.type == "status"
                    and e.data.get("status") == "succeeded"
                    and e.data.get("kind") == "distill"
                    for e in ev
                ),
            )
        )
    )
    reader.start()
    time.sleep(1.0)  # the stream is open before the job starts
    job = start_distill(live_app, student["id"], steps=20, checkpoint_every=0)
    reader.join(timeout=180)
    assert not reader.is_alive()
    metrics = [e for e in collected if e.type == "metric" and e.data["job_id"] == job["id"]]
    assert [e.data["step"] for e in metrics if "kd_loss" in e.data["values"]] == list(range(1, 21))

    # Latency: the event row's creation time (set by the worker just before its commit) -> client parse.
    db = sqlite3.connect(live_app.env["PRUNESCOPE_DATABASE_URL"].removeprefix("sqlite:///"))
    created = {
        event_id: datetime.fromisoformat(at).replace(tzinfo=timezone.utc).timestamp()
        for event_id, at in db.execute(
            f"SELECT id, created_at FROM events WHERE id IN ({','.join(str(e.id) for e in metrics)})"
        )
    }
    db.close()
    lat = [e.received - created[e.id] for e in metrics]
    p50, p95 = np.percentile(lat, 50), np.percentile(lat, 95)
    print(f"\nSSE metric latency over {len(lat)} events: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms")
    # Live, not delivered in a batch at the end: the client had step 1 before the worker wrote step 20.
    assert metrics[0].received < created[metrics[-1].id]
