"""One way to reach Redis: every client comes from `backend.broker` (one pooled sync client per URL per
process, the subscriber with the same address and connect timeout), and a wake-up published through it
reaches the notifier's subscription on a real Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from backend import broker, events, fleet
from backend.notifier import Notifier
from backend.settings import Settings


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/3", "redis+socket:///tmp/prunescope-test.sock"])
def test_subscriber_and_clients_share_address_and_timeouts(url):
    sync = broker.redis_client(url).connection_pool.connection_kwargs
    sub = broker.async_subscriber(url).connection_pool.connection_kwargs
    for key in ("host", "port", "db", "path", "socket_connect_timeout"):
        assert sub.get(key) == sync.get(key), key
    assert sync["socket_connect_timeout"] == broker.CONNECT_TIMEOUT_S
    assert sync["socket_timeout"] == broker.COMMAND_TIMEOUT_S and sub.get("socket_timeout") is None


def test_events_and_fleet_share_the_process_client_and_wake_the_notifier(redis_url):
    settings = Settings(broker_url=redis_url, redis_prefix=f"pstest-{uuid.uuid4().hex[:8]}:")
    broker.shared_client.cache_clear()
    events.publish_wakeup(settings, 7, None)  # nobody listens yet: it only makes the client
    assert broker.shared_client.cache_info().misses == 1  # events took the process's shared client
    assert fleet.client_for(settings) is broker.shared_client(redis_url)

    async def round_trip() -> bool:
        notifier = Notifier(settings.broker_url, settings.redis_prefix)
        await notifier.start()
        try:
            for _ in range(50):  # until the subscription is live, then one wake-up must arrive
                waiting = asyncio.create_task(notifier.wait(("job", 7), timeout=0.2))
                await asyncio.sleep(0.05)
                events.publish_wakeup(settings, 7, None)
                if await waiting:
                    return True
            return False
        finally:
            await notifier.stop()

    assert asyncio.run(round_trip())
    assert broker.shared_client.cache_info().misses == 1
