"""A distill job with `gpus: N > 1` or `nodes: M > 1`: `prunescope distill` under torchrun over N ranks
per node (worker.multi_rank); over M nodes, the job's process is node 0 of a gang (worker.gang,
worker.node_member).

The job's parameters become the command's options; the ranks write the distilled student (with its
manifest: world_size, nodes, teacher placement) into a staging directory that is published whole, as a
one-process job publishes its own. Checkpoints are the sharded ones under the job's checkpoint
directory, so a retried attempt resumes them.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from backend.db import session_scope
from backend.models import Job, Student, Teacher
from backend.routing import device_type
from worker.distill_checkpoints import CheckpointMirror, checkpoint_dir
from worker.engine.distill_defaults import DEFAULTS as DISTILL
from worker.engine.distill_length import total_steps
from worker.gang import opened
from worker.job_io import (
    distilled_key,
    fetch_rows,
    job_dataset,
    model_source,
    publish,
    record_artifact,
    store,
    student_source,
)
from worker.multi_rank import run_ranks
from worker.runtime import JobCancelled, JobRuntime

MODULE = "worker.cli"  # `python -m worker.cli distill ...`: the prunescope command, run by each rank


def log_every(steps: int) -> int:
    """Every step up to 1000 steps, then about 1000 logged steps per job."""
    return max(1, steps // 1000)


def flat_record(record: dict) -> dict:
    """A rank-0 record as the job's metric series: each rank's figures ("ranks") become rank<r>_tokens_per_s,
    rank<r>_peak_memory_bytes and rank<r>_step_s (the job page reads them live); teacher-correction
    steps keep their series apart (tc_ prefix), as in one process."""
    record = dict(record)
    for fig in record.pop("ranks", None) or []:
        for key in ("tokens_per_s", "peak_memory_bytes", "step_s"):
            record[f"rank{fig['rank']}_{key}"] = fig[key]
    if record.get("phase") == "teacher_correction":
        record = {("tc_" + k if k not in ("step", "tokens", "elapsed") else k): v for k, v in record.items()}
    return record


def distill_args(
    p: dict, *, student: str, teacher: str, data: str, out: Path, work: Path, device: str
) -> list[str]:
    steps = total_steps(p)
    args = [
        student,
        "--teacher", teacher,
        "--mode", "ce" if p["baseline"] else "kd",
        "--data", data,
        "-o", str(out),
        "--work-dir", str(work),
        "--device", device,
        "--steps", str(steps),
        "--batch-size", str(p["batch_size"]),
        "--seq-len", str(p["seq_len"]),
        "--lr", repr(p["lr"]),
        "--min-lr", repr(p["min_lr"]),
        "--warmup", str(p["warmup"]),
        "--temperature", repr(p["temperature"]),
        "--ce-weight", repr(p["ce_weight"]),
        "--teacher-correction-steps", str(p["teacher_correction_steps"]),
        "--weights-dtype", p.get("weights_dtype", DISTILL.weights_dtype),
        "--val-every", str(p["val_every"]),
        "--val-batches", str(p.get("val_batches", DISTILL.val_batches)),
        "--checkpoint-every", str(p["checkpoint_every"]),
        "--seed", str(p["seed"]),
        # stderr lines (job logs) and every rank's live figures on these steps; a bounded count per job
        "--log-every", str(log_every(steps)),
    ]  # fmt: skip
    if p.get("gradient_checkpointing", DISTILL.gradient_checkpointing):
        args.append("--gradient-checkpointing")
    if p.get("stream"):
        args += [
            "--stream",
            "--data-format",
            p.get("data_format", "auto"),
            "--text-field",
            p.get("text_field", "text"),
        ]
    return args


def rank_args(rt: JobRuntime, job: Job, *, out: Path, work: Path) -> list[str]:
    """The ranks' command line for this job after `-m MODULE` (every node of a job over several nodes
    builds the same)."""
    student, teacher = fetch_rows(rt, (Student, job.student_id), (Teacher, job.teacher_id))
    dataset = job_dataset(rt, job.params)
    # Continuing a finished distillation (a bake-off winner's): its saved weights are the ranks' student,
    # a vanilla model directory like the pruned one (each node fetches it from the store).
    init = job.params.get("init_distill_job_id")
    start = str(store(rt).local_dir(distilled_key(rt, init))) if init else student_source(rt, student)
    return [
        "distill",
        *distill_args(
            job.params,
            student=start,
            teacher=model_source(teacher.source),  # the demo teacher's or a hub snapshot's directory
            data=dataset.source if dataset else "demo",
            out=out,
            work=work,
            device=device_type(rt.device),
        ),
    ]


def resuming(job: Job, ckpt: Path) -> bool:
    """A later attempt with a checkpoint of either format (the ranks load a one-process one too)."""
    from worker.engine.distill.checkpoint import saved_format

    return job.attempts > 1 and saved_format(ckpt) is not None


def run_distill_ranks(rt: JobRuntime, job: Job) -> dict[str, Any]:
    p = job.params
    ranks, nodes = int(p.get("gpus", 1)), int(p.get("nodes", 1))
    world = ranks * nodes
    ckpt = checkpoint_dir(rt, job)
    resume = resuming(job, ckpt)
    steps = total_steps(p)
    # A job over several nodes first gathers its gang (worker.gang): node 0 is this process.
    rendezvous, workers = opened(rt, job.id, nodes) if nodes > 1 else (None, [rt.worker_name])

    report_checkpoint = CheckpointMirror(rt, ckpt)  # the sharded checkpoint's step, into the job row

    def on_record(record: dict) -> None:
        phase = record.get("phase", "train")
        rt.metrics(flat_record(record))
        if phase == "teacher_correction":
            tc, of = record["step"], int(p["teacher_correction_steps"])
            rt.progress(0.0, f"teacher correction: step {tc}/{of} on {world} ranks", phase=phase)
            return
        report_checkpoint()
        if phase == "train" and record.get("tokens_per_s"):
            rates.append(float(record["tokens_per_s"]))
        if phase == "train":
            rt.progress(
                record["step"] / steps, f"step {record['step']}/{steps} on {world} ranks", phase="training"
            )

    outcome: dict[str, Any] = {}
    rates: list[float] = []  # every training step's tokens/s over all ranks (rank 0 measures the step)

    def write(out: Path) -> None:
        args = rank_args(rt, job, out=out, work=ckpt)
        if resume:
            args.append("--resume")
            rt.log("resuming from the sharded checkpoint")
        else:  # the directory is this job's own: a checkpoint a fresh start finds there is a leftover
            args.append("--overwrite")  # (an id reused after a database reset), replaced as in one process
        rt.progress(0.0, f"starting {world} ranks" + (f" on {nodes} nodes" if nodes > 1 else ""), force=True)
        try:
            finished = run_ranks(
                rt,
                ranks,
                MODULE,
                args,
                work=ckpt / "ranks",
                device_type=device_type(rt.device),
                on_record=on_record,
                rendezvous=rendezvous,
            )
        finally:  # the one the ranks wrote as they stopped or finished (also when another node stopped
            report_checkpoint()  # them: worker.multi_rank.NodeStopped, then the job is resumable from it)
        if not finished:
            raise JobCancelled()
        outcome.update(json.loads((out / "prunescope_manifest.json").read_text()))

    key = publish(rt, f"jobs/{job.id}/model", write)
    with session_scope(rt.url) as s:
        record_artifact(rt, s, job.id, "distilled", key)
    final = outcome.get("final_validation") or {}
    return {
        "steps": outcome.get("steps"),
        "artifact": key,
        "world_size": outcome.get("world_size", world),
        "nodes": outcome.get("nodes", nodes),
        "gpus_per_node": ranks,
        "workers": workers,
        **({"tokens_per_s": statistics.median(rates)} if rates else {}),
        # how the teacher was placed and why (the memory planner's choice, worker.engine.distill.distributed)
        **{
            k: outcome[k]
            for k in ("teacher_placement", "teacher_placement_reason", "peak_memory_per_rank")
            if outcome.get(k)
        },
        "final_validation": {k: v for k, v in final.items() if isinstance(v, (int, float))},
    }
