"""Advance a workflow: look at its children's statuses and create the next ones.

`advance(session, settings, workflow_id)` is called by a worker when one of the workflow's children
finished (worker.tasks) and by the API's sweep every few seconds (backend.workflows.sweep), so an advance
lost with a killed worker or API is made by the next caller. It is idempotent (it only creates the steps
whose previous step succeeded and that have no job yet) and safe under concurrent calls: the workflow's
row is locked for the transaction (PostgreSQL), and a step is a unique (workflow, branch, step, try) row
(backend.models.WorkflowStep), so of two advances racing on SQLite the second fails its insert and rolls
back with the job it created. The caller commits, then publishes the returned jobs' messages (a message
lost between the two is re-sent by backend.resender: the job is queued in the database).

A branch runs its steps in order; branches run side by side. A failed child fails its branch (the other
branches go on); when no branch can go on the workflow fails, its error naming each failed branch, step,
job and reason. A child lost with its worker (reaped, or its process died) is resumed from its checkpoint
or run again, at most AUTO_RECOVERIES times per step, without the user. Torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import lifecycle, memcheck, serialize
from backend.dispatch import choose_queue  # a child is routed as any job (Conflict naming device)
from backend.errors import Conflict
from backend.events import add_event
from backend.models import Job, Plan, Teacher, WorkflowStep
from backend.settings import Settings
from backend.workflows.definitions import DEFINITIONS, Branch, Child, Context, Definition, Step

log = logging.getLogger(__name__)

AUTO_RECOVERIES = 2  # per step: resumes / re-runs of a child lost with its worker, without the user
ACTIVE = ("queued", "running")


def is_lost(job: Job) -> bool:
    return job.status == "failed" and lifecycle.lost_with_its_worker(job.error)


def definition_of(workflow: Job) -> Definition:
    return DEFINITIONS[workflow.params["definition"]]


@dataclass
class BranchState:
    branch: Branch
    status: str = "pending"  # pending | running | succeeded | failed | cancelled
    step: str | None = None  # the current (or failed) step; None once done
    error: str | None = None
    done: dict[str, Job] = field(default_factory=dict)  # succeeded steps' jobs by step name


@dataclass
class Steps:
    """The workflow's step rows, the latest try of each (branch, step), and their jobs."""

    rows: list[WorkflowStep]
    jobs: dict[int, Job]

    @classmethod
    def load(cls, session: Session, workflow_id: int) -> Steps:
        rows = list(
            session.scalars(
                select(WorkflowStep).where(WorkflowStep.workflow_id == workflow_id).order_by(WorkflowStep.id)
            )
        )
        ids = [r.job_id for r in rows if r.job_id is not None]
        jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))} if ids else {}
        return cls(rows, jobs)

    def tries(self, branch: str, step: str) -> list[WorkflowStep]:
        return [r for r in self.rows if r.branch == branch and r.step == step]

    def latest(self, branch: str, step: str) -> WorkflowStep | None:
        tries = self.tries(branch, step)
        return max(tries, key=lambda r: r.try_number) if tries else None

    def job_of(self, row: WorkflowStep | None) -> Job | None:
        return self.jobs.get(row.job_id) if row is not None and row.job_id is not None else None


def step_status(row: WorkflowStep | None, job: Job | None) -> tuple[str, str | None]:
    """(status, error) of a step from its latest try: pending (no try), the job's, or failed."""
    if row is None:
        return "pending", None
    if row.job_id is None:
        return "failed", row.error or "no job could be created"
    if job is None:
        return "failed", f"job {row.job_id} was deleted"
    return job.status, job.error


def lock(session: Session, workflow_id: int) -> Job | None:
    """The workflow's row, locked until commit (PostgreSQL; SQLite serialises its writers anyway)."""
    job = session.scalars(
        select(Job).where(Job.id == workflow_id).with_for_update().execution_options(populate_existing=True)
    ).one_or_none()
    return job if job is not None and job.kind == "workflow" else None


# ---- children ------------------------------------------------------------------------------------------


def check_memory(session: Session, settings: Settings, child: Child, queue: str) -> None:
    """Conflict when the child fits no live worker's memory. A cut is checked as POST /students checks
    one (backend.memcheck.check_prune), so a cut too big for every worker fails its step now, readably,
    instead of queueing a prune job that dies on the worker; a distillation, evaluation or benchmark as
    POST /jobs checks one (memcheck.check_job: its student is the cut's, known by now)."""
    if child.kind == "prune":
        teacher = session.get(Teacher, child.links["teacher_id"])
        plan = session.get(Plan, child.links["plan_id"])
        memcheck.check_prune(settings, teacher and teacher.spec, plan and plan.stats, child.params, queue)
    elif child.kind in ("distill", "evaluate", "benchmark"):
        memcheck.check_job(
            settings,
            session,
            child.kind,
            child.params,
            queue,
            child.links.get("student_id"),
            child.links["teacher_id"],
        )


