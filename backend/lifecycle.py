"""The one owner of a job's status: every transition is a function here, and nothing else writes
`Job.status` (tests/platform/test_lifecycle.py checks the source).

    create    -> queued                 the API: a new job (its row committed before its message is sent)
    claim     queued -> running         a worker, for the attempt its message names
    refuse    queued -> failed          a worker that must not run it (wrong device, nothing to measure)
    unsent    queued -> failed          a resumed job whose message the broker refused
    cancel    queued -> cancelled       the user; a running job is only flagged (`cancel_requested`)
                                        and stops at its next step, finishing as `cancelled`
    finish    running -> succeeded | failed | cancelled      the worker, for its attempt
              failed -> succeeded | failed | cancelled       ... after the reaper gave up on it (see TRANSITIONS)
    lose      running -> failed         the worker's supervisor: the job's process died
    reap      running -> failed         the API: no heartbeat for `heartbeat_timeout_s`
    resume    failed | cancelled -> queued   the user (or a workflow's retry: `requeue`); the next attempt
    open      -> running                a workflow (no message, no worker: backend.workflows moves it)
    conclude  running -> succeeded | failed      a workflow's last step, or a failed branch
    stop      running -> cancelled      the user cancels a workflow (its children each through `cancel`)
    reopen    failed | cancelled -> running      a workflow retried from its persisted step

Concurrency: each transition is one conditional UPDATE (`WHERE status IN (the allowed sources)`, and
`AND attempts = n` where a message's attempt is known), so two actors racing on a job (a worker's claim
against a cancel, a redelivered message against the first, a resume against a late finish) never
overwrite each other: the loser's UPDATE matches no row. Each attempt has its own message; the attempt
number is bumped only by `resume`.

Functions write the row and its `status` event in the caller's session; the caller commits and then
wakes the event streams (backend.events.publish_wakeup) — except `send`, `resume` and `resend`, which
publish a message and so commit first themselves. Refusals are domain errors (backend.errors).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from backend import dataset_holds, serialize
from backend.db import transaction
from backend.errors import Conflict, NotFound, Unavailable
from backend.events import add_event, publish_wakeup
from backend.models import FINISHED, Event, ImportanceRun, Job, Student, Teacher, utcnow
from backend.queue import RUN_JOB
from backend.settings import Settings

# action -> (the statuses it may leave, the statuses it may enter). The single statement of the machine.
# How a failed job's error says it was lost with its worker rather than failed on its own (workflows
# resume such children by themselves): the reaper's, the supervisor's (the job's process died) and a
# worker shutting down mid-job. Every writer of those errors uses these words.
WORKER_LOST = "worker lost"
JOB_PROCESS_DIED = "the job did not finish"
WORKER_SHUT_DOWN = "worker shut down while the job ran"
LOST_WITH_WORKER = (WORKER_LOST + ":", JOB_PROCESS_DIED, WORKER_SHUT_DOWN)


def lost_with_its_worker(error: str | None) -> bool:
    return any(marker in (error or "") for marker in LOST_WITH_WORKER)


TRANSITIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "create": ((), ("queued",)),
    "claim": (("queued",), ("running",)),
    "refuse": (("queued",), ("failed",)),
    "unsent": (("queued",), ("failed",)),
    "cancel": (("queued",), ("cancelled",)),
    # `failed` too: a worker the reaper gave up on (a long pause, a partitioned database) that finishes
    # after all reports the truth, but only for its own attempt — a resume bumps the attempt, so a late
    # finish never overwrites the next attempt.
    "finish": (("running", "failed"), FINISHED),
    "lose": (("running",), ("failed",)),
    "reap": (("running",), ("failed",)),
    "resume": (("failed", "cancelled"), ("queued",)),
    # A workflow (kind "workflow", backend.workflows) has no message and no worker: it is created running,
    # advanced by its children's outcomes, and ended or cancelled without a flag (no worker reads one).
    "open": ((), ("running",)),
    "conclude": (("running",), ("succeeded", "failed")),
    "stop": (("running",), ("cancelled",)),
    "reopen": (("failed", "cancelled"), ("running",)),
}
ERROR_CHARS = 4000  # the longest error text stored


def allowed(action: str, current: str, target: str | None = None) -> bool:
    sources, targets = TRANSITIONS[action]
    return current in sources and (target is None or target in targets)


def check(job: Job, action: str, target: str | None = None) -> None:
    """Conflict naming the job's current status when `action` may not move it (to `target`)."""
    if not allowed(action, job.status, target):
        sources, targets = TRANSITIONS[action]
        if target is not None and target not in targets:
            raise Conflict(f"{action} cannot end a job as {target}", nearby=targets)
        raise Conflict(
            f"Job {job.id} is {job.status}: only a {' or '.join(sources)} job can {action}", nearby=sources
        )


