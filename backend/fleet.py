"""The worker registry in Redis: which workers are alive, on which device, consuming which queues.

Each worker keeps one key `<prefix>prunescope:workers:<hostname>:<pid>` holding a JSON record
{hostname, device, queues, pid, started_at, memory: {kind, total_bytes, free_bytes}, host_memory (the
host's RAM, same keys), spill_disk: {path, free_bytes, limit_bytes}, device_count,
gpus: [{index, name, total_bytes, free_bytes}]} (worker.device_inventory), rewritten every
`worker_refresh_s` with a time-to-live of three intervals (worker.presence). A worker that stops cleanly
deletes its key; one that dies stops refreshing and its key expires, so a key that exists is a live
worker. Torch-free: the API reads it to
route jobs (backend.dispatch) and for GET /workers.
"""

from __future__ import annotations

import json
import re
from typing import Any

from backend import broker
from backend.queue import DEFAULT_BROKER_URL  # the same Redis Celery falls back to
from backend.settings import Settings

KEY = "prunescope:workers:"
TTL_INTERVALS = 3


def key(prefix: str, record: dict[str, Any]) -> str:
    return f"{prefix}{KEY}{record['hostname']}:{record['pid']}"


def client_for(settings: Settings):
    return broker.shared_client(settings.broker_url or DEFAULT_BROKER_URL)


def publish(client, prefix: str, record: dict[str, Any], ttl_s: float) -> None:
    client.set(key(prefix, record), json.dumps(record), px=max(int(ttl_s * 1000), 1))


def remove(client, prefix: str, record: dict[str, Any]) -> None:
    client.delete(key(prefix, record))


def live_workers(settings: Settings) -> list[dict[str, Any]]:
    """Every registered worker, sorted by hostname and pid. Raises redis errors when Redis is down."""
    client = client_for(settings)
    pattern = _glob_escape(settings.redis_prefix + KEY) + "*"
    keys = sorted(client.scan_iter(match=pattern, count=500))
    records = []
    for raw in client.mget(keys) if keys else []:
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            records.append(json.loads(raw))
        except ValueError:
            continue
    return sorted(records, key=lambda r: (str(r.get("hostname")), int(r.get("pid") or 0)))


def live_queues(settings: Settings) -> set[str]:
    return {q for record in live_workers(settings) for q in record.get("queues", [])}


def _glob_escape(text: str) -> str:
    """A configured prefix may contain glob characters; SCAN MATCH must take them literally."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)
