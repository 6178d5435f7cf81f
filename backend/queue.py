"""The queue contract between the API and the workers (torch-free): the task name, the broker Redis
Celery falls back to, and the Celery configuration both sides use. Queues and routing rules are in
backend.routing; the task itself is registered by the worker (worker.tasks).

Job state lives in our database, not in a Celery result backend. Reliability settings: a task is
acknowledged only after it finished (`acks_late`), a task whose worker process died is put back
(`task_reject_on_worker_lost`), and a worker reserves one task at a time (`prefetch 1`). A redelivered
message can never run a job twice because each message names the job's attempt number and the worker
claims the job with a conditional update (backend.lifecycle.claim).
"""

from __future__ import annotations

from celery import Celery

from backend.routing import DEFAULT

RUN_JOB = "prunescope.run_job"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


def make_celery(broker_url: str | None, prefix: str = "") -> Celery:
    """A Celery app configured for the contract; the API only sends with it, a worker registers its
    task on it."""
    app = Celery("prunescope", broker=broker_url or DEFAULT_BROKER_URL)
    transport_options = {"visibility_timeout": 6 * 3600}
    if prefix:
        transport_options["global_keyprefix"] = prefix
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=DEFAULT,
        task_routes={RUN_JOB: {"queue": DEFAULT}},  # overridden per call (backend.routing.route)
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app
