"""A distill job over several nodes through the real API and two real CPU workers on this machine.

Each worker is a "node" with one gloo rank (`gpus: 1, nodes: 2`): the API sends node 0's message, the
worker that takes it joins the job's gang (worker.gang) and sends node 1's, the other worker takes it,
and the two torchrun agents meet at node 0's rendezvous. The job ends with the same weights as a
`gpus: 2` job on one worker (1e-5); a cancel and the loss of a node's worker end every rank; a gang that
cannot form fails cleanly within its own timeout (the job's `gang_timeout_s`); a job needing more
workers than are live is a 409.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from safetensors.torch import load_file

from tests.conftest import WorkerProcess, start_live_app, stop_live_app
from tests.platform.helpers import make_dataset, make_student, start_distill
from tests.platform.test_multi_rank_jobs import rank_processes, wait_for_step, wait_no_ranks

# The workers' gang timeout (PRUNESCOPE_GANG_TIMEOUT_S): jobs without a `gang_timeout_s` of their own.
WORKER_GANG_TIMEOUT_S = 60
# A gang that cannot form fails after its own `gang_timeout_s`, not the workers'.
SHORT_GANG_TIMEOUT_S = 10
# Gangs that wait on a worker kept busy (or paused) while other jobs run: their wait spans those jobs,
# which took over 30 s on the loaded 2-core CI box (the 40 s a busy-worker gang had ran out there).
PATIENT_GANG_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, redis_url):
    """API + worker A, and worker B on the same database, Redis prefix and artifacts (a shared store)."""
    base = tmp_path_factory.mktemp("nodes")
    app = start_live_app(
        base,
        redis_url,
        PRUNESCOPE_WORKER_CPU_RANKS="2",
        PRUNESCOPE_GANG_TIMEOUT_S=str(WORKER_GANG_TIMEOUT_S),
        PRUNESCOPE_WORKER_ADDRESS="127.0.0.1",
    )
    second = WorkerProcess(app.env, base / "worker-b.log").start()
    app.second = second
    yield app
    second.stop()
    stop_live_app(app)


def _student(app) -> dict:
    return next(iter(app.api.get("/students").json()), None) or make_student(app)


def _weights(app, job: dict) -> dict:
    return load_file(app.data_dir / "artifacts" / job["result"]["artifact"] / "model.safetensors")


def _text(app, job_id: int) -> str:
    return json.dumps(app.api.get(f"/jobs/{job_id}/logs").json())


def test_two_nodes_end_with_the_weights_of_two_ranks_on_one_node(two_nodes):
    app = two_nodes
    assert len(app.api.get("/workers").json()) == 2
    student = _student(app)
    dataset = make_dataset(app)["id"]
    params = dict(steps=4, batch_size=2, checkpoint_every=0, warmup=1, lr=3e-3, dataset_id=dataset)
    nodes_job = start_distill(app, student["id"], gpus=1, nodes=2, **params)
    done = app.wait_job(nodes_job["id"], timeout=180)
    assert done["status"] == "succeeded", (done.get("error"), app.worker.log(), app.second.log())
    result = done["result"]
    assert result["world_size"] == 2 and result["nodes"] == 2 and result["steps"] == 4
    assert len(set(result["workers"])) == 2  # two distinct workers, one node each
    assert (
        result["teacher_placement"] == "replicate" and "memory planner" in result["teacher_placement_reason"]
    )
    manifest = json.loads(
        (app.data_dir / "artifacts" / result["artifact"] / "prunescope_manifest.json").read_text()
    )
    assert manifest["world_size"] == 2 and manifest["nodes"] == 2
    series = app.api.get(f"/jobs/{nodes_job['id']}/metrics?names=loss").json()["series"]["loss"]
    assert [p["step"] for p in series] == [1, 2, 3, 4]
    text = _text(app, nodes_job["id"])
    assert "gang of 2 nodes" in text and "--nnodes=2 --node-rank=0" in text
    assert "[node 1] launching 1 ranks" in text  # node 1's lines reach the job's log

    one_node = start_distill(app, student["id"], gpus=2, **params)
    reference = app.wait_job(one_node["id"], timeout=180)
    assert reference["status"] == "succeeded", reference.get("error")
    got, want = _weights(app, done), _weights(app, reference)
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert (got[name].float() - tensor.float()).abs().max().item() <= 1e-5, name
    first = load_file(app.data_dir / "artifacts" / student["path"] / "model.safetensors")
    moved = max((first[n].float() - t.float()).abs().max().item() for n, t in want.items() if n in first)
    assert moved > 1e-3  # the 4 steps moved the weights far beyond the tolerance above
    assert rank_processes(str(app.data_dir)) == []


def test_more_nodes_than_live_workers_is_refused(two_nodes):
    app = two_nodes
    student = _student(app)
    before = app.api.get("/jobs").json()
    r = app.api.post(
        "/jobs",
        json={"kind": "distill", "student_id": student["id"], "params": {"nodes": 3, "batch_size": 3}},
    )
    assert r.status_code == 409, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "params", "nodes"] and error["nearby"] == [1, 2], error
    assert "this distillation asks for 3 workers" in error["msg"] and "use nodes <= 2" in error["msg"]
    assert app.api.get("/jobs").json() == before
    r = app.api.post(
        "/jobs",
        json={"kind": "distill", "student_id": student["id"], "params": {"nodes": 2, "batch_size": 3}},
    )
    assert r.status_code == 422 and "gpus x nodes (1 x 2)" in r.text, r.text
    r = app.api.post(
        "/jobs",
        json={"kind": "distill", "student_id": student["id"], "params": {"nodes": 2, "gang_timeout_s": 1}},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "gang_timeout_s", r.text
    assert app.api.get("/jobs").json() == before


def test_a_gang_that_cannot_form_fails_within_its_timeout(two_nodes):
    app = two_nodes
    student = _student(app)
    app.second.pause_when_idle()  # still in the registry, but takes nothing: node 1's message finds no taker
    try:
        job = start_distill(
            app,
            student["id"],
            gpus=1,
            nodes=2,
            steps=4,
            checkpoint_every=0,
            gang_timeout_s=SHORT_GANG_TIMEOUT_S,
        )
        began = time.monotonic()
        done = app.wait_job(job["id"], timeout=SHORT_GANG_TIMEOUT_S + 110)
    finally:
        app.second.pause(False)
    assert done["status"] == "failed"
    # The job's own timeout, not the workers' (WORKER_GANG_TIMEOUT_S)
    assert f"only 1 of 2 nodes joined within {SHORT_GANG_TIMEOUT_S} s" in done["error"], done["error"]
    assert done["resumable"] and done["started_at"] is None  # refused before it was claimed: nothing ran
    # Its own timeout (the rest: a worker taking the message on a loaded machine).
    assert time.monotonic() - began < WORKER_GANG_TIMEOUT_S
    assert rank_processes(str(app.data_dir)) == []  # nothing was launched
    # The message node 1 never got to is dropped by whoever takes it: the job stays failed.
    time.sleep(2)
    assert app.api.get(f"/jobs/{job['id']}").json()["status"] == "failed"


def _wait_message(app, job_id: int, text: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        job = app.api.get(f"/jobs/{job_id}").json()
        seen.append((round(time.monotonic(), 1), job["status"], job["message"]))
        if text in (job["message"] or ""):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never said {text!r}: {seen[-20:]}\n{app.worker.log()}")


def _process_group(app, job_id: int, timeout: float = 60.0) -> int:
    """The process group of a running one-process job (its worker's: a job process is the worker's child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"running in process (\d+)", _text(app, job_id))
        if found:
            return os.getpgid(int(found.group(1)))
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never said which process runs it: {_text(app, job_id)}")


