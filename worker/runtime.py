"""What a running job needs from the platform: claim the job, report progress, write metrics, logs and
checkpoints, notice a cancel request, keep a heartbeat, and finish with a status.

Every write is a short transaction that also appends an event row (the SSE log) and then publishes a
Redis wake-up. Torch-free.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from sqlalchemy import select

from backend import lifecycle, serialize
from backend.db import session_scope
from backend.events import add_event, publish_wakeup
from backend.models import Job, MetricPoint, utcnow
from backend.settings import Settings
from worker.eta import RateEta

log = logging.getLogger(__name__)
TRAIN_KEYS = ("loss", "kd_loss", "ce_loss", "lr", "grad_norm", "tokens_per_s")
VAL_KEYS = ("val_loss", "val_ppl", "val_kl")


# Set when the worker is asked to shut down (Ctrl-C, SIGTERM): running jobs stop at their next step,
# write a checkpoint, and are marked failed with the reason (a distill job can then be resumed).
SHUTTING_DOWN = threading.Event()


class JobCancelled(Exception):
    """Raised inside a task when the user cancelled the job (or the worker is shutting down)."""


class JobRuntime:
    def __init__(self, settings: Settings, job_id: int, attempt: int, device: str = "cpu"):
        self.settings = settings
        self.url = settings.resolved_database_url
        self.job_id = job_id
        self.attempt = attempt
        self.device = device
        self.worker_name = f"{socket.gethostname()}:{device}"
        self.teacher_id: int | None = None
        self._t0 = time.monotonic()
        self._last_progress = 0.0
        self._last_phase: str | None = None  # the last forced progress message, logged once
        self._phase: str | None = None  # the phase the ETA's rate is measured over (worker.eta)
        self._eta = RateEta()
        self._clock = time.monotonic  # the ETA's clock (a test sets its own)
        self._cancel = False
        self._stop_heartbeat = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.device_use: dict[str, Any] = {}  # how the job holds its device (worker.device_lock)

    # ---- lifecycle -----------------------------------------------------------------------------

    def claim(self) -> Job | None:
        """queued -> running, only for the attempt this message was sent for (so nothing runs twice)."""
        job = self._transition(lifecycle.claim, device=self.device, worker=self.worker_name)
        if job is not None:
            self._heartbeat = threading.Thread(
                target=self._beat, name=f"heartbeat-{self.job_id}", daemon=True
            )
            self._heartbeat.start()
        return job

    def kind_params_and_queue(self) -> tuple[str, dict[str, Any], str] | None:
        """The job's kind, parameters and queue, read once when its message arrives; None when it is
        gone."""
        with session_scope(self.url) as s:
            job = s.get(Job, self.job_id)
            return (job.kind, dict(job.params or {}), job.queue) if job is not None else None

    def refuse(self, reason: str) -> bool:
        """queued -> failed without running, for the attempt this message was sent for; the job never
        started, so it stays resumable (backend.serialize.is_resumable) and a resume routes it anew."""
        return self._transition(lifecycle.refuse, reason) is not None

    def job_status(self, job_id: int) -> str:
        """The status of job `job_id` ("deleted" when it is gone)."""
        with session_scope(self.url) as s:
            job = s.get(Job, job_id)
            return job.status if job is not None else "deleted"

    def note_waiting(self, message: str) -> str | None:
        """Say why a queued job waits (for this attempt only); its queue, or None if it left `queued`."""
        job = self._transition(lifecycle.note_waiting, message)
        return job.queue if job is not None else None

    def fail_if_running(self, reason: str) -> bool:
        """running -> failed for this attempt, when the job's process died without finishing it; the
        teacher or student row the job was building shows the reason too."""
        return self._transition(lifecycle.lose, reason) is not None

    def finish(self, status: str, *, result: dict | None = None, error: str | None = None) -> bool:
        """running -> succeeded / failed / cancelled for this attempt; False when the job moved on (a
        resume started a newer attempt) and this outcome is not the job's any more."""
        self._stop_heartbeat.set()
        if self._transition(lifecycle.finish, status, result=result, error=error) is None:
            return False
        # The log's last line says how the attempt ended (the log stopped at its last phase).
        took = int(time.monotonic() - self._t0)
        why = f": {error.splitlines()[0]}" if error else ""
        self.log(
            f"{status} after {took // 60}m {took % 60:02d}s{why}", "error" if status == "failed" else "info"
        )
        return True

    def _transition(self, move, *args, **kwargs) -> Job | None:
        """One backend.lifecycle transition for this job and attempt in a transaction of its own, then the
        wake-up; None when the conditional update lost to another message, a cancel or a resume."""
        with session_scope(self.url) as s:
            job = move(s, self.job_id, self.attempt, *args, **kwargs)
            if job is None:
                return None
            self.teacher_id = job.teacher_id
            s.flush()  # an attribute the move set (note_waiting's message): expunged unflushed, it is lost
            s.expunge(job)
        self._wake()
        return job

    # ---- reporting -----------------------------------------------------------------------------

    def progress(
        self,
        fraction: float,
        message: str | None = None,
        *,
        force: bool = False,
        phase: str | None = None,
        job_eta: bool = True,
    ) -> None:
        """Throttled to ~2 writes per second so a fast loop does not flood the stream.

        `phase` names the stretch of work the ETA's rate is measured over ("calibration", "training"):
        a new phase restarts the rate, so loading a model or a resume's jump to step 150 of 200 does not
        enter the time left. A forced message without a phase is a phase of its own ("loading model").
        `job_eta=False`: this phase's pace says nothing of the rest of the job (reading a checkpoint's
        weights before any of the job's own work): no ETA (the phase may give its own time left in its
        message).
        """
        now = self._clock()
        phase = phase or (message if force else self._phase)
        if phase != self._phase:
            self._phase = phase
            self._eta.restart()
        fraction = min(max(float(fraction), 0.0), 1.0)
        eta = self._eta.update(now, fraction)  # every report counts, written or throttled
        if not job_eta:
            eta = None
        if not force and now - self._last_progress < 0.5 and fraction < 1.0:
            return
        self._last_progress = now
        with session_scope(self.url) as s:
            job = s.get(Job, self.job_id)
            job.progress = fraction
            job.message = message
            job.eta_s = eta
            job.heartbeat_at = utcnow()
            add_event(s, job, "status", serialize.job(job))
            # A forced message names a phase ("loading model", "lm-eval tasks"): it goes to the job's log
            # too, so jobs without a training loop (evaluate, benchmark) have a log to read.
            if force and message and message != self._last_phase:
                self._last_phase = message
                add_event(s, job, "log", {"job_id": self.job_id, "level": "info", "msg": message})
        self._wake()

    def metrics(self, record: dict[str, Any]) -> bool:
        """Write one step's metrics; a step already written (a resumed job replaying it) is skipped.

        Returns True when the step was new.
        """
        step = int(record["step"])
        tokens = record.get("tokens")
        t = float(record.get("elapsed", time.monotonic() - self._t0))
        values = {
            k: float(v)
            for k, v in record.items()
            if k not in ("step", "tokens", "elapsed") and isinstance(v, (int, float)) and v == v
        }
        if not values:
            return False
        with session_scope(self.url) as s:
            existing = set(
                s.scalars(
                    select(MetricPoint.name).where(
                        MetricPoint.job_id == self.job_id,
                        MetricPoint.step == step,
                        MetricPoint.name.in_(list(values)),
                    )
                )
            )
            new = {k: v for k, v in values.items() if k not in existing}
            if not new:
                return False
            for name, value in new.items():
                s.add(
                    MetricPoint(
                        job_id=self.job_id,
                        name=name,
                        step=step,
                        value=value,
                        tokens=int(tokens) if tokens is not None else None,
                        t=t,
                    )
                )
            job = s.get(Job, self.job_id)
            job.heartbeat_at = utcnow()
            data = {"job_id": self.job_id, "step": step, "tokens": tokens, "t": t, "values": new}
            add_event(s, job, "metric", data)
        self._wake()
        return True

    def log(self, msg: str, level: str = "info") -> None:
        with session_scope(self.url) as s:
            job = s.get(Job, self.job_id)
            add_event(s, job, "log", {"job_id": self.job_id, "level": level, "msg": msg})
        self._wake()

    def checkpoint(self, step: int, location: str) -> None:
        with session_scope(self.url) as s:
            job = s.get(Job, self.job_id)
            job.checkpoint_step = int(step)
            job.checkpoint = location

    def job_row(self) -> Job:
        with session_scope(self.url) as s:
            job = s.get(Job, self.job_id)
            s.expunge(job)
            return job

    # ---- cancellation and heartbeat --------------------------------------------------------------

    @property
    def user_cancelled(self) -> bool:
        return self._cancel

    def should_stop(self) -> bool:
        return self._cancel or SHUTTING_DOWN.is_set()

    def raise_if_cancelled(self) -> None:
        if self.should_stop():
            raise JobCancelled()

    def _beat(self) -> None:
        """Every 0.5 s read the cancel flag; every `heartbeat_interval_s` prove this worker is alive."""
        interval = self.settings.heartbeat_interval_s
        last_beat = time.monotonic()
        while not self._stop_heartbeat.wait(0.5):
            try:
                with session_scope(self.url) as s:
                    job = s.get(Job, self.job_id)
                    if job is None or job.status != "running":
                        return
                    self._cancel = bool(job.cancel_requested)
                    if time.monotonic() - last_beat >= interval:
                        job.heartbeat_at = utcnow()
                        last_beat = time.monotonic()
            except Exception as exc:  # a DB hiccup must not kill the job
                log.warning("heartbeat failed: %s", exc)

    def _wake(self) -> None:
        publish_wakeup(self.settings, self.job_id, self.teacher_id)
