"""What the evaluate and benchmark jobs share with their multi-rank supervisor (worker.evaluate_ranks):
the weights a job measures, lm-eval's progress, and the stored result row."""

from __future__ import annotations

from typing import Any

from backend.db import session_scope
from backend.models import BenchmarkResult, Job, Student, Teacher
from worker.job_io import distilled_key, fetch_rows, store, student_source
from worker.runtime import JobRuntime


def subject(rt: JobRuntime, job: Job):
    """(model source, trust_remote_code) of the job's student — the weights of the distillation its
    params name (resolved by the API), else the pruned ones — or of its teacher when no student."""
    if job.student_id:
        distill_job_id = job.params.get("distill_job_id")
        if distill_job_id:
            return str(store(rt).local_dir(distilled_key(rt, distill_job_id))), False
        (student,) = fetch_rows(rt, (Student, job.student_id))
        return student_source(rt, student), False
    (teacher,) = fetch_rows(rt, (Teacher, job.teacher_id))
    return teacher.source, teacher.trust_remote_code


def _measured(job: Job) -> dict[str, Any]:
    """What a student's evaluate / benchmark result measured, stored with the result."""
    if not job.student_id:
        return {}
    distill_job_id = job.params.get("distill_job_id")
    return {"weights": "distilled" if distill_job_id else "pruned", "distill_job_id": distill_job_id}


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


def save_measurement(rt: JobRuntime, job: Job, kind: str, result: dict) -> dict:
    """Store an evaluate or benchmark job's `result` as its BenchmarkResult row, with what was measured
    (`_measured`: the student or the teacher alone); returns the stored dict, the job's result."""
    stored = {**result, **_measured(job)}
    with session_scope(rt.url) as s:
        s.add(
            BenchmarkResult(
                job_id=job.id, kind=kind, teacher_id=job.teacher_id, student_id=job.student_id, result=stored
            )
        )
    return stored