def _busy_worker_b(app, teacher: int) -> int:
    """Worker B running a long evaluation (its id), worker A free: two long evaluations take a worker each
    (prefetch 1), and the one on A is cancelled. A busy worker as users have them, not a paused one (a
    stopped worker whose BRPOP is pending is handed a message it cannot read until it is continued)."""
    # 64 train documents, a window every 4 tokens: minutes of windows, ended by its cancel (the 16 test
    # documents at stride 16 once ran out within the test on a fast CI machine).
    endless = {"max_documents": 64, "split": "train", "stride": 4}
    jobs = [_evaluate(app, teacher, **endless)["id"] for _ in range(2)]
    groups = {job_id: _process_group(app, job_id) for job_id in jobs}
    assert sorted(groups.values()) == sorted([app.worker.proc.pid, app.second.proc.pid]), groups
    on_a, on_b = sorted(jobs, key=lambda job_id: groups[job_id] != app.worker.proc.pid)
    assert app.api.post(f"/jobs/{on_a}/cancel").status_code == 202
    assert app.wait_job(on_a, timeout=60)["status"] == "cancelled"
    return on_b


def test_a_gang_waiting_on_a_busy_worker_lets_a_queued_job_use_its_leaders_worker(two_nodes):
    """Worker B is busy with a long job; a `nodes: 2` evaluation leads on worker A and an evaluation on
    one node is queued behind it. The gang gives A back while B is busy: the single-node job runs on A
    while the gang waits (still queued, saying why), then B's job ends and the gang forms and succeeds,
    within its timeout counted across its rounds."""
    app = two_nodes
    teacher = _student(app)["teacher_id"]
    began = time.monotonic()
    busy = _busy_worker_b(app, teacher)
    assert app.second.job_processes(), "B's job process is not seen"  # what pause_when_idle waits on
    small = {"max_documents": 2, "stride": 30}
    gang = _evaluate(app, teacher, nodes=2, gang_timeout_s=PATIENT_GANG_TIMEOUT_S, **small)
    _wait_message(app, gang["id"], "waiting for 2 nodes to join")  # A leads it
    single = _evaluate(app, teacher, **small)
    waiting = _wait_message(app, gang["id"], "waiting for 1 busy worker on the 'cpu' queue")
    assert waiting["status"] == "queued", waiting
    alone = app.wait_job(single["id"], timeout=60)
    assert alone["status"] == "succeeded", (alone.get("error"), app.worker.log())
    assert app.api.get(f"/jobs/{gang['id']}").json()["status"] == "queued"  # not failed meanwhile
    assert app.api.get(f"/jobs/{busy}").json()["status"] == "running"  # B was busy all along
    assert app.api.post(f"/jobs/{busy}/cancel").status_code == 202  # B frees up
    assert app.wait_job(busy, timeout=60)["status"] == "cancelled"
    try:
        done = app.wait_job(gang["id"], timeout=90)
    except AssertionError as exc:  # wait_job shows worker A's log; the gang waits on B
        raise AssertionError(f"{exc}\nworker B:\n{app.second.log()}") from None
    assert done["status"] == "succeeded", (done.get("error"), app.worker.log(), app.second.log())
    assert done["result"]["distributed"]["nodes"] == 2
    assert alone["finished_at"] <= done["started_at"]  # the single-node job did not wait for the gang
    text = _text(app, gang["id"])
    assert "waiting for 1 busy worker on the 'cpu' queue while 1 other job waits there" in text, text
    assert "gives way, node 0 retries in 3 s" in text and "[node 1] launching 1 ranks" in text
    assert rank_processes(str(app.data_dir)) == []
    print(f"single-node job ran during the gang's wait; both done in {time.monotonic() - began:.1f} s")


