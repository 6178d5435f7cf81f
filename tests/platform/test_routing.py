"""Device routing: the rules (backend.routing), the API's use of the worker registry (409 for a CUDA job
with no CUDA worker, 422 for a bad device, auto -> gpu only when a GPU worker is live, resume re-routes),
and real CPU workers: registered while alive, gone after a clean stop or once a killed one's entry
expires, running an "auto" job from the `cpu` queue, and refusing a CUDA job that reaches them anyway."""

from __future__ import annotations

import os
import socket
import time

import pytest
from sqlalchemy import func, select

from backend import fleet
from backend.db import session_scope
from backend.models import Dataset, ImportanceRun, Job, Plan, Student, Teacher
from backend.routing import NoWorkerForDevice, can_serve, check_queues, default_queues, route
from tests.conftest import WorkerProcess, settings_from, start_live_app, stop_live_app
from tests.platform.helpers import error_text, make_student
from tests.tiny_models import tiny_spec

# ---- the rules -------------------------------------------------------------------------------------


def test_route_rules():
    assert route("inspect", "auto", []) == "default"
    assert route("inspect", "auto", ["gpu"]) == "default"
    for kind in ("importance", "prune", "preview", "distill", "evaluate", "benchmark"):
        assert route(kind, "auto", []) == "cpu"  # nobody registered: waits for a CPU worker
        assert route(kind, "auto", ["cpu", "default"]) == "cpu"
        assert route(kind, "auto", ["gpu", "default", "cpu"]) == "gpu"
        assert route(kind, "cpu", ["gpu", "default"]) == "cpu"
        assert route(kind, "cuda", ["gpu"]) == "gpu"
        for live in ([], ["cpu", "default"], ["default"]):
            with pytest.raises(NoWorkerForDevice, match=r"no live worker serves cuda.*--device cuda:0"):
                route(kind, "cuda", live)
    with pytest.raises(ValueError, match="unknown device requirement 'tpu'"):
        route("distill", "tpu", [])


def test_worker_queues_follow_its_device():
    assert default_queues("cpu") == ["cpu", "default"]
    assert default_queues("cuda:1") == ["gpu", "default"]
    assert check_queues("cpu", ["default", " cpu", "default"]) == ["default", "cpu"]
    assert check_queues("cuda:0", ["gpu"]) == ["gpu"]
    for device, queues, message in (
        ("cpu", ["default", "gpu"], "a cpu worker cannot serve the 'gpu' queue"),
        ("cuda:0", ["cpu"], "a cuda:0 worker cannot serve the 'cpu' queue"),
        ("cpu", ["fast"], "unknown queue 'fast'"),
        ("cpu", [" ", ""], "no queue given"),
    ):
        with pytest.raises(ValueError, match=message):
            check_queues(device, queues)
    assert can_serve("cpu", "auto") and can_serve("cpu", "cpu") and not can_serve("cpu", "cuda")
    assert can_serve("cuda:3", "cuda") and can_serve("cuda:3", "auto") and not can_serve("cuda:3", "cpu")


# ---- the API and the registry (in-process API, no worker) -------------------------------------------


def counts(url: str) -> dict:
    with session_scope(url) as s:
        models = (Job, ImportanceRun, Student, Plan)
        return {m.__name__: s.scalar(select(func.count()).select_from(m)) for m in models}


def fake_worker(api_env, device: str, queues: list[str], pid: int = 4242) -> dict:
    """A registry entry as a worker on `device` writes it (no such GPU needed to test the routing)."""
    record = {
        "hostname": "gpu-box",
        "device": device,
        "queues": queues,
        "pid": pid,
        "started_at": "2025-01-01T00:00:00Z",
    }
    settings = settings_from(api_env)
    fleet.publish(fleet.client_for(settings), settings.redis_prefix, record, ttl_s=600)
    return record


