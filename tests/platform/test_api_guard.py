"""The API's front door (backend/guard.py): in the no-token loopback mode only the app's own pages may
act (foreign Origin on a write -> 403, foreign Host -> 400, so neither cross-site requests nor DNS
rebinding reach it); with a token, only `Authorization: Bearer` counts, and `?token=` only where a
browser cannot send headers (event streams, downloads)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from backend.app import create_app
from backend.db import session_scope
from backend.models import Dataset, Job, Teacher
from tests.conftest import settings_from
from tests.platform.helpers import error_text
from tests.tiny_models import tiny_spec

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

EVIL = "http://evil.example"


def queued_job(url: str) -> int:
    """A queued benchmark job on a ready teacher (rows only: nothing consumes it)."""
    with session_scope(url) as s:
        teacher = Teacher(name="t", source="org/model", status="ready", spec=tiny_spec().summary())
        s.add(teacher)
        s.flush()
        job = Job(kind="benchmark", status="queued", queue="cpu", params={}, teacher_id=teacher.id)
        s.add(job)
        s.flush()
        return job.id


def job_status(url: str, job_id: int) -> str:
    with session_scope(url) as s:
        return s.get(Job, job_id).status


def datasets(url: str) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(Dataset))


def test_a_foreign_origin_cannot_act(client, api_env):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    job_id = queued_job(url)
    r = client.post(f"/api/v1/jobs/{job_id}/cancel", headers={"Origin": EVIL})
    assert r.status_code == 403 and "cross-site request refused" in error_text(r)
    assert EVIL in error_text(r)
    assert job_status(url, job_id) == "queued"
    for method, path, body in (
        ("POST", "/api/v1/datasets", {"name": "d", "source": "demo"}),
        ("DELETE", f"/api/v1/jobs/{job_id}", None),
        ("PUT", "/api/v1/plans/1", {"version": 1}),
    ):
        for origin in (EVIL, "null", "http://127.0.0.1:9999", "https://127.0.0.1"):
            r = client.request(method, path, json=body, headers={"Origin": origin})
            assert r.status_code == 403, (method, path, origin, r.text)
    # A browser that sends no Origin still says where a request came from (Fetch Metadata).
    r = client.post(f"/api/v1/jobs/{job_id}/cancel", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403 and "Sec-Fetch-Site" in error_text(r)
    assert datasets(url) == 0 and job_status(url, job_id) == "queued"
    # Reads stay open (a foreign page cannot read the answer without CORS, and none is granted).
    r = client.get("/api/v1/teachers", headers={"Origin": EVIL})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    # The dashboard's own pages (same origin), and clients that send no Origin, act as before.
    r = client.post(
        "/api/v1/datasets", json={"name": "d", "source": "demo"}, headers={"Origin": "http://127.0.0.1"}
    )
    assert r.status_code == 201, r.text
    r = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"


def test_a_foreign_host_is_not_served(client):
    """DNS rebinding: the attacker's name resolves to 127.0.0.1, the browser sends it as Host."""
    for path in ("/api/v1/teachers", "/api/v1/health", "/"):
        r = client.get(path, headers={"Host": "evil.example"})
        assert r.status_code == 400 and "Host 'evil.example' is not served" in error_text(r), path
    r = client.post(
        "/api/v1/datasets", json={"name": "d", "source": "demo"}, headers={"Host": "evil.example:8000"}
    )
    assert r.status_code == 400
    for host in ("127.0.0.1:8000", "localhost", "LOCALHOST:1234", "[::1]:8000"):
        assert client.get("/api/v1/health", headers={"Host": host}).status_code == 200, host
    assert client.get("/", headers={"Host": "localhost:8000"}).status_code == 200  # the dashboard


def test_allowed_hosts_extend_the_served_names(api_env):
    settings = settings_from({**api_env, "PRUNESCOPE_ALLOWED_HOSTS": "proxy.example, Other.Example"})
    with TestClient(create_app(settings), base_url="http://proxy.example") as c:
        assert c.get("/api/v1/teachers").status_code == 200
        assert c.get("/api/v1/teachers", headers={"Host": "other.example"}).status_code == 200
        assert c.get("/api/v1/teachers", headers={"Host": "evil.example"}).status_code == 400
        # A reverse proxy may rewrite Host: an Origin naming an allowed host is accepted as well.
        r = c.post(
            "/api/v1/datasets",
            json={"name": "d", "source": "demo"},
            headers={"Origin": "https://other.example"},
        )
        assert r.status_code == 201, r.text
        r = c.post("/api/v1/datasets", json={"name": "d", "source": "demo"}, headers={"Origin": EVIL})
        assert r.status_code == 403
    settings = settings_from({**api_env, "PRUNESCOPE_ALLOWED_HOSTS": "*"})
    with TestClient(create_app(settings), base_url="http://anything.example") as c:
        assert c.get("/api/v1/teachers").status_code == 200


def test_token_needs_the_bearer_scheme_and_query_tokens_only_where_headers_cannot_go(api_env):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    job_id = queued_job(url)
    settings = settings_from({**api_env, "PRUNESCOPE_HOST": "0.0.0.0", "PRUNESCOPE_TOKEN": "s3cret"})
    with TestClient(create_app(settings)) as c:
        assert c.get("/api/v1/teachers", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/v1/teachers", headers={"Authorization": "bearer s3cret"}).status_code == 200
        for auth in ("s3cret", "Basic s3cret", "Bearer", "Bearers3cret", "Token s3cret"):
            r = c.get("/api/v1/teachers", headers={"Authorization": auth})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", auth
        # ?token= is refused on ordinary endpoints, reads and writes alike...
        assert c.get("/api/v1/teachers?token=s3cret").status_code == 401
        assert c.post(f"/api/v1/jobs/{job_id}/cancel?token=s3cret").status_code == 401
        assert job_status(url, job_id) == "queued"
        # ...and accepted where EventSource / a download link cannot send a header (404: no such rows).
        assert c.get("/api/v1/students/7/download?token=s3cret").status_code == 404
        assert c.get("/api/v1/teachers/7/events?token=s3cret").status_code == 404
        assert c.get("/api/v1/students/7/download?token=nope").status_code == 401
        assert c.get("/api/v1/students/7/download").status_code == 401
        # A wildcard bind with a token answers to any Host (the token, not the name, keeps pages out).
        assert c.get("/api/v1/health", headers={"Host": "box.lan:8000"}).status_code == 200
