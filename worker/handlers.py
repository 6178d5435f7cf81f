"""One function per job kind: read the job's inputs from the database, call the engine, store results.

Each handler gets the `JobRuntime` (progress, metrics, cancellation) and the claimed job row, returns
the job's `result` dict, and writes its artifacts through the artifact store (staging dir + rename).
torch and the engine are imported here, in the worker only.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import select

from backend.artifacts import ArtifactStore
from backend.db import session_scope
from backend.models import Artifact, BenchmarkResult, Dataset, ImportanceRun, Job, Plan, Student, Teacher
from backend.paths import stored_source
from backend.spec_refresh import REFRESH
from worker.engine.distill_defaults import DEFAULTS as DISTILL
from worker.engine.roots import check_model_inside
from worker.runtime import JobCancelled, JobRuntime


def model_source(source: str) -> str:
    """The local directory of a teacher's stored source; a hub id only through the hub client."""
    stored = stored_source(source)
    if stored.kind == "demo":
        from worker.demo import demo_teacher_path

        return str(demo_teacher_path())
    if stored.kind == "hub":
        from worker.hub import hub_snapshot

        return hub_snapshot(stored.value)
    return stored.value


def check_teacher_files(rt: JobRuntime, job: Job) -> None:
    """Before a job reads its teacher (its own, or its student's): a local teacher folder and every file
    in it resolve inside the allowed roots, or the local artifact store where a promoted student's
    weights are read in place. A link put in the folder after registration is refused (OutsideRoots)."""
    teacher_id = job.teacher_id
    if teacher_id is None and job.student_id is not None:
        (student,) = _rows(rt, (Student, job.student_id))
        teacher_id = student.teacher_id if student is not None else None
    (teacher,) = _rows(rt, (Teacher, teacher_id)) if teacher_id is not None else (None,)
    if teacher is None or stored_source(teacher.source).kind != "path":
        return
    artifacts = store(rt)
    check_model_inside(teacher.source, rt.settings.roots + ([artifacts.root] if artifacts.is_local else []))


def check_remote_code(rt: JobRuntime, trust_remote_code: bool) -> None:
    if trust_remote_code and not rt.settings.trust_remote_code:
        raise PermissionError("trust_remote_code is disabled on this server (PRUNESCOPE_TRUST_REMOTE_CODE)")


def load(
    rt: JobRuntime,
    source: str,
    trust_remote_code: bool = False,
    *,
    bar: tuple[float, float] | None = None,
    what: str = "weights",
):
    """(model, tokenizer), reporting `loading {what}: k/N tensors` as the checkpoint is read (the bar
    moves over `bar`, else stays where the job is)."""
    from worker.engine.loading import load_model

    check_remote_code(rt, trust_remote_code)
    if bar is None:
        at = rt.job_row().progress or 0.0
        bar = (at, at)
    return load_model(
        model_source(source),
        device=rt.device,
        trust_remote_code=trust_remote_code,
        progress=LoadCount(rt, what, bar),
    )


def _left(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 60}m {seconds % 60}s" if seconds >= 60 else f"{seconds}s"


class LoadCount:
    """`loading weights: k/N tensors, 1m 20s left` while a checkpoint is read (a 70B teacher: minutes).

    Its time left is the load's own, at the load's rate over the last minute (worker.eta); the job's
    ETA stays empty meanwhile: how fast weights are read says nothing of how fast the job's own work
    (calibration, training...) will go, and the bar's share of the load is a guess, not a measure.
    """

    def __init__(self, rt: JobRuntime, what: str, bar: tuple[float, float]):
        from worker.eta import RateEta

        self.rt, self.what, self.bar = rt, what, bar
        self.eta = RateEta()
        self.phase = f"loading {what}"

    def __call__(self, done: int, total: int) -> None:
        f = done / total if total else 1.0
        message = f"{self.phase}: {done}/{total} tensors"
        left = self.eta.update(self.rt._clock(), f)
        if left is not None and done < total:
            message += f", {_left(left)} left"
        start, end = self.bar
        self.rt.progress(start + (end - start) * f, message, phase=self.phase, job_eta=False)
        self.rt.raise_if_cancelled()