def forget_worker(api_env, record: dict) -> None:
    settings = settings_from(api_env)
    fleet.remove(fleet.client_for(settings), settings.redis_prefix, record)


@pytest.fixture
def setup(api_env, client):
    """A ready teacher, a dataset and an explicit plan, as rows."""
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher = Teacher(name="t", source="org/model", status="ready", spec=tiny_spec().summary())
        dataset = Dataset(name="d", source="demo")
        s.add_all([teacher, dataset])
        s.flush()
        ids = {"teacher": teacher.id, "dataset": dataset.id}
    plan = client.post(
        "/api/v1/plans", json={"teacher_id": ids["teacher"], "name": "p", "plan": {"drop_layers": [3]}}
    )
    assert plan.status_code == 201, plan.text
    return {**ids, "plan": plan.json()["id"]}


def submissions(setup: dict, device) -> list[tuple[str, dict]]:
    """One request for every heavy kind a client can submit, each asking for `device`."""
    t, d, p = setup["teacher"], setup["dataset"], setup["plan"]
    return [
        ("/api/v1/importance-runs", {"teacher_id": t, "dataset_id": d, "device": device}),
        ("/api/v1/students", {"plan_id": p, "name": "s", "device": device}),
        (f"/api/v1/plans/{p}/preview", {"device": device}),
        ("/api/v1/jobs", {"kind": "benchmark", "teacher_id": t, "params": {"device": device}}),
        ("/api/v1/jobs", {"kind": "evaluate", "teacher_id": t, "params": {"device": device}}),
    ]


def test_cuda_job_without_a_cuda_worker_is_409_and_writes_nothing(client, api_env, setup):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    cpu_only = fake_worker(api_env, "cpu", ["cpu", "default"])
    before = counts(url)
    for path, body in submissions(setup, "cuda"):
        r = client.post(path, json=body)
        assert r.status_code == 409, (path, r.text)
        detail = error_text(r)
        assert "no live worker serves cuda" in detail and "prunescope worker --device cuda:0" in detail
        # where the request holds the field, as every 422 names it
        at = ["body", "params", "device"] if "params" in body else ["body", "device"]
        assert r.json()["detail"][0]["loc"] == at, (path, r.text)
    assert counts(url) == before
    forget_worker(api_env, cpu_only)


def test_bad_device_is_422_naming_the_field(client, api_env, setup):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    before = counts(url)
    for path, body in submissions(setup, "gpu"):
        r = client.post(path, json=body)
        assert r.status_code == 422, (path, r.text)
        loc = ["body", "params", "device"] if path.endswith("/jobs") else ["body", "device"]
        assert loc in [e["loc"] for e in r.json()["detail"]], (path, r.json())
    assert counts(url) == before


def test_auto_follows_the_live_workers(client, api_env, setup):
    assert client.get("/api/v1/workers").json() == []

    def queues(device) -> list[str]:
        created = []
        for path, body in submissions(setup, device):
            r = client.post(path, json=body)
            assert r.status_code in (201, 202), (path, r.text)
            created.append(r.json())
        jobs = client.get(f"/api/v1/jobs?limit={len(created)}").json()
        assert all(j["params"]["device"] == device for j in jobs)
        return sorted({j["queue"] for j in jobs})

    assert queues("auto") == ["cpu"]  # no worker at all: heavy jobs wait on `cpu`
    cpu = fake_worker(api_env, "cpu", ["cpu", "default"], pid=1)
    assert queues("auto") == ["cpu"]
    gpu = fake_worker(api_env, "cuda:0", ["gpu", "default"], pid=2)
    listed = client.get("/api/v1/workers").json()
    assert [(w["device"], w["queues"], w["pid"]) for w in listed] == [
        ("cpu", ["cpu", "default"], 1),
        ("cuda:0", ["gpu", "default"], 2),
    ]
    assert queues("auto") == ["gpu"]
    assert queues("cuda") == ["gpu"]
    assert queues("cpu") == ["cpu"]
    teacher = client.post("/api/v1/teachers", json={"name": "x", "source": "demo"}).json()
    assert client.get(f"/api/v1/jobs/{teacher['job_id']}").json()["queue"] == "default"
    forget_worker(api_env, gpu)
    assert [w["pid"] for w in client.get("/api/v1/workers").json()] == [1]
    assert queues("auto") == ["cpu"]
    forget_worker(api_env, cpu)