def test_cancel_ends_the_ranks_of_every_node(two_nodes):
    app = two_nodes
    student = _student(app)
    job = start_distill(app, student["id"], gpus=1, nodes=2, steps=100_000, checkpoint_every=0)
    wait_for_step(app, job["id"], 1)
    assert app.api.post(f"/jobs/{job['id']}/cancel").status_code == 202
    done = app.wait_job(job["id"], timeout=60)
    assert done["status"] == "cancelled", done.get("error")
    assert done["checkpoint_step"] >= 1  # the ranks' sharded checkpoint as they stopped together
    assert wait_no_ranks(str(app.data_dir)) == []


def _importance(app, teacher_id: int, dataset_id: int, **params) -> dict:
    body = {"teacher_id": teacher_id, "dataset_id": dataset_id, "samples": 8, "seq_len": 24, "batch_size": 2}
    r = app.api.post("/importance-runs", json={**body, "scans": ["bi", "drop"], **params})
    assert r.status_code == 201, r.text
    return r.json()


def _evaluate(app, teacher_id: int, **params) -> dict:
    params = {"max_documents": 6, "seq_len": 32, "stride": 16, **params}
    r = app.api.post("/jobs", json={"kind": "evaluate", "teacher_id": teacher_id, "params": params})
    assert r.status_code == 201, r.text
    return r.json()


