"""Jobs that share a worker never share torch's process-global state (each runs in a process of its
own, worker.isolation), light jobs never wait behind heavy ones, and a benchmark runs alone on its
device (worker.device_lock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import REPO, WorkerProcess, start_live_app, stop_live_app
from tests.platform.helpers import make_dataset, make_student, start_distill
from worker.isolation import ChildDied, run_isolated
from worker.runtime import SHUTTING_DOWN

# ---- the primitive: targets that run in a job's process (importable by name) -----------------------------


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def hold_bf16_default(flags: str) -> str:
    """What transformers does while it builds a bf16 model: the process-wide default dtype is bf16."""
    import torch

    torch.set_default_dtype(torch.bfloat16)
    Path(flags, "bf16-set").touch()
    _wait_for(Path(flags, "fp32-done"))
    return str(torch.get_default_dtype())


def fp32_matmul_meanwhile(flags: str) -> str:
    """An fp32 model's forward whose activations are made in the default dtype, run while the other
    job holds bf16 as the default: in a shared process this is the reported `m1 and m2` error."""
    import torch

    weight = torch.ones(2, 3, dtype=torch.float32)  # the fp32 model's weights
    _wait_for(Path(flags, "bf16-set"))
    try:
        activations = torch.randn(4, 3)
        return str(torch.nn.functional.linear(activations, weight).dtype)
    finally:
        Path(flags, "fp32-done").touch()


def kill_myself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def wait_for_shutdown() -> str:
    deadline = time.monotonic() + 60
    while not SHUTTING_DOWN.is_set():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return "stopped at shutdown"


def test_concurrent_jobs_do_not_see_each_others_default_dtype(tmp_path):
    with ThreadPoolExecutor(2) as pool:  # as the worker's thread pool runs two jobs
        bf16 = pool.submit(run_isolated, hold_bf16_default, str(tmp_path))
        fp32 = pool.submit(run_isolated, fp32_matmul_meanwhile, str(tmp_path))
        assert fp32.result(timeout=120) == "torch.float32"
        assert bf16.result(timeout=120) == "torch.bfloat16"
    import torch

    assert torch.get_default_dtype() == torch.float32  # nor does the supervising process


def test_a_killed_job_process_is_reported():
    with pytest.raises(ChildDied, match="killed by SIGKILL"):
        run_isolated(kill_myself)


def test_worker_shutdown_reaches_the_job_process():
    threading.Timer(1.0, SHUTTING_DOWN.set).start()
    try:
        assert run_isolated(wait_for_shutdown) == "stopped at shutdown"  # got SIGTERM, stopped cleanly
    finally:
        SHUTTING_DOWN.clear()


def checkpoint_slowly_at_shutdown() -> str:
    wait_for_shutdown()
    time.sleep(1.5)  # writing its checkpoint and status, after the fork server has already gone
    return "stopped at shutdown"


def test_a_lost_fork_server_is_not_taken_for_the_end_of_the_job():
    """A SIGTERM to the worker's process group (systemd, `kill -- -PGID`, the tests' stop) also ends the fork
    server; multiprocessing then reports exit code 255 for a job process that is still stopping. The
    supervisor must wait for the job itself (it was marking the job failed before the job wrote why)."""
    from multiprocessing import forkserver

    from worker.isolation import warm_up

    warm_up()

    def group_sigterm() -> None:
        os.kill(forkserver._forkserver._forkserver_pid, signal.SIGTERM)
        SHUTTING_DOWN.set()

    threading.Timer(1.0, group_sigterm).start()
    try:
        assert run_isolated(checkpoint_slowly_at_shutdown) == "stopped at shutdown"
    finally:
        SHUTTING_DOWN.clear()
        warm_up()  # a new fork server for the tests that follow


SUPERVISOR = """
import sys
from worker.isolation import _context, run_isolated
_context.set_forkserver_preload([])  # this child needs no torch: start the server quicker
from tests.platform.test_isolation import report_pid_and_sleep
run_isolated(report_pid_and_sleep, sys.argv[1])
"""


def report_pid_and_sleep(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(120)


def test_a_job_process_exits_when_its_worker_is_killed(tmp_path):
    """SIGKILL of the worker alone (not its process group): the job stops too, so its heartbeat stops and
    the API marks it lost, as before jobs had processes of their own."""
    pid_file = tmp_path / "child.pid"
    worker = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(pid_file)], cwd=REPO)
    try:
        _wait_for(pid_file, timeout=120)
        child = int(pid_file.read_text())
        worker.kill()
        worker.wait()
        deadline = time.monotonic() + 20
        while _alive(child):
            assert time.monotonic() < deadline, "the job's process outlived its worker"
            time.sleep(0.1)
    finally:
        if worker.poll() is None:
            worker.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---- real workers -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory, redis_url):
    app = start_live_app(tmp_path_factory.mktemp("isolation"), redis_url, with_worker=False)
    yield app
    stop_live_app(app)


@pytest.fixture
def worker(app, tmp_path, request):
    w = WorkerProcess(app.env, tmp_path / "worker.log", args=request.param).start()
    app.worker = w  # so wait_job shows its log
    yield w
    w.stop()


# The job fork server as it is while still importing torch (worker.preload): a sitecustomize on its
# PYTHONPATH makes `import torch` sleep in the server process only (its command line names
# multiprocessing.forkserver).
SLOW_FORK_SERVER = """
import sys
import time

class SlowTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            time.sleep(120)
        return None

if b"multiprocessing.forkserver" in open("/proc/self/cmdline", "rb").read():
    sys.meta_path.insert(0, SlowTorch())
"""


def test_a_worker_stopped_while_its_fork_server_imports_leaves_nothing_running(app, tmp_path):
    """SIGTERM to the worker alone (systemd, `prunescope up` stopping its children): its fork server,
    which only notices the worker is gone from its main loop, ends with it instead of importing on until
    its imports are done (up's SIGTERM test saw one outlive the worker by 30 s on a loaded host)."""
    slow = tmp_path / "slow_fork_server"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_FORK_SERVER)
    env = {**app.env, "PYTHONPATH": os.pathsep.join([str(slow), str(REPO)])}
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    group = worker.proc.pid  # the worker leads its own session: its fork server is in its group
    try:
        members = lambda: subprocess.run(  # noqa: E731
            ["ps", "-o", "pid=,args=", "-g", str(group)], capture_output=True, text=True
        ).stdout.strip()
        assert "multiprocessing.forkserver" in members(), members()
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(timeout=60) == 0, worker.log()
        deadline = time.monotonic() + 15
        while members():
            assert time.monotonic() < deadline, f"left running after the worker stopped: {members()}"
            time.sleep(0.1)
    finally:
        worker.stop()


def save_bf16_teacher(app) -> Path:
    """The tiny teacher saved in bf16: transformers builds it under a bf16 default dtype."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = app.data_dir.parent / "models" / "tiny-llama-bf16"
    if not out.exists():
        model = AutoModelForCausalLM.from_pretrained(str(app.teacher_dir), dtype=torch.bfloat16)
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(str(app.teacher_dir)).save_pretrained(out)
    return out


_students: dict[str, dict] = {}


@pytest.fixture
def student(app, worker):
    """One student for the module, made by the first test's worker."""
    if app.url not in _students:
        _students[app.url] = make_student(app)
    return _students[app.url]


def running_distill(app, student: dict, steps: int) -> dict:
    job = start_distill(app, student["id"], steps=steps, checkpoint_every=0)
    deadline = time.monotonic() + 120
    while not app.api.get(f"/jobs/{job['id']}/metrics?names=kd_loss").json()["series"].get("kd_loss"):
        assert time.monotonic() < deadline, app.worker.log()
        time.sleep(0.1)
    return job


