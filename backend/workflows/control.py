"""What the user does to a workflow: cancel it (its queued and running children too) and retry it
(each failed step again, from its checkpoint where it has one; steps that succeeded are kept)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import lifecycle
from backend.errors import Conflict, NotFound
from backend.models import Job
from backend.settings import Settings
from backend.workflows.advance import (
    ACTIVE,
    advance,
    create_step,
    definition_of,
    lock,
    rerun,
    states_of,
)


def get(session: Session, workflow_id: int) -> Job:
    job = session.get(Job, workflow_id)
    if job is None or job.kind != "workflow":
        raise NotFound(f"Workflow {workflow_id} not found")
    return job


def cancel(session: Session, workflow_id: int) -> list[Job]:
    """Stop the workflow and cancel its unfinished children (a running one stops at its next step);
    returns the children cancelled or flagged. Conflict when it already finished."""
    get(session, workflow_id)
    workflow = lock(session, workflow_id)
    if lifecycle.stop_workflow(session, workflow_id) is None:
        raise Conflict(f"Workflow {workflow_id} is already {workflow.status}", nearby=("running",))
    children = session.scalars(select(Job).where(Job.parent_id == workflow_id, Job.status.in_(ACTIVE))).all()
    touched = []
    for child in children:
        try:
            touched.append(lifecycle.cancel(session, child.id))
        except Conflict:  # finished meanwhile
            continue
    return touched


def retry(session: Session, settings: Settings, workflow_id: int) -> list[Job]:
    """A failed or cancelled workflow runs again from where it stopped: each failed step's job is resumed
    (a distillation from its checkpoint) or run again as a new try; returns the jobs to publish."""
    get(session, workflow_id)
    workflow = lock(session, workflow_id)
    if lifecycle.reopen(session, workflow_id) is None:
        raise Conflict(
            f"Workflow {workflow_id} is {workflow.status}: only a failed or cancelled one can be retried",
            nearby=("failed", "cancelled"),
        )
    states, steps = states_of(session, workflow)
    definition = definition_of(workflow)
    publish: list[Job] = []
    for state in states:
        if state.status not in ("failed", "cancelled"):
            continue
        step = next(s for s in definition.steps_of(state.branch, workflow.params) if s.name == state.step)
        row = steps.latest(state.branch.key, step.name)
        job = steps.job_of(row)
        if job is not None:  # resumed from its checkpoint, or a new try
            again = rerun(session, settings, workflow, state, step, steps, job)
        else:  # its job was deleted, or none could be created
            again = create_step(session, settings, workflow, state, step, steps)
        if again is not None:
            publish.append(again)
    return publish + advance(session, settings, workflow_id)
