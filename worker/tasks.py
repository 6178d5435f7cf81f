"""The one Celery task: run job <id> (attempt <n>) in a process of its own (worker.isolation, which says
why) with the handler for its kind (worker.handlers); the task's thread only checks and supervises."""

from __future__ import annotations

import logging
import time

from celery.signals import worker_init, worker_shutting_down

from backend.lifecycle import JOB_PROCESS_DIED
from backend.queue import RUN_JOB, make_celery
from backend.routing import can_serve, requirement_of
from backend.settings import Settings
from worker.device_lock import DEFER_LIMIT_S, EXCLUSIVE_KINDS, busy_for_a_benchmark, waiting_message
from worker.execution import execute
from worker.gang import Gang, GangIncomplete, GangYielded, lead, node_address, timeout_of, worker_id
from worker.isolation import ChildDied, run_isolated, warm_up
from worker.light_consumer import is_light_consumer
from worker.node_member import execute_member
from worker.runtime import SHUTTING_DOWN, JobRuntime
from worker.workflow_hook import advance_parent

log = logging.getLogger(__name__)
_settings = Settings()
# The worker's Celery app: the queue contract's configuration (backend.queue) with this task on it.
app = make_celery(_settings.broker_url, _settings.redis_prefix)


@worker_shutting_down.connect
def _stop_running_jobs(**_kwargs) -> None:
    SHUTTING_DOWN.set()


@worker_init.connect
def preload(**_kwargs) -> None:
    """Start the job fork server before any task runs: it imports torch, transformers and the engine
    once (worker.preload); this process itself stays torch-free and only supervises. A worker's light-job
    consumer starts its server with its first job instead: light jobs (reading a teacher) are few, and
    that import is seconds of CPU at every worker start, competing with the worker's own first job."""
    if not is_light_consumer():
        warm_up()


@app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True)
def run_job(
    job_id: int,
    attempt: int,
    node: int = 0,
    nodes: int = 1,
    round: int = 0,
    not_before: float = 0.0,
    device_wait_since: float = 0.0,
) -> str:
    args = [job_id, attempt, node, nodes, round]
    if _too_early(args, not_before, device_wait_since):
        return "deferred"
    try:
        return _run_job(*args, device_wait_since=device_wait_since)
    finally:  # a workflow's child ended (or was refused, or its process died): take the next step now
        advance_parent(_settings, job_id, app.send_task)


# A message sent for later (send_later) that a worker takes early waits this long at most, then goes back.
LATER_POLL_S = 1.0


def send_later(args: list, queue: str, after_s: float, device_wait_since: float = 0.0) -> None:
    """run_job(*args) on `queue`, to run no earlier than `after_s` from now. Not a Celery countdown: a
    worker holding a countdown (ETA) message raises its prefetch and keeps reading the queue, so when that
    message's task ran (the worker's one slot; the solo pool blocks its loop) a BRPOP it had sent could
    hand it one more message it would not start until that task ended: in CI the member message of a
    gang sat in its own leader's socket until the gang timed out. Instead the message carries
    `not_before`: a worker that takes it early waits up to LATER_POLL_S and sends it back (_too_early),
    behind whatever else waits in the queue. `device_wait_since`: when a benchmark was first put back for
    its device (_wait_for_device), carried along."""
    kwargs = {"not_before": time.time() + after_s}
    if device_wait_since:
        kwargs["device_wait_since"] = device_wait_since
    run_job.apply_async(args=args, kwargs=kwargs, queue=queue)


def _too_early(args: list, not_before: float, device_wait_since: float = 0.0) -> bool:
    """A message taken before its `not_before`: after a short wait, still early -> sent back (True)."""
    if not_before - time.time() <= 0:
        return False
    time.sleep(min(not_before - time.time(), LATER_POLL_S))
    if not_before - time.time() <= 0:
        return False
    queue = (run_job.request.delivery_info or {}).get("routing_key")
    kwargs = {"not_before": not_before}
    if device_wait_since:
        kwargs["device_wait_since"] = device_wait_since
    run_job.apply_async(args=args, kwargs=kwargs, queue=queue)
    return True


