"""The evaluations of a teacher alone (no student) already measured on a protocol (torch-free).

A teacher row's weights never change (its source is fixed when it is registered; `PATCH /teachers`
changes its protocol, not its weights), so an evaluate job of the teacher on the same protocol measured
the number another one would: a student's evaluation queues its teacher's only when none exists
(backend.api.jobs), and a workflow's teacher branch reuses a finished one instead of queueing another
(backend.workflows.definitions)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.models import Job
from backend.routing import device_type
from worker.engine import eval_protocol


def protocol_id(params: dict[str, Any]) -> str:
    """The id of the protocol an evaluate job of `params` measures perplexity on."""
    return eval_protocol.of_job("evaluate", params)["id"]


def same_tasks(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Both evaluate params run the same lm-eval tasks (and, with tasks, the same samples per task)."""
    tasks_a, tasks_b = sorted(a.get("tasks") or []), sorted(b.get("tasks") or [])
    return tasks_a == tasks_b and (not tasks_a or a.get("limit") == b.get("limit"))


def on_protocol(
    session: Session,
    teacher_id: int,
    params: dict[str, Any],
    statuses: Iterable[str],
    *,
    with_tasks: bool = False,
    device: str = "auto",
) -> Job | None:
    """The newest evaluate job of the teacher alone in one of `statuses` measuring perplexity on the
    protocol of `params` (with `with_tasks`, also the same lm-eval tasks; with a `device` requirement
    other than auto, run on that device type); None when there is none."""
    wanted = protocol_id(params)
    jobs = session.scalars(
        select(Job)
        .where(
            Job.kind == "evaluate",
            Job.teacher_id == teacher_id,
            Job.student_id.is_(None),
            Job.status.in_(tuple(statuses)),
        )
        .order_by(Job.id.desc())
    )
    for job in jobs:
        if protocol_id(job.params) != wanted or (with_tasks and not same_tasks(job.params, params)):
            continue
        if device != "auto" and (job.device is None or device_type(job.device) != device):
            continue
        return job
    return None