def test_competing_gangs_both_run_and_importance_and_evaluate_over_two_nodes_are_one_process(two_nodes):
    """An importance run and an evaluation, both `nodes: 2`, reach the two workers together (both
    paused while they are sent, so each worker takes one job's node 0): without arbitration both gangs
    would wait for the other's worker until their timeouts. The younger gang yields, the older forms,
    then the younger: both succeed. The importance artifact equals a one-process run's and the
    perplexity a one-process evaluation's, to 1e-6 relative."""
    import numpy as np

    from worker.engine.importance.result import ImportanceResult

    app = two_nodes
    student = _student(app)
    teacher, dataset = student["teacher_id"], make_dataset(app)["id"]
    for w in (app.worker, app.second):
        w.pause_when_idle()
    try:
        imp = _importance(app, teacher, dataset, nodes=2, gang_timeout_s=PATIENT_GANG_TIMEOUT_S)
        ev = _evaluate(app, teacher, nodes=2, gang_timeout_s=PATIENT_GANG_TIMEOUT_S)
    finally:
        for w in (app.worker, app.second):
            w.pause(False)
    jobs = [app.wait_job(imp["job_id"], timeout=240), app.wait_job(ev["id"], timeout=240)]
    for job in jobs:
        assert job["status"] == "succeeded", (job.get("error"), app.worker.log(), app.second.log())
    logs = [_text(app, job["id"]) for job in jobs]
    assert sum("gives way, node 0 retries" in text for text in logs) >= 1, logs  # a gang yielded
    assert all("[node 1] launching 1 ranks" in text for text in logs)
    result = jobs[0]["result"]
    assert result["world_size"] == 2 and result["nodes"] == 2 and len(set(result["workers"])) == 2
    assert jobs[1]["result"]["distributed"]["nodes"] == 2

    references = _importance(app, teacher, dataset)["job_id"], _evaluate(app, teacher)["id"]  # one per worker
    one_imp, one_ev = (app.wait_job(job_id, timeout=150) for job_id in references)
    assert one_imp["status"] == one_ev["status"] == "succeeded", (one_imp.get("error"), one_ev.get("error"))
    got, want = (
        ImportanceResult.load(app.data_dir / "artifacts" / j["result"]["artifact"])
        for j in (jobs[0], one_imp)
    )
    assert got.manifest["world_size"] == 2 and got.manifest["nodes"] == 2 and got.samples == want.samples
    assert any(np.abs(a).max() > 0 for a in want.arrays.values())
    worst = 0.0
    for name, expected in want.arrays.items():
        np.testing.assert_allclose(got.arrays[name], expected, rtol=1e-6, atol=1e-12, err_msg=name)
        scale = np.abs(expected).max()
        if scale > 0:
            worst = max(worst, float(np.abs(got.arrays[name] - expected).max() / scale))
    two_ppl, one_ppl = jobs[1]["result"]["perplexity"], one_ev["result"]["perplexity"]
    assert two_ppl["tokens"] == one_ppl["tokens"] > 0 and two_ppl["world_size"] == 2
    rel = abs(two_ppl["perplexity"] / one_ppl["perplexity"] - 1)
    assert rel <= 1e-6, (two_ppl, one_ppl)
    print(
        f"over 2 nodes vs one process: importance worst relative difference {worst:.2e}, perplexity {rel:.2e}"
    )
    assert rank_processes(str(app.data_dir)) == []


