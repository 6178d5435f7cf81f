"""Killing a real worker (SIGKILL) mid-distillation: the job is marked failed with the reason, stays
resumable from its last checkpoint, keeps its metric points, and a resumed run writes no step twice.
A redelivered message of an old attempt never runs the job again."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.conftest import WorkerProcess, start_live_app, stop_live_app
from tests.platform.helpers import make_student, start_distill


@pytest.fixture(scope="module")
def app(tmp_path_factory, redis_url):
    # No worker of the app's own: the kill test starts (and kills) one, `healthy_worker` runs the rest.
    # The API marks a running job lost after 3 s without a heartbeat (workers beat every 0.5 s here).
    app = start_live_app(
        tmp_path_factory.mktemp("reliability"),
        redis_url,
        with_worker=False,
        PRUNESCOPE_HEARTBEAT_TIMEOUT_S="3",
    )
    yield app
    stop_live_app(app)


@pytest.fixture(scope="module")
def healthy_worker(app, tmp_path_factory):
    """A worker nothing killed, started when first asked for (never while a test's own worker should
    take the job): it runs the kill test's resumed job and stale message, then the shutdown test's job,
    which ends it. One worker start (its fork servers importing torch) fewer; no test leaves a job on it."""
    started: list[WorkerProcess] = []

    def get() -> WorkerProcess:
        if not started:
            started.append(WorkerProcess(app.env, tmp_path_factory.mktemp("healthy") / "worker.log").start())
        return started[0]

    yield get
    for worker in started:
        worker.stop()


def kd_points(app, job_id: int) -> dict[int, float]:
    series = app.api.get(f"/jobs/{job_id}/metrics?names=kd_loss").json()["series"].get("kd_loss", [])
    steps = [p["step"] for p in series]
    assert len(steps) == len(set(steps))
    return {p["step"]: p["value"] for p in series}


def disk_checkpoint_step(app, job_id: int) -> int | None:
    path = app.data_dir / "artifacts" / "checkpoints" / f"job-{job_id}" / "checkpoint.json"
    try:
        return json.loads(path.read_text())["step"]
    except (FileNotFoundError, ValueError, KeyError):  # none yet, or frozen mid-write
        return None


def freeze_past_a_checkpoint(app, worker: WorkerProcess, jid: int) -> None:
    """Leave `worker` frozen (SIGSTOP) with the job past a checkpoint and steps after it to replay on
    resume, and the job row caught up with the checkpoint on disk (the worker writes the file, then the
    row): what is checked is then exactly what gets killed."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        current = app.api.get(f"/jobs/{jid}").json()
        assert current["status"] in ("queued", "running"), (current, worker.log())
        if (current["checkpoint_step"] or 0) >= 3:
            worker.pause()
            ck = app.api.get(f"/jobs/{jid}").json()["checkpoint_step"]
            if ck == disk_checkpoint_step(app, jid) and max(kd_points(app, jid), default=0) > ck:
                return
            worker.pause(False)
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint reached: {worker.log()}")


def test_killed_worker_job_is_resumable_without_duplicates(app, healthy_worker, tmp_path):
    steps = 60  # enough that the job cannot finish while the test catches it between checkpoints
    first = WorkerProcess(app.env, tmp_path / "worker1.log").start()
    try:
        student = make_student(app)
        jid = start_distill(app, student["id"], steps=steps, checkpoint_every=3)["id"]
        freeze_past_a_checkpoint(app, first, jid)
        first.kill()
    finally:
        first.stop()
    killed_at = kd_points(app, jid)

    failed = app.wait_job(jid, timeout=30, statuses=("failed",))
    assert "worker lost" in failed["error"] and failed["resumable"] is True
    assert failed["checkpoint_step"] >= 3
    assert kd_points(app, jid) == killed_at  # what was written stays
    assert max(killed_at) > failed["checkpoint_step"]  # so the resumed run replays steps

    worker = healthy_worker()
    r = app.api.post(f"/jobs/{jid}/resume")
    assert r.status_code == 202 and r.json()["status"] == "queued" and r.json()["attempts"] == 2
    assert app.api.post(f"/jobs/{jid}/resume").status_code == 409  # already queued
    done = app.wait_job(jid, timeout=240)
    assert done["status"] == "succeeded", (done, worker.log())
    final = kd_points(app, jid)
    assert sorted(final) == list(range(1, steps + 1))
    assert all(final[s] == v for s, v in killed_at.items())
    logs = [entry["msg"] for entry in app.api.get(f"/jobs/{jid}/logs").json()]
    assert f"resuming from the checkpoint at step {failed['checkpoint_step']}" in logs

    # A stale message for attempt 1 (as Redis would redeliver after the visibility timeout) is ignored.
    from backend.queue import RUN_JOB, make_celery

    stale = make_celery(app.env["PRUNESCOPE_BROKER_URL"], app.env["PRUNESCOPE_REDIS_PREFIX"]).send_task(
        RUN_JOB, args=[jid, 1], queue="cpu"
    )
    handled = re.compile(rf"{re.escape(RUN_JOB)}\[{stale.id}\] succeeded in \S+s: '(\w+)'")
    deadline = time.monotonic() + 60  # the worker took it and said what it did (not a fixed sleep)
    while not (seen := handled.search(worker.log_path.read_text(errors="replace"))):
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.1)
    assert seen.group(1) == "skipped", worker.log()
    again = app.api.get(f"/jobs/{jid}").json()
    assert (
        again["status"] == "succeeded"
        and again["attempts"] == 2
        and again["finished_at"] == done["finished_at"]
    )
    assert kd_points(app, jid) == final


def test_worker_shutdown_checkpoints_and_leaves_job_resumable(app, healthy_worker):
    """SIGTERM (what Ctrl-C / `docker stop` send): the running distill checkpoints at once and is marked
    failed with the reason, resumable from that step; the worker exits without waiting for the job."""
    worker = healthy_worker()
    try:
        student = make_student(app)
        job = start_distill(app, student["id"], steps=200, checkpoint_every=0)
        jid = job["id"]
        deadline = time.monotonic() + 240
        while max(kd_points(app, jid), default=0) < 2:
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.1)
        t0 = time.monotonic()
        worker.stop()
        assert time.monotonic() - t0 < 20 and worker.proc.returncode is not None
    finally:
        worker.stop()
    failed = app.api.get(f"/jobs/{jid}").json()
    assert failed["status"] == "failed" and "worker shut down" in failed["error"], failed
    points = kd_points(app, jid)
    assert failed["resumable"] and failed["checkpoint_step"] == max(points) < 200
