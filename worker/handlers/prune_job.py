"""The `prune` job: a student made by surgery on the teacher's weights, in memory or tensor by tensor
from its checkpoint (out of core), saved as an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.db import session_scope
from backend.models import Job, Plan, Student, Teacher
from worker.job_io import (
    check_remote_code,
    fetch_rows,
    load,
    mark_failed,
    model_source,
    publish,
    record_artifact,
)
from worker.runtime import JobRuntime


def run_prune(rt: JobRuntime, job: Job) -> dict[str, Any]:
    from worker.engine.out_of_core import resolve_mode
    from worker.engine.plan import PrunePlan

    student, teacher = fetch_rows(rt, (Student, job.student_id), (Teacher, job.teacher_id))
    (plan_row,) = fetch_rows(rt, (Plan, student.plan_id))
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
        mark_failed(rt, Student, student.id, exc)
        raise
    with session_scope(rt.url) as s:
        row = s.get(Student, student.id)
        row.status, row.spec, row.path, row.error = "ready", summary, key, None
        record_artifact(rt, s, job.id, "student", key)
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
    key = publish(rt, f"students/{student.id}/model", lambda out: save_model(model, tokenizer, out, manifest))
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

    key = publish(rt, f"students/{student.id}/model", write)
    return result["pruned"].spec.summary(), key
