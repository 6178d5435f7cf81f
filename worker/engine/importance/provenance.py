"""The manifest of an importance run: what was measured, on which weights, with which code."""

from __future__ import annotations

from datetime import datetime, timezone

from torch import nn

from worker.engine.dtypes import model_dtype_name

# The weights hash and library versions are defined once, in fingerprint (re-exported here for the
# importance code that has always imported them from this module).
from worker.engine.fingerprint import WeightsHasher, library_versions, weights_sha256
from worker.engine.spec import ArchSpec

__all__ = ["WeightsHasher", "library_versions", "run_manifest", "weights_sha256"]


def run_manifest(
    model: nn.Module, spec: ArchSpec, *, metadata: dict, hash_weights: bool = True, **fields
) -> dict:
    config = model.config
    return {
        "model": metadata.get("model") or getattr(config, "_name_or_path", "") or "",
        "revision": getattr(config, "_commit_hash", None),
        "weights_sha256": weights_sha256(model) if hash_weights else None,
        "arch": spec.model_dump(exclude={"layers"}),
        "dtype": model_dtype_name(model),
        "device": str(next(model.parameters()).device),
        "accumulation_dtype": "float32",
        "default_aggregation": {"batch": "l2", "seq": "mean"},
        "half_rule": "sample i -> half i % 2",
        "libraries": library_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **fields,
        **{k: v for k, v in metadata.items() if k != "model"},
    }
