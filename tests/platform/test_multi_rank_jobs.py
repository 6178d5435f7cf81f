"""A distill job over several ranks through the real API and a real CPU worker: `gpus: 2` runs as two
gloo ranks under torchrun launched by the job's process (worker.multi_rank), streams its metrics and
logs like a one-process job, saves a student whose manifest says world_size 2, and leaves no rank
running; a job that no live worker can hold (`gpus: 64` against a worker offering 2 ranks) is a 409
naming the reason and writes nothing; a global batch that does not split over the ranks is a 422."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import start_live_app, stop_live_app
from tests.engine.torchrun_helpers import live_ranks
from tests.platform.helpers import error_text, make_dataset, make_student, start_distill


@pytest.fixture(scope="module")
def two_rank_app(tmp_path_factory, redis_url):
    """API + a CPU worker offering two gloo ranks (PRUNESCOPE_WORKER_CPU_RANKS)."""
    app = start_live_app(tmp_path_factory.mktemp("ranks"), redis_url, PRUNESCOPE_WORKER_CPU_RANKS="2")
    yield app
    stop_live_app(app)


def rank_processes(marker: str) -> list[str]:
    """Command lines of live distill ranks of this test's app (other tests may run ranks of their own)."""
    return live_ranks("worker.cli distill", marker)


RANK_FIGURES = ("tokens_per_s", "peak_memory_bytes", "step_s")


def test_registry_lists_the_ranks_a_worker_offers(two_rank_app):
    workers = two_rank_app.api.get("/workers").json()
    assert [w["device_count"] for w in workers] == [2]
    assert workers[0]["gpus"] == []  # a CPU worker: its ranks share the host memory ("memory")
    assert workers[0]["memory"]["kind"] == "cpu"


@pytest.fixture(scope="module")
def two_rank_job(two_rank_app) -> dict:
    """A 4-step distillation on two ranks, run to its end (the cancel test continues from its weights)."""
    app = two_rank_app
    student = make_student(app)
    job = start_distill(app, student["id"], gpus=2, steps=4, batch_size=2, checkpoint_every=0, warmup=1)
    return app.wait_job(job["id"], timeout=150)


