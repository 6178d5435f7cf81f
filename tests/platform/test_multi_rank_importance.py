"""`gpus: N` for importance and evaluate jobs through the real API and a CPU worker offering two gloo ranks.

Importance is data-parallel (worker/importance_ranks.py): its artifact equals the one-process job's to
1e-6 relative. So is an evaluation's perplexity (worker/evaluate_ranks.py), and its lm-eval tasks, run
data-parallel, give the one-process scores; cancelled while its ranks are inside lm-eval, it ends
cancelled with no rank left and no result row. Requests no worker can hold are refused naming the field.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import start_live_app, stop_live_app
from tests.engine.torchrun_helpers import live_ranks
from tests.platform.test_multi_rank_jobs import rank_processes


@pytest.fixture(scope="module")
def app(tmp_path_factory, redis_url):
    app = start_live_app(tmp_path_factory.mktemp("ranks-imp"), redis_url, PRUNESCOPE_WORKER_CPU_RANKS="2")
    yield app
    stop_live_app(app)


@pytest.fixture(scope="module")
def body(app) -> dict:
    teacher = app.api.post("/teachers", json={"name": "tiny", "source": str(app.teacher_dir)}).json()
    assert app.wait_job(teacher["job_id"])["status"] == "succeeded"
    dataset = app.api.post("/datasets", json={"name": "demo", "source": "demo"}).json()
    return {
        "teacher_id": teacher["id"],
        "dataset_id": dataset["id"],
        "samples": 8,
        "seq_len": 24,
        "batch_size": 2,
        "scans": ["bi", "drop"],
    }


def test_two_rank_importance_equals_one_process(app, body):
    from worker.engine.importance.result import ImportanceResult

    runs = {}
    for gpus in (2, 1):
        r = app.api.post("/importance-runs", json={**body, "gpus": gpus})
        assert r.status_code == 201, r.text
        job = app.wait_job(r.json()["job_id"], timeout=150)
        assert job["status"] == "succeeded", (job.get("error"), app.worker.log())
        runs[gpus] = (job, ImportanceResult.load(app.data_dir / "artifacts" / job["result"]["artifact"]))
    (two_job, two), (_, one) = runs[2], runs[1]
    assert two_job["result"]["world_size"] == 2 and two.samples == one.samples == 8
    assert two.manifest["world_size"] == 2 and two.manifest["execution"]["mode"] == "in_memory"
    assert set(two.arrays) == set(one.arrays)
    for name, expected in one.arrays.items():
        np.testing.assert_allclose(two.arrays[name], expected, rtol=1e-6, atol=1e-12, err_msg=name)
    assert any(np.abs(a).max() > 0 for a in one.arrays.values())
    text = json.dumps(app.api.get(f"/jobs/{two_job['id']}/logs").json())
    assert "launching 2 ranks" in text
    assert rank_processes(str(app.data_dir)) == [] and not _importance_ranks(app)


def test_a_multi_rank_run_records_the_teachers_stored_source(app, body):
    """The ranks read the demo teacher's directory, but the artifact's manifest names the teacher as its
    one-process run does ("demo"), not the worker's install path (outside distributed audit 9)."""
    from worker.engine.importance.result import ImportanceResult

    demo = app.api.post("/teachers", json={"name": "demo", "source": "demo"}).json()
    assert app.wait_job(demo["job_id"])["status"] == "succeeded"
    small = {**body, "teacher_id": demo["id"], "samples": 4, "seq_len": 16, "scans": []}
    r = app.api.post("/importance-runs", json={**small, "gpus": 2})
    assert r.status_code == 201, r.text
    job = app.wait_job(r.json()["job_id"], timeout=150)
    assert job["status"] == "succeeded", job.get("error")
    manifest = ImportanceResult.load(app.data_dir / "artifacts" / job["result"]["artifact"]).manifest
    assert manifest["model"] == manifest["tokenizer"] == "demo" and manifest["world_size"] == 2


def _importance_ranks(app) -> list[str]:
    return live_ranks("worker.cli importance", str(app.data_dir))


def test_requests_no_worker_can_hold_are_refused(app, body):
    before = app.api.get("/jobs").json()
    r = app.api.post("/importance-runs", json={**body, "gpus": 4})
    assert r.status_code == 409 and "gpus" in r.text and "use gpus <= 2" in r.text, r.text
    r = app.api.post("/importance-runs", json={**body, "gpus": 2, "offload": "always"})
    assert r.status_code == 422 and "offload" in r.text and "one process" in r.text, r.text
    assert app.api.get("/jobs").json() == before


