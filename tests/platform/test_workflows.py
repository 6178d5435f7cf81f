"""Server-side workflows (backend.workflows) through the real API, a real Celery worker, the database and
Redis: a bake-off runs to its ranking; it survives a killed API and a killed worker (resuming from its
step, not from the start); cancelling it cancels its children; a failing child fails it with the step
and the reason, and a retry resumes it."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.conftest import ApiProcess, WorkerProcess, start_live_app, stop_group, stop_live_app
from tests.platform.helpers import make_dataset

DEPTH = {"drop_layers": [3]}
WIDTH = {"remove_neurons": {str(i): list(range(16)) for i in range(4)}}
DISTILL = {"steps": 4, "batch_size": 2, "seq_len": 32, "val_every": 0, "val_batches": 1, "warmup": 1}
EVALUATE = {"max_documents": 3, "seq_len": 32}


_teachers: dict[str, dict] = {}


def ready_teacher(app) -> dict:
    """The module's tiny teacher, registered once (its inspect job runs once)."""
    if app.url not in _teachers:
        teacher = app.api.post("/teachers", json={"name": "tiny", "source": str(app.teacher_dir)}).json()
        assert app.wait_job(teacher["job_id"])["status"] == "succeeded"
        _teachers[app.url] = teacher
    return _teachers[app.url]


