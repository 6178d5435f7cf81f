"""The one Celery task: run job <id> (attempt <n>) with the handler for its kind (worker.handlers)."""

from __future__ import annotations

import logging
import os
import traceback

from celery.signals import worker_init, worker_shutting_down

from backend.settings import Settings
from worker.celery_app import RUN_JOB, app
from worker.routing import can_serve
from worker.runtime import SHUTTING_DOWN, JobCancelled, JobRuntime

log = logging.getLogger(__name__)


@worker_shutting_down.connect
def _stop_running_jobs(**_kwargs) -> None:
    SHUTTING_DOWN.set()


@worker_init.connect
def preload(**_kwargs) -> None:
    """Import torch, transformers and the engine once, before any task runs: with a thread pool, two
    tasks importing transformers' lazy modules at the same moment can fail with an ImportError."""
    import torch  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import worker.engine.data  # noqa: F401
    import worker.engine.distill  # noqa: F401
    import worker.engine.evaluation  # noqa: F401
    import worker.engine.importance.compute  # noqa: F401
    import worker.engine.loading  # noqa: F401
    import worker.engine.masking  # noqa: F401
    import worker.engine.surgery  # noqa: F401
    import worker.handlers  # noqa: F401


@app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: int, attempt: int) -> str:
    from worker.handlers import HANDLERS

    rt = JobRuntime(Settings(), job_id, attempt, device=os.environ.get("PRUNESCOPE_WORKER_DEVICE", "cpu"))
    # Queues keep jobs on workers that can serve them; a message published by hand (or routed by an
    # older deployment) can still bring one here. Refuse it, never run it on the wrong device.
    requirement = rt.required_device()
    if not can_serve(rt.device, requirement):
        reason = (
            f"refused by worker {rt.worker_name}: the job requires device {requirement} but this worker "
            f"runs on {rt.device}; resume it to route it to a {requirement} worker"
        )
        return "refused" if rt.refuse(reason) else "skipped"
    waiting = _wait_for_distillation(rt)
    if waiting:
        return waiting
    job = rt.claim()
    if job is None:  # cancelled while queued, an older attempt, or a redelivered duplicate
        return "skipped"
    try:
        result = HANDLERS[job.kind](rt, job)
    except JobCancelled:
        if SHUTTING_DOWN.is_set() and not rt.user_cancelled:
            step = rt.job_row().checkpoint_step
            where = f"; resumable from the checkpoint at step {step}" if step is not None else ""
            rt.finish("failed", error=f"worker shut down while the job ran{where}")
            return "failed"
        rt.finish("cancelled", error="cancelled by the user")
        return "cancelled"
    except Exception as exc:
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        rt.finish("failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"
    rt.finish("succeeded", result=result)
    return "succeeded"


DISTILLATION_POLL_S = 2.0


def _wait_for_distillation(rt: JobRuntime) -> str | None:
    """An evaluate / benchmark job that measures a distillation still running is put back on its queue
    (a fresh message a little later) instead of holding a worker slot; one whose distillation failed
    or was cancelled is refused, resumable once that distillation is resumed."""
    awaited = rt.awaited_distillation()
    if awaited is None:
        return None
    distill_job_id, status = awaited
    if status in ("queued", "running"):
        queue = rt.note_waiting(f"waiting for distill job {distill_job_id} to finish")
        if queue is None:  # cancelled meanwhile, or an older attempt's message
            return "skipped"
        run_job.apply_async(args=[rt.job_id, rt.attempt], queue=queue, countdown=DISTILLATION_POLL_S)
        return "deferred"
    if status != "succeeded":
        reason = f"distill job {distill_job_id} is {status}: there are no weights to measure"
        return "refused" if rt.refuse(reason) else "skipped"
    return None
