"""Which queue a new (or resumed) job goes to: backend.routing's rules applied to the live workers of
backend.fleet. Creating and sending the job is backend.lifecycle's."""

from __future__ import annotations

from typing import Any

from backend import fleet
from backend.errors import Conflict, Unavailable
from backend.routing import HEAVY_KINDS, NoWorkerForDevice, requirement_of, route
from backend.settings import Settings


def choose_queue(settings: Settings, kind: str, params: dict[str, Any]) -> str:
    """Call it before writing anything: Conflict when the job needs a device no live worker serves,
    Unavailable when the registry (Redis) cannot be read."""
    live: set[str] = set()
    if kind in HEAVY_KINDS:
        try:
            live = fleet.live_queues(settings)
        except Exception as exc:
            raise Unavailable(f"could not read the worker registry: broker unreachable ({exc})") from exc
    try:
        return route(kind, requirement_of(params), live)
    except NoWorkerForDevice as exc:
        raise Conflict(str(exc), field=("device",), nearby=("cpu", "auto")) from exc  # loc names the field