def bakeoff(app, teacher: dict, dataset: dict, candidates=None, **overrides) -> dict:
    body = {
        "name": "depth vs width",
        "teacher_id": teacher["id"],
        "candidates": candidates or [{"name": "depth", "plan": DEPTH}, {"name": "width", "plan": WIDTH}],
        "distill": {**DISTILL, "dataset_id": dataset["id"]},
        "evaluate": {**EVALUATE, "dataset_id": dataset["id"]},
        "benchmark": None,
        **overrides,
    }
    r = app.api.post("/workflows", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def wait_workflow(app, workflow_id: int, until, timeout: float = 240.0, what: str = "") -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wf = app.api.get(f"/workflows/{workflow_id}").json()
        if until(wf):
            return wf
        time.sleep(0.3)
    raise AssertionError(f"workflow {workflow_id} not {what} after {timeout} s: {wf}\n{app.worker.log()}")


def finished(wf: dict) -> bool:
    return wf["status"] in ("succeeded", "failed", "cancelled")


def step(wf: dict, branch: str, name: str) -> dict:
    b = next(b for b in wf["branches"] if b["name"] == branch)
    return next(s for s in b["steps"] if s["name"] == name)


@pytest.fixture(scope="module")
def app(tmp_path_factory, redis_url):
    live = start_live_app(
        tmp_path_factory.mktemp("wf"),
        redis_url,
        PRUNESCOPE_WORKFLOW_SWEEP_S="1",
        PRUNESCOPE_HEARTBEAT_TIMEOUT_S="5",  # a killed worker's job is reaped within seconds
    )
    yield live
    stop_live_app(live)


def test_bakeoff_runs_to_its_ranking_through_the_worker(app):
    teacher, dataset = ready_teacher(app), make_dataset(app)
    wf = bakeoff(app, teacher, dataset)
    assert wf["status"] == "running" and [b["name"] for b in wf["branches"]] == ["depth", "width"]
    # Created with its first children (the cuts), queued for the worker.
    assert all(b["steps"][0]["job_id"] for b in wf["branches"])
    wf = wait_workflow(app, wf["id"], finished, what="finished")
    assert wf["status"] == "succeeded", wf["error"]
    for branch in wf["branches"]:
        assert branch["status"] == "succeeded" and branch["student_id"]
        names = [s["name"] for s in branch["steps"]]
        assert names == ["cut", "evaluate_pruned", "distill", "evaluate"]
        for s in branch["steps"]:
            job = app.api.get(f"/jobs/{s['job_id']}").json()
            assert job["status"] == "succeeded" and s["tries"] == 1
            assert job["student_id"] == branch["student_id"]
        evaluate = app.api.get(f"/jobs/{step(wf, branch['name'], 'evaluate')['job_id']}").json()
        assert evaluate["params"]["distill_job_id"] == step(wf, branch["name"], "distill")["job_id"]
    ranking = {r["name"]: r for r in wf["result"]["ranking"]}
    assert set(ranking) == {"depth", "width"}
    for name, row in ranking.items():
        pruned = app.api.get(f"/jobs/{step(wf, name, 'evaluate_pruned')['job_id']}").json()
        distilled = app.api.get(f"/jobs/{step(wf, name, 'evaluate')['job_id']}").json()
        assert row["before"]["loss"] == pytest.approx(pruned["result"]["perplexity"]["loss"])
        assert row["after"]["loss"] == pytest.approx(distilled["result"]["perplexity"]["loss"])
    # Ranks follow the losses; a flip is exactly a pair whose order changed.
    by_before = sorted(ranking, key=lambda n: ranking[n]["before"]["loss"])
    by_after = sorted(ranking, key=lambda n: ranking[n]["after"]["loss"])
    assert [ranking[n]["rank_before"] for n in by_before] == [1, 2]
    assert [ranking[n]["rank_after"] for n in by_after] == [1, 2]
    assert wf["result"]["flips"] == ([[by_after[0], by_after[1]]] if by_before != by_after else [])
    assert wf["result"]["winner"] == by_after[0]
    # The workflow is a job: its children name it.
    job = app.api.get(f"/jobs/{wf['id']}").json()
    assert job["kind"] == "workflow" and job["status"] == "succeeded"


def one_candidate(app, teacher, dataset, measure_teacher=False, evaluate=None, **distill) -> dict:
    return bakeoff(
        app,
        teacher,
        dataset,
        candidates=[{"name": "depth", "plan": DEPTH}],
        distill={**DISTILL, "dataset_id": dataset["id"], **distill},
        measure_teacher=measure_teacher,
        evaluate=evaluate or {**EVALUATE, "dataset_id": dataset["id"]},
    )


def step_rows(app, workflow_id: int) -> list[tuple]:
    """(branch, step, try, job id) rows straight from the database (readable while the API is down)."""
    path = app.env["PRUNESCOPE_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT branch, step, try_number, job_id FROM workflow_steps WHERE workflow_id = ? ORDER BY id",
            (workflow_id,),
        ).fetchall()


def test_a_killed_api_is_no_matter_the_workers_advance_and_the_restarted_api_reports(app):
    teacher, dataset = ready_teacher(app), make_dataset(app)
    wf = one_candidate(app, teacher, dataset)
    stop_group(app.server.proc, timeout=0)  # SIGKILL: no shutdown, no last sweep
    deadline = time.monotonic() + 180
    while len(step_rows(app, wf["id"])) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)  # the worker creates the next steps by itself: cut -> evaluate_pruned -> distill
    assert [r[1] for r in step_rows(app, wf["id"])][:3] == ["cut", "evaluate_pruned", "distill"]
    app.server = ApiProcess(app.env, app.data_dir.parent / "api-2.log", port=app.server.port).start()
    wf = wait_workflow(app, wf["id"], finished, what="finished")
    assert wf["status"] == "succeeded", wf["error"]
    assert all(s["tries"] == 1 for s in wf["branches"][0]["steps"])  # nothing ran twice
    assert wf["result"]["ranking"][0]["name"] == "depth"


def test_a_lost_worker_s_child_resumes_from_its_step_not_from_the_start(app):
    teacher, dataset = ready_teacher(app), make_dataset(app)
    wf = one_candidate(app, teacher, dataset, steps=120, checkpoint_every=4)
    wf = wait_workflow(app, wf["id"], lambda w: step(w, "depth", "distill")["job_id"], what="distilling")
    distill_id = step(wf, "depth", "distill")["job_id"]
    done_before = {s["name"]: s["job_id"] for s in wf["branches"][0]["steps"][:2]}
    app.wait_job(distill_id, statuses=("running",))
    deadline = time.monotonic() + 120
    while (app.api.get(f"/jobs/{distill_id}").json()["checkpoint_step"] or 0) < 4:
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.2)
    app.worker.kill()
    app.worker = WorkerProcess(app.env, app.data_dir.parent / "worker-2.log").start()
    wf = wait_workflow(app, wf["id"], finished, timeout=300, what="finished")
    assert wf["status"] == "succeeded", wf["error"]
    steps = {s["name"]: s for s in wf["branches"][0]["steps"]}
    # The cut and the first evaluation were not run again; the distillation was resumed (attempt 2 of
    # the same job, from its checkpoint), not restarted as a new try.
    assert {name: steps[name]["job_id"] for name in done_before} == done_before
    assert all(s["tries"] == 1 for s in steps.values())
    assert steps["distill"]["job_id"] == distill_id and steps["distill"]["attempts"] == 2
    distill = app.api.get(f"/jobs/{distill_id}").json()
    assert distill["result"]["steps"] == 120
    logs = [line["msg"] for line in app.api.get(f"/jobs/{wf['id']}/logs").json()]
    assert any(f"distill (job {distill_id}) lost with its worker" in m for m in logs), logs


