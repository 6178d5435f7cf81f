"""HEAD answers like GET without a body (backend/head.py): curl -I, health and link checkers."""

from __future__ import annotations

import time

from backend.db import session_scope
from backend.guard import PREFIX
from tests.platform.helpers import student_rows


def same_as_get(client, path: str, status: int):
    got, head = client.get(path), client.head(path)
    assert (got.status_code, head.status_code) == (status, status), path
    assert head.content == b"", path
    assert dict(head.headers) == dict(got.headers), path


def test_head_answers_every_get_route_like_get(client):
    same_as_get(client, f"{PREFIX}/health", 200)
    same_as_get(client, f"{PREFIX}/datasets", 200)  # a list route
    same_as_get(client, f"{PREFIX}/datasets/999", 404)  # an unknown item stays 404
    same_as_get(client, f"{PREFIX}/docs", 200)
    same_as_get(client, "/", 200)  # the dashboard (static files)
    same_as_get(client, "/static/vendor/plotly.min.js", 200)
    same_as_get(client, "/no-such-page", 404)


def test_head_on_an_event_stream_ends_at_once(client, api_env):
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher_id = student_rows(s, [])[0].id
    started = time.monotonic()
    r = client.head(f"{PREFIX}/teachers/{teacher_id}/events")  # a GET here streams until the client goes
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"].startswith("text/event-stream")
    assert time.monotonic() - started < 5


def test_head_adds_no_operation_to_the_schema(client):
    operations = {
        method for ops in client.get(f"{PREFIX}/openapi.json").json()["paths"].values() for method in ops
    }
    assert "head" not in operations and "get" in operations
