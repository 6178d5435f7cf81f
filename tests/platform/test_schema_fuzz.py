"""Schema fuzz: schemathesis (its CLI, as a user would run it) drives every operation of the served
OpenAPI schema of a real API server (uvicorn, SQLite, Redis) with generated valid and invalid input —
schema examples, boundary values (huge integers, NaN, odd strings) and random cases, a bounded number per
operation with a fixed seed. No answer may be a server error, and every answer must match the response
schema of its route and status: every route declares its success model and its error body
(tests/platform/test_contract.py holds them to it), so every answer is checked.

The database is seeded first (a ready teacher, a dataset, an importance run with scores, a plan,
students, jobs in every state with metrics and events) so that the small ids the fuzzer tries reach real
rows, not only 404s.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from backend.db import session_scope
from backend.migrate import upgrade
from backend.models import BenchmarkResult, Dataset, Event, ImportanceRun, Job, MetricPoint
from tests.conftest import ApiProcess, platform_env
from tests.platform.helpers import student_rows
from tests.platform.test_api_angular import save_scored_artifact

# Event streams run until their job finishes: a generated id of a queued job would never return. Their
# parameters are covered in tests/platform/test_bad_input.py.
STREAMS = "/events$"
EXAMPLES_PER_OPERATION = 10
SEED = 1


def seed_rows(url: str, artifacts: Path) -> None:
    with session_scope(url) as s:
        teacher, students = student_rows(s, [("ready", "ready"), ("pending", "pending")])
        dataset = Dataset(name="d", source="demo")
        s.add(dataset)
        s.flush()
        key = save_scored_artifact(artifacts, "importance/fuzz")
        s.add(ImportanceRun(teacher_id=teacher.id, dataset_id=dataset.id, params={}, artifact=key))
        student = students["ready"]
        now = datetime.now(timezone.utc)
        jobs = [
            Job(kind="distill", status="succeeded", params={}, teacher_id=teacher.id, student_id=student.id),
            Job(
                kind="distill",
                status="failed",
                params={},
                teacher_id=teacher.id,
                student_id=student.id,
                checkpoint="checkpoints/x",
                checkpoint_step=4,
                finished_at=now,
                error="worker lost",
            ),
            Job(kind="evaluate", status="running", params={}, teacher_id=teacher.id, heartbeat_at=now),
            Job(kind="benchmark", status="queued", params={}, teacher_id=teacher.id, queue="cpu"),
        ]
        s.add_all(jobs)
        s.flush()
        for step in range(3):
            s.add(MetricPoint(job_id=jobs[0].id, name="loss", step=step, value=1.0 / (step + 1), tokens=64))
        s.add(
            Event(job_id=jobs[0].id, teacher_id=teacher.id, type="log", data={"level": "info", "msg": "hi"})
        )
        s.add(
            BenchmarkResult(
                job_id=jobs[0].id,
                kind="evaluate",
                teacher_id=teacher.id,
                student_id=student.id,
                result={"weights": "distilled", "perplexity": 3.0},
            )
        )


@pytest.fixture
def fuzzed_server(tmp_path, redis_url):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "org" / "model").mkdir(parents=True)
    env = platform_env(f"sqlite:///{data / 'prunescope.db'}", redis_url, data)
    upgrade(env["PRUNESCOPE_DATABASE_URL"])
    seed_rows(env["PRUNESCOPE_DATABASE_URL"], Path(env["PRUNESCOPE_ARTIFACTS"]))
    server = ApiProcess(env, tmp_path / "api.log").start()
    yield server
    server.stop()


def test_no_server_errors(fuzzed_server, tmp_path):
    schemathesis = [sys.executable, "-m", "schemathesis.cli"]
    run = subprocess.run(
        [
            *schemathesis,
            "run",
            f"{fuzzed_server.url}/api/v1/openapi.json",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--seed",
            str(SEED),
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--exclude-path-regex",
            STREAMS,
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--suppress-health-check",
            "all",
            "--no-color",
        ],
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = run.stdout[-15000:] + run.stderr[-3000:]
    assert run.returncode == 0, f"{report}\n--- API log ---\n{fuzzed_server.log()}"
    assert " passed" in run.stdout and "generated" in run.stdout, report
