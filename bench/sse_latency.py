"""Event latency: a metric written the way a worker writes it (DB row + Redis wake-up, via
worker.runtime.JobRuntime) until an SSE client of the running API server has parsed it. p50 / p95.

Target (issue 4): within 1 s p95. Also prints the same with the Redis wake-up disabled (polling only),
side by side, to show what the wake-up buys.
Run: .venv/bin/python bench/sse_latency.py [--events 200] [--rate 20]
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np
from _platform import ApiProcess, bench_environment


def run(env: dict, base: Path, events: int, rate: float, wakeup: bool) -> list[float]:
    from backend.db import session_scope
    from backend.models import Job
    from tests.conftest import settings_from
    from tests.platform.helpers import read_sse
    from worker.runtime import JobRuntime

    settings = settings_from(env)
    if not wakeup:
        settings = settings.model_copy(update={"broker_url": None})  # the writer publishes nothing
    with session_scope(settings.resolved_database_url) as s:
        job = Job(kind="distill", params={}, queue="cpu")
        s.add(job)
        s.flush()
        job_id = job.id
    rt = JobRuntime(settings, job_id, 1)
    rt.claim()
    sent: dict[int, float] = {}
    received: list = []
    url = f"{base}/api/v1/jobs/{job_id}/events"
    reader = threading.Thread(
        target=lambda: received.extend(
            read_sse(
                url, stop=lambda ev: sum(e.type == "metric" for e in ev) >= events, timeout=events / rate + 30
            )
        )
    )
    reader.start()
    time.sleep(1.0)
    for step in range(1, events + 1):
        sent[step] = time.time()
        rt.metrics({"step": step, "loss": 1.0 / step})
        time.sleep(1.0 / rate)
    reader.join()
    rt.finish("succeeded")
    return [e.received - sent[e.data["step"]] for e in received if e.type == "metric"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="metric writes per second")
    args = parser.parse_args()
    with bench_environment("sse-bench-") as (tmp, env):
        measure_all(tmp, env, args)


def measure_all(tmp: Path, env: dict[str, str], args) -> None:
    server = ApiProcess(env, tmp / "api.log").start()
    try:
        print(f"{args.events} metric events at {args.rate:g}/s, writer -> DB -> API -> SSE client")
        for wakeup in (True, False):
            lat = np.array(run(env, server.url, args.events, args.rate, wakeup)) * 1000
            label = "Redis wake-up" if wakeup else "polling only (no wake-up)"
            print(
                f"{label:28s} n={len(lat):4d}  p50 {np.percentile(lat, 50):7.1f} ms   p95 {np.percentile(lat, 95):7.1f} ms"
                f"   max {lat.max():7.1f} ms"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