def test_resume_routes_again(client, api_env, setup):
    """A job refused before it started is resumable; resuming applies the routing rules anew."""
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        job = Job(
            kind="benchmark",
            params={"device": "cuda", "repeats": 1},
            queue="cpu",
            status="failed",
            error="refused by worker x:cpu",
            teacher_id=setup["teacher"],
        )
        s.add(job)
        s.flush()
        jid = job.id
    assert client.get(f"/api/v1/jobs/{jid}").json()["resumable"] is True
    r = client.post(f"/api/v1/jobs/{jid}/resume")
    assert r.status_code == 409 and "no live worker serves cuda" in error_text(r)
    # The request has no device field: the problem is the stored job's (it named ["device"]).
    (problem,) = r.json()["detail"]
    assert problem["loc"] == [], problem
    assert problem["msg"].startswith(f"job {jid}'s device: "), problem
    unchanged = client.get(f"/api/v1/jobs/{jid}").json()
    assert unchanged["status"] == "failed" and unchanged["attempts"] == 1 and unchanged["queue"] == "cpu"

    gpu = fake_worker(api_env, "cuda:0", ["gpu", "default"])
    r = client.post(f"/api/v1/jobs/{jid}/resume")
    assert r.status_code == 202, r.text
    resumed = r.json()
    assert (resumed["status"], resumed["queue"], resumed["attempts"]) == ("queued", "gpu", 2)
    assert resumed["error"] is None and resumed["message"] == "resubmitted"
    forget_worker(api_env, gpu)


# ---- real workers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory, redis_url):
    app = start_live_app(tmp_path_factory.mktemp("routing"), redis_url, with_worker=False)
    yield app
    stop_live_app(app)


@pytest.fixture(scope="module")
def cpu_worker(app, tmp_path_factory):
    """A CPU worker started without --queues: it takes its device's default, cpu,default."""
    worker = WorkerProcess(app.env, tmp_path_factory.mktemp("w") / "worker.log", queues=None).start()
    yield worker
    worker.stop()


def entry(app, pid: int) -> dict | None:
    return next((w for w in app.api.get("/workers").json() if w["pid"] == pid), None)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not seen within {timeout} s")


def test_a_started_worker_is_registered(app, cpu_worker):
    record = entry(app, cpu_worker.proc.pid)
    assert record is not None, cpu_worker.log()
    assert record["device"] == "cpu" and record["queues"] == ["cpu", "default"]
    assert record["hostname"] == socket.gethostname() and record["started_at"].endswith("Z")


def test_auto_jobs_run_on_the_cpu_worker(app, cpu_worker):
    student = make_student(app)
    job = app.api.get(f"/jobs/{student['job_id']}").json()
    assert (job["queue"], job["params"]["device"], job["device"]) == ("cpu", "auto", "cpu")
    assert job["status"] == "succeeded"
    before = len(app.api.get("/jobs").json())
    body = {"kind": "distill", "student_id": student["id"], "params": {"device": "cuda"}}
    r = app.api.post("/jobs", json=body)
    assert r.status_code == 409 and "--device cuda:0" in error_text(r)
    assert len(app.api.get("/jobs").json()) == before


