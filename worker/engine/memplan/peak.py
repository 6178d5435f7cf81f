"""What every job's estimator shares: the peak's shape (`job_peak`) and one decoder layer's weights."""

from __future__ import annotations

from worker.engine.spec import ArchSpec


def layer_weight_bytes(spec: ArchSpec, weight: int) -> int:
    """Bytes of the largest decoder layer's weights (one layer gathered, or streamed, at a time)."""
    return max(spec.layer_params(s) for s in spec.layer_shapes()) * weight


def job_peak(parts: dict[str, int], **settings) -> dict:
    """A job's peak as every estimator answers it: {"total", "parts", "settings"}."""
    parts = {k: int(v) for k, v in parts.items()}
    return {"total": sum(parts.values()), "parts": parts, "settings": settings}
