"""What runs inside a job's own process (worker.isolation): claim the job, hold its device as the job's
kind needs (worker.device_lock), run the handler for its kind, finish with a status."""

from __future__ import annotations

import logging
import os
import traceback

from backend.lifecycle import WORKER_SHUT_DOWN
from backend.settings import Settings
from worker.device_lock import device_use
from worker.joblog import job_log
from worker.runtime import SHUTTING_DOWN, JobCancelled, JobRuntime

log = logging.getLogger(__name__)


def execute(job_id: int, attempt: int, device: str, deferred_s: float = 0.0) -> str:
    """`deferred_s`: how long a benchmark was put back on its queue for its device (worker.tasks)."""
    rt = JobRuntime(Settings(), job_id, attempt, device=device)
    job = rt.claim()
    if job is None:  # cancelled while queued, an older attempt, or a redelivered duplicate
        return "skipped"
    rt.log(f"running in process {os.getpid()} on {device}")  # its own: no other job shares its state
    with job_log(lambda msg, level: rt.log(msg, level)):  # the Python log of this process -> the job's log
        return _run(rt, job, job_id, deferred_s)


def _run(rt: JobRuntime, job, job_id: int, deferred_s: float = 0.0) -> str:
    from worker.handlers import HANDLERS
    from worker.job_io import check_teacher_files

    try:
        check_teacher_files(rt, job)  # before anything reads the teacher (and before its device is held)
        with device_use(rt, job.kind, deferred_s) as use:
            rt.device_use = use
            result = HANDLERS[job.kind](rt, job)
    except JobCancelled:
        if SHUTTING_DOWN.is_set() and not rt.user_cancelled:
            step = rt.job_row().checkpoint_step
            where = f"; resumable from the checkpoint at step {step}" if step is not None else ""
            rt.finish("failed", error=f"{WORKER_SHUT_DOWN}{where}")
            return "failed"
        rt.finish("cancelled", error="cancelled by the user")
        return "cancelled"
    except Exception as exc:
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        rt.finish("failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"
    rt.finish("succeeded", result=result)
    return "succeeded"
