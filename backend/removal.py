"""Deleting students, plans and single finished jobs with everything they own: their jobs and those jobs'
events, metric points, benchmark results and artifact rows, then the stored trees and distillation
checkpoints.

A failed or cancelled job that never built its importance run (no scores) or teacher (never inspected)
takes that row along, since nothing else could remove it, unless a plan, student or other job names it.

Refused (409) while any of their jobs is queued or running: a worker would otherwise write into rows
and directories that no longer exist. Cancel those jobs first (`POST /jobs/{id}/cancel`).
Rows go in the request's transaction; files only after it committed (`Leftovers.remove`), so a failed
delete never loses weights that rows still point at.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from backend import lifecycle
from backend.artifacts import ArtifactStore
from backend.errors import Conflict
from backend.models import (
    Artifact,
    BenchmarkResult,
    Event,
    ImportanceRun,
    Job,
    MetricPoint,
    Plan,
    Student,
    Teacher,
    WorkflowStep,
)
from backend.settings import Settings

ACTIVE = ("queued", "running")


@dataclass
class Leftovers:
    """Files of deleted rows, removed once the deletion is committed."""

    keys: list[str] = field(default_factory=list)  # artifact-store keys
    dirs: list[Path] = field(default_factory=list)  # local checkpoint directories

    def remove(self, settings: Settings) -> None:
        store = ArtifactStore(settings.artifacts_url)
        for key in self.keys:
            store.delete(key)
            if store.is_local:  # e.g. students/7/ once students/7/model is gone
                _remove_empty_parents(store.root / key, store.root)
        for directory in self.dirs:
            shutil.rmtree(directory, ignore_errors=True)


def _remove_empty_parents(path: Path, root: Path) -> None:
    for parent in path.parents:
        if parent == root or root not in parent.parents:
            return
        try:
            parent.rmdir()  # only succeeds when empty
        except OSError:
            return


def refuse_if_active(jobs: list[Job], what: str) -> None:
    active = [j for j in jobs if j.status in ACTIVE]
    if active:
        listed = ", ".join(f"{j.kind} job {j.id} ({j.status})" for j in active)
        raise Conflict(f"{what} has unfinished jobs: {listed}; cancel them first")


def _checkpoint_dirs(job_id: int, settings: Settings) -> list[Path]:
    """Where a distill job may keep its checkpoints (see `checkpoint_dir` in worker/distill_checkpoints.py)."""
    name = f"job-{job_id}"
    dirs = [settings.data_dir.resolve() / "checkpoints" / name]
    store = ArtifactStore(settings.artifacts_url)
    if store.is_local:
        dirs.append(store.root / "checkpoints" / name)
    return dirs


def delete_jobs(db: Session, jobs: list[Job], settings: Settings, out: Leftovers) -> None:
    ids = [j.id for j in jobs]
    if not ids:
        return
    out.keys += list(db.scalars(select(Artifact.key).where(Artifact.job_id.in_(ids))))
    for table in (MetricPoint, Event, BenchmarkResult, Artifact):
        db.execute(delete(table).where(table.job_id.in_(ids)))
    # A deleted workflow takes its step rows along; a workflow whose child is deleted keeps the step,
    # which says so (its branch fails there if it was the step's latest try; a retry runs it again).
    db.execute(delete(WorkflowStep).where(WorkflowStep.workflow_id.in_(ids)))
    db.execute(
        update(WorkflowStep)
        .where(WorkflowStep.job_id.in_(ids))
        .values(job_id=None, error="its job was deleted")
    )
    db.execute(delete(Job).where(Job.id.in_(ids)))
    for job_id in ids:
        out.dirs += _checkpoint_dirs(job_id, settings)


def delete_student(db: Session, student: Student, settings: Settings) -> Leftovers:
    jobs = list(db.scalars(select(Job).where(Job.student_id == student.id)))
    refuse_if_active(jobs, f"Student {student.id}")
    # A promoted teacher loads this student's weights in place (POST /students/{id}/promote).
    teachers = list(db.scalars(select(Teacher).where(Teacher.parent_student_id == student.id)))
    if teachers:
        listed = ", ".join(f"teacher {t.id} ({t.name})" for t in teachers)
        raise Conflict(f"Student {student.id}'s weights are the source of {listed}; keep it")
    out = Leftovers(keys=[student.path] if student.path else [])
    delete_jobs(db, jobs, settings, out)
    db.execute(delete(BenchmarkResult).where(BenchmarkResult.student_id == student.id))
    db.execute(delete(Student).where(Student.id == student.id))
    return out


def delete_plan(db: Session, plan: Plan, settings: Settings) -> Leftovers:
    users = list(db.scalars(select(Student.id).where(Student.plan_id == plan.id)))
    if users:
        raise Conflict(
            f"Plan {plan.id} is used by student(s) {', '.join(map(str, users))}; delete those first"
        )
    jobs = list(db.scalars(select(Job).where(Job.plan_id == plan.id)))  # its previews
    refuse_if_active(jobs, f"Plan {plan.id}")
    out = Leftovers()
    delete_jobs(db, jobs, settings, out)
    db.execute(delete(Plan).where(Plan.id == plan.id))
    return out


def _never_built(db: Session, job: Job) -> ImportanceRun | Teacher | None:
    """The row a failed or cancelled job was building and never finished: an importance run without
    scores, a teacher never inspected. It means nothing without its job, so it goes with the job,
    unless something else names it."""
    if job.status == "succeeded":
        return None
    if job.kind == "importance":
        built = select(ImportanceRun).where(ImportanceRun.job_id == job.id, ImportanceRun.artifact.is_(None))
    elif job.kind == "inspect":
        built = select(Teacher).where(Teacher.job_id == job.id, Teacher.status != "ready")
    else:
        return None
    return db.scalars(built).first()


def _named_by(db: Session, row: ImportanceRun | Teacher, job: Job) -> str | None:
    """What besides `job` names `row` (a never-built importance run or teacher), if anything."""
    other_job = Job.id != job.id
    if isinstance(row, ImportanceRun):
        users = [("plan", Plan, Plan.importance_run_id == row.id)]
        users.append(("job", Job, other_job & (Job.importance_run_id == row.id)))
    else:
        users = [
            ("plan", Plan, Plan.teacher_id == row.id),
            ("student", Student, Student.teacher_id == row.id),
            ("importance run", ImportanceRun, ImportanceRun.teacher_id == row.id),
            ("job", Job, other_job & (Job.teacher_id == row.id)),
        ]
    for label, model, where in users:
        found = db.scalar(select(model.id).where(where).limit(1))
        if found is not None:
            return f"{label} {found}"
    return None


def _made_by(db: Session, job: Job, never_built=None) -> str | None:
    """What still uses the output of `job` (its row points at the job and its files), if anything;
    `never_built` (the row the job failed to build, going with it) does not count."""
    keys = select(Artifact.key).where(Artifact.job_id == job.id)
    for model, what, uses in (
        (Student, "student", Student.path.in_(keys)),  # the weights it loads, whichever job wrote them
        (Teacher, "teacher", Teacher.parent_distill_job_id == job.id),  # a promoted distillation
        (ImportanceRun, "importance run", ImportanceRun.artifact.in_(keys)),
    ):
        made = model.job_id == job.id
        row = db.scalars(select(model).where(made if uses is None else made | uses)).first()
        if row is not None and row is not never_built:
            return f"{what} {row.id}" + (f" ({row.name})" if getattr(row, "name", None) else "")
    return None


def _citing_workflow(db: Session, job: Job) -> Job | None:
    """A workflow (bake-off, study) started from search `job`: its page shows each candidate's rank and
    loss there and links to it, so the search stays while the workflow does."""
    if job.kind != "search":
        return None
    cites = Job.params["search_job_id"].as_integer() == job.id
    return db.scalars(select(Job).where(Job.kind == "workflow", cites).order_by(Job.id).limit(1)).first()


def delete_job(db: Session, job: Job, settings: Settings) -> Leftovers:
    """One finished job with its events, metrics, results, artifacts and checkpoints."""
    if job.status in ACTIVE:
        raise Conflict(f"Job {job.id} is {job.status}; cancel it first (POST /jobs/{job.id}/cancel)")
    workflow = _citing_workflow(db, job)
    if workflow is not None:
        raise Conflict(
            f"Search {job.id} is cited by workflow {workflow.id} ({workflow.params.get('name')}); "
            "delete the workflow first"
        )
    stub = _never_built(db, job)
    user = _made_by(db, job, stub)
    if user is not None:
        raise Conflict(
            f"Job {job.id} ({job.kind}) built {user}, which still uses its output; delete that instead"
        )
    named = _named_by(db, stub, job) if stub is not None else None
    if named is not None:
        what = "importance run" if isinstance(stub, ImportanceRun) else "teacher"
        raise Conflict(f"Job {job.id} ({job.kind}) failed to build {what} {stub.id}, which {named} names")
    # Lock the row while it is still finished: a concurrent resume cannot requeue it before the delete.
    if not lifecycle.hold_finished(db, job.id):
        raise Conflict(f"Job {job.id} changed meanwhile; reload it")
    out = Leftovers()
    delete_jobs(db, [job], settings, out)
    if stub is not None:  # after its job: the job row names it
        db.execute(delete(type(stub)).where(type(stub).id == stub.id))
    return out
