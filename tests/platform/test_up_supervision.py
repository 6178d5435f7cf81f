"""`prunescope up` supervises its children: a crashed child is restarted with back-off (the job a killed
worker ran is marked lost and resumable), children die with `up` even when it is SIGKILLed, a second
`up` on one data directory and a busy port are refused clearly, and queued jobs survive the embedded
Redis losing its data."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port, save_tiny_teacher
from tests.platform.helpers import make_student, start_distill
from tests.platform.test_up import ctrl_c


def up_command(data_dir: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "worker",
        "up",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--no-demo",
    ]


def up_env(roots: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNESCOPE_")}
    return {**env, "PRUNESCOPE_ALLOWED_ROOTS": str(roots), **extra}


def start_up(data_dir: Path, port: int, log: Path, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        up_command(data_dir, port),
        cwd=REPO,
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if "Prunescope is running at" in log.read_text(errors="replace"):
            return proc
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    raise AssertionError(log.read_text())


def children(pid: int) -> dict[int, str]:
    """pid -> command line of every live descendant of `pid`."""
    ps = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,stat=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in ps.splitlines()]
    found, frontier = {}, {pid}
    while frontier:
        frontier = {int(r[0]) for r in rows if int(r[1]) in frontier and not r[2].startswith("Z")}
        found.update({int(r[0]): r[3] for r in rows if int(r[0]) in frontier})
    return found


def child_named(up: subprocess.Popen, needle: str) -> int:
    [pid] = [pid for pid, args in children(up.pid).items() if needle in args and "light" not in args]
    return pid


def alive(pids) -> set[int]:
    left = set()
    for pid in pids:
        try:
            os.kill(pid, 0)
            stat = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
            if stat != "Z":
                left.add(pid)
        except (ProcessLookupError, FileNotFoundError):
            pass
    return left


@dataclass
class UpApp:
    """What tests.platform.helpers needs of an app, on a running `up`."""

    api: httpx.Client
    data_dir: Path
    teacher_dir: Path
    port: int

    def wait_job(self, job_id: int, timeout: float = 120.0, statuses=("succeeded", "failed", "cancelled")):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.api.get(f"/jobs/{job_id}").json()
            if job["status"] in statuses:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {job['status']}")


@contextlib.contextmanager
def running_up(tmp_path: Path, **env: str):
    data_dir, port, log = tmp_path / "data", free_port(), tmp_path / "up.log"
    proc = start_up(data_dir, port, log, up_env(tmp_path, **env))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=30) as api:
            yield proc, UpApp(api, data_dir, save_tiny_teacher(tmp_path / "tiny"), port), log
    finally:
        if proc.poll() is None:
            ctrl_c(proc)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


# One `up` serves the last two live tests (starting one costs an API, a worker, a light consumer and two
# fork servers importing torch): they run in file order, the first leaving it running with its Redis
# restarted, and the SIGKILL of `up` itself comes last. Its queued jobs the broker lost are re-sent
# after 1 s. The killed-worker test keeps an `up` of its own: its 3 s heartbeat timeout would mark a
# running job of the other test lost whenever the loaded machine delayed a beat.
SHARED_UP_ENV = {"PRUNESCOPE_RESEND_INTERVAL_S": "1", "PRUNESCOPE_RESEND_GRACE_S": "1"}


@pytest.fixture(scope="module")
def shared_up(tmp_path_factory):
    with running_up(tmp_path_factory.mktemp("up"), **SHARED_UP_ENV) as running:
        yield running


@pytest.fixture
def live_up(shared_up):
    proc, app, log = shared_up
    assert proc.poll() is None, log.read_text()[-3000:]  # an earlier test stopped it: that test failed
    return shared_up


# ---- refusals: nothing is started --------------------------------------------------------------------


def test_second_up_on_one_data_dir_and_a_busy_port_are_refused(tmp_path):
    from worker.cli.supervisor import lock_data_dir

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    lock = lock_data_dir(data_dir)  # as a running `up` holds it
    try:
        r = subprocess.run(
            up_command(data_dir, free_port()),
            cwd=REPO,
            env=up_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        lock.close()
    assert r.returncode == 2, r.stderr
    assert (
        f"another `prunescope up` (pid {os.getpid()}) is running on the data directory {data_dir}" in r.stderr
    )
    assert "Traceback" not in r.stderr and not (data_dir / "redis").exists()

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            up_command(tmp_path / "other", port),
            cwd=REPO,
            env=up_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in r.stderr, r.stderr
    assert not (tmp_path / "other" / "redis").exists()
    lock_data_dir(tmp_path / "other").close()  # the refused `up` released its lock


def test_supervisor_restarts_with_back_off_and_gives_up_on_a_child_that_cannot_start(monkeypatch):
    from worker.cli import CliError, supervisor

    monkeypatch.setattr(supervisor, "FIRST_DELAY_S", 0.05)
    said: list[str] = []
    sup = supervisor.Supervisor(said.append)
    starts: list[float] = []

    def start():
        starts.append(time.monotonic())
        return subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])

    sup.add("flaky", start)
    with pytest.raises(CliError, match="the flaky process keeps exiting \\(exit code 3\\); giving up"):
        for _ in range(2000):
            sup.tend()
            time.sleep(0.01)
    assert len(starts) == 1 + supervisor.MAX_CRASHES  # the first start, then the restarts
    delays = [float(line.split(" in ")[1].removesuffix(" s")) for line in said if "restarting" in line]
    assert delays == [0.05 * 2**i for i in range(supervisor.MAX_CRASHES)]  # exponential back-off
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(gap >= delay for gap, delay in zip(gaps, delays)), (gaps, delays)
    assert said[0] == "the flaky process exited (exit code 3); restarting it in 0.05 s"


# ---- live `up` ---------------------------------------------------------------------------------------


def test_embedded_redis_socket_is_under_the_data_dir_unless_the_path_is_too_long(tmp_path):
    from backend.broker import SOCKET_PATH_MAX, EmbeddedRedis

    assert EmbeddedRedis(tmp_path / "redis").socket_file == tmp_path / "redis" / "redis.sock"
    deep = tmp_path / ("d" * (SOCKET_PATH_MAX - len(str(tmp_path))))
    fallback = EmbeddedRedis(deep).socket_file
    try:
        assert len(str(fallback)) <= SOCKET_PATH_MAX and fallback.name == "redis.sock"
        assert fallback.parent.name.startswith("prunescope-redis-")
    finally:
        fallback.parent.rmdir()


def test_killed_worker_is_restarted_and_its_job_is_lost_and_resumable(tmp_path):
    with running_up(tmp_path, PRUNESCOPE_HEARTBEAT_TIMEOUT_S="3", PRUNESCOPE_HEARTBEAT_INTERVAL_S="0.5") as (
        proc,
        app,
        log,
    ):
        student = make_student(app)
        jid = start_distill(app, student["id"], steps=400, checkpoint_every=2)["id"]
        while (app.api.get(f"/jobs/{jid}").json()["checkpoint_step"] or 0) < 2:
            time.sleep(0.1)
        others = {child_named(proc, "worker api"), child_named(proc, "redis-server")}
        registered = {w["pid"] for w in app.api.get("/workers").json()}
        os.kill(child_named(proc, "worker worker"), signal.SIGKILL)

        lost = app.wait_job(jid, timeout=60, statuses=("failed",))
        assert "worker lost" in lost["error"] and lost["resumable"], lost
        assert "the worker process exited (killed by SIGKILL); restarting it in 1 s" in log.read_text()
        assert alive(others) == others  # the API and Redis were not touched
        # The restarted worker registers and runs jobs (resuming is tested in split mode).
        deadline = time.monotonic() + 60
        while not {w["pid"] for w in app.api.get("/workers").json()} - registered:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        assert "the worker process is running again" in log.read_text()
        teacher = app.api.post("/teachers", json={"name": "after", "source": str(app.teacher_dir)}).json()
        assert app.wait_job(teacher["job_id"], timeout=60)["status"] == "succeeded"
        assert proc.poll() is None


def test_queued_jobs_finish_after_the_embedded_redis_loses_its_data(live_up):
    """SIGKILL the embedded Redis with jobs queued and wipe its append-only file (the worst case: data
    not yet written): `up` restarts Redis, the API re-sends what the database says is queued."""
    proc, app, log = live_up
    worker = [child_named(proc, "worker worker"), *children(child_named(proc, "worker worker"))]
    for pid in worker:  # hold the worker still: the jobs stay queued
        os.kill(pid, signal.SIGSTOP)
    try:
        teachers = [
            app.api.post("/teachers", json={"name": f"t{i}", "source": str(app.teacher_dir)}).json()
            for i in range(4)
        ]
        assert {app.api.get(f"/jobs/{t['job_id']}").json()["status"] for t in teachers} == {"queued"}
        redis_pid = child_named(proc, "redis-server")
        os.kill(redis_pid, signal.SIGKILL)
        for f in (app.data_dir / "redis").glob("appendonly.aof*"):
            f.unlink()
    finally:
        for pid in worker:
            os.kill(pid, signal.SIGCONT)
    for t in teachers:
        assert app.wait_job(t["job_id"], timeout=90)["status"] == "succeeded", log.read_text()[-3000:]
    assert child_named(proc, "redis-server") != redis_pid
    assert "the redis process exited (killed by SIGKILL)" in log.read_text()
    resent = [
        t
        for t in teachers
        if "re-sent: the broker no longer held this job's message"
        in [e["msg"] for e in app.api.get(f"/jobs/{t['job_id']}/logs").json()]
    ]
    assert resent  # recovered by the re-sender, not by chance
    assert all(app.api.get(f"/jobs/{t['job_id']}").json()["attempts"] == 1 for t in teachers)


def test_sigkill_of_up_leaves_no_orphans(live_up):
    """Last: it ends the shared `up`."""
    proc, app, log = live_up
    kids = children(proc.pid)
    for name in ("redis-server", "worker api", "worker worker"):
        assert any(name in args for args in kids.values()), kids
    os.kill(proc.pid, signal.SIGKILL)  # `up` alone, as the OOM killer would
    proc.wait()
    deadline = time.monotonic() + 30
    while alive(kids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(kids), {pid: kids[pid] for pid in alive(kids)}

    # What made the next `up` report "running" and then stop the orphans' Redis is gone: the lock
    # died with `up`, the port is free, and the socket was under the data directory.
    from worker.cli.supervisor import check_port_free, lock_data_dir

    lock_data_dir(app.data_dir).close()
    check_port_free("127.0.0.1", app.port)
    socket_file = app.data_dir / "redis" / "redis.sock"
    assert f'unixsocket "{socket_file}"' in (app.data_dir / "redis" / "redis.conf").read_text()
