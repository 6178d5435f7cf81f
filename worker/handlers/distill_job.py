"""The `distill` job: knowledge distillation of a student from its teacher (or the CE baseline) with
checkpoints a retried attempt resumes exactly; runs over several ranks go to worker.distill_ranks."""

from __future__ import annotations

from typing import Any

from backend.db import session_scope
from backend.models import Job, Student, Teacher
from worker.distill_checkpoints import CheckpointMirror, checkpoint_dir, checkpoint_step
from worker.distill_ranks import run_distill_ranks, total_steps
from worker.engine.distill_defaults import DEFAULTS as DISTILL
from worker.job_io import (
    distilled_key,
    documents,
    fetch_rows,
    job_dataset,
    load,
    publish,
    record_artifact,
    store,
    student_source,
    token_stream,
)
from worker.runtime import JobCancelled, JobRuntime


def run_distill(rt: JobRuntime, job: Job) -> dict[str, Any]:
    from worker.engine.data import PackedTokens
    from worker.engine.distill import DistillConfig, distill
    from worker.engine.distill.memory import memory_options

    if job.params.get("gpus", 1) > 1 or job.params.get("nodes", 1) > 1:  # ranks under torchrun
        return run_distill_ranks(rt, job)
    student, teacher = fetch_rows(rt, (Student, job.student_id), (Teacher, job.teacher_id))
    p = job.params
    dataset = job_dataset(rt, p)
    rt.progress(0.0, "loading models", force=True)
    init = p.get("init_distill_job_id")  # continue a finished distillation (a bake-off winner's)
    start = str(store(rt).local_dir(distilled_key(rt, init))) if init else student_source(rt, student)
    model, tokenizer = load(rt, start, bar=(0.0, 0.0), what="student weights")
    saved_dtype = next(model.parameters()).dtype  # trained in weights_dtype, saved as it was pruned
    teacher_model = (
        None
        if p["baseline"]
        else load(rt, teacher.source, teacher.trust_remote_code, bar=(0.0, 0.0), what="teacher weights")[0]
    )
    if p.get("stream"):  # the checkpoint keeps the stream's position, so a retried job resumes it exactly
        train = token_stream(dataset, p, tokenizer, "train", repeat=True)
        first_val = token_stream(dataset, p, tokenizer, "validation", repeat=False)
        val_blocks = p.get("val_batches", 8) * p["batch_size"]
        val = PackedTokens.from_blocks(first_val.take(val_blocks, allow_fewer=True))
    else:
        train = PackedTokens(tokenizer, documents(dataset, "train"), p["seq_len"])
        val = PackedTokens(tokenizer, documents(dataset, "validation"), p["seq_len"])
    steps = total_steps(p)
    config = DistillConfig(
        mode="ce" if p["baseline"] else "kd",
        steps=steps,
        batch_size=p["batch_size"],
        lr=p["lr"],
        min_lr=p["min_lr"],
        warmup_steps=p["warmup"],
        temperature=p["temperature"],
        ce_weight=p["ce_weight"],
        teacher_correction_steps=p["teacher_correction_steps"],
        # .get: jobs queued before these parameters existed run with the defaults
        gradient_checkpointing=p.get("gradient_checkpointing", DISTILL.gradient_checkpointing),
        weights_dtype=p.get("weights_dtype", DISTILL.weights_dtype),
        val_every=p["val_every"],
        val_batches=p.get("val_batches", DISTILL.val_batches),
        checkpoint_every=p["checkpoint_every"],
        seed=p["seed"],
    )
    ckpt = checkpoint_dir(rt, job)
    resume = job.attempts > 1 and (ckpt / "checkpoint.pt").exists()
    if resume:
        rt.log(f"resuming from the checkpoint at step {checkpoint_step(ckpt)}")

    report_checkpoint = CheckpointMirror(rt, ckpt)

    def callback(record: dict) -> None:
        phase = record.get("phase", "train")
        if phase == "teacher_correction":  # its own step axis: keep its series apart
            record = {
                ("tc_" + k if k not in ("step", "tokens", "elapsed") else k): v for k, v in record.items()
            }
        rt.metrics(record)
        if phase == "train":  # the ETA's rate: steps since this attempt's first step (a resume's too)
            rt.progress(record["step"] / steps, f"step {record['step']}/{steps}", phase="training")
        elif phase == "teacher_correction":
            tc = record["step"]
            rt.progress(0.0, f"teacher correction: step {tc}/{config.teacher_correction_steps}", phase=phase)
        report_checkpoint()

    def should_stop() -> bool:
        # Polled before every step, so right after the loop saved the previous step's checkpoint:
        # the row learns of it at once, not a whole step later at the next metric.
        report_checkpoint()
        return rt.should_stop()

    with memory_options(model, teacher_model, config):
        result = distill(
            model,
            teacher_model,
            train,
            val,
            config,
            callback=callback,
            checkpoint_dir=ckpt,
            resume=resume,
            should_stop=should_stop,
        )
    report_checkpoint()
    if result.stopped:
        raise JobCancelled()
    from worker.engine.loading import save_model

    manifest = {"distill_job": job.id, "student_id": student.id, "params": p}
    model.to(saved_dtype)
    key = publish(rt, f"jobs/{job.id}/model", lambda out: save_model(model, tokenizer, out, manifest))
    with session_scope(rt.url) as s:
        record_artifact(rt, s, job.id, "distilled", key)
    final = result.final_validation or {}
    return {
        "steps": result.steps_completed,
        "artifact": key,
        "final_validation": {k: v for k, v in final.items() if isinstance(v, (int, float))},
    }
