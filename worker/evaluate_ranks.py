"""An evaluate job with `gpus: N > 1` or `nodes: M > 1`: data-parallel over N ranks on this worker (or N
on each of M workers meeting at one rendezvous: worker.gang, worker.node_member).

Each rank runs this module (`python -m worker.evaluate_ranks MODEL ...` under torchrun, `rank_main`):
it loads the model, windows the same documents as one process, scores every world-size-th batch of
windows, and the NLL sums and token counts are all-reduced
(worker.engine.evaluation.perplexity, `ranks`), so the result is the one-process perplexity. Then the
lm-eval tasks, if any: every rank runs the harness on the same requests and each model call is answered
data-parallel, batch r, r + N, ... on rank r, the answers gathered on every rank
(worker.engine.evaluation.lm_eval_shards), so the scores are the one-process scores. Rank 0 writes the
result as JSON and appends its progress to `--metrics-jsonl`, which this job process tails. When a
rank dies, the job's error starts with the rank that ended the others (worker.rank_failures).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from backend.routing import device_type
from worker.measurements import LmEvalCount, save_measurement, subject
from worker.multi_rank import run_ranks, stop_grace_s
from worker.runtime import JobCancelled, JobRuntime

MODULE = "worker.evaluate_ranks"


def rank_args(rt: JobRuntime, job, result_path: Path) -> list[str]:
    """The ranks' command line after `-m MODULE` (every node of a job over several nodes builds it)."""
    from worker.job_io import job_dataset, model_source

    p = job.params
    source, trust_remote_code = subject(rt, job)
    if trust_remote_code:
        raise RuntimeError("evaluation over several ranks runs models without remote code only; use gpus: 1")
    dataset = job_dataset(rt, p)
    args = [
        model_source(source),
        "--data", dataset.source if dataset else "demo",
        "--split", p["split"],
        "--max-documents", str(p["max_documents"]),
        "--context", str(p["seq_len"]),
        "--device", device_type(rt.device),
        "--out", str(result_path),
    ]  # fmt: skip
    if p.get("stride"):
        args += ["--stride", str(p["stride"])]
    if p.get("tasks"):  # a task name has no comma (lm-eval's own lists are comma-separated)
        args += ["--tasks", ",".join(p["tasks"])]
        # Unset: the ranks build them where one process would (local_tasks.default_cache_dir), not in "None".
        args += ["--cache", str(rt.settings.cache)] if rt.settings.cache else []
        args += ["--limit", str(p["limit"])] if p.get("limit") else []
    return args


def run_evaluate_ranks(rt: JobRuntime, job) -> dict[str, Any]:
    from worker.engine import eval_protocol
    from worker.engine.evaluation.lm_eval_runner import RequestProgress
    from worker.gang import opened
    from worker.job_io import json_safe, store

    p = job.params
    ranks, nodes = int(p.get("gpus", 1)), int(p.get("nodes", 1))
    world = ranks * nodes
    rendezvous, workers = opened(rt, job.id, nodes) if nodes > 1 else (None, [rt.worker_name])
    share = 0.45 if p.get("tasks") else 0.9  # of the bar: lm-eval tasks take the rest
    lm_eval_count = LmEvalCount(rt, p.get("tasks") or (), (0.5, 0.95))

    def on_record(record: dict) -> None:
        if record["phase"] == "lm-eval-tasks":
            building = f"lm-eval tasks: building the requests of {', '.join(record['tasks'])}"
            rt.progress(0.5, f"{building} on {world} ranks", force=True)
            return
        if record["phase"] == "lm-eval":
            request = {k: v for k, v in record.items() if k != "phase"}
            lm_eval_count(RequestProgress(**{**request, "tasks": tuple(request["tasks"])}))
            return
        done, total = record["done"], max(record["total"], 1)
        where = f"~{done}/{total} windows on {world} ranks"
        rt.progress(0.05 + share * done / total, f"perplexity: {where}", phase="perplexity")

    staging = store(rt).staging_dir()
    try:
        out = staging / "result.json"
        rt.progress(0.0, f"starting {world} ranks" + (f" on {nodes} nodes" if nodes > 1 else ""), force=True)
        t0 = time.perf_counter()
        finished = run_ranks(
            rt,
            ranks,
            MODULE,
            rank_args(rt, job, out),
            work=staging / "ranks",
            device_type=device_type(rt.device),
            on_record=on_record,
            rendezvous=rendezvous,
            stop_grace_s=stop_grace_s("evaluate"),
        )
        if not finished:
            raise JobCancelled()
        ranks_result = json.loads(out.read_text())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result: dict[str, Any] = {
        **json_safe(ranks_result),  # the engine's evaluation dict, as a one-process job's
        "protocol": eval_protocol.of_job("evaluate", p),
        "seconds": None,
        # Where it ran, as a one-process evaluation records it (the compare table shows it).
        "device": device_type(rt.device),
        "distributed": {
            "world_size": world,
            "nodes": nodes,
            "gpus_per_node": ranks,
            "workers": workers,
            "perplexity": f"data-parallel over {world} ranks (NLL sums and token counts all-reduced)",
        },
    }
    if p.get("tasks"):
        result["distributed"]["tasks"] = (
            f"data-parallel over {world} ranks (each rank answers every {world}-th batch of each "
            "model call's requests, batched as in one process; the answers gathered on every rank)"
        )
    result["seconds"] = time.perf_counter() - t0
    return save_measurement(rt, job, "evaluate", result)


