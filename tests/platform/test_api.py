"""The HTTP API on SQLite and PostgreSQL: validation (4xx naming the field, nothing written), 404s,
path and remote-code security, optimistic plan versioning, job state rules, size limit, bearer token."""

from __future__ import annotations

import os
import threading

import pytest
from sqlalchemy import func, select

from backend.db import session_scope
from backend.models import Dataset, Event, Job, Plan, Student, Teacher
from tests.platform.helpers import error_text
from tests.tiny_models import tiny_spec

SPEC = tiny_spec()


def counts(url: str) -> dict:
    with session_scope(url) as s:
        return {
            m.__name__: s.scalar(select(func.count()).select_from(m)) for m in (Teacher, Dataset, Job, Plan)
        }


@pytest.fixture
def ready_teacher(api_env):
    """A teacher row as the inspect job leaves it (ready, with its architecture summary)."""
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        t = Teacher(name="t", source="org/model", status="ready", spec=SPEC.summary())
        s.add(t)
        s.flush()
        return t.id


def test_bad_input_names_the_field_and_writes_nothing(client, api_env, ready_teacher):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    before = counts(url)
    cases = [
        ("/api/v1/teachers", {"name": "", "source": "demo"}, ["body", "name"]),
        ("/api/v1/datasets", {"name": "d"}, ["body", "source"]),
        (
            "/api/v1/importance-runs",
            {"teacher_id": ready_teacher, "dataset_id": 1, "samples": -1},
            ["body", "samples"],
        ),
        (
            "/api/v1/importance-runs",
            {"teacher_id": ready_teacher, "dataset_id": 1, "scans": ["bogus"]},
            ["body", "scans", 0],
        ),
        (
            "/api/v1/jobs",
            {"kind": "distill", "student_id": 1, "params": {"lr": -1}},
            ["body", "params", "lr"],
        ),
        ("/api/v1/jobs", {"kind": "distill", "params": {}}, ["body", "student_id"]),
        ("/api/v1/jobs", {"kind": "fly", "student_id": 1}, ["body", "kind"]),
        (
            "/api/v1/plans",
            {"teacher_id": ready_teacher, "name": "p", "plan": {"drop_layers": "x"}},
            ["body", "plan", "drop_layers"],
        ),
    ]
    for path, body, loc in cases:
        r = client.post(path, json=body)
        assert r.status_code == 422, (path, r.text)
        assert loc in [d["loc"] for d in r.json()["detail"]], (path, r.json())
    assert counts(url) == before


def test_unknown_ids_are_404(client):
    for path in (
        "/api/v1/teachers/999",
        "/api/v1/jobs/999",
        "/api/v1/plans/999",
        "/api/v1/students/999",
        "/api/v1/importance-runs/999",
        "/api/v1/jobs/999/metrics",
        "/api/v1/datasets/999",
    ):
        r = client.get(path)
        assert r.status_code == 404 and "999" in error_text(r), path
    r = client.post("/api/v1/importance-runs", json={"teacher_id": 999, "dataset_id": 1})
    assert r.status_code == 404 and error_text(r) == "Teacher 999 not found"


def test_local_paths_stay_under_the_allowed_roots(client, api_env, tmp_path):
    root = tmp_path  # PRUNESCOPE_ALLOWED_ROOTS is the parent of the data dir, i.e. tmp_path
    inside = root / "model"
    inside.mkdir()
    (inside / "corpus.txt").write_text("a dataset holds text")  # what POST /datasets reads of it
    (root / "escape").symlink_to("/etc")
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    before = counts(url)
    for source, status in [
        ("/etc", 403),
        (f"{inside}/../../..", 403),
        (str(root / "escape"), 403),
        (str(root / "missing"), 404),
        ("../../etc", 403),
    ]:
        r = client.post("/api/v1/datasets", json={"name": "d", "source": source})
        assert r.status_code == status, (source, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "source"]
    assert counts(url) == before
    r = client.post("/api/v1/datasets", json={"name": "d", "source": str(inside)})
    assert r.status_code == 201 and r.json()["source"] == str(inside.resolve())


def test_trust_remote_code_needs_the_operator(client, api_env):
    r = client.post("/api/v1/teachers", json={"name": "t", "source": "org/model", "trust_remote_code": True})
    assert r.status_code == 403 and r.json()["detail"][0]["loc"] == ["body", "trust_remote_code"], r.text
    assert counts(api_env["PRUNESCOPE_DATABASE_URL"])["Teacher"] == 0


