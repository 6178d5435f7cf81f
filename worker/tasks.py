"""The one Celery task: run job <id> (attempt <n>) with the handler for its kind (worker.handlers)."""

from __future__ import annotations

import logging
import os
import traceback

from backend.settings import Settings
from worker.celery_app import RUN_JOB, app
from worker.runtime import JobCancelled, JobRuntime

log = logging.getLogger(__name__)


@app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: int, attempt: int) -> str:
    from worker.handlers import HANDLERS

    rt = JobRuntime(Settings(), job_id, attempt, device=os.environ.get("PRUNESCOPE_WORKER_DEVICE", "cpu"))
    job = rt.claim()
    if job is None:  # cancelled while queued, an older attempt, or a redelivered duplicate
        return "skipped"
    try:
        result = HANDLERS[job.kind](rt, job)
    except JobCancelled:
        rt.finish("cancelled", error="cancelled by the user")
        return "cancelled"
    except Exception as exc:
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        rt.finish("failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"
    rt.finish("succeeded", result=result)
    return "succeeded"
