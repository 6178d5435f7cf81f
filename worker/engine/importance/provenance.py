"""The manifest of an importance run: what was measured, on which weights, with which code."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from datetime import datetime, timezone

import torch
from torch import nn

from worker.engine.spec import ArchSpec

LIBRARIES = ("prunescope", "torch", "transformers", "numpy", "safetensors", "scipy")


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over every parameter's name, dtype, shape and raw bytes (tied weights once).

    Identifies the exact weights the scores belong to, whatever path or hub revision they came from.
    """
    digest = hashlib.sha256()
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        _hash_tensor(digest, name, param.detach())
    return digest.hexdigest()


def _hash_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(tensor.contiguous().view(torch.uint8).cpu().numpy())  # buffer, no copy


class WeightsHasher:
    """`weights_sha256` of a model whose parameters are loaded one module at a time (a layer-streamed
    pass): the same digest, fed as the tensors arrive. Parameters are hashed in `named_parameters`
    order; one that arrives before its turn waits on the host (never happens when modules are
    loaded in the model's own order: embeddings, layers, final norm, head)."""

    def __init__(self, model: nn.Module):
        self.order = [name for name, _ in model.named_parameters()]  # tied weights once
        self.digest = hashlib.sha256()
        self.position = 0
        self.waiting: dict[str, torch.Tensor] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self.position < len(self.order) and name == self.order[self.position]:
            _hash_tensor(self.digest, name, tensor)
            self.position += 1
        else:
            self.waiting[name] = tensor.detach().cpu()
        while self.position < len(self.order) and self.order[self.position] in self.waiting:
            name = self.order[self.position]
            _hash_tensor(self.digest, name, self.waiting.pop(name))
            self.position += 1

    def hexdigest(self) -> str:
        if self.position < len(self.order):
            raise RuntimeError(f"weights hash: {self.order[self.position]} was never loaded")
        return self.digest.hexdigest()


@functools.cache
def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def run_manifest(
    model: nn.Module, spec: ArchSpec, *, metadata: dict, hash_weights: bool = True, **fields
) -> dict:
    config = model.config
    return {
        "model": metadata.get("model") or getattr(config, "_name_or_path", "") or "",
        "revision": getattr(config, "_commit_hash", None),
        "weights_sha256": weights_sha256(model) if hash_weights else None,
        "arch": spec.model_dump(exclude={"layers"}),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": str(next(model.parameters()).device),
        "accumulation_dtype": "float32",
        "default_aggregation": {"batch": "l2", "seq": "mean"},
        "half_rule": "sample i -> half i % 2",
        "libraries": dict(library_versions()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **fields,
        **{k: v for k, v in metadata.items() if k != "model"},
    }
