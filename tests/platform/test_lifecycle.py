"""backend.lifecycle is the one writer of a job's status: the source says so (an AST check over backend/
and worker/), the transition table refuses what it does not list with a Conflict naming the current
status, and each transition's conditional update loses cleanly to a concurrent one."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest
from sqlalchemy import select

from backend import lifecycle
from backend.db import session_scope
from backend.errors import Conflict, NotFound
from backend.models import Event, Job, JobStatus

REPO = Path(__file__).resolve().parents[2]
OWNER = REPO / "backend" / "lifecycle.py"


def status_writes(source: str) -> list[int]:
    """Lines that write a job's status: `job.status = ...` (any name ending in `job`), a tuple
    assignment to it, `Job(status=...)`, or `.values(status=...)` on an `update(Job)`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if (
                        isinstance(t, ast.Attribute)
                        and t.attr == "status"
                        and isinstance(t.value, ast.Name)
                        and t.value.id.lower().endswith("job")
                    ):
                        found.append(node.lineno)
        elif isinstance(node, ast.Call) and any(k.arg == "status" for k in node.keywords):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "Job":
                found.append(node.lineno)
            elif (
                isinstance(func, ast.Attribute)
                and func.attr == "values"
                and "update(Job)" in ast.unparse(func)
            ):
                found.append(node.lineno)
    return sorted(set(found))


def test_the_checker_finds_each_way_of_writing_a_status():
    sample = (
        "job.status = 'failed'\n"
        "job.status, job.error = 'failed', 'x'\n"
        "parent_job.status = 'running'\n"
        "s.execute(update(Job).where(Job.id == 1).values(status='cancelled'))\n"
        "Job(kind='distill', status='queued')\n"
        "teacher.status = 'failed'\n"  # not a job: allowed
        "update(Student).values(status='failed')\n"  # not a job: allowed
    )
    assert status_writes(sample) == [1, 2, 3, 4, 5]


def test_only_the_lifecycle_module_writes_a_job_status():
    offenders = []
    for path in sorted([*REPO.glob("backend/**/*.py"), *REPO.glob("worker/**/*.py")]):
        if path == OWNER or "engine" in path.relative_to(REPO).parts:
            continue
        offenders += [f"{path.relative_to(REPO)}:{line}" for line in status_writes(path.read_text())]
    assert not offenders, f"job status written outside backend/lifecycle.py: {offenders}"
    assert status_writes(OWNER.read_text()), "the checker must see the lifecycle's own writes"


def test_the_transition_table_names_only_job_statuses():
    statuses = set(get_args(JobStatus))
    for action, (sources, targets) in lifecycle.TRANSITIONS.items():
        assert set(sources) <= statuses and targets and set(targets) <= statuses, action
    assert lifecycle.allowed("claim", "queued") and not lifecycle.allowed("claim", "running")
    assert lifecycle.allowed("finish", "running", "cancelled")
    assert not lifecycle.allowed("finish", "running", "queued")
    assert not lifecycle.allowed("resume", "succeeded")


def test_an_illegal_transition_is_a_conflict_naming_the_current_status():
    job = Job(id=7, kind="distill", status="succeeded")
    with pytest.raises(Conflict) as caught:
        lifecycle.check(job, "resume")
    assert "Job 7 is succeeded" in caught.value.message
    assert caught.value.nearby == ("failed", "cancelled")  # the statuses it could resume from
    with pytest.raises(Conflict, match="cannot end a job as queued"):
        lifecycle.check(Job(id=7, kind="distill", status="running"), "finish", "queued")
    lifecycle.check(Job(id=7, kind="distill", status="running"), "finish", "succeeded")  # allowed: no error


def test_transitions_on_a_row_guard_attempts_and_refuse_illegal_moves(database_url):
    with session_scope(database_url) as s:
        jid = lifecycle.create(s, "inspect", {"source": "tiny"}, queue="default").id
    with session_scope(database_url) as s:
        assert lifecycle.claim(s, jid, 2, device="cpu", worker="w:cpu") is None  # not this job's attempt
        assert lifecycle.claim(s, jid, 1, device="cpu", worker="w:cpu").status == "running"
    with session_scope(database_url) as s:
        assert lifecycle.claim(s, jid, 1, device="cpu", worker="w:cpu") is None  # a redelivered duplicate
        assert lifecycle.refuse(s, jid, 1, "wrong device") is None  # only a queued job is refused
        with pytest.raises(Conflict, match="cannot be resumed: it is running"):
            lifecycle.resume(None, s, jid, lambda job: "cpu")
        flagged = lifecycle.cancel(s, jid)  # running: flagged, stops at its next step
        assert flagged.status == "running" and flagged.cancel_requested
    with session_scope(database_url) as s:
        assert lifecycle.finish(s, jid, 1, "cancelled", error="cancelled by the user").status == "cancelled"
    with session_scope(database_url) as s:
        with pytest.raises(Conflict, match="already cancelled") as caught:
            lifecycle.cancel(s, jid)
        assert caught.value.nearby == ("queued", "running")
        with pytest.raises(NotFound):
            lifecycle.cancel(s, jid + 1000)
        # Resumed as attempt 2: the first attempt's worker finishing late must not overwrite it.
        job = s.get(Job, jid)
        assert lifecycle.requeue(s, job, "cpu").attempts == 2
    with session_scope(database_url) as s:
        assert lifecycle.finish(s, jid, 1, "succeeded", result={}) is None
        assert lifecycle.lose(s, jid, 1, "process died") is None
        assert s.get(Job, jid).status == "queued"
        statuses = s.scalars(
            select(Event.data).where(Event.job_id == jid, Event.type == "status").order_by(Event.id)
        ).all()
    # One status event per transition that happened, none for the refused ones.
    assert [d["status"] for d in statuses] == ["queued", "running", "running", "cancelled", "queued"]


def test_a_queued_job_is_cancelled_at_once_and_its_claim_then_fails(database_url):
    with session_scope(database_url) as s:
        jid = lifecycle.create(s, "inspect", {"source": "tiny"}, queue="default").id
    with session_scope(database_url) as s:
        job = lifecycle.cancel(s, jid)
        assert job.status == "cancelled" and job.finished_at is not None
    with session_scope(database_url) as s:
        assert lifecycle.claim(s, jid, 1, device="cpu", worker="w:cpu") is None
        assert s.get(Job, jid).status == "cancelled"
