"""The worker's Python log of one job, in that job's log panel (issue 13: "show the worker's log").

Installed in the job's own process (worker.execution): every log record of the engine, the worker and
the libraries it drives (lm-eval, transformers; Python warnings too) at INFO or above becomes a `log`
event of the job, like its phase lines. Rate-limited (a token bucket: bursts of `burst` lines, then
`per_s` a second) so a chatty library cannot flood the event stream; what it drops is counted in one
line. Loggers that only describe the platform's own plumbing (database, broker, HTTP) pass only warnings.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

# Plumbing: their INFO lines say nothing about the job. worker.runtime writes the events themselves
# (a failed heartbeat logged through the database that just failed would only fail again).
QUIET = (
    "sqlalchemy",
    "celery",
    "kombu",
    "amqp",
    "redis",
    "httpx",
    "httpcore",
    "urllib3",
    "filelock",
    "fsspec",
)
SKIPPED = ("worker.runtime",)
# Libraries that keep their records to their own handler (propagate = False): hooked directly.
NON_PROPAGATING = ("transformers",)


class JobLogHandler(logging.Handler):
    def __init__(
        self,
        send: Callable[[str, str], None],
        *,
        burst: int = 30,
        per_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(logging.INFO)
        self._send = send  # (message, level) -> the job's log
        self._burst, self._per_s, self._clock = burst, per_s, clock
        self._tokens = float(burst)
        self._refilled = clock()
        self.dropped = 0
        self._sending = threading.local()
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if any(name == s or name.startswith(s + ".") for s in SKIPPED):
            return False
        if any(name == q or name.startswith(q + ".") for q in QUIET):
            return record.levelno >= logging.WARNING
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._sending, "active", False):  # a record logged while one is being written
            return
        self._sending.active = True
        try:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._per_s)
            self._refilled = now
            if self._tokens < 1:
                self.dropped += 1
                return
            self._tokens -= 1
            if self.dropped:
                self._send(
                    f"({self.dropped} log lines skipped: more than {self._per_s:g} a second)", "warning"
                )
                self.dropped = 0
            self._send(self.format(record), record.levelname.lower())
        except Exception:  # the job's log must never be what fails the job
            pass
        finally:
            self._sending.active = False


@contextlib.contextmanager
def job_log(send: Callable[[str, str], None], **limits) -> Iterator[JobLogHandler]:
    """Route this process's log records at INFO and above to `send` while the block runs."""
    handler = JobLogHandler(send, **limits)
    root = logging.getLogger()
    old_level = root.level
    # The root's level gates every propagating logger left at NOTSET: INFO for the job's log, while the
    # handlers already there (the worker's stderr) keep printing only what they printed before.
    kept = [(h, h.level) for h in root.handlers]
    for h, level in kept:
        if level == logging.NOTSET:
            h.setLevel(old_level)
    hooked = [logging.getLogger(name) for name in NON_PROPAGATING]
    root.addHandler(handler)
    for logger in hooked:
        logger.addHandler(handler)
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    captured = getattr(logging, "_warnings_showwarning", None) is not None  # already on: leave it on
    logging.captureWarnings(True)  # warnings.warn(...) -> the "py.warnings" logger -> the job's log
    try:
        yield handler
    finally:
        if not captured:
            logging.captureWarnings(False)
        for logger in hooked:
            logger.removeHandler(handler)
        root.removeHandler(handler)
        root.setLevel(old_level)
        for h, level in kept:
            h.setLevel(level)
