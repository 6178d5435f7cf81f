"""An importance job with `gpus: N > 1` or `nodes: M > 1`: `prunescope importance` under torchrun over
N ranks on this worker (worker.multi_rank), or N ranks on each of M workers meeting at one rendezvous
(node 0 is this job process; worker.gang, worker.node_member), data-parallel: each rank scores every
(N x M)-th calibration batch and the sums are all-reduced (worker.engine.importance.compute), so the
artifact is a one-process run's.

The teacher is loaded whole on every rank (a layer-streamed pass runs in one process: `offload` "auto"
becomes "never" here, and "always" with gpus or nodes > 1 is refused by the API). Rank 0 (on node 0)
writes the artifact; its progress is tailed into the job as for distillation; a cancel stops every rank
at its next batch (nothing to resume: importance has no checkpoint, it simply runs again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.db import session_scope
from backend.models import Dataset, ImportanceRun, Job, Teacher
from backend.routing import device_type
from worker.job_io import fetch_rows, json_safe, model_source, publish, record_artifact
from worker.multi_rank import run_ranks, stop_grace_s
from worker.runtime import JobCancelled, JobRuntime

MODULE = "worker.cli"  # `python -m worker.cli importance ...`: the prunescope command, run by each rank


def importance_args(
    p: dict, *, model: str, data: str, out: Path, device: str, name: str | None = None
) -> list[str]:
    args = [
        model,
        *(["--model-name", name] if name else []),
        "--data", data,
        "-o", str(out),
        "--device", device,
        "--samples", str(p["samples"]),
        "--seq-len", str(p["seq_len"]),
        "--batch-size", str(p["batch_size"]),
        "--block-size", str(p["block_size"]),
        "--scans", ",".join(p["scans"]) or "none",
        "--seed", str(p["seed"]),
        "--offload", "never",
    ]  # fmt: skip
    if p.get("stream"):
        args += ["--stream", "--data-format", p.get("data_format", "auto")]
        args += ["--text-field", p.get("text_field", "text")]
    return args


def rank_args(rt: JobRuntime, job: Job, out: Path) -> list[str]:
    """The ranks' command line after `-m MODULE` (every node of a job over several nodes builds it)."""
    run, teacher = fetch_rows(rt, (ImportanceRun, job.importance_run_id), (Teacher, job.teacher_id))
    (dataset,) = fetch_rows(rt, (Dataset, run.dataset_id))
    if teacher.trust_remote_code:
        raise RuntimeError(
            "importance over several ranks runs models without remote code only; use gpus: 1, nodes: 1"
        )
    device = device_type(rt.device)
    return [
        "importance",
        *importance_args(
            run.params,
            model=model_source(teacher.source),
            name=teacher.source,  # recorded in the manifest as the one-process job records it
            data=dataset.source,
            out=out,
            device=device,
        ),
    ]


def run_importance_ranks(rt: JobRuntime, job: Job) -> dict[str, Any]:
    from worker.engine.importance.result import ImportanceResult
    from worker.gang import opened

    (run,) = fetch_rows(rt, (ImportanceRun, job.importance_run_id))
    p = run.params
    ranks, nodes = int(p.get("gpus", 1)), int(p.get("nodes", 1))
    world = ranks * nodes
    # A job over several nodes first gathers its gang (worker.gang): node 0 is this process.
    rendezvous, workers = opened(rt, job.id, nodes) if nodes > 1 else (None, [rt.worker_name])
    loaded: dict[str, Any] = {}

    def on_record(record: dict) -> None:
        done, total = record["done"], max(record["total"], 1)
        rt.progress(0.05 + 0.9 * done / total, f"calibration: ~{done}/{total} samples on {world} ranks")

    def write(out: Path) -> None:
        args = rank_args(rt, job, out)
        rt.progress(0.0, f"starting {world} ranks" + (f" on {nodes} nodes" if nodes > 1 else ""), force=True)
        finished = run_ranks(
            rt,
            ranks,
            MODULE,
            args,
            work=out.parent / "ranks",
            device_type=device_type(rt.device),
            on_record=on_record,
            rendezvous=rendezvous,
            stop_grace_s=stop_grace_s("importance"),
        )
        if not finished:
            raise JobCancelled()
        loaded["result"] = ImportanceResult.load(out)

    key = publish(rt, f"importance/{run.id}", write)
    with session_scope(rt.url) as s:
        s.get(ImportanceRun, run.id).artifact = key
        record_artifact(rt, s, job.id, "importance", key)
    result = loaded["result"]
    execution = result.manifest.get("execution", {})
    return {
        "artifact": key,
        "samples": result.samples,
        "stability": json_safe(result.rank_stability()),
        "mode": execution.get("mode"),
        "mode_reason": execution.get("reason"),
        "world_size": world,
        "nodes": nodes,
        "gpus_per_node": ranks,
        "workers": workers,
    }
