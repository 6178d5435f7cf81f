"""A distill job with `gpus: N > 1`: `prunescope distill` under torchrun over N ranks (worker.multi_rank).

The job's parameters become the command's options; the ranks write the distilled student (with its
manifest: world_size, nodes, teacher placement) into a staging directory that is published whole, as a
one-process job publishes its own. Checkpoints are the sharded ones under the job's checkpoint
directory, so a retried attempt resumes them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from backend.db import session_scope
from backend.models import Job, Student, Teacher
from backend.routing import device_type
from worker.engine.distill_defaults import DEFAULTS as DISTILL
from worker.multi_rank import run_ranks
from worker.runtime import JobCancelled, JobRuntime

MODULE = "worker.engine.distill.run_distributed"


def total_steps(p: dict) -> int:
    if p.get("tokens"):
        return max(1, math.ceil(p["tokens"] / (p["batch_size"] * p["seq_len"])))
    return p["steps"]


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
        "--log-every", "1",
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


def run_distill_ranks(rt: JobRuntime, job: Job) -> dict[str, Any]:
    from worker.engine.distill.sharded_checkpoint import sharded_checkpoint_path
    from worker.handlers import (
        _checkpoint_step,
        _dataset,
        _publish,
        _record_artifact,
        _rows,
        checkpoint_dir,
        student_source,
    )

    student, teacher = _rows(rt, (Student, job.student_id), (Teacher, job.teacher_id))
    p = job.params
    ranks = int(p["gpus"])
    dataset = _dataset(rt, p)
    ckpt = checkpoint_dir(rt, job)
    resume = job.attempts > 1 and sharded_checkpoint_path(ckpt) is not None
    steps = total_steps(p)
    reported: dict[str, int] = {}

    def report_checkpoint() -> None:
        """Mirror the sharded checkpoint's step (its torch-free summary) into the job row."""
        saved = _checkpoint_step(ckpt)
        if saved is not None and saved != reported.get("step"):
            reported["step"] = saved
            rt.checkpoint(saved, str(ckpt))

    def on_record(record: dict) -> None:
        phase = record.get("phase", "train")
        if phase == "teacher_correction":
            return  # refused with more than one rank (backend.schemas)
        rt.metrics(record)
        report_checkpoint()
        if phase == "train":
            rt.progress(record["step"] / steps, f"step {record['step']}/{steps} on {ranks} ranks")

    outcome: dict[str, Any] = {}

    def write(out: Path) -> None:
        args = distill_args(
            p,
            student=student_source(rt, student),
            teacher=teacher.source,
            data=dataset.source if dataset else "demo",
            out=out,
            work=ckpt,
            device=device_type(rt.device),
        )
        if resume:
            args.append("--resume")
            rt.log("resuming from the sharded checkpoint")
        rt.progress(0.0, f"starting {ranks} ranks", force=True)
        finished = run_ranks(
            rt,
            ranks,
            MODULE,
            args,
            work=ckpt / "ranks",
            device_type=device_type(rt.device),
            on_record=on_record,
        )
        report_checkpoint()  # the one the ranks wrote as they stopped or finished
        if not finished:
            raise JobCancelled()
        outcome.update(json.loads((out / "prunescope_manifest.json").read_text()))

    key = _publish(rt, f"jobs/{job.id}/model", write)
    with session_scope(rt.url) as s:
        _record_artifact(rt, s, job.id, "distilled", key)
    final = outcome.get("final_validation") or {}
    return {
        "steps": outcome.get("steps"),
        "artifact": key,
        "world_size": outcome.get("world_size", ranks),
        "final_validation": {k: v for k, v in final.items() if isinstance(v, (int, float))},
    }