def _run_job(
    job_id: int, attempt: int, node: int, nodes: int, round: int = 0, device_wait_since: float = 0.0
) -> str:
    settings = Settings()
    rt = JobRuntime(settings, job_id, attempt, device=settings.worker_device)
    row = rt.kind_params_and_queue()
    if row is None:
        return "skipped"  # deleted while its message waited
    kind, params, queue = row
    # Queues keep jobs on workers that can serve them; a message published by hand (or routed by an
    # older deployment) can still bring one here. Refuse it, never run it on the wrong device.
    requirement = requirement_of(params)
    if not can_serve(rt.device, requirement):
        reason = (
            f"refused by worker {rt.worker_name}: the job requires device {requirement} but this worker "
            f"runs on {rt.device}; resume it to route it to a {requirement} worker"
        )
        return "refused" if rt.refuse(reason) else "skipped"
    waiting = _wait_for_distillation(rt, params) or _wait_for_device(rt, kind, device_wait_since)
    if waiting:
        return waiting
    deferred_s = time.time() - device_wait_since if device_wait_since else 0.0
    target, args = execute, (job_id, attempt, rt.device, deferred_s)
    nodes = nodes if node else int(params.get("nodes", 1))
    if nodes > 1:  # one node of a job over several (worker.gang): this worker holds a slot of its gang
        gang = Gang.of(settings, job_id, attempt, nodes, None if node == 0 else round)
        round = gang.round  # node 0: the attempt's current round (a re-sent first message joins it)
        joined = gang.join(node, worker_id(), node_address(settings))
        if joined == "busy":  # this worker runs another node of it: leave this one to another worker
            send_later([job_id, attempt, node, nodes, round], queue, after_s=1.0)
            return "deferred"
        if joined != "joined":
            return "skipped"
        if node == 0:  # the API sent node 0's message; node 0 sends the others to the same queue
            for member in range(1, nodes):
                run_job.apply_async(args=[job_id, attempt, member, nodes, round], queue=queue)
            try:  # before the claim: a gang that cannot form leaves the job unstarted (resumable)
                lead(rt, gang, timeout_of(params, settings), queue)
            except GangYielded as exc:  # an older gang, or queued jobs while its workers are busy, go first
                rt.log(
                    f"{exc}: this gang (round {round}) gives way, node 0 retries in {exc.retry_in_s:.0f} s"
                )
                if rt.note_waiting(exc.waiting) is None:
                    return "skipped"  # cancelled meanwhile
                send_later([job_id, attempt, 0, nodes, round + 1], queue, after_s=exc.retry_in_s)
                return "deferred"
            except GangIncomplete as exc:
                return "refused" if rt.refuse(str(exc)) else "skipped"
        else:
            target, args = execute_member, (job_id, attempt, node, nodes, rt.device, round)
    # The job itself runs in a process of its own (worker.isolation: torch's global state is per process).
    try:
        return run_isolated(target, *args)
    except ChildDied as exc:
        reason = f"{exc}; {JOB_PROCESS_DIED}"
        log.error("job %s: %s", job_id, reason)
        if rt.refuse(reason) or rt.fail_if_running(reason):
            return "failed"
        return "skipped"


DISTILLATION_POLL_S = 2.0


def _wait_for_distillation(rt: JobRuntime, params: dict) -> str | None:
    """An evaluate / benchmark job (`params`) that measures a distillation still running is put back on
    its queue (a fresh message a little later) instead of holding a worker slot; one whose distillation
    failed or was cancelled is refused, resumable once that distillation is resumed."""
    distill_job_id = params.get("distill_job_id")
    if not distill_job_id:
        return None
    status = rt.job_status(distill_job_id)
    if status in ("queued", "running"):
        queue = rt.note_waiting(f"waiting for distill job {distill_job_id} to finish")
        if queue is None:  # cancelled meanwhile, or an older attempt's message
            return "skipped"
        send_later([rt.job_id, rt.attempt], queue, after_s=DISTILLATION_POLL_S)
        return "deferred"
    if status != "succeeded":
        reason = f"distill job {distill_job_id} is {status}: there are no weights to measure"
        return "refused" if rt.refuse(reason) else "skipped"
    return None


DEVICE_POLL_S = 2.0


def _wait_for_device(rt: JobRuntime, kind: str, since: float) -> str | None:
    """A benchmark (it runs alone on its device: worker.device_lock) whose device other jobs use now is
    put back on its queue (a fresh message a little later) instead of holding this worker's slot while it
    waits: the jobs queued behind it run meanwhile. Once it has been put back for DEFER_LIMIT_S (`since`:
    the first time) it starts and waits at the device's gate, ahead of newly arriving jobs, so a stream
    of small jobs cannot starve it."""
    if kind not in EXCLUSIVE_KINDS or (since and time.time() - since >= DEFER_LIMIT_S):
        return None
    if not busy_for_a_benchmark(rt.settings, rt.device):
        return None
    queue = rt.note_waiting(waiting_message(rt.device, exclusive=True))
    if queue is None:  # cancelled meanwhile, or an older attempt's message
        return "skipped"
    send_later([rt.job_id, rt.attempt], queue, after_s=DEVICE_POLL_S, device_wait_since=since or time.time())
    return "deferred"