# ---- the API side ---------------------------------------------------------------------------------


def create(
    session: Session,
    kind: str,
    params: dict[str, Any],
    *,
    queue: str,
    params_at: tuple[str | int, ...] = ("body", "params"),
    **links: Any,
) -> Job:
    """A new queued job (attempt 1) with its first status event. `links`: teacher_id, student_id, plan_id,
    importance_run_id (and any other Job column). Send it with `send` once everything else is written.
    The datasets the params name are held until the commit (a concurrent delete waits or is refused);
    one deleted meanwhile is a 404 at `params_at` + its path in the params."""
    job = Job(kind=kind, params=params, queue=queue, status="queued", progress=0.0, attempts=1, **links)
    session.add(job)
    session.flush()
    dataset_holds.hold_for_job(session, params, params_at)
    add_event(session, job, "status", serialize.job(job))
    return job


def publish(sender, job_id: int, attempt: int, queue: str) -> None:
    """The run-job message of one attempt; raises when the broker refuses it. `sender`: a Celery app of
    backend.queue, or the API app (its `state.celery`). Publishing twice is harmless: the claim is
    conditional on the attempt, so the job runs once."""
    state = getattr(sender, "state", None)
    celery = getattr(state, "celery", None) or sender
    celery.send_task(RUN_JOB, args=[job_id, attempt], queue=queue)


def send(app, session: Session, job: Job) -> None:
    """`send_with` the API app's Celery and settings."""
    send_with(app.state.celery, app.state.settings, session, job)


def send_with(celery, settings: Settings, session: Session, job: Job) -> None:
    """Commit, then publish the message of the job's current attempt. The row is committed first so a
    worker always finds its job. When the broker refuses the message a new job is withdrawn with the
    rows created with it (nothing left behind); a resumed one is marked failed (`unsent`), never left
    queued, and stays resumable. Either way Unavailable."""
    session.commit()
    job_id, attempt = job.id, job.attempts
    try:
        publish(celery, job_id, attempt, job.queue)
    except Exception as exc:
        if attempt > 1 or not _withdraw(session, job_id):
            _move(
                session,
                job_id,
                "unsent",
                attempt=attempt,
                error=f"broker unreachable: {exc}",
                finished_at=utcnow(),
            )
            session.commit()
        raise Unavailable(f"could not queue the job: broker unreachable ({exc})") from exc
    publish_wakeup(settings, job.id, job.teacher_id)


def _withdraw(session: Session, job_id: int) -> bool:
    """Delete a new job whose message was never sent, with its events and the teacher / student /
    importance run created with it; False when a worker took the job after all (it then runs)."""
    session.rollback()
    session.execute(delete(Event).where(Event.job_id == job_id))
    if not session.execute(delete(Job).where(Job.id == job_id, Job.status == "queued")).rowcount:
        session.rollback()
        return False
    for owner in (Teacher, Student, ImportanceRun):
        session.execute(delete(owner).where(owner.job_id == job_id))
    session.commit()
    return True


def get(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"Job {job_id} not found")
    return job


