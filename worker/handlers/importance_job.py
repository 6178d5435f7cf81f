"""The `importance` job: activation-based scores of a teacher on its calibration data, in memory or one
decoder layer at a time (the same scores); data-parallel runs go to worker.importance_ranks."""

from __future__ import annotations

from functools import partial
from typing import Any

from backend.db import session_scope
from backend.models import Dataset, ImportanceRun, Job, Teacher
from worker.importance_ranks import run_importance_ranks
from worker.job_io import (
    check_remote_code,
    documents,
    fetch_rows,
    json_safe,
    load,
    model_source,
    publish,
    record_artifact,
    token_stream,
)
from worker.runtime import JobRuntime


def run_importance(rt: JobRuntime, job: Job) -> dict[str, Any]:
    from worker.engine.data import calibration_batches
    from worker.engine.importance import compute_importance
    from worker.engine.importance.offload import choose_mode
    from worker.engine.importance.streamed import compute_importance_streamed
    from worker.engine.loading import load_tokenizer
    from worker.engine.memplan import spill_limit_bytes

    if (job.params or {}).get("gpus", 1) > 1 or (job.params or {}).get("nodes", 1) > 1:  # data-parallel
        return run_importance_ranks(rt, job)
    run, teacher = fetch_rows(rt, (ImportanceRun, job.importance_run_id), (Teacher, job.teacher_id))
    (dataset,) = fetch_rows(rt, (Dataset, run.dataset_id))
    p = run.params
    # In memory, or one decoder layer at a time when the teacher does not fit the device (same scores).
    source = model_source(teacher.source)
    mode = choose_mode(source, p, offload=p.get("offload", "auto"), device=rt.device)
    if mode.streamed:
        check_remote_code(rt, teacher.trust_remote_code)
        rt.progress(0.0, f"streaming the model layer by layer: {mode.reason}", force=True)
        tokenizer = load_tokenizer(source, teacher.trust_remote_code)
        importance_pass = partial(
            compute_importance_streamed,
            source,
            device=rt.device,
            reason=mode.reason,
            spill_dir=rt.settings.spill_dir,
            disk_bytes=spill_limit_bytes(p.get("spill_limit_gb") or rt.settings.spill_limit_gb),
        )
    else:
        rt.progress(0.0, f"loading model: {mode.reason}", force=True)
        model, tokenizer = load(rt, teacher.source, teacher.trust_remote_code, bar=(0.0, 0.03))
        importance_pass = partial(compute_importance, model, execution=mode.record())
    rt.progress(0.03, "tokenising the calibration data", force=True)
    if p.get("stream"):  # the first blocks of the calibration split, read lazily
        from worker.engine.streaming import stream_calibration_batches

        stream = token_stream(dataset, p, tokenizer, "calibration", repeat=False)
        batches = stream_calibration_batches(stream, num_samples=p["samples"], batch_size=p["batch_size"])
    else:
        batches = calibration_batches(
            tokenizer,
            documents(dataset, "calibration"),
            seq_len=p["seq_len"],
            num_samples=p["samples"],
            batch_size=p["batch_size"],
            seed=p["seed"],
        )
    total = sum(int(b["input_ids"].shape[0]) for b in batches)
    done = 0
    # What each calibration batch runs: the hooked forward, then every loss scan's re-run of the layers.
    scans = [
        {"bi": "BI", "drop": "drop", "block": f"block k={p['block_size']}"}.get(x, x) for x in p["scans"]
    ]
    work = f"forward + {', '.join(scans)} scans" if scans else "forward"
    rt.progress(0.05, f"calibration: 0/{total} samples ({work})", force=True, phase="calibration")

    def progress(n: int) -> None:
        nonlocal done
        done += n
        message = f"calibration: {done}/{total} samples ({work})"
        if done >= total:
            message = "scores: summing and hashing the weights"
        rt.progress(0.05 + 0.9 * done / max(total, 1), message, phase="calibration")
        rt.raise_if_cancelled()

    result = importance_pass(
        batches,
        scans=tuple(p["scans"]),
        block_size=p["block_size"],
        progress=progress,
        metadata={  # the same provenance keys as `prunescope importance`
            "model": teacher.source,
            "data": dataset.source,
            **({"data_stream": stream.describe()} if p.get("stream") else {}),
            "seed": p["seed"],
            "seq_len_requested": p["seq_len"],
            "batch_size": p["batch_size"],
        },
    )
    rt.progress(0.96, "saving the scores", force=True)
    key = publish(rt, f"importance/{run.id}", result.save)
    with session_scope(rt.url) as s:
        s.get(ImportanceRun, run.id).artifact = key
        record_artifact(rt, s, job.id, "importance", key)
    return {
        "artifact": key,
        "samples": result.samples,
        "stability": json_safe(result.rank_stability()),
        "mode": mode.name,
        "mode_reason": mode.reason,
        # streamed: passes over the checkpoint (more than 1 when the spill limit capped the stores)
        **({"passes": result.manifest["execution"]["passes"]} if mode.streamed else {}),
    }
