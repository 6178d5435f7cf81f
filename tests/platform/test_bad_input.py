"""Ordinary bad input is a 4xx naming the field, on SQLite and PostgreSQL alike, and writes nothing:
integers past the id columns' range, NaN / Infinity, NUL bytes and unpaired surrogates, over-long path
components, and jobs larger than the server's limits (PRUNESCOPE_MAX_*). A bug that does reach a 500 no
longer resets the client's kept-alive connection."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import uvicorn
from fastapi.routing import APIRoute
from sqlalchemy import func, select

from backend.app import create_app
from backend.db import session_scope
from backend.models import Dataset, Job, Plan, Teacher
from tests.conftest import free_port, settings_from
from tests.platform.helpers import error_text
from tests.tiny_models import tiny_spec

HUGE = 2**64 + 1  # past SQLite's and PostgreSQL's integers


def counts(url: str) -> dict:
    with session_scope(url) as s:
        return {
            m.__name__: s.scalar(select(func.count()).select_from(m)) for m in (Teacher, Dataset, Job, Plan)
        }


@pytest.fixture
def ready_teacher(api_env):
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        # Long positions, so the size limits below are what long sequences reach (not the model's limit).
        spec = {**tiny_spec().summary(), "max_positions": 131_072}
        t = Teacher(name="t", source="org/model", status="ready", spec=spec)
        s.add(t)
        s.flush()
        return t.id


def field_of(response) -> list:
    assert response.status_code == 422, response.text
    return [d["loc"] for d in response.json()["detail"]]


def test_huge_integers_in_paths_queries_and_bodies(client, api_env, ready_teacher):
    before = counts(api_env["PRUNESCOPE_DATABASE_URL"])
    for path, loc in (
        (f"/api/v1/jobs/{HUGE}", ["path", "job_id"]),
        (f"/api/v1/teachers/{2**40}", ["path", "teacher_id"]),  # fits SQLite, not PostgreSQL's INTEGER
        (f"/api/v1/plans/{HUGE}", ["path", "plan_id"]),
        (f"/api/v1/importance-runs/{HUGE}/layers", ["path", "run_id"]),
        (f"/api/v1/students/{HUGE}/download", ["path", "student_id"]),
        (f"/api/v1/jobs/{HUGE}/events", ["path", "job_id"]),
        (f"/api/v1/jobs?offset={HUGE}", ["query", "offset"]),
        (f"/api/v1/jobs?teacher_id={HUGE}", ["query", "teacher_id"]),
        (f"/api/v1/teachers/{ready_teacher}/events?last_event_id={HUGE}", ["query", "last_event_id"]),
        (f"/api/v1/compare?students=1,{HUGE}", ["query", "students"]),
        (f"/api/v1/compare?teacher={HUGE}", ["query", "teacher"]),
        ("/api/v1/jobs?status=bogus", ["query", "status"]),
        ("/api/v1/jobs?kind=%00", ["query", "kind"]),
    ):
        assert loc in field_of(client.get(path)), path
    for last in (str(HUGE), "abc", "-1"):  # "abc" restarted the stream from the first event
        r = client.get(f"/api/v1/teachers/{ready_teacher}/events", headers={"Last-Event-ID": last})
        assert ["header", "Last-Event-ID"] in field_of(r), last
    for method, path, body, loc in (
        ("POST", f"/api/v1/jobs/{HUGE}/cancel", None, ["path", "job_id"]),
        ("DELETE", f"/api/v1/plans/{HUGE}", None, ["path", "plan_id"]),
        ("POST", "/api/v1/plans", {"teacher_id": HUGE, "name": "p", "plan": {}}, ["body", "teacher_id"]),
        ("PUT", "/api/v1/plans/1", {"version": HUGE}, ["body", "version"]),
        ("POST", "/api/v1/jobs", {"kind": "benchmark", "teacher_id": HUGE}, ["body", "teacher_id"]),
        (
            "POST",
            "/api/v1/jobs",
            {"kind": "distill", "student_id": 1, "params": {"seed": HUGE, "warmup": HUGE}},
            ["body", "params", "seed"],
        ),
    ):
        assert loc in field_of(client.request(method, path, json=body)), (method, path)
    assert counts(api_env["PRUNESCOPE_DATABASE_URL"]) == before


def test_nan_infinity_nul_and_surrogates(client, api_env, ready_teacher):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    before = counts(url)
    raw = [  # JSON text as a client could send it (Python's json module reads NaN and Infinity)
        (
            '{"kind": "distill", "student_id": 1, "params": {"ce_weight": Infinity}}',
            ["body", "params", "ce_weight"],
        ),
        ('{"kind": "distill", "student_id": 1, "params": {"lr": NaN}}', ["body", "params", "lr"]),
        (
            '{"kind": "distill", "student_id": 1, "params": {"temperature": -Infinity}}',
            ["body", "params", "temperature"],
        ),
    ]
    for text, loc in raw:
        r = client.post("/api/v1/jobs", content=text, headers={"content-type": "application/json"})
        assert loc in field_of(r), text
    for body, loc in (
        ({"name": "a\u0000b", "source": "demo"}, ["body", "name"]),
        ({"name": "d", "source": "de\u0000mo"}, ["body", "source"]),
        ({"name": "d", "source": "/x/" + "a" * 300}, ["body", "source"]),  # a component over NAME_MAX
    ):
        assert loc in field_of(client.post("/api/v1/datasets", json=body)), body
    # An unpaired surrogate cannot be written by a JSON encoder that checks; send the escape by hand.
    for text, loc in (
        ('{"name": "x\\ud800", "source": "demo"}', ["body", "name"]),
        ('{"name": "x", "source": "org/m\\udfff"}', ["body", "source"]),
        ('{"name": "x", "source": "demo", "\\ud800": 1}', ["body"]),  # a key: pydantic names the body
    ):
        r = client.post("/api/v1/teachers", content=text, headers={"content-type": "application/json"})
        assert loc in field_of(r), text
    r = client.post(
        "/api/v1/plans",
        content=f'{{"teacher_id": {ready_teacher}, "name": "p\\ud800", "plan": {{}}}}',
        headers={"content-type": "application/json"},
    )
    assert ["body", "name"] in field_of(r)
    r = client.post(
        "/api/v1/jobs",
        json={"kind": "evaluate", "teacher_id": ready_teacher, "params": {"tasks": ["hella\u0000swag"]}},
    )
    assert ["body", "params", "tasks", 0] in field_of(r)
    r = client.post(  # not a task name at all (lm-eval's registry is read at the job's start)
        "/api/v1/jobs",
        json={
            "kind": "evaluate",
            "teacher_id": ready_teacher,
            "params": {"tasks": ["arc_easy", "../../etc/passwd"]},
        },
    )
    assert ["body", "params", "tasks", 1] in field_of(r) and "not an lm-eval task name" in r.text
    assert counts(url) == before


def test_job_sizes_are_bounded_by_settings(api_env, ready_teacher, client):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    before = counts(url)
    huge = {"steps": 10_000_000, "batch_size": 4096, "seq_len": 131_072}
    r = client.post(
        "/api/v1/jobs?validate_only=true&planned_student=true",
        json={"kind": "distill", "teacher_id": ready_teacher, "params": huge},
    )
    detail = r.json()["detail"][0]
    assert r.status_code == 422 and detail["loc"] == ["body", "params", "steps"], r.text
    assert "= 5.37e+15 tokens" in detail["msg"] and "limit of 1e+12" in detail["msg"]
    assert "PRUNESCOPE_MAX_JOB_TOKENS" in detail["msg"] and "steps can be at most 1862" in detail["msg"]
    ok = {"steps": 1862, "batch_size": 4096, "seq_len": 131_072}  # the largest that fits: accepted
    r = client.post(
        "/api/v1/jobs?validate_only=true&planned_student=true",
        json={"kind": "distill", "teacher_id": ready_teacher, "params": ok},
    )
    assert r.status_code == 200, r.text
    r = client.post(
        "/api/v1/jobs",
        json={"kind": "distill", "student_id": 1, "params": {"tokens": 10**13}},
    )
    assert field_of(r) == [["body", "params", "tokens"]]
    assert counts(url) == before

    # Tighter limits from the settings, named in the error with their variable.
    from fastapi.testclient import TestClient

    env = {
        **api_env,
        "PRUNESCOPE_MAX_SEQ_LEN": "512",
        "PRUNESCOPE_MAX_BATCH_SIZE": "16",
        "PRUNESCOPE_MAX_JOB_TOKENS": "100000",
    }
    with TestClient(create_app(settings_from(env)), base_url="http://127.0.0.1") as c:
        for kind_path, body, loc, words in (
            (
                "/api/v1/jobs?validate_only=true&planned_student=true",
                {"kind": "distill", "teacher_id": ready_teacher, "params": {"seq_len": 1024}},
                ["body", "params", "seq_len"],
                "limit of 512 (PRUNESCOPE_MAX_SEQ_LEN)",
            ),
            (
                "/api/v1/jobs?validate_only=true",
                {"kind": "benchmark", "teacher_id": ready_teacher, "params": {"batch_size": 32}},
                ["body", "params", "batch_size"],
                "limit of 16 (PRUNESCOPE_MAX_BATCH_SIZE)",
            ),
            (
                "/api/v1/jobs?validate_only=true",
                {
                    "kind": "evaluate",
                    "teacher_id": ready_teacher,
                    "params": {"max_documents": 1000, "seq_len": 512},
                },
                ["body", "params", "max_documents"],
                "max_documents can be at most 195",
            ),
            (
                "/api/v1/importance-runs",
                {"teacher_id": ready_teacher, "dataset_id": 1, "samples": 1000, "seq_len": 512},
                ["body", "samples"],
                "samples can be at most 195",
            ),
            (
                "/api/v1/plans/1/preview",
                {"samples": 400, "seq_len": 512},
                ["body", "samples"],
                "samples can be at most 195",
            ),
        ):
            r = c.post(kind_path, json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["detail"][0]["loc"] == loc and words in r.json()["detail"][0]["msg"], r.json()
    assert counts(url) == before


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_config_reports_the_job_limits(api_env):
    """GET /config says each PRUNESCOPE_MAX_* with its variable (the dashboard's memory lines name a typed
    batch size / seq_len over one instead of sizing a job the API refuses): the defaults, then settings."""
    from fastapi.testclient import TestClient

    variables = {"seq_len": "SEQ_LEN", "batch_size": "BATCH_SIZE", "job_tokens": "JOB_TOKENS"}
    defaults = {"seq_len": 131_072, "batch_size": 4096, "job_tokens": 10**12}
    small = {"seq_len": 512, "batch_size": 16, "job_tokens": 9}
    for limits in (defaults, small):
        env = (
            {} if limits is defaults else {f"PRUNESCOPE_MAX_{variables[k]}": str(v) for k, v in small.items()}
        )
        with TestClient(create_app(settings_from({**api_env, **env})), base_url="http://127.0.0.1") as c:
            got = c.get("/api/v1/config").json()["limits"]
        assert got == {
            k: {"limit": v, "variable": f"PRUNESCOPE_MAX_{variables[k]}"} for k, v in limits.items()
        }


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_500_keeps_the_connection_alive(api_env):
    """A bug (here: a route that raises) answers 500 and the same kept-alive connection serves on."""
    app = create_app(settings_from(api_env))

    def broken():
        raise RuntimeError("boom")

    app.router.routes.insert(0, APIRoute("/api/v1/broken", broken))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        sockets = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:

            def track(response):
                sockets.append(id(response.extensions["network_stream"]))

            c.event_hooks["response"] = [track]
            r = c.get("/api/v1/broken")
            assert r.status_code == 500 and error_text(r).startswith("internal server error")
            assert r.headers.get("connection") != "close"
            assert c.get("/api/v1/health").status_code == 200
        assert len(sockets) == 2 and sockets[0] == sockets[1]  # the second request reused the connection
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_targets_only_plan_validates(client, ready_teacher):
    """Found by the schema fuzz: a plan whose targets drop layers (none named yet) was a 500."""
    r = client.post(
        "/api/v1/plans/validate", json={"teacher_id": ready_teacher, "plan": {"targets": {"num_layers": 1}}}
    )
    assert r.status_code == 200, r.text
    assert r.json()["stats"] is not None and r.json()["messages"] == []


def test_names_are_trimmed_and_hold_no_control_characters(client, api_env, ready_teacher):
    """ "p1" and "p1 " were two plans that read alike in every list; a newline broke the lines a name is
    shown on. Names are stored trimmed (so the second is the first's name: 409), control characters 422."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    r = client.post(
        "/api/v1/plans", json={"teacher_id": ready_teacher, "name": "  p1 ", "plan": {"drop_layers": [1]}}
    )
    assert r.status_code == 201 and r.json()["name"] == "p1", r.text
    before = counts(url)
    r = client.post("/api/v1/plans", json={"teacher_id": ready_teacher, "name": "p1\u00a0", "plan": {}})
    assert r.status_code == 409 and r.json()["detail"][0]["loc"] == ["body", "name"], r.text
    for name in ("two\nlines", "tab\there", "bell\x07"):
        r = client.post("/api/v1/plans", json={"teacher_id": ready_teacher, "name": name, "plan": {}})
        assert r.status_code == 422 and ["body", "name"] in field_of(r), r.text
        assert "control characters" in r.text
        r = client.post("/api/v1/teachers", json={"name": name, "source": "demo"})
        assert r.status_code == 422 and ["body", "name"] in field_of(r), r.text
    assert counts(url) == before