def cancel(session: Session, job_id: int) -> Job:
    """A queued job is cancelled at once (the worker's claim then fails), failing the teacher / student it
    was to build; a running one is flagged and stops at its next step (the worker finishes it
    `cancelled`). Conditional updates so a concurrent claim / finish is never overwritten. Conflict for a
    finished job."""
    job = get(session, job_id)
    queued = _move(
        session,
        job_id,
        "cancel",
        cancel_requested=True,
        finished_at=utcnow(),
        error="cancelled by the user",
    )
    if queued is not None:
        _fail_built_row(session, queued, f"its {queued.kind} job {queued.id} was cancelled by the user")
        return queued
    flagged = session.execute(
        update(Job).where(Job.id == job_id, Job.status == "running").values(cancel_requested=True)
    ).rowcount
    if not flagged:
        session.refresh(job)
        raise Conflict(f"Job {job_id} is already {job.status}", nearby=("queued", "running"))
    session.refresh(job)
    add_event(session, job, "status", serialize.job(job))
    return job


def hold_finished(session: Session, job_id: int) -> bool:
    """Lock a finished job's row while it is still finished, until the caller's transaction ends (a
    no-op update: a concurrent resume, itself a conditional update, cannot requeue it meanwhile, e.g.
    between a delete's checks and the delete). False when it is no longer finished."""
    locked = update(Job).where(Job.id == job_id, Job.status.in_(FINISHED)).values(status=Job.status)
    return bool(session.execute(locked).rowcount)


def resume(app, session: Session, job_id: int, choose_queue: Callable[[Job], str]) -> Job:
    """failed | cancelled -> queued as the next attempt, routed anew (`choose_queue(job)`: the live fleet
    may differ now), then sent. Conflict when the job is not resumable or changed meanwhile."""
    job = get(session, job_id)
    if not serialize.is_resumable(job):
        why = "has no checkpoint" if job.status in ("failed", "cancelled") else f"is {job.status}"
        if job.status == "queued":
            why += f" (if it is stuck there, POST /jobs/{job_id}/resend publishes its message again)"
        raise Conflict(f"Job {job_id} cannot be resumed: it {why}", nearby=TRANSITIONS["resume"][0])
    moved = requeue(session, job, choose_queue(job))
    if moved is None:
        raise Conflict(f"Job {job_id} changed meanwhile; reload it")
    send(app, session, moved)
    return moved


def requeue(session: Session, job: Job, queue: str) -> Job | None:
    """The `resume` transition without the send: failed | cancelled -> queued as attempt n + 1 on `queue`,
    conditional on the attempt `job` was read at; None when it moved meanwhile. Send it next."""
    return _move(
        session,
        job.id,
        "resume",
        attempt=job.attempts,
        queue=queue,
        attempts=job.attempts + 1,
        cancel_requested=False,
        error=None,
        finished_at=None,
        message=f"resuming from step {job.checkpoint_step}" if job.checkpoint is not None else "resubmitted",
    )


def resend(app, session: Session, job_id: int) -> Job:
    """Publish a queued job's message again, for the attempt it is queued for (a job stuck in `queued`,
    its message lost with the broker's data). Its status does not change."""
    job = get(session, job_id)
    if job.status != "queued":
        hint = " (resume it)" if serialize.is_resumable(job) else ""
        raise Conflict(
            f"Job {job_id} is {job.status}, not queued: nothing to re-send{hint}", nearby=("queued",)
        )
    try:
        publish(app.state.celery, job.id, job.attempts, job.queue)
    except Exception as exc:
        raise Unavailable(f"could not re-send job {job_id}: broker unreachable ({exc})") from exc
    add_event(session, job, "log", {"job_id": job.id, "level": "info", "msg": "message re-sent by the user"})
    session.commit()
    publish_wakeup(app.state.settings, job.id, job.teacher_id)
    return job


