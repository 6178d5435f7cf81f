"""Deleting a teacher or a dataset registered by mistake (DELETE /teachers/{id}, /datasets/{id}).

A teacher goes with what only it gives meaning to: its importance runs (and their score files), its plans,
its finished jobs (inspect, importance, preview, evaluate, benchmark, search, workflows) with their events,
metrics, results and artifacts. Refused (409) while a student of it exists (delete those first: a student is
weights a user made, never removed as a side effect) or one of its jobs is queued or running.

A dataset is only a name for the user's data: it can go while nothing on record names it. Refused while
an importance run was computed on it, a teacher's evaluation protocol measures on it, or any job (queued,
running or finished: a student's distillation, an evaluation's result) names it in its parameters;
the 409 lists them.

Neither ever touches the user's files: a teacher's `source` (the user's folder, a hub id, the built-in
demo, or a promoted student's weights, which stay the student's) and a dataset's `source` are only read.
Rows go in the request's transaction; files only after it committed (`Leftovers.remove`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend import dataset_holds, lifecycle
from backend.errors import Conflict
from backend.models import BenchmarkResult, Dataset, ImportanceRun, Job, Plan, Student, Teacher
from backend.removal import Leftovers, delete_jobs, refuse_if_active
from backend.settings import Settings

LISTED = 8  # ids named in a 409 before "and N more"


@contextmanager
def _unless_used_meanwhile(what: str) -> Iterator[None]:
    """A row that came to name `what` between the checks and its delete (a job or run created meanwhile)
    makes the delete a foreign-key violation: a 409 (the request's transaction is rolled back, nothing is
    deleted), not a 500."""
    try:
        yield
    except IntegrityError as exc:
        raise Conflict(f"{what} was used meanwhile; reload and try again") from exc


def _ids(ids: Iterable[Any]) -> str:
    ids = list(ids)
    shown = ", ".join(map(str, ids[:LISTED]))
    return shown + (f" and {len(ids) - LISTED} more" if len(ids) > LISTED else "")


def _named(noun: str, ids: Iterable[Any]) -> str:
    """ "student 5" / "students 5, 7" (nouns here take an s)."""
    ids = list(ids)
    return f"{noun}{'s' if len(ids) > 1 else ''} {_ids(ids)}"


def delete_teacher(db: Session, teacher: Teacher, settings: Settings) -> Leftovers:
    tid = teacher.id
    students = list(db.scalars(select(Student.id).where(Student.teacher_id == tid).order_by(Student.id)))
    if students:
        raise Conflict(
            f"teacher {tid} has {_named('student', students)}: delete {'them' if len(students) > 1 else 'it'} first"
        )
    runs = list(db.scalars(select(ImportanceRun).where(ImportanceRun.teacher_id == tid)))
    run_ids = [r.id for r in runs]
    plan_ids = list(db.scalars(select(Plan.id).where(Plan.teacher_id == tid)))
    # Another teacher's plan filled from one of these runs would lose its source: refuse, naming it.
    foreign = list(
        db.scalars(select(Plan.id).where(Plan.importance_run_id.in_(run_ids), Plan.teacher_id != tid))
    )
    if foreign:
        raise Conflict(
            f"teacher {tid}'s importance runs fill {_named('plan', foreign)}: delete {'them' if len(foreign) > 1 else 'it'} first"
        )
    jobs = list(
        db.scalars(
            select(Job)
            .where(or_(Job.teacher_id == tid, Job.plan_id.in_(plan_ids), Job.importance_run_id.in_(run_ids)))
            .order_by(Job.id)
        )
    )
    refuse_if_active(jobs, f"Teacher {tid}")
    # Lock every job while it is still finished: a concurrent resume cannot requeue one mid-delete.
    for job in jobs:
        if not lifecycle.hold_finished(db, job.id):
            raise Conflict(f"Job {job.id} of teacher {tid} changed meanwhile; reload it")
    out = Leftovers(keys=[r.artifact for r in runs if r.artifact])
    with _unless_used_meanwhile(f"teacher {tid}"):
        delete_jobs(db, jobs, settings, out)
        db.execute(delete(BenchmarkResult).where(BenchmarkResult.teacher_id == tid))
        db.execute(delete(Plan).where(Plan.id.in_(plan_ids)))  # before the runs they name
        db.execute(delete(ImportanceRun).where(ImportanceRun.id.in_(run_ids)))
        db.execute(delete(Teacher).where(Teacher.id == tid))
    out.keys = list(dict.fromkeys(out.keys))  # a run's scores are also its job's artifact row
    return out


def delete_importance_run(db: Session, run: ImportanceRun, settings: Settings) -> Leftovers:
    """The run with its score files and its own importance job; refused while a plan was filled from it
    or another job (a search, a bake-off) reads it: their numbers would lose their source."""
    rid = run.id
    plans = list(db.scalars(select(Plan.id).where(Plan.importance_run_id == rid).order_by(Plan.id)))
    if plans:
        raise Conflict(
            f"importance run {rid} filled {_named('plan', plans)}: delete {'them' if len(plans) > 1 else 'it'} first"
        )
    named = list(db.scalars(select(Job).where(Job.importance_run_id == rid).order_by(Job.id)))
    readers = [j.id for j in named if j.kind != "importance"]  # its own job (attempts) builds it
    if readers:
        raise Conflict(
            f"importance run {rid} is read by {_named('job', readers)}: delete {'them' if len(readers) > 1 else 'it'} first"
        )
    jobs = [j for j in named if j.kind == "importance"]
    refuse_if_active(jobs, f"Importance run {rid}")
    for job in jobs:  # locked while finished: a concurrent resume cannot requeue it mid-delete
        if not lifecycle.hold_finished(db, job.id):
            raise Conflict(f"Job {job.id} of importance run {rid} changed meanwhile; reload it")
    out = Leftovers(keys=[run.artifact] if run.artifact else [])
    with _unless_used_meanwhile(f"importance run {rid}"):
        delete_jobs(db, jobs, settings, out)
        db.execute(delete(ImportanceRun).where(ImportanceRun.id == rid))
    out.keys = list(dict.fromkeys(out.keys))  # the scores are also its job's artifact row
    return out


def _names_dataset(value: Any, dataset_id: int) -> bool:
    """Whether a job's parameters name the dataset anywhere (`dataset_id`, `protocol.dataset_id`, a
    workflow's step parameters)."""
    if isinstance(value, dict):
        return any(
            (k == "dataset_id" and v == dataset_id and not isinstance(v, bool))
            or _names_dataset(v, dataset_id)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return any(_names_dataset(v, dataset_id) for v in value)
    return False


def dataset_users(db: Session, dataset_id: int) -> list[str]:
    """What on record names the dataset, one phrase per kind of user (empty: it can go)."""
    users = []
    runs = db.execute(
        select(ImportanceRun.id, ImportanceRun.teacher_id)
        .where(ImportanceRun.dataset_id == dataset_id)
        .order_by(ImportanceRun.id)
    ).all()
    if runs:
        teachers = _named("teacher", dict.fromkeys(t for _, t in runs))
        were = "were" if len(runs) > 1 else "was"
        users.append(
            f"{_named('importance run', (r for r, _ in runs))} (of {teachers}) {were} computed on it"
        )
    protocols = [
        t.id
        for t in db.scalars(select(Teacher).order_by(Teacher.id))
        if isinstance(t.eval_protocol, dict) and t.eval_protocol.get("dataset_id") == dataset_id
    ]
    if protocols:
        users.append(
            f"the evaluation protocol{'s' if len(protocols) > 1 else ''} of {_named('teacher', protocols)} "
            f"measure{'' if len(protocols) > 1 else 's'} on it"
        )
    named = [
        (job_id, kind, status, student)
        for job_id, kind, status, student, params in db.execute(
            select(Job.id, Job.kind, Job.status, Job.student_id, Job.params).order_by(Job.id)
        )
        # An importance job names its run's dataset too: the run (deleted with its job) says it above.
        if kind != "importance" and _names_dataset(params, dataset_id)
    ]
    if named:
        listed = _ids(
            f"{job_id} ({kind}{f' of student {student}' if student else ''}, {status})"
            for job_id, kind, status, student in named
        )
        users.append(f"job{'s' if len(named) > 1 else ''} {listed} use{'' if len(named) > 1 else 's'} it")
    return users


def _refuse_if_used(db: Session, dataset_id: int) -> None:
    users = dataset_users(db, dataset_id)
    if users:
        raise Conflict(f"dataset {dataset_id} is in use: {'; '.join(users)}. Delete or change those first")


def delete_dataset(db: Session, dataset: Dataset) -> None:
    """Exclusive with creating a job that names it (backend/dataset_holds.py): the row is held before the
    users are looked for (PostgreSQL), and they are looked for again once the delete holds the write lock
    (SQLite: a job committed in between is seen then; the 409 rolls the delete back)."""
    dataset_holds.hold_for_delete(db, dataset.id)
    _refuse_if_used(db, dataset.id)
    with _unless_used_meanwhile(f"dataset {dataset.id}"):
        db.execute(delete(Dataset).where(Dataset.id == dataset.id))
    _refuse_if_used(db, dataset.id)
