"""The database, not the broker, is the source of truth for jobs: a queued job whose message the broker
lost is published again (by the API's re-sender, or by the user with POST /jobs/{id}/resend), a
duplicate message of one attempt runs the job once, and a submit the broker refused leaves nothing."""

from __future__ import annotations

import json
import time

import pytest
import redis
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.broker import held_attempts, redis_py_url
from backend.resender import Resender, resend_once
from tests.conftest import free_port, settings_from
from tests.platform.helpers import error_text


@pytest.fixture
def app_client(api_env):
    """In-process API on a real Redis, its own re-sender loop off (the tests drive `resend_once`)."""
    app = create_app(settings_from({**api_env, "PRUNESCOPE_RESEND_INTERVAL_S": "0"}))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield app, client


def broker_of(app) -> tuple[redis.Redis, str]:
    settings = app.state.settings
    return redis.Redis.from_url(redis_py_url(settings.broker_url)), settings.redis_prefix


def submit_teacher(client) -> dict:
    r = client.post("/api/v1/teachers", json={"name": "demo", "source": "demo"})
    assert r.status_code == 201, r.text
    return r.json()


def test_resender_republishes_only_what_the_broker_lost(app_client):
    app, client = app_client
    r, prefix = broker_of(app)
    job_id = submit_teacher(client)["job_id"]
    assert held_attempts(r, prefix, ["default"]) == {(job_id, 1)}

    resender = Resender(grace_s=60)
    assert resend_once(app, resender) == [] and not resender.waiting()  # held: nothing to do

    # Delivered to a worker, not yet acknowledged (kombu's unacked hash): still held.
    raw = r.rpop(prefix + "default")
    r.hset(prefix + "unacked", "tag-1", json.dumps([json.loads(raw), "", "default"]))
    r.zadd(prefix + "unacked_index", {"tag-1": time.time()})
    assert held_attempts(r, prefix, ["default"]) == {(job_id, 1)}
    assert resend_once(app, resender) == []
    # ... unless delivered long ago with the job still queued: the worker that took it died unclaimed.
    r.zadd(prefix + "unacked_index", {"tag-1": time.time() - 601})
    assert held_attempts(r, prefix, ["default"], unacked_stale_s=600) == set()
    assert held_attempts(r, prefix, ["default"]) == {(job_id, 1)}
    assert resend_once(app, Resender(grace_s=0)) == [job_id]  # the API's setting: 600 s
    r.delete(prefix + "default")

    r.delete(prefix + "unacked", prefix + "unacked_index")  # the broker lost its data
    assert resend_once(app, resender) == [] and resender.waiting()  # missing once: wait the grace period
    resender.missing_since = {k: v - 61 for k, v in resender.missing_since.items()}
    assert resend_once(app, resender) == [job_id]
    assert held_attempts(r, prefix, ["default"]) == {(job_id, 1)}  # same attempt token
    assert r.llen(prefix + "default") == 1
    resender.missing_since = {k: v - 61 for k, v in resender.missing_since.items()}
    assert resend_once(app, resender) == [] and r.llen(prefix + "default") == 1  # no pile-up
    logs = [e["msg"] for e in client.get(f"/api/v1/jobs/{job_id}/logs").json()]
    assert logs == ["re-sent: the broker no longer held this job's message"] * 2

    # A job that left `queued` is never re-sent, whatever the broker holds.
    client.post(f"/api/v1/jobs/{job_id}/cancel")
    r.delete(prefix + "default")
    assert resend_once(app, Resender(grace_s=0)) == [] and r.llen(prefix + "default") == 0


def test_user_resends_a_stuck_queued_job(app_client):
    app, client = app_client
    r, prefix = broker_of(app)
    job_id = submit_teacher(client)["job_id"]
    r.delete(prefix + "default")

    refused = client.post(f"/api/v1/jobs/{job_id}/resume")
    assert refused.status_code == 409 and f"/jobs/{job_id}/resend" in error_text(refused)
    resent = client.post(f"/api/v1/jobs/{job_id}/resend")
    assert (
        resent.status_code == 202 and resent.json()["status"] == "queued" and resent.json()["attempts"] == 1
    )
    assert held_attempts(r, prefix, ["default"]) == {(job_id, 1)}

    client.post(f"/api/v1/jobs/{job_id}/cancel")
    again = client.post(f"/api/v1/jobs/{job_id}/resend")
    assert again.status_code == 409 and "cancelled, not queued" in error_text(again)
    assert client.post("/api/v1/jobs/999999/resend").status_code == 404


def test_duplicate_message_of_one_attempt_runs_the_job_once(app_client):
    """What makes re-sending safe: the claim is one conditional update on (queued, attempt)."""
    from worker.runtime import JobRuntime

    app, client = app_client
    job_id = submit_teacher(client)["job_id"]
    settings = app.state.settings
    first, duplicate = JobRuntime(settings, job_id, 1), JobRuntime(settings, job_id, 1)
    assert first.claim() is not None
    try:
        assert duplicate.claim() is None
    finally:
        first.finish("succeeded", result={})
    assert duplicate.claim() is None  # nor after the job finished
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["attempts"] == 1


def test_submit_refused_by_the_broker_leaves_nothing_behind(api_env):
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"
    env = {**api_env, "PRUNESCOPE_BROKER_URL": dead_broker, "PRUNESCOPE_RESEND_INTERVAL_S": "0"}
    with TestClient(create_app(settings_from(env)), base_url="http://127.0.0.1") as client:
        r = client.post("/api/v1/teachers", json={"name": "demo", "source": "demo"})
        assert r.status_code == 503 and "broker unreachable" in error_text(r)
        assert client.get("/api/v1/teachers").json() == []
        assert client.get("/api/v1/jobs").json() == []
    from sqlalchemy import func, select

    from backend.db import session_scope
    from backend.models import Event

    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 0
