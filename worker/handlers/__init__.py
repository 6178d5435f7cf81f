"""One function per job kind: read the job's inputs from the database, call the engine, store results.

Each handler gets the `JobRuntime` (progress, metrics, cancellation) and the claimed job row, returns
the job's `result` dict, and writes its artifacts through the artifact store (staging dir + rename).
torch and the engine are imported inside the handlers, in the worker only. One module per kind of job;
what they share (sources, loading, rows, artifacts) is in worker.job_io. A job over several ranks goes
to its supervisor, worker.*_ranks, which never imports a handler (pyproject.toml's import contracts).
"""

from __future__ import annotations

from typing import Any

from backend.models import Job
from worker.handlers.distill_job import run_distill
from worker.handlers.importance_job import run_importance
from worker.handlers.inspect_job import run_inspect
from worker.handlers.measure_jobs import run_benchmark, run_evaluate
from worker.handlers.preview_job import run_preview
from worker.handlers.prune_job import run_prune
from worker.runtime import JobRuntime


def run_search(rt: JobRuntime, job: Job) -> dict[str, Any]:
    from worker.search_job import run_search_job  # architecture search (issue 12): its own module

    return run_search_job(rt, job)


HANDLERS = {
    "inspect": run_inspect,
    "importance": run_importance,
    "prune": run_prune,
    "preview": run_preview,
    "distill": run_distill,
    "evaluate": run_evaluate,
    "benchmark": run_benchmark,
    "search": run_search,
}
