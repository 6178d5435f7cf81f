"""An importance job with `gpus: N > 1`: `prunescope importance` under torchrun over N ranks on this
worker (worker.multi_rank), data-parallel: each rank scores every N-th calibration batch and the sums
are all-reduced (worker.engine.importance.compute), so the artifact is a one-process run's.

The teacher is loaded whole on every rank (a layer-streamed pass runs in one process: `offload` "auto"
becomes "never" here, and "always" with gpus > 1 is refused by the API). Rank 0's progress is tailed into
the job as for distillation; a cancel stops every rank at its next batch (nothing to resume: importance
has no checkpoint, it simply runs again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.db import session_scope
from backend.models import Dataset, ImportanceRun, Job, Teacher
from backend.routing import device_type
from worker.multi_rank import run_ranks
from worker.runtime import JobCancelled, JobRuntime

MODULE = "worker.cli"  # `python -m worker.cli importance ...`: the prunescope command, run by each rank


def importance_args(p: dict, *, model: str, data: str, out: Path, device: str) -> list[str]:
    args = [
        model,
        "--data", data,
        "-o", str(out),
        "--device", device,
        "--samples", str(p["samples"]),
        "--seq-len", str(p["seq_len"]),
        "--batch-size", str(p["batch_size"]),
        "--block-size", str(p["block_size"]),
        "--scans", ",".join(p["scans"]),
        "--seed", str(p["seed"]),
        "--offload", "never",
    ]  # fmt: skip
    if p.get("stream"):
        args += ["--stream", "--data-format", p.get("data_format", "auto")]
        args += ["--text-field", p.get("text_field", "text")]
    return args


def run_importance_ranks(rt: JobRuntime, job: Job) -> dict[str, Any]:
    from worker.engine.importance.result import ImportanceResult
    from worker.handlers import _plain, _publish, _record_artifact, _rows, model_source

    run, teacher = _rows(rt, (ImportanceRun, job.importance_run_id), (Teacher, job.teacher_id))
    (dataset,) = _rows(rt, (Dataset, run.dataset_id))
    p = run.params
    ranks = int(p["gpus"])
    if teacher.trust_remote_code:
        raise RuntimeError("importance over several ranks runs models without remote code only; use gpus: 1")
    loaded: dict[str, Any] = {}

    def on_record(record: dict) -> None:
        done, total = record["done"], max(record["total"], 1)
        rt.progress(0.05 + 0.9 * done / total, f"calibration: ~{done}/{total} samples on {ranks} ranks")

    def write(out: Path) -> None:
        args = [
            "importance",
            *importance_args(
                p,
                model=model_source(teacher.source),
                data=dataset.source,
                out=out,
                device=device_type(rt.device),
            ),
        ]
        rt.progress(0.0, f"starting {ranks} ranks", force=True)
        finished = run_ranks(
            rt,
            ranks,
            MODULE,
            args,
            work=out.parent / "ranks",
            device_type=device_type(rt.device),
            on_record=on_record,
        )
        if not finished:
            raise JobCancelled()
        loaded["result"] = ImportanceResult.load(out)

    key = _publish(rt, f"importance/{run.id}", write)
    with session_scope(rt.url) as s:
        s.get(ImportanceRun, run.id).artifact = key
        _record_artifact(rt, s, job.id, "importance", key)
    result = loaded["result"]
    execution = result.manifest.get("execution", {})
    return {
        "artifact": key,
        "samples": result.samples,
        "stability": _plain(result.rank_stability()),
        "mode": execution.get("mode"),
        "mode_reason": execution.get("reason"),
        "world_size": ranks,
    }
