"""Side-by-side view of a teacher and its students: specs, latest evaluations/benchmarks, curve jobs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.api.errors import errors
from backend.deps import QueryId, field_error, get_db, get_or_404
from backend.models import BenchmarkResult, Job, Student, Teacher
from backend.responses import ComparedModel, CompareOut
from backend.schemas import MAX_ID
from worker.engine import eval_protocol

router = APIRouter(tags=["compare"])


MEASURED_WEIGHTS = ("pruned", "distilled")  # the `weights` a student's result names


def _results(db: Session, kind: str, **where) -> list[dict]:
    """The 5 newest results, plus (for a student) the newest one of each measured weights when older:
    the compare table shows perplexity before and after distillation, whatever was measured since."""
    # Newest = newest job (as the compare view reads them), whatever order they finished in.
    newest_first = (BenchmarkResult.job_id.desc(), BenchmarkResult.id.desc())
    q = select(BenchmarkResult).where(BenchmarkResult.kind == kind).order_by(*newest_first)
    for name, value in where.items():
        q = q.where(getattr(BenchmarkResult, name) == value)
    rows = {r.id: r for r in db.scalars(q.limit(5))}
    if where.get("student_id") is not None:
        for weights in MEASURED_WEIGHTS:
            if any((r.result or {}).get("weights") == weights for r in rows.values()):
                continue
            row = db.scalars(
                q.where(BenchmarkResult.result["weights"].as_string() == weights).limit(1)
            ).first()
            if row is not None:
                rows[row.id] = row
    ordered = sorted(rows.values(), key=lambda r: (r.job_id, r.id), reverse=True)
    return [{"job_id": r.job_id, **r.result} for r in ordered]


def protocol_of(db: Session, teacher_id: int) -> dict:
    """The evaluation protocol a model's numbers are compared on: its teacher's."""
    teacher = db.get(Teacher, teacher_id)
    return eval_protocol.of_teacher(teacher.eval_protocol if teacher else None).record()


@router.get("/compare", responses=errors(404))
def compare(
    teacher: QueryId = None,
    students: str = Query("", max_length=2000, description="comma-separated ids"),
    db: Session = Depends(get_db),
) -> CompareOut:
    try:
        student_ids = [int(s) for s in students.split(",") if s.strip()]
    except ValueError as exc:
        raise field_error(["query", "students"], "must be comma-separated integer ids") from exc
    if any(not 1 <= sid <= MAX_ID for sid in student_ids):
        raise field_error(["query", "students"], f"ids must be between 1 and {MAX_ID}")
    models = []
    if teacher is not None:
        t = get_or_404(db, Teacher, teacher)
        models.append(
            ComparedModel(
                kind="teacher",
                id=t.id,
                name=t.name,
                spec=t.spec,
                evaluations=_results(db, "evaluate", teacher_id=t.id, student_id=None),
                benchmarks=_results(db, "benchmark", teacher_id=t.id, student_id=None),
                distill_jobs=[],
                eval_protocol=protocol_of(db, t.id),
            )
        )
    for sid in student_ids:
        s = get_or_404(db, Student, sid)
        jobs = db.scalars(
            select(Job.id).where(Job.student_id == sid, Job.kind == "distill").order_by(Job.id)
        ).all()
        models.append(
            ComparedModel(
                kind="student",
                id=s.id,
                name=s.name,
                spec=s.spec,
                evaluations=_results(db, "evaluate", student_id=s.id),
                benchmarks=_results(db, "benchmark", student_id=s.id),
                distill_jobs=list(jobs),
                eval_protocol=protocol_of(db, s.teacher_id),
            )
        )
    return CompareOut(models=models)