def resend_lost(app, job_id: int, attempt: int, queue: str) -> None:
    """The re-sender's publish of a queued attempt the broker lost (backend.resender); logs it on the job."""
    publish(app.state.celery, job_id, attempt, queue)
    teacher_id = None
    with transaction(app.state.sessionmaker) as session:
        job = session.get(Job, job_id)
        if job is not None:
            note = "re-sent: the broker no longer held this job's message"
            add_event(session, job, "log", {"job_id": job_id, "level": "warning", "msg": note})
            teacher_id = job.teacher_id
    publish_wakeup(app.state.settings, job_id, teacher_id)


def reap(session: Session, timeout_s: float) -> list[Job]:
    """running -> failed for every job whose worker sent no heartbeat for `timeout_s` (killed, OOM, a lost
    machine); the teacher / student row it was building fails too. A distill job with a checkpoint is
    then resumable. Rows locked by another reaper are skipped (several API processes may run one)."""
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    stale = session.scalars(
        select(Job)
        .where(Job.status.in_(TRANSITIONS["reap"][0]), Job.heartbeat_at < cutoff)
        .with_for_update(skip_locked=True)
    ).all()
    for job in stale:
        job.status = "failed"
        job.finished_at = utcnow()
        job.eta_s = None
        job.error = (
            f"{WORKER_LOST}: no heartbeat from {job.worker or 'the worker'} for over {timeout_s:g} s"
            + (f"; resumable from the checkpoint at step {job.checkpoint_step}" if job.checkpoint else "")
        )
        add_event(session, job, "status", serialize.job(job))
        _fail_built_row(session, job, job.error)
    return list(stale)


# ---- workflows (backend.workflows: a job of kind "workflow" with child jobs; no message, no worker) ----


def open_workflow(session: Session, params: dict[str, Any], **links: Any) -> Job:
    """A workflow job, created running: its `started_at` makes it never resumable, its empty heartbeat
    keeps the reaper off it, and never being queued keeps the re-sender off it."""
    job = Job(
        kind="workflow",
        params=params,
        queue="default",
        status=TRANSITIONS["open"][1][0],
        progress=0.0,
        attempts=1,
        started_at=utcnow(),
        **links,
    )
    session.add(job)
    session.flush()
    dataset_holds.hold_for_job(session, params, ("body",))
    add_event(session, job, "status", serialize.job(job))
    return job


def _ending(status: str, result: dict | None, error: str | None) -> dict[str, Any]:
    """The columns a job (or workflow) ending as `status` sets."""
    values: dict[str, Any] = {"finished_at": utcnow(), "eta_s": None}
    if status == "succeeded":
        values.update(progress=1.0, message="done")
    if result is not None:
        values["result"] = result
    if error is not None:
        values["error"] = error[:ERROR_CHARS]
    return values


def conclude(
    session: Session, job_id: int, status: str, *, result: dict | None = None, error: str | None = None
) -> Job | None:
    """A workflow ends: running -> succeeded | failed; None when it already ended (or was cancelled)."""
    values = _ending(status, result, error)
    return _move(session, job_id, "conclude", to=status, **values)


def stop_workflow(session: Session, job_id: int) -> Job | None:
    """The user cancels a workflow: running -> cancelled at once (its children are cancelled by
    backend.workflows, each through `cancel`)."""
    return _move(
        session,
        job_id,
        "stop",
        cancel_requested=True,
        finished_at=utcnow(),
        eta_s=None,
        error="cancelled by the user",
    )


def reopen(session: Session, job_id: int) -> Job | None:
    """A retried workflow: failed | cancelled -> running again (it continues from its persisted step)."""
    return _move(session, job_id, "reopen", finished_at=None, error=None, cancel_requested=False)


# ---- the worker side (each call in its own short transaction: backend.db.session_scope) -------------


