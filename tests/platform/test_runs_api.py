"""Run management and the evaluation protocol through the HTTP API (SQLite and PostgreSQL, in process):
rename / tag a job (PATCH /jobs/{id}), export runs as JSON and CSV (GET /runs/export), bad input named
and nothing changed; evaluate jobs default to their teacher's protocol, a student's evaluation queues
its teacher's on the same protocol once."""

from __future__ import annotations

import csv
import io
import json

import pytest
from sqlalchemy import select

from backend import lifecycle
from backend.db import session_scope
from backend.models import Job, MetricPoint, Teacher
from tests.platform.helpers import student_rows


@pytest.fixture
def rows(api_env):
    """A ready student and a finished distill job of it with two metric series."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    with session_scope(url) as s:
        teacher, students = student_rows(s, [("s", "ready")])
        student = students["s"]
        job = Job(
            kind="distill",
            status="succeeded",
            params={"steps": 3, "lr": 1e-4, "batch_size": 2, "seq_len": 32, "val_batches": 2},
            result={"steps": 3, "final_validation": {"val_ppl": 42.5, "val_loss": 3.75}},
            teacher_id=teacher.id,
            student_id=student.id,
        )
        s.add(job)
        s.flush()
        for step, loss in ((1, 4.0), (2, 3.5), (3, 3.25)):
            s.add(
                MetricPoint(job_id=job.id, name="loss", step=step, value=loss, tokens=64 * step, t=0.5 * step)
            )
        s.add(MetricPoint(job_id=job.id, name="val_ppl", step=3, value=42.5, tokens=192, t=1.5))
        return {"teacher": teacher.id, "student": student.id, "job": job.id, "url": url}


def job_row(url: str, job_id: int) -> tuple:
    with session_scope(url) as s:
        j = s.get(Job, job_id)
        return j.name, j.tags, j.status


def test_rename_and_tag_a_run(client, rows):
    jid = rows["job"]
    r = client.patch(f"/api/v1/jobs/{jid}", json={"name": "  kd lr 1e-4 ", "tags": ["sweep", "kd", "sweep"]})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "kd lr 1e-4" and r.json()["tags"] == ["sweep", "kd"]
    assert job_row(rows["url"], jid) == ("kd lr 1e-4", ["sweep", "kd"], "succeeded")
    # Leaving a field out keeps it; null name is the default again; the list answers with the new values.
    assert client.patch(f"/api/v1/jobs/{jid}", json={"tags": ["best"]}).json()["name"] == "kd lr 1e-4"
    assert client.patch(f"/api/v1/jobs/{jid}", json={"name": None}).json()["name"] is None
    listed = {j["id"]: j for j in client.get("/api/v1/jobs").json()}
    assert listed[jid]["tags"] == ["best"] and listed[jid]["name"] is None
    # Each change is a status event: open pages follow it.
    assert client.get(f"/api/v1/jobs/{jid}").json()["duration_s"] is None  # never started


def test_bad_rename_or_tags_name_the_field_and_change_nothing(client, rows):
    jid = rows["job"]
    client.patch(f"/api/v1/jobs/{jid}", json={"name": "kept", "tags": ["a"]})
    for body, loc in (
        ({"name": ""}, ["body", "name"]),
        ({"name": "   "}, ["body", "name"]),
        ({"name": "x" * 201}, ["body", "name"]),
        ({"name": "a\x00b"}, ["body", "name"]),
        ({"tags": ["ok", "bad\ntag"]}, ["body", "tags", 1]),
        ({"tags": ["x" * 41]}, ["body", "tags", 0]),
        ({"tags": [f"t{i}" for i in range(21)]}, ["body", "tags"]),
        ({"tags": "sweep"}, ["body", "tags"]),
        ({"name": "new", "colour": "red"}, ["body", "colour"]),
    ):
        r = client.patch(f"/api/v1/jobs/{jid}", json=body)
        assert r.status_code == 422, (body, r.text)
        assert loc in [d["loc"] for d in r.json()["detail"]], (body, r.json())
    assert job_row(rows["url"], jid) == ("kept", ["a"], "succeeded")
    assert client.patch("/api/v1/jobs/999999", json={"name": "x"}).status_code == 404
    assert client.patch("/api/v1/jobs/0", json={"name": "x"}).status_code == 422


def test_export_json_and_csv_hold_every_metric_and_result(client, rows):
    jid = rows["job"]
    client.patch(f"/api/v1/jobs/{jid}", json={"name": "run a", "tags": ["kd"]})
    r = client.get(f"/api/v1/runs/export?ids={jid}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert 'filename="prunescope-runs.json"' in r.headers["content-disposition"]
    (run,) = r.json()["runs"]
    assert run["name"] == "run a" and run["tags"] == ["kd"] and run["params"]["lr"] == 1e-4
    assert [p["value"] for p in run["metrics"]["loss"]] == [4.0, 3.5, 3.25]
    assert run["metrics"]["loss"][1] == {"step": 2, "value": 3.5, "tokens": 128, "t": 1.0}
    assert run["result"]["final_validation"]["val_ppl"] == 42.5
    # The validation curve's protocol: packed validation blocks (2 batches of 2), not the teacher's.
    assert run["protocol"]["kind"] == "blocks" and run["protocol"]["blocks"] == 4

    r = client.get(f"/api/v1/runs/export?ids={jid}&format=csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    loss = [
        (int(x["step"]), float(x["value"])) for x in table if x["section"] == "metric" and x["key"] == "loss"
    ]
    assert loss == [(1, 4.0), (2, 3.5), (3, 3.25)]
    result = {x["key"]: x["value"] for x in table if x["section"] == "result"}
    assert float(result["final_validation.val_ppl"]) == 42.5
    params = {x["key"]: x["value"] for x in table if x["section"] == "param"}
    assert float(params["lr"]) == 1e-4 and {x["run_name"] for x in table} == {"run a"}


def test_bad_export_requests_name_the_parameter(client, rows):
    for query, loc in (
        ("ids=", ["query", "ids"]),
        ("ids=1,x", ["query", "ids"]),
        ("ids=0", ["query", "ids"]),
        (f"ids={rows['job']}&format=xml", ["query", "format"]),
        ("", ["query", "ids"]),
    ):
        r = client.get(f"/api/v1/runs/export?{query}")
        assert r.status_code == 422, (query, r.text)
        assert loc in [d["loc"] for d in r.json()["detail"]], (query, r.json())
    assert client.get(f"/api/v1/runs/export?ids={rows['job']},999999").status_code == 404


def test_delete_refuses_a_running_run_and_keeps_it(client, rows):
    with session_scope(rows["url"]) as s:
        s.get(Job, rows["job"]).status = "running"
    r = client.delete(f"/api/v1/jobs/{rows['job']}")
    assert r.status_code == 409 and "cancel it first" in json.dumps(r.json())
    with session_scope(rows["url"]) as s:
        assert s.get(Job, rows["job"]) is not None
        assert s.scalars(select(MetricPoint).where(MetricPoint.job_id == rows["job"])).all()


def test_evaluations_default_to_the_teachers_protocol_and_queue_the_teachers_once(client, rows, monkeypatch):
    sent = []
    monkeypatch.setattr(client.app.state.celery, "send_task", lambda *a, **k: sent.append(a))
    teacher = client.get(f"/api/v1/teachers/{rows['teacher']}").json()
    protocol = teacher["eval_protocol"]
    assert protocol["id"] and "windows of 128 tokens starting every 64" in protocol["description"]

    r = client.post("/api/v1/jobs", json={"kind": "evaluate", "student_id": rows["student"], "params": {}})
    assert r.status_code == 201, r.text
    student_job = r.json()
    assert student_job["protocol"]["id"] == protocol["id"]
    assert (student_job["params"]["seq_len"], student_job["params"]["stride"]) == (128, 64)
    evaluations = client.get("/api/v1/jobs?kind=evaluate").json()
    teacher_jobs = [j for j in evaluations if j["student_id"] is None]
    assert len(teacher_jobs) == 1 and teacher_jobs[0]["teacher_id"] == rows["teacher"]
    assert teacher_jobs[0]["protocol"]["id"] == protocol["id"]
    # A second student evaluation on the same protocol queues no second teacher evaluation.
    client.post("/api/v1/jobs", json={"kind": "evaluate", "student_id": rows["student"], "params": {}})
    evaluations = client.get("/api/v1/jobs?kind=evaluate").json()
    assert len([j for j in evaluations if j["student_id"] is None]) == 1 and len(evaluations) == 3
    # Another protocol (explicit window): its own id, and the teacher is measured on it too.
    other = client.post(
        "/api/v1/jobs", json={"kind": "evaluate", "student_id": rows["student"], "params": {"seq_len": 64}}
    ).json()
    assert other["protocol"]["id"] != protocol["id"] and other["params"]["stride"] == 32
    assert len(client.get("/api/v1/jobs?kind=evaluate").json()) == 5
    # A stride that does not fit the window is refused naming it; nothing is queued.
    r = client.post(
        "/api/v1/jobs",
        json={"kind": "evaluate", "student_id": rows["student"], "params": {"seq_len": 32, "stride": 32}},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "params", "stride"]
    assert len(client.get("/api/v1/jobs?kind=evaluate").json()) == 5


def test_a_stride_alone_is_checked_against_the_protocols_window(client, rows, monkeypatch):
    """Not against seq_len's default (128): a teacher whose protocol reads 256-token windows takes a
    stride of 200 when the request leaves the window out, and refuses one of 300 naming the stride."""
    monkeypatch.setattr(client.app.state.celery, "send_task", lambda *a, **k: None)
    with session_scope(rows["url"]) as s:
        s.get(Teacher, rows["teacher"]).eval_protocol = {"context": 256, "stride": 128}
    body = {"kind": "evaluate", "student_id": rows["student"], "params": {"stride": 200}}
    r = client.post("/api/v1/jobs?validate_only=true", json=body)
    assert r.status_code == 200, r.text
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    assert (r.json()["params"]["seq_len"], r.json()["params"]["stride"]) == (256, 200)
    jobs = len(client.get("/api/v1/jobs?kind=evaluate").json())
    r = client.post("/api/v1/jobs", json={**body, "params": {"stride": 300}})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "params", "stride"] and "below seq_len (256)" in error["msg"], error
    assert len(client.get("/api/v1/jobs?kind=evaluate").json()) == jobs


def test_a_teacher_keeps_the_protocol_it_was_registered_with(client, api_env):
    body = {
        "name": "t",
        "source": "demo",
        "eval_protocol": {"split": "validation", "context": 64, "stride": 16},
    }
    r = client.post("/api/v1/teachers", json=body)
    assert r.status_code == 201, r.text
    p = r.json()["eval_protocol"]
    assert (p["split"], p["context"], p["stride"], p["max_documents"]) == ("validation", 64, 16, 64)
    r = client.post("/api/v1/teachers", json={**body, "eval_protocol": {"context": 64, "stride": 64}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "eval_protocol"]


def test_runs_are_searched_and_filtered_on_the_server_past_the_newest_500(client, rows):
    """GET /runs: 600 newer jobs inserted straight into the database; the run made first (#1 of the
    table's newest-500 window's blind spot) is found by name, tag, id and its model's name, and the
    filters and pages cover every job."""
    old = rows["job"]
    client.patch(f"/api/v1/jobs/{old}", json={"name": "ancient kd 50%", "tags": ["sweep", "keep"]})
    with session_scope(rows["url"]) as s:
        s.add_all(
            Job(kind="evaluate", status="failed", params={}, queue="default", teacher_id=rows["teacher"])
            for _ in range(600)
        )
        s.flush()
        lifecycle.create(s, "benchmark", {}, queue="default", teacher_id=rows["teacher"])  # queued
    runs = lambda **q: client.get("/api/v1/runs", params=q)  # noqa: E731

    first = runs().json()
    assert first["total"] == 602 and len(first["runs"]) == 100 and first["next_offset"] == 100
    assert [j["id"] for j in first["runs"]] == sorted((j["id"] for j in first["runs"]), reverse=True)
    assert old not in [j["id"] for j in client.get("/api/v1/jobs", params={"limit": 500}).json()]
    assert first["facets"] == {
        "kinds": ["benchmark", "distill", "evaluate"],
        "statuses": ["failed", "queued", "succeeded"],
        "tags": ["keep", "sweep"],
    }
    for query in ({"q": "ancient"}, {"q": "KD 50%"}, {"q": f"#{old}"}, {"tag": "keep"}, {"q": "sweep kd"}):
        page = runs(**query).json()
        assert [j["id"] for j in page["runs"]] == [old] and page["total"] == 1, (query, page)
        assert page["next_offset"] is None
    assert runs(q="ancient evaluate").json()["total"] == 0  # every word must match
    assert runs(q="50_").json()["total"] == 0  # _ and % are plain characters, not patterns
    assert runs(tag="swee").json()["total"] == 0  # a tag filter is a whole tag
    assert [j["id"] for j in runs(q="s", kind="distill").json()["runs"]] == [old]  # the student "s"
    assert runs(kind="evaluate", status="failed").json()["total"] == 600
    assert runs(status="queued").json()["runs"][0]["kind"] == "benchmark"
    # Pages: offset / next_offset walk every matching job once, newest first.
    seen, offset = [], 0
    while offset is not None:
        page = runs(kind="evaluate", limit=250, offset=offset).json()
        seen += [j["id"] for j in page["runs"]]
        offset = page["next_offset"]
    assert len(seen) == len(set(seen)) == 600 and seen == sorted(seen, reverse=True)
    # Bad input names the parameter.
    for query, loc in (
        ({"status": "done"}, ["query", "status"]),
        ({"kind": "train"}, ["query", "kind"]),
        ({"limit": 0}, ["query", "limit"]),
        ({"limit": 501}, ["query", "limit"]),
        ({"offset": -1}, ["query", "offset"]),
        ({"q": "a\x00b"}, ["query", "q"]),
        ({"q": " ".join("w" * 9)}, ["query", "q"]),
    ):
        r = runs(**query)
        assert r.status_code == 422, (query, r.text)
        assert loc in [d["loc"] for d in r.json()["detail"]], (query, r.json())


def test_a_teachers_protocol_is_changed_later_and_past_numbers_keep_theirs(client, rows, monkeypatch):
    """PATCH /teachers/{id}: the fields sent change, the others stay; past evaluations keep the protocol
    they were measured on (so they differ from the teacher's now: the dashboard's ≠), new default ones use
    the new protocol; a bad field is a 422 naming it with nearby values, and nothing changes."""
    monkeypatch.setattr(client.app.state.celery, "send_task", lambda *a, **k: None)
    tid, url = rows["teacher"], rows["url"]
    with session_scope(url) as s:  # a teacher of 4096 positions: the protocol's windows stay within them
        teacher = s.get(Teacher, tid)
        teacher.spec = {**teacher.spec, "max_positions": 4096}
    old = client.get(f"/api/v1/teachers/{tid}").json()["eval_protocol"]
    past = client.post(
        "/api/v1/jobs", json={"kind": "evaluate", "student_id": rows["student"], "params": {}}
    ).json()
    assert past["protocol"]["id"] == old["id"]
    with session_scope(url) as s:  # measured: its result records its protocol, as a worker writes it
        job = s.get(Job, past["id"])
        job.status, job.result = (
            "succeeded",
            {"perplexity": {"perplexity": 9.5}, "protocol": past["protocol"]},
        )

    r = client.patch(f"/api/v1/teachers/{tid}", json={"eval_protocol": {"context": 256, "stride": 128}})
    assert r.status_code == 200, r.text
    new = r.json()["eval_protocol"]
    assert (new["split"], new["context"], new["stride"], new["max_documents"]) == ("test", 256, 128, 64)
    assert new["id"] != old["id"] and client.get(f"/api/v1/teachers/{tid}").json()["eval_protocol"] == new
    kept = client.get(f"/api/v1/jobs/{past['id']}").json()
    assert kept["protocol"]["id"] == kept["result"]["protocol"]["id"] == old["id"]
    later = client.post(
        "/api/v1/jobs", json={"kind": "evaluate", "student_id": rows["student"], "params": {}}
    ).json()
    assert later["protocol"]["id"] == new["id"] and later["params"]["seq_len"] == 256

    for change, field, nearby in (
        ({"context": 64}, "context", [129, 256]),  # the stride (128) must stay below it
        ({"stride": 300}, "stride", [128, 255]),
        ({"split": "dev"}, "split", ["train", "validation", "calibration", "test"]),
        ({"max_documents": 0}, "max_documents", [1]),
        ({"context": 200_000, "stride": 64}, "context", [131_072]),  # PRUNESCOPE_MAX_SEQ_LEN
        ({"context": 8192, "stride": 64}, "context", [4096]),  # the teacher's positions
        ({"dataset_id": 999}, "dataset_id", [None]),
        ({"colour": "red"}, "colour", None),
    ):
        r = client.patch(f"/api/v1/teachers/{tid}", json={"eval_protocol": change})
        assert r.status_code == 422, (change, r.text)
        (error,) = r.json()["detail"]
        assert error["loc"] == ["body", "eval_protocol", field], (change, error)
        if nearby is not None:
            assert all(v in error["nearby"] for v in nearby), (change, error)
    assert client.get(f"/api/v1/teachers/{tid}").json()["eval_protocol"] == new
    assert client.patch("/api/v1/teachers/999999", json={"eval_protocol": {}}).status_code == 404
