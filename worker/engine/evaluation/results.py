"""Result files: every evaluation result is JSON with a manifest, written atomically.

The manifest says what produced the numbers: a content hash of each model's weights, the data source
and split, the seed, and the library versions.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from worker.engine import atomic
from worker.engine.fingerprint import library_versions, weights_sha256


def make_manifest(
    *, models: dict | None = None, data: str | dict | None = None, seed: int | None = None, **extra
) -> dict:
    """`models` maps a role ("model", "teacher", "student") to a module or a ready hash string; a module
    is hashed with `fingerprint.weights_sha256`, so the hash matches its importance manifest's."""
    hashes = {}
    for role, model in (models or {}).items():
        hashes[role] = model if isinstance(model, str) else weights_sha256(model)
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_hashes": hashes,
        "data": data,
        "seed": seed,
        "versions": library_versions(),
        **extra,
    }


def write_result(path: str | os.PathLike, kind: str, result, manifest: dict) -> Path:
    """Write {"kind", "result", "manifest"} to `path` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"kind": kind, "result": result, "manifest": manifest}, indent=2, default=str)
    return atomic.write_file(path, lambda tmp: tmp.write_text(text))


def read_result(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())