def teacher_evaluations(app, teacher: dict) -> list[int]:
    jobs = app.api.get("/jobs", params={"kind": "evaluate", "teacher_id": teacher["id"]}).json()
    return sorted(j["id"] for j in jobs if j["student_id"] is None)


def test_a_second_study_takes_the_teacher_s_evaluation_on_its_protocol_instead_of_measuring_again(app):
    teacher, dataset = ready_teacher(app), make_dataset(app)
    evaluate = {"max_documents": 2, "seq_len": 32, "dataset_id": dataset["id"]}  # this test's protocol

    def study(**evaluate_over) -> dict:
        over = {**evaluate, **evaluate_over}
        return one_candidate(app, teacher, dataset, measure_teacher=True, evaluate=over)

    first = wait_workflow(app, study()["id"], finished, what="finished")
    assert first["status"] == "succeeded", first["error"]
    measured = step(first, "teacher", "evaluate")
    assert app.api.get(f"/jobs/{measured['job_id']}").json()["parent_id"] == first["id"]
    before = teacher_evaluations(app, teacher)
    figure = app.api.get(f"/jobs/{measured['job_id']}").json()["result"]["perplexity"]

    second = study()
    # Its teacher branch is done at creation: the first study's job, nothing queued for it.
    taken = step(second, "teacher", "evaluate")
    assert taken["job_id"] == measured["job_id"] and taken["status"] == "succeeded"
    second = wait_workflow(app, second["id"], finished, what="finished")
    assert second["status"] == "succeeded", second["error"]
    assert teacher_evaluations(app, teacher) == before  # no teacher evaluation queued
    shown = app.api.get("/compare", params={"teacher": teacher["id"]}).json()["models"][0]["evaluations"]
    assert shown[0]["job_id"] == measured["job_id"] and shown[0]["perplexity"] == figure
    logs = [line["msg"] for line in app.api.get(f"/jobs/{second['id']}/logs").json()]
    assert f"teacher: evaluate takes job {measured['job_id']}, which measured the same already" in logs

    # Another protocol (one more document) was never measured: the third study measures it.
    third = study(max_documents=3)
    new = step(third, "teacher", "evaluate")["job_id"]
    assert new not in before and app.api.get(f"/jobs/{new}").json()["parent_id"] == third["id"]
    assert app.api.post(f"/workflows/{third['id']}/cancel").status_code == 202


def test_cancel_cancels_the_running_and_queued_children(app):
    teacher, dataset = ready_teacher(app), make_dataset(app)
    wf = bakeoff(app, teacher, dataset, distill={**DISTILL, "dataset_id": dataset["id"], "steps": 5000})
    wf = wait_workflow(
        app, wf["id"], lambda w: step(w, "depth", "distill")["status"] == "running", what="distilling"
    )
    r = app.api.post(f"/workflows/{wf['id']}/cancel")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "cancelled"
    children = [s["job_id"] for b in wf["branches"] for s in b["steps"] if s["job_id"]]
    running = step(wf, "depth", "distill")["job_id"]
    for job_id in children:
        assert app.wait_job(job_id, timeout=60)["status"] in ("succeeded", "cancelled")
    assert app.api.get(f"/jobs/{running}").json()["status"] == "cancelled"
    rows = len(step_rows(app, wf["id"]))
    time.sleep(2.5)  # two sweeps and the cancelled jobs' own ends: nothing new is started
    assert len(step_rows(app, wf["id"])) == rows
    assert app.api.get(f"/workflows/{wf['id']}").json()["status"] == "cancelled"
    assert app.api.post(f"/workflows/{wf['id']}/cancel").status_code == 409


