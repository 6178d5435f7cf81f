"""Wakes SSE streams when a worker (or the API) publishes an event on Redis.

One Redis subscription per API process fans out to the streams waiting for that job or teacher.
Streams also poll every few seconds, so a lost wake-up (Redis restart) delays an event but never drops it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict

from backend import broker

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, broker_url: str | None, prefix: str = ""):
        self.broker_url = broker_url
        self.prefix = prefix
        self._waiters: dict[tuple[str, int], set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        if self.broker_url:
            self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass  # the cancel above: the listener stopped as asked
            except Exception:  # it had crashed: shutting down must not hide why SSE wake-ups stopped
                log.exception("the notifier's Redis listener had failed")

    async def wait(self, key: tuple[str, int], timeout: float) -> bool:
        event = asyncio.Event()
        self._waiters[key].add(event)
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._waiters[key].discard(event)
            if not self._waiters[key]:
                self._waiters.pop(key, None)

    def notify(self, job_id: int | None, teacher_id: int | None) -> None:
        for key in (("job", job_id), ("teacher", teacher_id)):
            for event in self._waiters.get(key, ()):
                event.set()

    async def _listen(self) -> None:
        while True:
            client = broker.async_subscriber(self.broker_url)
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(broker.channel(self.prefix))
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    data = json.loads(message["data"])
                    self.notify(data.get("job_id"), data.get("teacher_id"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect; streams keep polling meanwhile
                log.warning("event subscription lost (%s); retrying", exc)
                await asyncio.sleep(1.0)
            finally:  # each retry's client is closed, not leaked
                await client.aclose()
