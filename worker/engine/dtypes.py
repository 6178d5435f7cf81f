"""Dtypes by name, as flags, configs and the engine's records write them ("bfloat16"), and back: one
spelling for every record (manifests, results, hashes) and one parser for every flag."""

from __future__ import annotations

import torch
from torch import nn


def torch_dtype(dtype) -> torch.dtype | None:
    """torch.bfloat16 for "bfloat16" (or a torch.dtype, or None as is); a ValueError names a bad one."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        value = getattr(torch, str(dtype))
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype '{dtype}'; use float32, bfloat16 or float16")
    return value


def dtype_name(dtype) -> str:
    """ "bfloat16" for torch.bfloat16 (a config's "torch.bfloat16" or "bfloat16" alike)."""
    return str(dtype).removeprefix("torch.")


def model_dtype_name(model: nn.Module) -> str:
    """The name of the dtype a model's weights are in (its first parameter's)."""
    return dtype_name(next(model.parameters()).dtype)