def store(rt: JobRuntime) -> ArtifactStore:
    return ArtifactStore(rt.settings.artifacts_url)


def _rows(rt: JobRuntime, *pairs):
    """Fetch detached rows: _rows(rt, (Teacher, 1), (Dataset, 2))."""
    with session_scope(rt.url) as s:
        rows = [s.get(model, pk) for model, pk in pairs]
        for row in rows:
            if row is not None:
                s.expunge(row)
    return rows


def _publish(rt: JobRuntime, key: str, write: Callable[[Path], object]) -> str:
    """`write(dir)` into a staging directory, then move it to `key` whole (never half-written)."""
    st = store(rt)
    staging = st.staging_dir()
    try:
        write(staging / "out")
        return st.put_dir(staging / "out", key)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _record_artifact(rt: JobRuntime, s, job_id: int, kind: str, key: str) -> None:
    st = store(rt)
    size = st.size(key) if st.is_local else None
    s.add(Artifact(job_id=job_id, kind=kind, key=key, size_bytes=size))


def _mark_failed(rt: JobRuntime, model, pk: int, exc: Exception) -> None:
    """The teacher / student row the job was building shows why it failed."""
    with session_scope(rt.url) as s:
        row = s.get(model, pk)
        row.status, row.error = "failed", f"{type(exc).__name__}: {exc}"


def _dataset(rt: JobRuntime, params: dict) -> Dataset | None:
    """The job's dataset, its files checked against the allowed roots before any is read (every reader,
    in this process or in the ranks it starts, gets the dataset here)."""
    if not params.get("dataset_id"):
        return None
    (dataset,) = _rows(rt, (Dataset, params["dataset_id"]))
    if dataset is not None and dataset.source != "demo":
        from worker.engine.streaming import check_source_inside

        # A link to outside the roots put in the folder after registration is refused, not read.
        check_source_inside(dataset.source, rt.settings.roots)
    return dataset


def _documents(dataset: Dataset | None, split: str) -> list[str]:
    from worker.engine.data import read_documents

    return read_documents(dataset.source if dataset else "demo", split)


def _stream(dataset: Dataset | None, p: dict, tokenizer, split: str, *, repeat: bool):
    """The dataset read lazily (params `stream`, `data_format`, `text_field`: backend/data_reading.py)."""
    from worker.engine.streaming import TokenStream

    return TokenStream(
        tokenizer,
        dataset.source if dataset else "demo",
        seq_len=p["seq_len"],
        split=split,
        text_field=p.get("text_field", "text"),
        data_format=p.get("data_format", "auto"),
        repeat=repeat,
    )


# ---- inspect: a teacher's architecture ------------------------------------------------------------


def run_inspect(rt: JobRuntime, job: Job) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from worker.engine.adapters import arch_spec
    from worker.engine.loading import LAYERS_FILE, resize_to_layers_file

    (teacher,) = _rows(rt, (Teacher, job.teacher_id))
    check_remote_code(rt, teacher.trust_remote_code)
    source = model_source(teacher.source)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=teacher.trust_remote_code)
        with torch.device("meta"):  # shapes only: no memory, no weights read
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=teacher.trust_remote_code)
            if (Path(source) / LAYERS_FILE).is_file():  # a promoted non-uniform student: config.json
                resize_to_layers_file(model, Path(source), config)  # holds only the widest layer
        spec = arch_spec(model)
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if dtype is not None:
            spec.dtype = str(dtype).removeprefix("torch.")
        summary = spec.summary()
    except Exception as exc:
        if not job.params.get(REFRESH):  # a refresh (backend.spec_refresh) leaves a ready teacher ready
            _mark_failed(rt, Teacher, teacher.id, exc)
        raise
    with session_scope(rt.url) as s:
        row = s.get(Teacher, teacher.id)
        row.spec, row.status, row.error = summary, "ready", None
    return {"spec": summary}


