"""Heatmap endpoint latency and payload size for a synthetic 32-layer x 14336-neuron importance run
(Llama-3-8B shape), measured with a real HTTP client against a running API server.

Targets (issue 4): p95 under 50 ms and payload under 300 KB at default binning.
Run: .venv/bin/python bench/heatmap_latency.py [--requests 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
from _platform import ApiProcess, bench_environment

L, H, KV, F, D = 32, 32, 8, 14336, 4096


def synthetic_artifact(directory: Path) -> None:
    from worker.engine.importance.artifact import write_artifact

    rng = np.random.default_rng(0)

    def sums(*shape):
        return rng.gamma(2.0, 1.0, size=(2, 4, *shape)).astype(np.float32)

    arrays = {
        "heads": sums(L, H),
        "neurons": sums(L, F),
        "hidden": sums(2 * L + 1, D),
        "block_importance": sums(L, 1),
        "samples": np.array([512, 512], dtype=np.float32),
        "loss_base": np.array([2000.0, 2000.0], dtype=np.float32),
        "loss_drop": rng.uniform(2000, 3000, size=(2, L)).astype(np.float32),
        "loss_tokens": np.array([1000.0, 1000.0], dtype=np.float32),
    }
    write_artifact(directory, arrays, {"scans": ["bi", "drop"], "block_size": 2, "synthetic": True})


def register(env: dict, key: str) -> int:
    from backend.db import session_scope
    from backend.migrate import upgrade
    from backend.models import Dataset, ImportanceRun, Teacher
    from worker.engine.spec import ArchSpec

    url = env["PRUNESCOPE_DATABASE_URL"]
    upgrade(url)
    spec = ArchSpec(
        family="llama",
        model_type="llama",
        num_layers=L,
        hidden_size=D,
        num_heads=H,
        num_kv_heads=KV,
        head_dim=128,
        intermediate_size=F,
        vocab_size=128256,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    with session_scope(url) as s:
        t = Teacher(
            name="synthetic-8b", source="meta-llama/Meta-Llama-3-8B", status="ready", spec=spec.summary()
        )
        d = Dataset(name="demo", source="demo")
        s.add_all([t, d])
        s.flush()
        run = ImportanceRun(teacher_id=t.id, dataset_id=d.id, params={}, artifact=key)
        s.add(run)
        s.flush()
        return run.id


def measure(client: httpx.Client, path: str, n: int) -> tuple[list[float], int]:
    client.get(path).raise_for_status()  # first request fills the server's cache; it is reported separately
    times, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(path)
        times.append(time.perf_counter() - t0)
        r.raise_for_status()
        size = len(r.content)
    return times, size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with bench_environment("heatmap-bench-") as (base, env):
        measure_all(base, env, args)


def measure_all(base: Path, env: dict[str, str], args) -> None:
    synthetic_artifact(Path(env["PRUNESCOPE_ARTIFACTS"]) / "importance" / "1")
    run_id = register(env, "importance/1")
    server = ApiProcess(env, base / "api.log").start()
    try:
        with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as client:
            t0 = time.perf_counter()
            client.get(f"/importance-runs/{run_id}/neurons").raise_for_status()
            print(
                f"cold first neurons request (load artifact + sort): {1000 * (time.perf_counter() - t0):.1f} ms"
            )
            paths = {
                "neurons (default: 256 bins, sorted)": f"/importance-runs/{run_id}/neurons",
                "neurons natural order": f"/importance-runs/{run_id}/neurons?order=natural",
                "neurons zoom 8 layers x 2048": f"/importance-runs/{run_id}/neurons?layer_start=8&layer_end=16&start=0&end=2048",
                "heads 32x32": f"/importance-runs/{run_id}/heads",
                "hidden 4096": f"/importance-runs/{run_id}/hidden",
                "neuron-order 32 x 14336 (packed)": f"/importance-runs/{run_id}/neuron-order",
            }
            print(
                f"{'endpoint':40s} {'p50 ms':>8s} {'p95 ms':>8s} {'KB':>8s}   ({args.requests} requests each)"
            )
            for name, path in paths.items():
                times, size = measure(client, path, args.requests)
                p50 = statistics.median(times) * 1000
                p95 = float(np.percentile(times, 95)) * 1000
                print(f"{name:40s} {p50:8.1f} {p95:8.1f} {size / 1024:8.1f}")
            print("targets: neurons default p95 < 50 ms, payload < 300 KB")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
