"""Result files: every evaluation result is JSON with a manifest, written atomically.

The manifest says what produced the numbers: a content hash of each model's weights, the data source
and split, the seed, and the library versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path


def model_hash(model) -> str:
    """SHA-256 over parameter/buffer names, shapes, dtypes and bytes (state_dict order)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in ("prunescope", "torch", "transformers", "lm_eval", "datasets", "tokenizers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def make_manifest(
    *, models: dict | None = None, data: str | dict | None = None, seed: int | None = None, **extra
) -> dict:
    """`models` maps a role ("model", "teacher", "student") to a module (hashed) or a ready string."""
    hashes = {}
    for role, model in (models or {}).items():
        hashes[role] = model if isinstance(model, str) else model_hash(model)
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"kind": kind, "result": result, "manifest": manifest}, indent=2, default=str))
    os.replace(tmp, path)
    return path


def read_result(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())