def create_step(
    session: Session, settings: Settings, workflow: Job, state: BranchState, step: Step, steps: Steps
) -> Job | None:
    """The next try of `step` for the branch: its row and its queued child job, or the finished job its
    build reuses (not this workflow's child: nothing queued); None when no job could be created: the row
    then holds why, and the branch fails at this step."""
    earlier = steps.tries(state.branch.key, step.name)
    row = WorkflowStep(
        workflow_id=workflow.id,
        branch=state.branch.key,
        step=step.name,
        try_number=1 + max((r.try_number for r in earlier), default=0),
    )
    ctx = Context(
        session, workflow, state.branch, state.done, [steps.job_of(r) for r in earlier if steps.job_of(r)]
    )
    child = step.build(ctx)
    if child.reuse is not None:  # measured before: the step is that job, nothing to check or queue
        row.job_id = child.reuse.id
        session.add(row)
        session.flush()
        steps.rows.append(row)
        steps.jobs[child.reuse.id] = child.reuse
        note = f"{state.branch.name}: {step.name} takes job {child.reuse.id}, which measured the same already"
        add_event(session, workflow, "log", {"job_id": workflow.id, "level": "info", "msg": note})
        return child.reuse
    try:
        queue = choose_queue(settings, child.kind, child.params)
        check_memory(session, settings, child, queue)
    except Conflict as exc:
        row.error = f"could not queue the {step.kind} job: {exc.message}"
        session.add(row)
        session.flush()
        steps.rows.append(row)  # the caller reads the failure from it
        return None
    links = {**child.links, **(child.make() if child.make is not None else {})}
    job = lifecycle.create(session, child.kind, child.params, queue=queue, parent_id=workflow.id, **links)
    if child.then is not None:
        child.then(job)
    row.job_id = job.id
    session.add(row)
    session.flush()  # the unique (workflow, branch, step, try): a concurrent advance fails here
    steps.rows.append(row)
    steps.jobs[job.id] = job
    return job


def rerun(
    session: Session,
    settings: Settings,
    workflow: Job,
    state: BranchState,
    step: Step,
    steps: Steps,
    job: Job,
) -> Job | None:
    """Run a failed step again: resume its job from its checkpoint when it can be, else a new try."""
    if serialize.is_resumable(job):
        moved = lifecycle.requeue(session, job, choose_queue(settings, job.kind, job.params))
        if moved is not None:
            steps.jobs[moved.id] = moved
        return moved
    return create_step(session, settings, workflow, state, step, steps)


def recoveries(row: WorkflowStep, job: Job) -> int:
    """How often the step was already run again: earlier tries plus resumes of this try's job."""
    return (row.try_number - 1) + (job.attempts - 1)


# ---- one advance ----------------------------------------------------------------------------------------


def branch_steps(
    workflow: Job, state: BranchState, steps: Steps
) -> Iterator[tuple[Step, WorkflowStep | None, Job | None, str, str | None]]:
    """The branch's steps in order as (step, latest try's row, its job, status, error), each the
    branch's current step (`state.step`) while the caller looks at it; a succeeded one is recorded in
    `state.done` and skipped. Past the last step the branch has succeeded (`state` says so). Both the
    advance (`walk`: it creates or recovers the step it stops at) and the reading (`states_of`) stop at
    the first step yielded."""
    definition = definition_of(workflow)
    for step in definition.steps_of(state.branch, workflow.params):
        row = steps.latest(state.branch.key, step.name)
        job = steps.job_of(row)
        status, error = step_status(row, job)
        state.step = step.name
        if status == "succeeded":
            state.done[step.name] = job
            continue
        yield step, row, job, status, error
    state.status, state.step = "succeeded", None


def failure(branch: Branch, step: Step, job: Job | None, error: str | None, status: str) -> str:
    where = f" (job {job.id})" if job is not None else ""
    return f"{branch.name}, step {step.name}{where}: {error or status}"


