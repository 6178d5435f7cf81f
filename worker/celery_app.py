"""The Celery application (torch-free: the API imports it to send tasks; tasks live in worker.tasks).

Job state lives in our database, not in a Celery result backend. Reliability settings: a task is
acknowledged only after it finished (`acks_late`), a task whose worker process died is put back
(`task_reject_on_worker_lost`), and a worker reserves one task at a time (`prefetch 1`). A redelivered
message can never run a job twice because each message names the job's attempt number and the worker
claims the job with a conditional update (see worker.runtime).
"""

from __future__ import annotations

from celery import Celery

from backend.settings import Settings

RUN_JOB = "prunescope.run_job"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


def make_celery(broker_url: str | None, prefix: str = "") -> Celery:
    app = Celery("prunescope", broker=broker_url or DEFAULT_BROKER_URL, include=["worker.tasks"])
    transport_options = {"visibility_timeout": 6 * 3600}
    if prefix:
        transport_options["global_keyprefix"] = prefix
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_default_queue="default",
        task_routes={RUN_JOB: {"queue": "default"}},  # overridden per call (worker.routing)
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


_settings = Settings()
app = make_celery(_settings.broker_url, _settings.redis_prefix)