def test_a_worker_refuses_a_job_for_another_device(app, cpu_worker):
    """A CUDA job whose message reaches a CPU worker anyway (published to its queue by hand) fails with
    the reason, stays resumable, and the worker goes on serving."""
    from backend.queue import RUN_JOB, make_celery

    teacher = app.api.post("/teachers", json={"name": "t", "source": str(app.teacher_dir)}).json()
    assert app.wait_job(teacher["job_id"])["status"] == "succeeded"
    params = {"repeats": 1, "seq_len": 8, "new_tokens": 2}
    gpu = fake_worker(app.env, "cuda:0", ["gpu", "default"])  # so the API accepts a cuda job
    try:
        body = {"kind": "benchmark", "teacher_id": teacher["id"], "params": {**params, "device": "cuda"}}
        r = app.api.post("/jobs", json=body)
        assert r.status_code == 201 and r.json()["queue"] == "gpu", r.text
    finally:
        forget_worker(app.env, gpu)
    jid = r.json()["id"]
    make_celery(app.env["PRUNESCOPE_BROKER_URL"], app.env["PRUNESCOPE_REDIS_PREFIX"]).send_task(
        RUN_JOB, args=[jid, 1], queue="cpu"
    )
    failed = app.wait_job(jid, timeout=120)
    assert failed["status"] == "failed", (failed, cpu_worker.log())
    assert "requires device cuda" in failed["error"] and "runs on cpu" in failed["error"]
    assert failed["resumable"] and failed["started_at"] is None and failed["device"] is None

    assert cpu_worker.proc.poll() is None
    ok = app.api.post("/jobs", json={"kind": "benchmark", "teacher_id": teacher["id"], "params": params})
    assert ok.status_code == 201 and ok.json()["queue"] == "cpu"
    assert app.wait_job(ok.json()["id"])["status"] == "succeeded"
    r = app.api.post(f"/jobs/{jid}/resume")  # still no CUDA worker: refused again, nothing changes
    assert r.status_code == 409 and "no live worker serves cuda" in error_text(r)
    assert app.api.get(f"/jobs/{jid}").json()["attempts"] == 1


def test_a_cleanly_stopped_worker_leaves_the_registry(app, tmp_path):
    # Refreshed every 120 s (the entry would live 6 min): gone right after the stop means it was deleted.
    env = {**app.env, "PRUNESCOPE_WORKER_REFRESH_S": "120"}
    worker = WorkerProcess(env, tmp_path / "stopped.log").start()
    try:
        assert entry(app, worker.proc.pid) is not None, worker.log()
    finally:
        worker.stop()
    assert entry(app, worker.proc.pid) is None


def test_a_killed_workers_entry_expires(app, tmp_path):
    # Refreshed every 2 s, so the entry lives 6 s without a refresh: it outlives that while the worker
    # runs, and goes once the killed worker stops refreshing it.
    env = {**app.env, "PRUNESCOPE_WORKER_REFRESH_S": "2"}
    worker = WorkerProcess(env, tmp_path / "killed.log").start()
    try:
        time.sleep(10)
        assert entry(app, worker.proc.pid) is not None, worker.log()
        pid = worker.proc.pid
        worker.kill()
        wait_for(lambda: entry(app, pid) is None, 60, "the killed worker's entry expiring")
    finally:
        worker.stop()


def test_no_glob_surprises_in_the_prefix(api_env):
    """A prefix with glob characters lists its own workers only."""
    base = {**api_env, "PRUNESCOPE_REDIS_PREFIX": api_env["PRUNESCOPE_REDIS_PREFIX"] + "a[b]*:"}
    other = {**api_env, "PRUNESCOPE_REDIS_PREFIX": api_env["PRUNESCOPE_REDIS_PREFIX"] + "ab-x:"}
    mine = fake_worker(base, "cpu", ["cpu", "default"], pid=os.getpid())
    theirs = fake_worker(other, "cpu", ["cpu", "default"], pid=7)
    try:
        assert [w["pid"] for w in fleet.live_workers(settings_from(base))] == [os.getpid()]
    finally:
        forget_worker(base, mine)
        forget_worker(other, theirs)
