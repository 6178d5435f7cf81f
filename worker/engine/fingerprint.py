"""What identifies a result: the exact weights it was computed on and the code that computed it.

The one definition of both for every record the engine writes (importance manifests, evaluation and
distillation results, saved students, the demo teacher's card), so two records can be matched: an
importance manifest's `weights_sha256` equals an evaluation's `model_hashes` entry for the same weights.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform

import torch
from torch import nn

from worker.engine.dtypes import torch_dtype

LIBRARIES = (
    "prunescope",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "scipy",
    "datasets",
    "lm_eval",
)


def weights_sha256(model: nn.Module, dtype: torch.dtype | str | None = None) -> str:
    """SHA-256 over every parameter's name, dtype, shape and raw bytes (tied weights once).

    Identifies the exact weights, whatever path or hub revision they came from. Buffers are not
    hashed: they are derived from the config (rotary frequencies), not learned. `dtype`: the hash of
    the weights as another run loaded them (a float32 copy of bfloat16 weights hashes as those), one
    tensor cast at a time.
    """
    cast = torch_dtype(dtype)
    digest = hashlib.sha256()
    for name, param in _each_parameter(model):
        hash_tensor(digest, name, param if cast is None else param.to(cast))
    return digest.hexdigest()


def _each_parameter(model: nn.Module):
    """(name, detached tensor) of every parameter, a tied one once."""
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) not in seen:
            seen.add(id(param))
            yield name, param.detach()


def hash_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    """Feed one named tensor to `digest` as `weights_sha256` does (streamed and out-of-core hashes too)."""
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(tensor.contiguous().view(torch.uint8).cpu().numpy())  # buffer, no copy


def weights_sample_sha256(model: nn.Module, per_tensor: int = 64) -> str:
    """A cheap identity of a model's weights: each parameter's name and shape and `per_tensor` evenly
    spaced values, rounded to bfloat16 (so a float32 and a bfloat16 copy of the same weights agree).

    For a resume check, where `weights_sha256` would read every byte of a 70B teacher each time."""
    digest = hashlib.sha256()
    for name, param in _each_parameter(model):
        flat = param.reshape(-1)
        step = max(1, flat.numel() // per_tensor)
        sample = flat[::step][:per_tensor].to(torch.bfloat16).view(torch.int16).cpu().numpy()
        digest.update(f"{name}|{tuple(param.shape)}|".encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()


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
            hash_tensor(self.digest, name, tensor)
            self.position += 1
        else:
            self.waiting[name] = tensor.detach().cpu()
        while self.position < len(self.order) and self.order[self.position] in self.waiting:
            name = self.order[self.position]
            hash_tensor(self.digest, name, self.waiting.pop(name))
            self.position += 1

    def hexdigest(self) -> str:
        if self.position < len(self.order):
            raise RuntimeError(f"weights hash: {self.order[self.position]} was never loaded")
        return self.digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Python's and each library's version (None: not installed); a fresh dict each call."""
    return dict(_versions())


@functools.cache
def _versions() -> tuple[tuple[str, str | None], ...]:
    versions: list[tuple[str, str | None]] = [("python", platform.python_version())]
    for name in LIBRARIES:
        try:
            versions.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            versions.append((name, None))
    return tuple(versions)
