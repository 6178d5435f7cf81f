"""Server-side workflows (backend.workflows) through the real API, a real Celery worker, the database and
Redis: a bake-off runs to its ranking; it survives a killed API and a killed worker (resuming from its
step, not from the start); cancelling it cancels its children; a failing child fails it with the step
and the reason, and a retry resumes it."""

from __future__ import annotations

import time

import pytest

from tests.conftest import start_live_app, stop_live_app
from tests.platform.helpers import make_dataset

DEPTH = {"drop_layers": [3]}
WIDTH = {"remove_neurons": {str(i): list(range(16)) for i in range(4)}}
DISTILL = {"steps": 4, "batch_size": 2, "seq_len": 32, "val_every": 0, "val_batches": 1, "warmup": 1}
EVALUATE = {"max_documents": 3, "seq_len": 32}


def ready_teacher(app) -> dict:
    teacher = app.api.post("/teachers", json={"name": "tiny", "source": str(app.teacher_dir)}).json()
    assert app.wait_job(teacher["job_id"])["status"] == "succeeded"
    return teacher


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
    live = start_live_app(tmp_path_factory.mktemp("wf"), redis_url, PRUNESCOPE_WORKFLOW_SWEEP_S="1")
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
