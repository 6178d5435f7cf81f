"""Job throughput: N tiny jobs (a teacher's `inspect`: read config, build on the meta device) through
the real broker (Redis) and a real Celery worker. Checks none is lost and none runs twice (exactly one
queued -> running claim per job, one attempt), and prints jobs/s.
Run: .venv/bin/python bench/job_throughput.py [--jobs 100] [--workers 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx
from _platform import ApiProcess, WorkerProcess, bench_environment


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with bench_environment("throughput-bench-") as (tmp, env):
        measure_all(tmp, env, args)


def measure_all(tmp: Path, env: dict[str, str], args) -> None:
    from sqlalchemy import select

    from backend.db import session_scope
    from backend.models import Event
    from tests.conftest import save_tiny_teacher

    teacher_dir = save_tiny_teacher(tmp / "tiny")
    server = ApiProcess(env, tmp / "api.log").start()
    workers = [WorkerProcess(env, tmp / f"worker{i}.log").start() for i in range(args.workers)]
    try:
        with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as api:
            warm = api.post("/teachers", json={"name": "warm-up", "source": str(teacher_dir)}).json()
            while api.get(f"/jobs/{warm['job_id']}").json()["status"] == "queued":
                time.sleep(0.1)  # the worker has imported transformers; now time the batch
            t0 = time.perf_counter()
            ids = [
                api.post("/teachers", json={"name": f"t{i}", "source": str(teacher_dir)}).json()["job_id"]
                for i in range(args.jobs)
            ]
            submitted = time.perf_counter() - t0
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                jobs = [j for j in api.get("/jobs?kind=inspect&limit=1000").json() if j["id"] in set(ids)]
                if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs) and len(
                    jobs
                ) == len(ids):
                    break
                time.sleep(0.2)
            elapsed = time.perf_counter() - t0
        statuses = {
            s: sum(j["status"] == s for j in jobs) for s in ("succeeded", "failed", "queued", "running")
        }
        with session_scope(env["PRUNESCOPE_DATABASE_URL"]) as s:
            claims = {}
            for e in s.scalars(select(Event).where(Event.job_id.in_(ids), Event.type == "status")):
                if e.data.get("status") == "running" and e.data.get("message") == "starting":
                    claims[e.job_id] = claims.get(e.job_id, 0) + 1
        twice = [j for j, n in claims.items() if n > 1]
        lost = [j["id"] for j in jobs if j["status"] != "succeeded"]
        print(
            f"{args.jobs} jobs, {args.workers} worker(s): submitted in {submitted:.2f} s, all done in {elapsed:.2f} s "
            f"-> {args.jobs / elapsed:.1f} jobs/s"
        )
        print(
            f"statuses {statuses}; attempts>1: {sum(j['attempts'] > 1 for j in jobs)}; "
            f"claimed more than once: {len(twice)}; not succeeded: {len(lost)}"
        )
        assert not twice and not lost, (twice, lost)
    finally:
        for w in workers:
            w.stop()
        server.stop()


if __name__ == "__main__":
    main()
