"""The notifier's shutdown: a listener stopped as asked is quiet, one that had crashed is logged (its
exception was swallowed, so nothing said why SSE streams stopped waking)."""

from __future__ import annotations

import asyncio
import logging

from backend.notifier import Notifier


def stop_with(listener, caplog) -> list[logging.LogRecord]:
    async def run() -> None:
        notifier = Notifier(None)
        notifier._task = asyncio.create_task(listener())
        await asyncio.sleep(0)  # the listener runs (a crashing one fails) before the shutdown
        await notifier.stop()

    with caplog.at_level(logging.DEBUG, logger="backend.notifier"):
        asyncio.run(run())
    return caplog.records


def test_stopping_a_crashed_listener_logs_its_exception(caplog):
    async def crashed() -> None:
        raise RuntimeError("redis went away")

    (record,) = stop_with(crashed, caplog)
    assert record.levelno == logging.ERROR and "listener had failed" in record.getMessage()
    assert "redis went away" in caplog.text  # with its traceback


def test_stopping_a_running_listener_is_quiet(caplog):
    async def listening() -> None:
        await asyncio.sleep(60)

    assert stop_with(listening, caplog) == []