# ---- one rank ----------------------------------------------------------------------------------------


def rank_main(argv: list[str] | None = None) -> int:
    """One rank's perplexity and lm-eval tasks (also one process when not launched by torchrun / srun).

    Writes the engine's evaluation dict (worker.engine.evaluation.evaluate_model: {"perplexity",
    "tasks", "dtype", "world_size"}, as `prunescope evaluate` prints it) to `--out` (rank 0)."""
    parser = argparse.ArgumentParser(prog="python -m worker.evaluate_ranks")
    parser.add_argument("model")
    parser.add_argument("--data", default="demo")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-documents", type=int, default=None)
    parser.add_argument("--context", type=int, default=None)
    parser.add_argument("--stride", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stop-file", type=Path, default=None)
    parser.add_argument("--metrics-jsonl", type=Path, default=None)
    parser.add_argument("--tasks", default="", help="lm-eval tasks, comma-separated")
    parser.add_argument("--limit", type=int, default=None, help="samples per lm-eval task")
    parser.add_argument("--cache", type=Path, default=None, help="where local lm-eval tasks are built")
    args = parser.parse_args(argv)

    from worker.engine.data import read_documents
    from worker.engine.distributed import DistributedContext
    from worker.engine.evaluation import evaluate_model
    from worker.engine.evaluation.lm_eval_runner import RequestProgress
    from worker.engine.loading import load_model

    ctx = DistributedContext.from_environment(args.device)
    device = str(ctx.device) if ctx.distributed else args.device
    model, tokenizer = load_model(args.model, device=device)
    if tokenizer is None:
        print(f"no tokenizer found with {args.model}", file=sys.stderr)
        return 2
    documents = read_documents(args.data, args.split)

    def record(line: dict) -> None:
        if args.metrics_jsonl is not None and ctx.is_main:
            with args.metrics_jsonl.open("a") as f:
                f.write(json.dumps(line) + "\n")
        if args.stop_file is not None and args.stop_file.exists():
            raise SystemExit(3)

    def progress(done: int, total: int) -> None:
        record({"phase": "perplexity", "done": done, "total": total})

    def answered(r: RequestProgress) -> None:
        record({"phase": "lm-eval", **dataclasses.asdict(r)})

    tasks = [t for t in args.tasks.split(",") if t]
    result = evaluate_model(
        model,
        tokenizer,
        documents,
        context=args.context,
        stride=args.stride,
        batch_size=args.batch_size,
        max_documents=args.max_documents,
        tasks=tasks,
        limit=args.limit,
        cache_root=args.cache,
        ranks=ctx,
        scored=progress,
        before_tasks=lambda: record({"phase": "lm-eval-tasks", "tasks": tasks}),
        answered=answered,
    )
    ctx.close()
    if ctx.is_main:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(rank_main())
