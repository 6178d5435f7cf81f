"""Fitting a job on a worker: the specs the API stores, what a worker's device may hold
(`usable_bytes`), and the distillation settings to try when a job does not fit."""

from __future__ import annotations

from worker.engine.memplan.units import CUDA_RESERVE_BYTES, CUDA_RESERVE_FRACTION
from worker.engine.spec import ArchSpec


def spec_from_summary(summary: dict) -> ArchSpec:
    """An ArchSpec from `ArchSpec.summary()` (what the API stores for teachers and students)."""
    return ArchSpec.model_validate(
        {**summary, "layers": None if summary.get("uniform", True) else summary["layers"]}
    )


def usable_bytes(worker_memory: dict) -> int:
    """What a job may use on one worker's device, from its registry entry's `memory`:
    CUDA: the device's total minus a reserve (context, fragmentation; a worker runs one job per
    device); CPU: MemAvailable at the worker's last heartbeat (RAM is shared with everything else)."""
    if worker_memory.get("kind") == "cuda":
        total = int(worker_memory["total_bytes"])
        return max(0, int(total * (1 - CUDA_RESERVE_FRACTION)) - CUDA_RESERVE_BYTES)
    return int(worker_memory.get("free_bytes") or 0)


def distill_candidates(settings: dict) -> list[dict]:
    """Settings to try, nearest first: checkpointing on, bf16 weights, both; then halved batches."""
    base_batch = int(settings["batch_size"])
    toggles = [{}]
    if not settings.get("gradient_checkpointing"):
        toggles.append({"gradient_checkpointing": True})
    if settings.get("weights_dtype", "float32") == "float32":
        toggles.append({"weights_dtype": "bfloat16"})
        if not settings.get("gradient_checkpointing"):
            toggles.append({"gradient_checkpointing": True, "weights_dtype": "bfloat16"})
    batches = [base_batch]
    while batches[-1] > 1:
        batches.append(max(1, batches[-1] // 2))
    out = []
    for halvings, b in enumerate(batches):
        for t in toggles:
            change = dict(t)
            if b != base_batch:
                change["batch_size"] = b
            cost = len(t) + halvings
            out.append((cost, -b, len(t), change))
    out.sort(key=lambda c: c[:3])
    return [c[3] for c in out if c[3]]


def describe_change(change: dict) -> str:
    return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in change.items())