def job_process(app, job_id: int) -> int:
    logs = [e["msg"] for e in app.api.get(f"/jobs/{job_id}/logs").json()]
    return int(next(m for m in logs if m.startswith("running in process ")).split()[3])


def t(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@pytest.mark.parametrize("worker", [("--pool", "threads", "--concurrency", "2")], indirect=True)
def test_two_jobs_in_one_worker_both_succeed_and_a_benchmark_runs_alone(app, worker, student):
    """A bf16 teacher is read and evaluated in one worker while an fp32 distillation trains in it (the
    reported failure: the distillation or the evaluation died of a dtype mismatch); then a benchmark
    queued beside the distillation waits for it, and says so."""
    dataset = make_dataset(app)
    distill = running_distill(app, student, steps=150)
    bf16 = app.api.post("/teachers", json={"name": "bf16", "source": str(save_bf16_teacher(app))}).json()
    assert app.wait_job(bf16["job_id"])["status"] == "succeeded"
    assert app.api.get(f"/teachers/{bf16['id']}").json()["spec"]["dtype"] == "bfloat16"
    params = {"dataset_id": dataset["id"], "split": "validation", "max_documents": 2, "seq_len": 32}
    r = app.api.post("/jobs", json={"kind": "evaluate", "teacher_id": bf16["id"], "params": params})
    assert r.status_code == 201, r.text
    evaluated = app.wait_job(r.json()["id"])
    assert evaluated["status"] == "succeeded", evaluated
    assert evaluated["result"]["perplexity"]["perplexity"] > 1
    bench_params = {"repeats": 1, "seq_len": 8, "new_tokens": 2}
    r = app.api.post("/jobs", json={"kind": "benchmark", "teacher_id": bf16["id"], "params": bench_params})
    assert r.status_code == 201, r.text
    bench_id = r.json()["id"]

    trained = app.wait_job(distill["id"], timeout=300)
    assert trained["status"] == "succeeded", (trained, worker.log())
    # They ran side by side: the evaluation started before the distillation finished.
    assert t(trained["started_at"]) < t(evaluated["started_at"]) < t(trained["finished_at"])
    bench = app.wait_job(bench_id)
    assert bench["status"] == "succeeded", bench
    assert bench["result"]["device_exclusive"] is True
    measuring_from = t(bench["started_at"]).timestamp() + bench["result"]["device_wait_s"]
    # Not beside the distillation: after its last training step, which its own process logged before it
    # exited and freed the device (its finished_at is written after that, by the worker: up to ~1 s later
    # on a loaded machine, so it is no bound to hold the benchmark to).
    (last,) = app.api.get(f"/jobs/{distill['id']}/metrics", params={"names": "loss"}).json()["series"][
        "loss"
    ][-1:]
    assert last["step"] == 150
    assert measuring_from >= t(trained["started_at"]).timestamp() + last["t"]
    # Each ran in a process of its own, not in the worker's (the fix: no torch state to share).
    pids = {job_process(app, distill["id"]), job_process(app, evaluated["id"]), job_process(app, bench_id)}
    assert len(pids) == 3 and worker.proc.pid not in pids


def wait_message(app, job_id: int, message: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while (job := app.api.get(f"/jobs/{job_id}").json())["message"] != message:
        assert time.monotonic() < deadline, (job, app.worker.log())
        time.sleep(0.1)
    return job


@pytest.mark.parametrize("worker", [()], indirect=True)  # `prunescope worker`'s defaults: one heavy slot
def test_a_benchmark_waiting_for_its_device_leaves_the_slot_to_the_jobs_behind_it(app, worker, student):
    """Another worker's job holds this worker's device (the test holds its lock shared, as that job's
    process would): the benchmark waits for the device on its queue, not in the one slot, so a small
    evaluation queued behind it runs meanwhile; once the device is free the benchmark runs alone."""
    import fcntl

    from tests.conftest import settings_from
    from worker.device_lock import lock_dir

    dataset = make_dataset(app)
    lock = lock_dir(settings_from(app.env)) / "cpu.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_SH)
        bench_params = {"repeats": 1, "seq_len": 8, "new_tokens": 2}
        r = app.api.post(
            "/jobs", json={"kind": "benchmark", "teacher_id": student["teacher_id"], "params": bench_params}
        )
        assert r.status_code == 201, r.text
        bench_id = r.json()["id"]
        waiting = "waiting for the other jobs on cpu to finish (a benchmark runs alone)"
        assert wait_message(app, bench_id, waiting)["status"] == "queued"
        params = {"dataset_id": dataset["id"], "split": "validation", "max_documents": 2, "seq_len": 32}
        r = app.api.post(
            "/jobs", json={"kind": "evaluate", "teacher_id": student["teacher_id"], "params": params}
        )
        assert r.status_code == 201, r.text
        small = app.wait_job(r.json()["id"], timeout=120)
        assert small["status"] == "succeeded", small
        assert app.api.get(f"/jobs/{bench_id}").json()["status"] == "queued"  # still waiting, on its queue
        time.sleep(1)
        released = time.time()
    bench = app.wait_job(bench_id, timeout=120)
    assert bench["status"] == "succeeded", bench
    assert bench["result"]["device_exclusive"] is True
    assert t(bench["started_at"]).timestamp() >= released - 0.5 > t(small["finished_at"]).timestamp()
    # Its wait counts from when it was first put back, not from its start.
    assert bench["result"]["device_wait_s"] >= released - t(bench["created_at"]).timestamp() - 3


@pytest.mark.parametrize("worker", [()], indirect=True)  # `prunescope worker`'s defaults: one heavy slot
def test_a_light_job_does_not_wait_behind_a_distillation(app, worker, student):
    """On a one-slot worker; then a running job is cancelled, one whose process is killed fails, and the
    worker stops when its light consumer dies."""
    distill = running_distill(app, student, steps=100_000)
    try:
        teacher = app.api.post("/teachers", json={"name": "again", "source": str(app.teacher_dir)}).json()
        inspected = app.wait_job(teacher["job_id"], timeout=60)
        assert inspected["status"] == "succeeded", inspected
        assert app.api.get(f"/jobs/{distill['id']}").json()["status"] == "running"
    finally:
        app.api.post(f"/jobs/{distill['id']}/cancel")
    cancelled = app.wait_job(distill["id"], timeout=60)
    assert cancelled["status"] == "cancelled", cancelled

    # A job whose process dies (the OOM killer) is failed by the worker at once, with the reason, not
    # after the heartbeat timeout (60 s here); resumable from its checkpoint; the worker serves on.
    doomed = start_distill(app, student["id"], steps=100_000, checkpoint_every=2)
    deadline = time.monotonic() + 120
    while (app.api.get(f"/jobs/{doomed['id']}").json()["checkpoint_step"] or 0) < 2:
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.1)
    os.kill(job_process(app, doomed["id"]), signal.SIGKILL)
    failed = app.wait_job(doomed["id"], timeout=20)
    assert failed["status"] == "failed" and failed["resumable"], failed
    assert "the job's process was killed by SIGKILL (out of memory?)" in failed["error"]
    assert worker.proc.poll() is None

    # The worker's registry entry lists `default` for its light consumer: if that consumer dies, the
    # worker stops (to be restarted by its supervisor) rather than leave light jobs unserved.
    os.kill(light_consumer_of(worker), signal.SIGKILL)
    worker.proc.wait(timeout=60)
    assert "the light-job consumer exited (-9); stopping this worker" in worker.log()


def light_consumer_of(worker: WorkerProcess) -> int:
    """The pid of the `default`-queue consumer the worker started (its child with --light-slots 0)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ps = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
        for line in ps.splitlines():
            pid, ppid, args = line.split(None, 2)
            if int(ppid) == worker.proc.pid and "--light-slots 0" in args:
                return int(pid)
        time.sleep(0.2)
    raise AssertionError(f"no light consumer: {worker.log()}")