def test_evaluate_with_gpus_is_data_parallel(app, body):
    """`gpus: 2`: the perplexity over 2 gloo ranks equals the one-process job's (1e-6 relative), and
    the lm-eval task, run on the 2 ranks, scores what the one-process job scores."""
    jobs = {}
    for gpus in (2, 1):
        params = {"gpus": gpus, "max_documents": 6, "seq_len": 32, "stride": 16, "limit": 4}
        params["tasks"] = ["prunescope_cloze"]
        r = app.api.post(
            "/jobs", json={"kind": "evaluate", "teacher_id": body["teacher_id"], "params": params}
        )
        assert r.status_code == 201, r.text
        jobs[gpus] = app.wait_job(r.json()["id"], timeout=150)
        assert jobs[gpus]["status"] == "succeeded", (jobs[gpus].get("error"), app.worker.log())
    two, one = jobs[2]["result"], jobs[1]["result"]
    assert two["perplexity"]["tokens"] == one["perplexity"]["tokens"] > 0
    rel = abs(two["perplexity"]["perplexity"] / one["perplexity"]["perplexity"] - 1)
    assert rel <= 1e-6, (two["perplexity"], one["perplexity"])
    assert two["perplexity"]["world_size"] == 2 and two["distributed"]["world_size"] == 2
    assert (two["device"], two["dtype"]) == (one["device"], one["dtype"]) == ("cpu", "float32")
    assert two["tasks"] == one["tasks"] and two["tasks"]
    assert "data-parallel over 2 ranks" in two["distributed"]["tasks"]
    text = json.dumps(app.api.get(f"/jobs/{jobs[2]['id']}/logs").json())
    assert "launching 2 ranks" in text
    assert live_ranks("worker.evaluate_ranks", str(app.data_dir)) == []


def test_cancel_during_lm_eval_on_two_ranks(app, body):
    """Cancelled while its two ranks answer lm-eval's model calls: the job ends cancelled within
    seconds, none of its ranks (nor their agent) is left, and no result row is written."""
    # Every item of both local tasks, in lm-eval's batches of 8: the calls take seconds, so the cancel
    # lands while the ranks are in the harness.
    params = {"gpus": 2, "max_documents": 2, "seq_len": 32, "limit": 200}
    params["tasks"] = ["prunescope_cloze", "prunescope_rolling"]
    r = app.api.post("/jobs", json={"kind": "evaluate", "teacher_id": body["teacher_id"], "params": params})
    assert r.status_code == 201, r.text
    job_id, marker = r.json()["id"], str(app.data_dir)
    deadline = time.monotonic() + 120
    in_call = re.compile(r"lm-eval \w+: \d+/\d+ ")  # a model call's progress (LmEvalCount)
    while not in_call.match((job := app.api.get(f"/jobs/{job_id}").json())["message"] or ""):
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, (job, app.worker.log())
        time.sleep(0.1)
    ranks = live_ranks("worker.evaluate_ranks", marker)
    assert len(ranks) >= 3, ranks  # the agent and the two ranks, in a call
    staging = Path(re.search(r" --out (\S+)", ranks[0])[1]).parent  # where the ranks write
    cancelled_at = time.monotonic()
    assert app.api.post(f"/jobs/{job_id}/cancel").status_code == 202
    done = app.wait_job(job_id, timeout=60)
    took = time.monotonic() - cancelled_at
    assert done["status"] == "cancelled", (done.get("error"), app.worker.log())
    assert took < 15, took
    assert done["result"] is None and done["progress"] < 0.95, done  # ended inside lm-eval's calls
    with sqlite3.connect(app.data_dir / "prunescope.db") as db:
        rows = db.execute("SELECT id FROM benchmark_results WHERE job_id = ?", (job_id,)).fetchall()
    assert rows == [] and not staging.exists(), staging  # no result, nor the ranks' half-done files
    deadline = time.monotonic() + 15
    while (left := live_ranks("worker.evaluate_ranks", marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == []
    print(f"cancelled during {job['message']!r}, at {done['message']!r}: the job ended {took:.1f} s later")


def test_cancel_stops_every_importance_rank(app, body):
    import time

    r = app.api.post(
        "/importance-runs", json={**body, "gpus": 2, "samples": 3000, "seq_len": 32, "batch_size": 1}
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 120
    while "calibration" not in (app.api.get(f"/jobs/{job_id}").json().get("message") or ""):
        assert time.monotonic() < deadline, app.worker.log()
        time.sleep(0.3)
    assert len(_importance_ranks(app)) >= 2
    assert app.api.post(f"/jobs/{job_id}/cancel").status_code == 202
    done = app.wait_job(job_id, timeout=60)
    assert done["status"] == "cancelled", done.get("error")
    deadline = time.monotonic() + 30
    while _importance_ranks(app) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _importance_ranks(app) == []