def test_true_and_false_are_not_numbers(client, api_env, ready_teacher):
    """pydantic's lax mode took "samples": true as 1 and stored it; every numeric field refuses booleans."""
    before = counts(api_env["PRUNESCOPE_DATABASE_URL"])
    for path, body, loc in (
        (
            "/api/v1/importance-runs",
            {"teacher_id": ready_teacher, "dataset_id": 1, "samples": True},
            ["body", "samples"],
        ),
        (
            "/api/v1/jobs?validate_only=true&planned_student=true",
            {"kind": "distill", "teacher_id": ready_teacher, "params": {"steps": True}},
            ["body", "params", "steps"],
        ),
        (
            "/api/v1/jobs?validate_only=true",
            {"kind": "evaluate", "teacher_id": ready_teacher, "params": {"gang_timeout_s": False}},
            ["body", "params", "gang_timeout_s"],
        ),
        ("/api/v1/jobs", {"kind": "benchmark", "teacher_id": True}, ["body", "teacher_id"]),
    ):
        r = client.post(path, json=body)
        assert field_of(r) == [loc], (path, body)
        assert "must be a number, not " in r.json()["detail"][0]["msg"]
    assert counts(api_env["PRUNESCOPE_DATABASE_URL"]) == before
    # a boolean field still takes booleans
    r = client.post(
        "/api/v1/jobs?validate_only=true&planned_student=true",
        json={"kind": "distill", "teacher_id": ready_teacher, "params": {"gradient_checkpointing": True}},
    )
    assert r.status_code == 200, r.text