def test_a_failing_child_fails_the_workflow_with_its_step_and_reason_and_retry_resumes(app):
    teacher = ready_teacher(app)
    source = app.data_dir / "fragile.jsonl"
    text = (
        (app.data_dir / "small-300.jsonl").read_text()
        if (app.data_dir / "small-300.jsonl").exists()
        else None
    )
    if text is None:
        make_dataset(app)
        text = (app.data_dir / "small-300.jsonl").read_text()
    source.write_text(text)
    dataset = app.api.post("/datasets", json={"name": "fragile", "source": str(source)}).json()
    wf = one_candidate(app, teacher, dataset)
    first_cut = wf["branches"][0]["steps"][0]["job_id"]
    source.unlink()  # the evaluations and the distillation cannot read their data now
    wf = wait_workflow(app, wf["id"], finished, what="failed")
    assert wf["status"] == "failed"
    branch = wf["branches"][0]
    failed_step = branch["step"]
    failed = step(wf, "depth", failed_step)
    assert failed_step in ("evaluate_pruned", "distill") and failed["status"] == "failed"
    assert f"depth, step {failed_step} (job {failed['job_id']})" in wf["error"]
    assert failed["error"] and failed["error"] in wf["error"]  # the child's own reason
    assert branch["status"] == "failed" and branch["error"] in wf["error"]
    assert app.api.post(f"/workflows/{wf['id']}/cancel").status_code == 409
    source.write_text(text)
    r = app.api.post(f"/workflows/{wf['id']}/retry")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "running"
    wf = wait_workflow(app, wf["id"], finished, what="finished")
    assert wf["status"] == "succeeded", wf["error"]
    steps = {s["name"]: s for s in wf["branches"][0]["steps"]}
    assert steps["cut"]["job_id"] == first_cut and steps["cut"]["tries"] == 1  # not cut again
    assert steps[failed_step]["tries"] == 2 and steps[failed_step]["job_id"] != failed["job_id"]
    assert app.api.post(f"/workflows/{wf['id']}/retry").status_code == 409
    # A finished study's students and the workflow itself can be deleted (its step rows go along).
    student = wf["branches"][0]["student_id"]
    assert app.api.delete(f"/students/{student}").status_code == 204
    gone = app.api.get(f"/workflows/{wf['id']}").json()
    assert gone["branches"][0]["steps"][0]["error"] == "its job was deleted"
    assert app.api.delete(f"/jobs/{wf['id']}").status_code == 204
    assert app.api.get(f"/workflows/{wf['id']}").status_code == 404


def test_create_refuses_bad_input_naming_the_field_and_writes_nothing(app):
    teacher = ready_teacher(app)
    before = len(app.api.get("/plans").json()), len(app.api.get("/jobs").json())
    cases = [
        ({"candidates": []}, ["body", "candidates"]),
        ({"candidates": [{"name": "a", "plan": DEPTH, "plan_id": 1}]}, ["body", "candidates", 0]),
        ({"candidates": [{"name": "a", "plan": {"drop_layers": [9]}}]}, ["body", "candidates", 0, "plan"]),
        ({"distill": {"steps": 0}}, ["body", "distill", "steps"]),
        ({"candidates": [{"name": "a", "targets": {"num_layers": 2}}]}, ["body", "importance_run_id"]),
    ]
    for change, loc in cases:
        body = {"teacher_id": teacher["id"], "candidates": [{"name": "a", "plan": DEPTH}], **change}
        r = app.api.post("/workflows", json=body)
        assert r.status_code == 422, (change, r.text)
        locs = [d["loc"][: len(loc)] for d in r.json()["detail"]]
        assert loc in locs, (change, r.json())
    assert (
        app.api.post(
            "/workflows", json={"teacher_id": 999, "candidates": [{"name": "a", "plan": DEPTH}]}
        ).status_code
        == 404
    )
    # No live worker serves cuda here: refused before anything is made, naming the field.
    cuda = {"teacher_id": teacher["id"], "candidates": [{"name": "a", "plan": DEPTH}], "device": "cuda"}
    r = app.api.post("/workflows", json=cuda)
    assert r.status_code == 409 and r.json()["detail"][0]["loc"] == ["body", "device"], r.text
    ok = app.api.post(
        "/workflows?validate_only=true",
        json={"teacher_id": teacher["id"], "candidates": [{"name": "a", "plan": DEPTH}]},
    )
    assert ok.status_code == 200 and ok.json()["ok"] is True, ok.text
    assert (len(app.api.get("/plans").json()), len(app.api.get("/jobs").json())) == before
