"""`prunescope worker` refuses a device (or a queue) it cannot serve; `prunescope migrate` builds the schema."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

from tests.conftest import REPO


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_worker_refuses_unavailable_cuda():
    import torch

    device = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: cuda:0 on a CPU machine
    reason = "CUDA device(s)" if torch.cuda.is_available() else "CUDA is not available"
    r = run("worker", "--device", device, env={"PRUNESCOPE_BROKER_URL": "redis://127.0.0.1:6379/0"})
    assert r.returncode == 2
    assert f"{device} requested but" in r.stderr and reason in r.stderr and "Traceback" not in r.stderr


def test_worker_rejects_unknown_device_and_missing_broker():
    r = run("worker", "--device", "tpu")
    assert r.returncode == 2 and "unknown device 'tpu'" in r.stderr
    env = {k: v for k, v in os.environ.items() if k != "PRUNESCOPE_BROKER_URL"}
    r = subprocess.run(
        [sys.executable, "-m", "worker", "worker"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 2 and "PRUNESCOPE_BROKER_URL is not set" in r.stderr


def test_cpu_worker_refuses_the_gpu_queue():
    env = {"PRUNESCOPE_BROKER_URL": "redis://127.0.0.1:6379/0"}
    for queues in ("gpu", "default,gpu"):
        r = run("worker", "--device", "cpu", "--queues", queues, env=env)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines() == [
            "prunescope worker: error: a cpu worker cannot serve the 'gpu' queue (its jobs need CUDA); "
            "use --queues cpu,default"
        ]
    r = run("worker", "--device", "cpu", "--queues", "default,turbo", env=env)
    assert r.returncode == 2 and "unknown queue 'turbo'" in r.stderr


def test_migrate_creates_every_table(tmp_path):
    db = tmp_path / "m.db"
    r = run("migrate", env={"PRUNESCOPE_DATABASE_URL": f"sqlite:///{db}"})
    assert r.returncode == 0, r.stderr
    tables = {
        row[0] for row in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    assert {
        "teachers",
        "datasets",
        "importance_runs",
        "plans",
        "students",
        "jobs",
        "metric_points",
        "events",
        "benchmark_results",
        "artifacts",
        "alembic_version",
    } <= tables


def test_worker_refuses_slot_options_it_cannot_honour():
    env = {"PRUNESCOPE_BROKER_URL": "redis://127.0.0.1:6379/0"}
    for args, message in (
        (
            ("--concurrency", "2"),
            "--pool solo runs one job at a time: use --pool threads for --concurrency 2",
        ),
        (("--light-slots", "-1"), "--concurrency must be >= 1 and --light-slots >= 0"),
    ):
        r = run("worker", "--device", "cpu", *args, env=env)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines() == [f"prunescope worker: error: {message}"]
