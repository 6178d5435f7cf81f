"""Which queue a job goes to, and which jobs and queues a worker's device can serve (torch-free; part
of the queue contract with backend.queue).

Three queues: `default` (light jobs: reading a teacher's architecture), `gpu` (heavy jobs for CUDA
workers) and `cpu` (heavy jobs for CPU workers). A heavy job's device requirement is "auto" (GPU when a
live worker consumes `gpu`, else CPU), "cuda" or "cpu". The API routes with `route`, the worker CLI
checks its queues with `check_queues`, and a task refuses a job its device cannot serve (`can_serve`),
so one set of rules holds at every layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

DEFAULT, GPU, CPU = "default", "gpu", "cpu"
QUEUES = (DEFAULT, GPU, CPU)
HEAVY_KINDS = frozenset({"importance", "prune", "preview", "distill", "evaluate", "benchmark", "search"})
Requirement = Literal["auto", "cuda", "cpu"]
REQUIREMENTS = ("auto", "cuda", "cpu")
START_CUDA_WORKER = "start one with `prunescope worker --device cuda:0`"


class NoWorkerForDevice(LookupError):
    """A job requires a device that no live worker serves (the API answers 409)."""


def device_type(device: str) -> str:
    """ "cuda" for cuda / cuda:N, else "cpu"."""
    return "cuda" if device.split(":", 1)[0] == "cuda" else "cpu"


def requirement_of(params: dict | None) -> str:
    """A job's device requirement as stored in its params (jobs from before the field: "auto")."""
    return (params or {}).get("device") or "auto"


def default_queues(device: str) -> list[str]:
    return [GPU, DEFAULT] if device_type(device) == "cuda" else [CPU, DEFAULT]


def check_queues(device: str, queues: Iterable[str]) -> list[str]:
    """The queues a worker on `device` may consume, or ValueError naming the one it must not."""
    names = [q.strip() for q in queues if q.strip()]
    if not names:
        raise ValueError("no queue given: use default, gpu or cpu")
    own = GPU if device_type(device) == "cuda" else CPU
    for name in names:
        if name not in QUEUES:
            raise ValueError(f"unknown queue {name!r}: use default, gpu or cpu")
        if name not in (DEFAULT, own):
            raise ValueError(
                f"a {device} worker cannot serve the {name!r} queue (its jobs need "
                f"{'CUDA' if name == GPU else 'a CPU worker'}); use --queues {own},{DEFAULT}"
            )
    return list(dict.fromkeys(names))


def can_serve(device: str, requirement: str) -> bool:
    return requirement == "auto" or requirement == device_type(device)


def route(kind: str, requirement: str, live_queues: Iterable[str]) -> str:
    """The queue for a job of `kind` requiring `requirement`, given the queues live workers consume.

    Raises `NoWorkerForDevice` for a CUDA job when no live worker consumes `gpu` (it would wait forever
    on a CPU-only deployment). A CPU job, or an "auto" job with no worker at all, is queued on `cpu`
    and waits for a CPU worker.
    """
    if kind not in HEAVY_KINDS:
        return DEFAULT
    if requirement not in REQUIREMENTS:
        raise ValueError(f"unknown device requirement {requirement!r}: use auto, cuda or cpu")
    gpu_served = GPU in set(live_queues)
    if requirement == "cuda" and not gpu_served:
        raise NoWorkerForDevice(f"no live worker serves cuda: {START_CUDA_WORKER}")
    if requirement == "cuda" or (requirement == "auto" and gpu_served):
        return GPU
    return CPU