def test_importance_over_more_nodes_than_workers_is_refused(two_nodes):
    app = two_nodes
    student = _student(app)
    body = {"teacher_id": student["teacher_id"], "dataset_id": make_dataset(app)["id"], "nodes": 3}
    r = app.api.post("/importance-runs", json=body)
    assert r.status_code == 409 and "use nodes <= 2" in r.text, r.text
    r = app.api.post("/importance-runs", json={**body, "nodes": 2, "offload": "always"})
    assert r.status_code == 422 and "offload" in r.text and "nodes > 1" in r.text, r.text


def _node_job_process(marker: str, node: int) -> int:
    """The job process running node `node`'s torchrun agent (the agent's parent)."""
    from pathlib import Path

    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "torch.distributed.run" in cmd and f"--node-rank={node}" in cmd and marker in cmd:
                status = (proc / "status").read_text()
                return int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))
        except OSError:
            continue
    raise AssertionError(f"no torchrun agent of node {node}")


def test_a_node_whose_worker_shuts_down_is_reported_as_such(two_nodes):
    """Node 1's worker shuts down: its warm shutdown sends SIGTERM to node 1's job process
    (worker.isolation), which stops its ranks, and every rank stops with them (the stop is all-reduced)
    with a checkpoint. The job fails saying which node stopped and why, not with torchrun's exit code,
    and is resumable. (The signal goes to the job process itself, so the worker stays for the next test.)"""
    import signal

    app = two_nodes
    student = _student(app)
    job = start_distill(app, student["id"], gpus=1, nodes=2, steps=100_000, checkpoint_every=0)
    wait_for_step(app, job["id"], 1)
    line = re.search(r"node 1 ([^ ]+):(\d+)", _text(app, job["id"]))
    worker = f"{line.group(1)}:{line.group(2)}"
    os.kill(_node_job_process(str(app.data_dir), 1), signal.SIGTERM)
    done = app.wait_job(job["id"], timeout=120)
    assert done["status"] == "failed", done
    assert f"node 1 (worker {worker}) stopped: worker shutting down; resumable" in done["error"], done[
        "error"
    ]
    assert "exited with code" not in done["error"]
    assert done["resumable"] and done["checkpoint_step"] >= 1  # every rank stopped with a checkpoint
    assert wait_no_ranks(str(app.data_dir)) == []


def test_losing_a_node_fails_the_job_and_leaves_no_rank(two_nodes):
    """Last in the module: SIGKILL the worker running node 1; every rank on both nodes ends."""
    app = two_nodes
    student = _student(app)
    job = start_distill(app, student["id"], gpus=1, nodes=2, steps=100_000, checkpoint_every=0)
    wait_for_step(app, job["id"], 1)
    node1_pid = int(re.search(r"node 1 [^ ]+:(\d+)", _text(app, job["id"])).group(1))  # the gang's log line
    victim = next(w for w in (app.worker, app.second) if os.getpgid(node1_pid) == w.proc.pid)
    began = time.monotonic()
    victim.kill()
    done = app.wait_job(job["id"], timeout=120)
    assert done["status"] == "failed", done
    assert time.monotonic() - began < 90
    assert wait_no_ranks(str(app.data_dir)) == []