def test_a_student_needs_an_explicit_plan(client, api_env, ready_teacher):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    plan = {"targets": {"intermediate_size": 32}}  # a valid plan, but sizes only: nothing to cut yet
    r = client.post("/api/v1/plans", json={"teacher_id": ready_teacher, "name": "t", "plan": plan})
    assert r.status_code == 201, r.text
    before = counts(url)
    r = client.post("/api/v1/students", json={"plan_id": r.json()["id"], "name": "s"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "plan_id"] and "targets" in detail["msg"]
    assert counts(url) == before
    with session_scope(url) as s:
        assert s.scalar(select(func.count()).select_from(Student)) == 0


def test_plan_versioning_and_validation(client, ready_teacher):
    plan = {"drop_layers": [3], "remove_neurons": {str(i): list(range(8)) for i in range(4)}}
    r = client.post("/api/v1/plans/validate", json={"teacher_id": ready_teacher, "plan": plan})
    assert r.status_code == 200 and r.json()["stats"]["spec"]["num_layers"] == 3
    assert r.json()["stats"]["spec"]["intermediate_size"] == 40

    bad = {"drop_layers": [7]}
    r = client.post("/api/v1/plans/validate", json={"teacher_id": ready_teacher, "plan": bad})
    assert r.status_code == 200 and r.json()["messages"][0]["level"] == "error" and r.json()["stats"] is None
    r = client.post("/api/v1/plans", json={"teacher_id": ready_teacher, "name": "bad", "plan": bad})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "plan", "drop_layers"]

    created = client.post(
        "/api/v1/plans", json={"teacher_id": ready_teacher, "name": "p", "plan": plan}
    ).json()
    assert created["version"] == 1
    r = client.put(f"/api/v1/plans/{created['id']}", json={"version": 1, "plan": {"drop_layers": [2, 3]}})
    assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["plan"]["drop_layers"] == [2, 3]
    stale = client.put(f"/api/v1/plans/{created['id']}", json={"version": 1, "name": "other tab"})
    assert stale.status_code == 409 and "version 2" in error_text(stale)
    assert client.get(f"/api/v1/plans/{created['id']}").json()["name"] == "p"

    # Two tabs sending the same version at the same moment: exactly one wins.
    results = []

    def put(name):
        results.append(
            client.put(f"/api/v1/plans/{created['id']}", json={"version": 2, "name": name}).status_code
        )

    threads = [threading.Thread(target=put, args=(f"tab{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 409, 409, 409]
    assert client.get(f"/api/v1/plans/{created['id']}").json()["version"] == 3


def test_job_state_rules(client, api_env, ready_teacher):
    # A queued job (no worker consumes this test's queue) is cancelled at once; then 409s.
    r = client.post(
        "/api/v1/jobs", json={"kind": "benchmark", "teacher_id": ready_teacher, "params": {"repeats": 1}}
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["queue"] == "cpu" and job["params"]["repeats"] == 1
    r = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 409
    r = client.post(f"/api/v1/jobs/{job['id']}/resume")
    assert r.status_code == 409 and "cannot be resumed" in error_text(r)
    listed = client.get("/api/v1/jobs?status=cancelled&kind=benchmark").json()
    assert [j["id"] for j in listed] == [job["id"]]
    assert client.get("/api/v1/jobs?status=running").json() == []


def test_validate_only_runs_every_submit_check_and_writes_nothing(
    client, api_env, ready_teacher, monkeypatch
):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    sent = []
    monkeypatch.setattr(client.app.state.celery, "send_task", lambda *a, **k: sent.append((a, k)))
    before = counts(url)

    def both(body: dict):
        """(validate-only answer, real submit answer) for the same body."""
        check = client.post("/api/v1/jobs?validate_only=true", json=body)
        return check, client.post("/api/v1/jobs", json=body)

    # A distill job for a student not cut yet: validated against the teacher it will come from.
    ok = client.post(
        "/api/v1/jobs?validate_only=true&planned_student=true",
        json={"kind": "distill", "teacher_id": ready_teacher, "params": {"steps": 4, "lr": 1e-3}},
    )
    assert ok.status_code == 200, ok.text
    answer = ok.json()
    assert answer["teacher_id"] == ready_teacher and answer["student_id"] is None
    assert answer["queue"] == "cpu" and "id" not in answer
    assert answer["params"]["steps"] == 4 and answer["params"]["min_lr"] == 1e-5  # normalised
    assert answer["params"]["device"] == "auto" and answer["params"]["baseline"] is False

    # The same refusals as a real submit: field errors, unknown ids, device routing.
    for body, status in (
        ({"kind": "distill", "student_id": 999, "params": {"lr": 1e-6}}, 422),
        ({"kind": "distill", "student_id": 999, "params": {}}, 404),
        ({"kind": "evaluate", "teacher_id": 999, "params": {}}, 404),
        ({"kind": "evaluate", "teacher_id": ready_teacher, "params": {"dataset_id": 999}}, 404),
        ({"kind": "benchmark", "teacher_id": ready_teacher, "params": {"device": "cuda"}}, 409),
        ({"kind": "benchmark", "params": {}}, 422),
    ):
        check, real = both(body)
        assert check.status_code == real.status_code == status, (body, check.text, real.text)
        assert check.json() == real.json(), body
    check, _ = both({"kind": "distill", "student_id": 999, "params": {"lr": 1e-6}})
    assert check.json()["detail"][0]["loc"] == ["body", "params", "min_lr"]
    assert "min_lr must not exceed lr" in check.json()["detail"][0]["msg"]
    check = client.post(
        "/api/v1/jobs?validate_only=true&planned_student=true",
        json={"kind": "distill", "teacher_id": ready_teacher, "params": {"lr": 1e-6}},
    )
    assert check.status_code == 422 and check.json()["detail"][0]["loc"] == ["body", "params", "min_lr"]
    # Only validation may name a teacher for a distill job: a real one needs its student.
    r = client.post("/api/v1/jobs", json={"kind": "distill", "teacher_id": ready_teacher, "params": {}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "student_id"]
    # ... and only when asked for by name: validate_only alone checks exactly what a submit would.
    teacher_only = {"kind": "distill", "teacher_id": ready_teacher, "params": {}}
    r = client.post("/api/v1/jobs?validate_only=true", json=teacher_only)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "student_id"], r.text
    # planned_student where it means nothing is refused, naming it.
    for query, body in (
        ("planned_student=true", teacher_only),  # a job that runs needs its student
        ("validate_only=true&planned_student=true", {**teacher_only, "kind": "evaluate"}),
        ("validate_only=true&planned_student=true", {**teacher_only, "student_id": 999}),
    ):
        r = client.post(f"/api/v1/jobs?{query}", json=body)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "planned_student"], r.text
    with session_scope(url) as s:
        events = s.scalar(select(func.count()).select_from(Event))
    assert counts(url) == before and events == 0 and sent == []


def test_request_size_limit(client, api_env):
    r = client.post(
        "/api/v1/datasets", content=b"x" * (2 << 20), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413

    def chunks():  # no Content-Length: the body is counted as it streams in
        for _ in range(3):
            yield b"x" * (1 << 20)

    before = counts(api_env["PRUNESCOPE_DATABASE_URL"])
    r = client.post("/api/v1/datasets", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "request body over" in error_text(r)
    assert counts(api_env["PRUNESCOPE_DATABASE_URL"]) == before
    small = b'{"name": "d", "source": "demo"}'
    r = client.post("/api/v1/datasets", content=iter([small]), headers={"content-type": "application/json"})
    assert r.status_code == 201, r.text


def test_openapi_and_static(client):
    schema = client.get("/api/v1/openapi.json").json()
    assert "/api/v1/importance-runs/{run_id}/neurons" in schema["paths"]
    js = client.get("/static/vendor/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_bearer_token(api_env):
    from fastapi.testclient import TestClient

    from backend.app import create_app
    from tests.conftest import settings_from

    with pytest.raises(RuntimeError, match="PRUNESCOPE_TOKEN"):
        create_app(settings_from({**api_env, "PRUNESCOPE_HOST": "0.0.0.0"}))
    settings = settings_from({**api_env, "PRUNESCOPE_HOST": "0.0.0.0", "PRUNESCOPE_TOKEN": "s3cret"})
    with TestClient(create_app(settings)) as c:
        assert c.get("/api/v1/health").status_code == 200
        assert c.get("/api/v1/teachers").status_code == 401
        assert c.get("/api/v1/teachers", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/api/v1/teachers", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/v1/teachers?token=s3cret").status_code == 401  # query tokens: streams, downloads


def test_cli_refuses_public_bind_without_token(api_env):
    import subprocess
    import sys

    env = {**os.environ, **api_env, "PRUNESCOPE_HOST": "0.0.0.0"}
    env.pop("PRUNESCOPE_TOKEN", None)
    r = subprocess.run(
        [sys.executable, "-m", "worker", "api"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "PRUNESCOPE_TOKEN" in r.stderr and "Traceback" not in r.stderr