def walk(
    session: Session, settings: Settings, workflow: Job, branch: Branch, steps: Steps, publish: list[Job]
) -> BranchState:
    """Follow one branch's steps in order; create (or recover) the first one not done."""
    state = BranchState(branch)
    for step, row, job, status, error in branch_steps(workflow, state, steps):
        if status == "pending":
            created = create_step(session, settings, workflow, state, step, steps)
            if created is None:
                why = steps.latest(branch.key, step.name).error
                state.status, state.error = "failed", failure(branch, step, None, why, "failed")
                return state
            if created.parent_id != workflow.id:  # an earlier measurement taken: nothing to queue
                state.done[step.name] = created
                continue
            publish.append(created)
            state.status = "running"
            return state
        if status in ACTIVE:
            state.status = "running"
            return state
        if job is not None and is_lost(job) and recoveries(row, job) < AUTO_RECOVERIES:
            try:
                again = rerun(session, settings, workflow, state, step, steps, job)
            except Conflict:  # no live worker serves its device now: the branch fails, retry later
                again = None
            if again is not None:
                note = f"{branch.name}: {step.name} (job {job.id}) lost with its worker; running it again as job {again.id}"
                add_event(session, workflow, "log", {"job_id": workflow.id, "level": "warning", "msg": note})
                publish.append(again)
                state.status = "running"
                return state
        state.status = "cancelled" if status == "cancelled" else "failed"
        state.error = failure(branch, step, job, error, status)
        return state
    return state


def advance(session: Session, settings: Settings, workflow_id: int) -> list[Job]:
    """One look at the workflow (see the module doc); returns the jobs to publish after the commit."""
    workflow = lock(session, workflow_id)
    if workflow is None or workflow.status not in ("running", "failed"):
        return []
    steps = Steps.load(session, workflow_id)
    if workflow.status == "failed":
        # A child resumed by hand (POST /jobs/{id}/resume) brings its failed workflow back to life.
        if not any(j.status in ACTIVE for j in steps.jobs.values()):
            return []
        if lifecycle.reopen(session, workflow_id) is None:
            return []
    publish: list[Job] = []
    definition = definition_of(workflow)
    states = [
        walk(session, settings, workflow, b, steps, publish) for b in definition.branches(workflow.params)
    ]
    summarize(session, workflow, definition, states, steps)
    return publish


def summarize(
    session: Session, workflow: Job, definition: Definition, states: list[BranchState], steps: Steps
) -> None:
    """The workflow's own row: finished when every branch is (the final step's result), failed when a
    branch failed and none can go on, else its progress and a one-line message."""
    if all(s.status == "succeeded" for s in states):
        done = {s.branch.key: s.done for s in states}
        try:
            result = definition.finish(session, workflow, done)
        except Exception as exc:  # a final step that cannot compute is a failure the user can read
            log.exception("workflow %s: final step failed", workflow.id)
            lifecycle.conclude(session, workflow.id, "failed", error=f"final step: {exc}")
            return
        lifecycle.conclude(session, workflow.id, "succeeded", result=result)
        return
    failed = [s for s in states if s.status in ("failed", "cancelled")]
    if failed and not any(s.status == "running" for s in states):
        lifecycle.conclude(session, workflow.id, "failed", error="\n".join(s.error for s in failed))
        return
    total = sum(len(definition.steps_of(s.branch, workflow.params)) for s in states) or 1
    finished = sum(len(s.done) for s in states)
    progress = round(finished / total, 4)
    # Branches apart by " | ": a name is a shape whose parts " · " already parts.
    message = " | ".join(f"{s.branch.name}: {s.step if s.status == 'running' else s.status}" for s in states)
    if failed:
        message = "failed: " + "; ".join(s.error for s in failed) + " | " + message
    if (workflow.progress, workflow.message) != (progress, message[:4000]):
        workflow.progress, workflow.message = progress, message[:4000]
        add_event(session, workflow, "status", serialize.job(workflow))


def states_of(session: Session, workflow: Job) -> tuple[list[BranchState], Steps]:
    """The branches' states without creating anything (for reading: GET /workflows/{id})."""
    steps = Steps.load(session, workflow.id)
    states = []
    for branch in definition_of(workflow).branches(workflow.params):
        state = BranchState(branch)
        for step, _row, job, status, error in branch_steps(workflow, state, steps):
            state.status = {"queued": "running"}.get(status, status)
            if status in ("failed", "cancelled"):
                state.error = failure(branch, step, job, error, status)
            elif status == "pending" and state.done:
                state.status = "running"  # between two steps: the next advance creates it
            break
        states.append(state)
    return states, steps