# ---- importance ---------------------------------------------------------------------------------------


def run_importance(rt: JobRuntime, job: Job) -> dict[str, Any]:
    from worker.engine.data import calibration_batches
    from worker.engine.importance import compute_importance
    from worker.engine.importance.offload import choose_mode
    from worker.engine.importance.streamed import compute_importance_streamed
    from worker.engine.loading import load_tokenizer
    from worker.engine.memplan import spill_limit_bytes

    if (job.params or {}).get("gpus", 1) > 1 or (job.params or {}).get("nodes", 1) > 1:  # data-parallel
        from worker.importance_ranks import run_importance_ranks

        return run_importance_ranks(rt, job)
    run, teacher = _rows(rt, (ImportanceRun, job.importance_run_id), (Teacher, job.teacher_id))
    (dataset,) = _rows(rt, (Dataset, run.dataset_id))
    p = run.params
    # In memory, or one decoder layer at a time when the teacher does not fit the device (same scores).
    source = model_source(teacher.source)
    mode = choose_mode(source, offload=p.get("offload", "auto"), device=rt.device)
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

        stream = _stream(dataset, p, tokenizer, "calibration", repeat=False)
        batches = stream_calibration_batches(stream, num_samples=p["samples"], batch_size=p["batch_size"])
    else:
        batches = calibration_batches(
            tokenizer,
            _documents(dataset, "calibration"),
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
    key = _publish(rt, f"importance/{run.id}", result.save)
    with session_scope(rt.url) as s:
        s.get(ImportanceRun, run.id).artifact = key
        _record_artifact(rt, s, job.id, "importance", key)
    return {
        "artifact": key,
        "samples": result.samples,
        "stability": _plain(result.rank_stability()),
        "mode": mode.name,
        "mode_reason": mode.reason,
        # streamed: passes over the checkpoint (more than 1 when the spill limit capped the stores)
        **({"passes": result.manifest["execution"]["passes"]} if mode.streamed else {}),
    }


# ---- prune: create a student by surgery ----------------------------------------------------------------


def run_prune(rt: JobRuntime, job: Job) -> dict[str, Any]:
    from worker.engine.out_of_core import resolve_mode
    from worker.engine.plan import PrunePlan

    student, teacher = _rows(rt, (Student, job.student_id), (Teacher, job.teacher_id))
    (plan_row,) = _rows(rt, (Plan, student.plan_id))
    try:
        check_remote_code(rt, teacher.trust_remote_code)
        plan = PrunePlan.model_validate(plan_row.plan)
        manifest = {
            "teacher": teacher.source,
            "teacher_id": teacher.id,
            "plan_id": plan_row.id,
            "plan_version": plan_row.version,
            "plan": plan_row.plan,
        }
        # A remote-code architecture has no adapter: its config fails there, so auto loads it in memory.
        mode = job.params.get("out_of_core", "auto")
        checkpoint, why = resolve_mode(
            model_source(teacher.source), mode, rt.settings.out_of_core_threshold_gb
        )
        manifest["surgery"] = why
        rt.progress(0.02, f"surgery {why}", force=True)
        if checkpoint is not None:
            summary, key = _prune_out_of_core(rt, student, checkpoint, plan, manifest)
        else:
            summary, key = _prune_in_memory(rt, student, teacher, plan, manifest)
    except Exception as exc:
        _mark_failed(rt, Student, student.id, exc)
        raise
    with session_scope(rt.url) as s:
        row = s.get(Student, student.id)
        row.status, row.spec, row.path, row.error = "ready", summary, key, None
        _record_artifact(rt, s, job.id, "student", key)
    return {"artifact": key, "spec": summary, "surgery": why}


def _prune_in_memory(rt: JobRuntime, student: Student, teacher: Teacher, plan, manifest: dict):
    from worker.engine.adapters import arch_spec
    from worker.engine.loading import save_model
    from worker.engine.surgery import apply_plan

    rt.progress(0.05, "loading teacher", force=True)
    model, tokenizer = load(rt, teacher.source, teacher.trust_remote_code, bar=(0.05, 0.4))
    rt.raise_if_cancelled()
    rt.progress(0.4, "cutting weights", force=True)
    model = apply_plan(model, plan)
    summary = arch_spec(model).summary()
    rt.progress(0.7, "saving", force=True)
    key = _publish(
        rt, f"students/{student.id}/model", lambda out: save_model(model, tokenizer, out, manifest)
    )
    return summary, key


def _prune_out_of_core(rt: JobRuntime, student: Student, checkpoint, plan, manifest: dict):
    """Tensor by tensor from the teacher's checkpoint: the teacher is never loaded whole."""
    from worker.engine.out_of_core import prune_checkpoint

    def progress(done: int, total: int, name: str) -> None:
        rt.progress(0.05 + 0.9 * done / total, f"cut {done}/{total} tensors ({name})")
        rt.raise_if_cancelled()

    result = {}

    def write(out: Path) -> None:
        result["pruned"] = prune_checkpoint(
            checkpoint.path, plan, out, manifest, checkpoint=checkpoint, progress=progress
        )

    key = _publish(rt, f"students/{student.id}/model", write)
    return result["pruned"].spec.summary(), key


def student_source(rt: JobRuntime, student: Student) -> str:
    if not student.path:
        raise RuntimeError(f"student {student.id} has no saved model (status {student.status})")
    return str(store(rt).local_dir(student.path))


# ---- quick what-if preview ----------------------------------------------------------------------------


def run_preview(rt: JobRuntime, job: Job) -> dict[str, Any]:
    """Teacher and masked-teacher perplexity: on the teacher's evaluation protocol (`params.protocol`,
    the same numbers as its evaluate jobs), or on `samples` packed validation blocks when asked for."""
    import torch

    from worker.engine import eval_protocol
    from worker.engine.evaluation.perplexity import block_nll, perplexity
    from worker.engine.masking import masked
    from worker.engine.plan import PrunePlan
    from worker.teacher_perplexity import known, weights_stamp

    plan_row, teacher = _rows(rt, (Plan, job.plan_id), (Teacher, job.teacher_id))
    p = job.params
    rt.progress(0.0, "loading model", force=True)
    model_dir = model_source(teacher.source)
    model, tokenizer = load(rt, model_dir, teacher.trust_remote_code, bar=(0.0, 0.05))
    model.eval()
    protocol = eval_protocol.of_job("preview", p)
    stamp = weights_stamp(model_dir, rt.device, _dtype_name(model))
    measured = known(rt.url, teacher.id, protocol["id"], stamp)
    if p.get("protocol"):
        proto = eval_protocol.of_teacher(p["protocol"])
        dataset = _rows(rt, (Dataset, proto.dataset_id))[0] if proto.dataset_id else None
        docs = _documents(dataset, proto.split)[: proto.max_documents]

        unit = "windows"

        def measure(progress) -> tuple[float, int]:
            r = perplexity(
                model, docs, tokenizer, context=proto.context, stride=proto.stride, progress=progress
            )
            return r["loss"], r["tokens"]
    else:
        from worker.engine.data import PackedTokens

        packed = PackedTokens(tokenizer, _documents(_dataset(rt, p), "validation"), p["seq_len"])
        limit = min(p["samples"], len(packed))

        unit = "blocks"

        def measure(progress) -> tuple[float, int]:
            return block_nll(model, packed, limit=limit, progress=progress)

    def stage(name: str, start: float, share: float):
        """Progress of one pass: `start` .. `start` + `share` of the bar, its own ETA."""
        rt.progress(start, f"{name}: starting", force=True, phase=name)

        def report(done: int, total: int) -> None:
            rt.progress(start + share * done / total, f"{name}: {done}/{total} {unit}", phase=name)
            rt.raise_if_cancelled()

        return report

    with torch.no_grad():
        if measured is None:
            nll, tokens = measure(stage("teacher perplexity", 0.05, 0.45))
        else:
            nll, tokens = measured.loss, measured.tokens
            rt.log(
                f"teacher perplexity {math.exp(nll):.4g}: measured by job {measured.job_id} on the same "
                "weights and protocol, not measured again"
            )
        with masked(model, PrunePlan.model_validate(plan_row.plan)):
            nll_m, _ = measure(
                stage("masked perplexity", 0.05 if measured else 0.5, 0.9 if measured else 0.45)
            )
    ppl_teacher, ppl_masked = math.exp(nll), math.exp(nll_m)
    return {
        "ppl_teacher": ppl_teacher,
        "ppl_masked": ppl_masked,
        "ratio": ppl_masked / ppl_teacher,
        "tokens": tokens,
        "protocol": protocol,
        "teacher_loss": nll,
        "teacher_from_job": measured.job_id if measured else None,
        "weights_stamp": stamp,
    }


def _dtype_name(model) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


# ---- distillation -------------------------------------------------------------------------------------


def checkpoint_dir(rt: JobRuntime, job: Job) -> Path:
    """Checkpoints live with the artifacts (a shared directory lets another worker resume)."""
    st = store(rt)
    if not st.is_local:
        return rt.settings.data_dir.resolve() / "checkpoints" / f"job-{job.id}"
    return st.root / "checkpoints" / f"job-{job.id}"


def run_distill(rt: JobRuntime, job: Job) -> dict[str, Any]:
    from worker.distill_ranks import total_steps
    from worker.engine.data import PackedTokens
    from worker.engine.distill import DistillConfig, distill
    from worker.engine.distill.memory import memory_options

    if job.params.get("gpus", 1) > 1 or job.params.get("nodes", 1) > 1:  # ranks under torchrun
        from worker.distill_ranks import run_distill_ranks

        return run_distill_ranks(rt, job)
    student, teacher = _rows(rt, (Student, job.student_id), (Teacher, job.teacher_id))
    p = job.params
    dataset = _dataset(rt, p)
    rt.progress(0.0, "loading models", force=True)
    init = p.get("init_distill_job_id")  # continue a finished distillation (a bake-off winner's)
    start = str(store(rt).local_dir(_distilled_key(rt, init))) if init else student_source(rt, student)
    model, tokenizer = load(rt, start, bar=(0.0, 0.0), what="student weights")
    teacher_model = (
        None
        if p["baseline"]
        else load(rt, teacher.source, teacher.trust_remote_code, bar=(0.0, 0.0), what="teacher weights")[0]
    )
    if p.get("stream"):  # the checkpoint keeps the stream's position, so a retried job resumes it exactly
        train = _stream(dataset, p, tokenizer, "train", repeat=True)
        first_val = _stream(dataset, p, tokenizer, "validation", repeat=False)
        val_blocks = p.get("val_batches", 8) * p["batch_size"]
        val = PackedTokens.from_blocks(first_val.take(val_blocks, allow_fewer=True))
    else:
        train = PackedTokens(tokenizer, _documents(dataset, "train"), p["seq_len"])
        val = PackedTokens(tokenizer, _documents(dataset, "validation"), p["seq_len"])
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
        rt.log(f"resuming from the checkpoint at step {_checkpoint_step(ckpt)}")

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
    key = _publish(rt, f"jobs/{job.id}/model", lambda out: save_model(model, tokenizer, out, manifest))
    with session_scope(rt.url) as s:
        _record_artifact(rt, s, job.id, "distilled", key)
    final = result.final_validation or {}
    return {
        "steps": result.steps_completed,
        "artifact": key,
        "final_validation": {k: v for k, v in final.items() if isinstance(v, (int, float))},
    }


def _checkpoint_step(ckpt: Path) -> int | None:
    try:
        return int(json.loads((ckpt / "checkpoint.json").read_text())["step"])
    except (FileNotFoundError, KeyError, ValueError, json.JSONDecodeError):
        return None


class CheckpointMirror:
    """Call it to mirror the newest checkpoint on disk (what a resume starts from: its step in the
    torch-free checkpoint.json, one process or sharded alike) into the job row, once per new step."""

    def __init__(self, rt: JobRuntime, ckpt: Path):
        self.rt, self.ckpt, self.step = rt, ckpt, None

    def __call__(self) -> None:
        saved = _checkpoint_step(self.ckpt)
        if saved is not None and saved != self.step:
            self.step = saved
            self.rt.checkpoint(saved, str(self.ckpt))


# ---- evaluate / benchmark --------------------------------------------------------------------------------


def _subject(rt: JobRuntime, job: Job):
    """(model source, trust_remote_code) of the job's student — the weights of the distillation its
    params name (resolved by the API), else the pruned ones — or of its teacher when no student."""
    if job.student_id:
        distill_job_id = job.params.get("distill_job_id")
        if distill_job_id:
            return str(store(rt).local_dir(_distilled_key(rt, distill_job_id))), False
        (student,) = _rows(rt, (Student, job.student_id))
        return student_source(rt, student), False
    (teacher,) = _rows(rt, (Teacher, job.teacher_id))
    return teacher.source, teacher.trust_remote_code


def _distilled_key(rt: JobRuntime, distill_job_id: int) -> str:
    with session_scope(rt.url) as s:
        key = s.scalar(
            select(Artifact.key)
            .where(Artifact.job_id == distill_job_id, Artifact.kind == "distilled")
            .order_by(Artifact.id.desc())
        )
    if key is None:
        raise RuntimeError(f"distill job {distill_job_id} saved no weights")
    return key


def _measured(job: Job) -> dict[str, Any]:
    """What a student's evaluate / benchmark result measured, stored with the result."""
    if not job.student_id:
        return {}
    distill_job_id = job.params.get("distill_job_id")
    return {"weights": "distilled" if distill_job_id else "pruned", "distill_job_id": distill_job_id}


def run_evaluate(rt: JobRuntime, job: Job) -> dict[str, Any]:
    from worker.engine import eval_protocol, evaluation

    p = job.params
    if p.get("tasks"):  # an unknown name fails the job now, not after the perplexity pass
        evaluation.check_tasks(p["tasks"])
    if p.get("gpus", 1) > 1 or p.get("nodes", 1) > 1:  # data-parallel under torchrun, lm-eval too
        from worker.evaluate_ranks import run_evaluate_ranks

        return run_evaluate_ranks(rt, job)
    from worker.teacher_perplexity import weights_stamp

    dataset = _dataset(rt, p)
    source, trc = _subject(rt, job)
    rt.progress(0.0, "loading model", force=True)
    model_dir = model_source(source)
    model, tokenizer = load(rt, model_dir, trc, bar=(0.0, 0.05))
    docs = _documents(dataset, p["split"])[: p["max_documents"]]
    t0 = time.perf_counter()
    share = 0.45 if p.get("tasks") else 0.9  # of the bar: lm-eval tasks take the rest
    rt.progress(0.05, f"perplexity: 0 of {len(docs)} documents", force=True, phase="perplexity")

    def scored(done: int, total: int) -> None:
        where = f"{done}/{total} windows of {len(docs)} documents"
        rt.progress(0.05 + share * done / total, f"perplexity: {where}", phase="perplexity")
        rt.raise_if_cancelled()

    ppl = evaluation.perplexity(
        model, docs, tokenizer, context=p["seq_len"], stride=p.get("stride"), progress=scored
    )
    result: dict[str, Any] = {
        "perplexity": _plain(ppl),
        "protocol": eval_protocol.of_job("evaluate", p),  # what the dashboard compares numbers by
        "tasks": [],
        "seconds": None,
        "weights_stamp": weights_stamp(model_dir, rt.device, _dtype_name(model)),  # a preview may reuse it
        # Where it ran (the compare table shows it beside each model's numbers).
        "device": rt.device,
        "dtype": _dtype_name(model),
    }
    rt.raise_if_cancelled()
    if p.get("tasks"):
        rt.progress(0.5, f"lm-eval tasks: building the requests of {', '.join(p['tasks'])}", force=True)
        result["tasks"] = _plain(
            evaluation.run_lm_eval(
                model,
                tokenizer,
                p["tasks"],
                limit=p["limit"],
                cache_root=rt.settings.cache,
                progress=LmEvalCount(rt, p["tasks"], (0.5, 0.95)),
            )
        )
    result["seconds"] = time.perf_counter() - t0
    _save_benchmark(rt, job, "evaluate", result)
    return result


class LmEvalCount:
    """`lm-eval loglikelihood: 120/400 requests (hellaswag)` as lm-eval answers requests.

    lm-eval calls the model once per request type with every task's requests of that type; which types
    come, and how many, is known only when each call starts. Each call is a phase of its own (its rate,
    its ETA) and takes an even share of what is left of `bar` over the tasks not yet run, the last call
    the rest (one task, one call: the whole bar).
    """

    def __init__(self, rt: JobRuntime, tasks, bar: tuple[float, float]):
        self.rt, self.tasks, self.bar = rt, max(1, len(tasks)), bar
        self.call, self.span = 0, (bar[0], bar[0])

    def __call__(self, r) -> None:  # worker.engine.evaluation.lm_eval_runner.RequestProgress
        if r.call != self.call:
            self.call = r.call
            lo = self.span[1]
            self.span = (lo, lo + (self.bar[1] - lo) / max(1, self.tasks - (r.call - 1)))
        lo, hi = self.span
        f = lo + (hi - lo) * (r.done / r.total if r.total else 1.0)
        phase = f"lm-eval {r.request_type}"
        self.rt.progress(f, f"lm-eval {r.describe()}", phase=phase, force=r.done == 0)
        self.rt.raise_if_cancelled()


def run_benchmark(rt: JobRuntime, job: Job) -> dict[str, Any]:
    from worker.engine import evaluation

    p = job.params
    (teacher,) = _rows(rt, (Teacher, job.teacher_id))
    rt.progress(0.0, "loading models", force=True)
    bar = (0.0, 0.03) if job.student_id else (0.0, 0.05)
    teacher_model, tokenizer = load(
        rt, teacher.source, teacher.trust_remote_code, bar=bar, what="teacher weights"
    )

    def ran(done: int, total: int, what: str) -> None:
        message = f"benchmark: {done}/{total} runs ({what})"
        rt.progress(0.05 + 0.9 * done / total, message, phase="benchmark", force=done == 0)
        rt.raise_if_cancelled()

    kwargs = dict(
        batch_sizes=(p["batch_size"],),
        prompt_len=p["seq_len"],
        new_tokens=p["new_tokens"],
        repeats=p["repeats"],
        progress=ran,
    )
    if job.student_id:
        source, _ = _subject(rt, job)
        student_model, _ = load(rt, source, bar=(0.03, 0.05), what="student weights")
        result = _plain(evaluation.throughput(teacher_model, student_model, **kwargs))
    else:
        result = {"teacher": _plain(evaluation.measure_model(teacher_model, **kwargs))}
    result.update(rt.device_use)  # measured alone on the device (worker.device_lock), after how long a wait
    _save_benchmark(rt, job, "benchmark", result)
    return result


def _plain(value):
    """Engine results (dataclasses, numpy scalars) -> JSON-safe values."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _save_benchmark(rt: JobRuntime, job: Job, kind: str, result: dict) -> None:
    result.update(_measured(job))
    with session_scope(rt.url) as s:
        s.add(
            BenchmarkResult(
                job_id=job.id, kind=kind, teacher_id=job.teacher_id, student_id=job.student_id, result=result
            )
        )


def run_search(rt: JobRuntime, job: Job) -> dict[str, Any]:
    from worker.search_job import run_search_job  # architecture search (issue 12): its own module

    return run_search_job(rt, job)


HANDLERS = {
    "inspect": run_inspect,
    "importance": run_importance,
    "prune": run_prune,
    "preview": run_preview,
    "distill": run_distill,
    "evaluate": run_evaluate,
    "benchmark": run_benchmark,
    "search": run_search,
}