def claim(session: Session, job_id: int, attempt: int, *, device: str, worker: str) -> Job | None:
    """queued -> running, only for the attempt this message was sent for (so nothing runs twice); None
    when another message of the attempt, a cancellation or a resume got there first."""
    now = utcnow()
    return _move(
        session,
        job_id,
        "claim",
        attempt=attempt,
        started_at=now,
        heartbeat_at=now,
        device=device,
        worker=worker,
        error=None,
        message="starting",
    )


def refuse(session: Session, job_id: int, attempt: int, reason: str) -> Job | None:
    """queued -> failed without running, for this attempt; the job never started, so it stays resumable
    (serialize.is_resumable) and a resume routes it anew."""
    return _move(
        session,
        job_id,
        "refuse",
        attempt=attempt,
        finished_at=utcnow(),
        error=reason[:ERROR_CHARS],
        message=None,
    )


def note_waiting(session: Session, job_id: int, attempt: int, message: str) -> Job | None:
    """Say why a queued job waits (no transition: its message only), for this attempt; None when the job
    left `queued` or moved to another attempt."""
    job = session.get(Job, job_id)
    if job is None or job.status != "queued" or job.attempts != attempt:
        return None
    if job.message != message:
        job.message = message
        add_event(session, job, "status", serialize.job(job))
    return job


def finish(
    session: Session,
    job_id: int,
    attempt: int,
    status: str,
    *,
    result: dict | None = None,
    error: str | None = None,
) -> Job | None:
    """running -> succeeded | failed | cancelled for this attempt; None when the attempt is no longer the
    job's (a resume moved on) or the job already finished. A job that ends without succeeding fails the
    teacher or student row it was building (else it stayed `pending` for ever)."""
    if status not in TRANSITIONS["finish"][1]:
        raise ValueError(f"finish cannot end a job as {status!r}: use one of {', '.join(FINISHED)}")
    values = _ending(status, result, error)
    job = _move(session, job_id, "finish", attempt=attempt, to=status, **values)
    if job is not None and status != "succeeded":
        _fail_built_row(session, job, job.error or f"its {job.kind} job {job.id} was {status}")
    return job


def lose(session: Session, job_id: int, attempt: int, reason: str) -> Job | None:
    """running -> failed for this attempt when the job's process died without finishing it; the teacher
    or student row the job was building shows the reason too."""
    job = _move(
        session, job_id, "lose", attempt=attempt, finished_at=utcnow(), eta_s=None, error=reason[:ERROR_CHARS]
    )
    if job is not None:
        _fail_built_row(session, job, reason[:ERROR_CHARS])
    return job


# ---- the one UPDATE every transition goes through ----------------------------------------------------


def _move(
    session: Session,
    job_id: int,
    action: str,
    *,
    attempt: int | None = None,
    to: str | None = None,
    **values: Any,
) -> Job | None:
    """One conditional UPDATE from the action's allowed statuses (and this attempt) to `to` (default:
    the action's only target), with its status event; None when no row matched (someone else moved the
    job first, or it does not exist)."""
    sources, targets = TRANSITIONS[action]
    to = to or targets[0]
    if to not in targets:
        raise ValueError(f"{action} cannot enter {to!r}")
    query = update(Job).where(Job.id == job_id, Job.status.in_(sources))
    if attempt is not None:
        query = query.where(Job.attempts == attempt)
    if not session.execute(query.values(status=to, **values)).rowcount:
        return None
    job = session.get(Job, job_id, populate_existing=True)  # the session may hold the row as it was
    add_event(session, job, "status", serialize.job(job))
    return job


def _fail_built_row(session: Session, job: Job, error: str) -> None:
    """The teacher an inspect job or the student a prune job was building fails with the job (lost, reaped,
    cancelled or ended without succeeding): a row only such a job makes ready never stays pending."""
    built = {"inspect": (Teacher, job.teacher_id), "prune": (Student, job.student_id)}.get(job.kind)
    row = session.get(*built) if built and built[1] else None
    if row is not None and row.status == "pending":
        row.status, row.error = "failed", error
