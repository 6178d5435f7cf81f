"""Dtypes by name, as flags, configs and the engine's records write them ("bfloat16"), and back: one
spelling for every record (manifests, results, hashes) and one parser for every flag."""

from __future__ import annotations

import torch
from torch import nn

# safetensors' dtype codes (its format spec) -> torch dtypes, and back; ones this torch lacks are left out.
SAFETENSORS_DTYPES = {
    code: getattr(torch, name)
    for code, name in {
        "F64": "float64",
        "F32": "float32",
        "F16": "float16",
        "BF16": "bfloat16",
        "I64": "int64",
        "I32": "int32",
        "I16": "int16",
        "I8": "int8",
        "U64": "uint64",
        "U32": "uint32",
        "U16": "uint16",
        "U8": "uint8",
        "BOOL": "bool",
        "F8_E4M3": "float8_e4m3fn",
        "F8_E5M2": "float8_e5m2",
    }.items()
    if hasattr(torch, name)
}
SAFETENSORS_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}


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


def config_dtype(config):
    """The dtype a transformers config states, or None: `dtype`, or `torch_dtype` as configs written
    before transformers 4.56 name it (a torch.dtype or a name, as the config holds it)."""
    return getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)


def model_dtype_name(model: nn.Module) -> str:
    """The name of the dtype a model's weights are in (its first parameter's)."""
    return dtype_name(next(model.parameters()).dtype)