def test_two_rank_distill_runs_to_success_and_leaves_nothing(two_rank_app, two_rank_job):
    app, done = two_rank_app, two_rank_job
    job = done
    assert done["status"] == "succeeded", (done.get("error"), app.worker.log())
    assert done["result"]["world_size"] == 2 and done["result"]["steps"] == 4

    model_dir = app.data_dir / "artifacts" / done["result"]["artifact"]
    manifest = json.loads((model_dir / "prunescope_manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["kind"] == "distilled-student"
    assert (model_dir / "model.safetensors").is_file()

    series = app.api.get(f"/jobs/{job['id']}/metrics?names=loss,kd_loss").json()["series"]
    assert [p["step"] for p in series["loss"]] == [1, 2, 3, 4]  # every step of rank 0, through the job
    assert all(p["value"] > 0 for p in series["kd_loss"])
    # every rank's live figures, on every step (--log-every 1 for a short job)
    names = "world_size," + ",".join(f"rank{r}_{k}" for r in (0, 1) for k in RANK_FIGURES)
    live = app.api.get(f"/jobs/{job['id']}/metrics?names={names}").json()["series"]
    assert sorted(live) == sorted(names.split(","))
    assert all([p["step"] for p in points] == [1, 2, 3, 4] for points in live.values()), live
    assert {p["value"] for p in live["world_size"]} == {2}
    assert all(p["value"] > 0 for name, points in live.items() for p in points)
    logs = app.api.get(f"/jobs/{job['id']}/logs").json()
    text = json.dumps(logs)
    assert "launching 2 ranks" in text and "[train] step 4/4" in text  # the ranks' own output
    assert rank_processes(str(app.data_dir)) == []


def test_a_student_of_the_demo_teacher_distills_on_two_ranks(two_rank_app):
    """The demo teacher's stored source is "demo" (what `prunescope up` registers): the ranks get its
    directory, as importance and evaluate ranks do. Before, every `gpus: 2` distillation of its students
    failed on the worker with "model not found: demo"."""
    app = two_rank_app
    teacher = app.api.post("/teachers", json={"name": "demo", "source": "demo"}).json()
    assert app.wait_job(teacher["job_id"])["status"] == "succeeded"
    plan = {"remove_neurons": {"0": list(range(16))}}
    created = app.api.post(
        "/plans", json={"teacher_id": teacher["id"], "name": "demo-cut", "plan": plan}
    ).json()
    student = app.api.post("/students", json={"plan_id": created["id"], "name": "demo-s"}).json()
    assert app.wait_job(student["job_id"])["status"] == "succeeded"
    job = start_distill(app, student["id"], gpus=2, steps=2, batch_size=2, checkpoint_every=0, warmup=1)
    done = app.wait_job(job["id"], timeout=150)
    assert done["status"] == "succeeded", done.get("error")
    assert done["result"]["world_size"] == 2 and done["result"]["steps"] == 2
    assert rank_processes(str(app.data_dir)) == []


def test_a_failed_multi_rank_job_leads_with_the_ranks_error_line(two_rank_app, two_rank_job):
    """The ranks refuse the job's data (too few documents for a validation split): the job's error
    starts with the command's own line, as a one-process job's does, before the exit codes and the
    output's end (which began mid-word and hid that line among loading bars)."""
    app = two_rank_app
    student = app.api.get("/students").json()[0]
    tiny = make_dataset(app, documents=2)
    job = start_distill(app, student["id"], gpus=2, steps=2, dataset_id=tiny["id"], checkpoint_every=0)
    done = app.wait_job(job["id"], timeout=150)
    assert done["status"] == "failed"
    first = done["error"].splitlines()[0]
    assert first.startswith("RanksFailed: prunescope distill: error: "), done["error"][:600]
    assert rank_processes(str(app.data_dir)) == []


def test_a_job_no_worker_can_hold_is_refused(two_rank_app):
    app = two_rank_app
    student = app.api.get("/students").json()[0]
    before = app.api.get("/jobs").json()
    r = app.api.post(
        "/jobs",
        json={"kind": "distill", "student_id": student["id"], "params": {"gpus": 64, "batch_size": 64}},
    )
    assert r.status_code == 409, r.text
    detail = error_text(r)
    assert "gpus" in detail and "64 devices" in detail and "largest: 2" in detail and "gpus <= 2" in detail
    assert app.api.get("/jobs").json() == before  # nothing written

    r = app.api.post(
        "/jobs", json={"kind": "distill", "student_id": student["id"], "params": {"gpus": 2, "batch_size": 3}}
    )
    assert r.status_code == 422, r.text
    error = r.json()["detail"][0]
    assert error["loc"][-1] == "batch_size" and "multiple of gpus (2)" in error["msg"]


def wait_for_step(app, job_id: int, step: int, timeout: float = 120.0) -> None:
    """Until rank 0's metrics for `step` reached the job (the ranks are training)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        series = app.api.get(f"/jobs/{job_id}/metrics?names=loss").json()["series"]
        if any(p["step"] >= step for p in series.get("loss", [])):
            return
        assert app.api.get(f"/jobs/{job_id}").json()["status"] in ("queued", "running")
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not reach step {step}:\n{app.worker.log()}")


def wait_no_ranks(marker: str, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := rank_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def cancel_when_training(app, job_id: int, step: int) -> dict:
    """Once the job's metrics reach `step` (its ranks are training), cancel it; the job once it ended,
    with none of its ranks left."""
    wait_for_step(app, job_id, step)
    assert len(rank_processes(str(app.data_dir))) >= 2  # the two ranks (and the guard's own command line)
    assert app.api.post(f"/jobs/{job_id}/cancel").status_code == 202
    done = app.wait_job(job_id, timeout=60)
    assert done["status"] == "cancelled"
    assert done["checkpoint_step"] >= step and done["resumable"]  # the ranks' checkpoint as they stopped
    assert wait_no_ranks(str(app.data_dir)) == []
    return done


def test_cancel_stops_every_rank_and_a_resume_continues_on_two_ranks(two_rank_app, two_rank_job):
    """A job that cannot finish on its own (100,000 steps) is cancelled once it trains, resumed, and
    cancelled again once the resumed ranks trained a step past the checkpoint: no race with its end. It
    continues the finished 2-rank distillation (its weights are the ranks' student) after a teacher
    correction on the two ranks."""
    app = two_rank_app
    student_id = two_rank_job["student_id"]
    job = start_distill(
        app,
        student_id,
        gpus=2,
        steps=100_000,
        batch_size=2,
        checkpoint_every=0,
        teacher_correction_steps=2,
        init_distill_job_id=two_rank_job["id"],
    )
    wait_for_step(app, job["id"], 1)
    weights = f"jobs/{two_rank_job['id']}/model"  # the continued distillation's saved weights
    assert any(weights in cmd for cmd in rank_processes(str(app.data_dir))), rank_processes(str(app.data_dir))
    done = cancel_when_training(app, job["id"], 1)
    text = json.dumps(app.api.get(f"/jobs/{job['id']}/logs").json())
    assert "stop requested: every rank stops at its next step" in text
    tc = app.api.get(f"/jobs/{job['id']}/metrics?names=tc_ce_loss").json()["series"]["tc_ce_loss"]
    assert [p["step"] for p in tc] == [1, 2]  # the teacher corrected on the two ranks first

    stopped_at = done["checkpoint_step"]
    assert app.api.post(f"/jobs/{job['id']}/resume").status_code == 202
    done = cancel_when_training(app, job["id"], stopped_at + 1)
    assert done["attempts"] == 2
    series = app.api.get(f"/jobs/{job['id']}/metrics?names=loss").json()["series"]["loss"]
    assert [p["step"] for p in series] == list(range(1, len(series) + 1))  # each step once, none skipped
    assert len(series) > stopped_at
    text = json.dumps(app.api.get(f"/jobs/{job['id']}/logs").json())
    assert "resuming from the sharded checkpoint" in text


def test_worker_loss_ends_every_rank(two_rank_app):
    """Last in the module: SIGKILL the worker (and its job process) mid-run; no rank may survive it."""
    app = two_rank_app
    student = app.api.get("/students").json()[0]
    job = start_distill(app, student["id"], gpus=2, steps=100_000, batch_size=2, checkpoint_every=0)
    wait_for_step(app, job["id"], 1)
    assert rank_processes(str(app.data_dir))
    app.worker.kill()
    assert wait_no_ranks(str(app.data_dir)) == []
