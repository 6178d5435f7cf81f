"""Measured prefill / decode speed of a candidate's shape, timed once per shape and device.

A shape is timed on a model built from the teacher's config with the candidate's sizes and random
weights (speed does not depend on the values; no cut is needed), with the throughput benchmark's
own measurement (worker/engine/evaluation/throughput.measure_model). Results are kept in a JSON file
keyed by shape, dtype, device, batch, context and decode steps, so a second search (or the API job
after the CLI) reuses them; `LatencyCache.hits` counts the reuses.
"""

from __future__ import annotations

import copy
import json
import os
import platform
from pathlib import Path

import torch
from torch import nn

from worker.engine import atomic
from worker.engine.adapters import adapter_for
from worker.engine.dtypes import dtype_name
from worker.engine.env import latency_cache
from worker.engine.evaluation.throughput import measure_model
from worker.engine.spec import ArchSpec

REPEATS = 3


def default_cache_path() -> Path:
    return latency_cache()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return (
        f"{device.type}:{platform.machine()}:{platform.processor() or 'cpu'}:{torch.get_num_threads()}threads"
    )


def shape_key(
    spec: ArchSpec, dtype: torch.dtype, device: torch.device, batch: int, context: int, new_tokens: int
) -> str:
    return "|".join(
        str(x)
        for x in (
            spec.model_type,
            f"L{spec.num_layers}",
            f"H{spec.num_heads}",
            f"KV{spec.num_kv_heads}",
            f"hd{spec.head_dim}",
            f"F{spec.intermediate_size}",
            f"D{spec.hidden_size}",
            f"V{spec.vocab_size}",
            dtype_name(dtype),
            device_name(device),
            f"b{batch}",
            f"c{context}",
            f"n{new_tokens}",
        )
    )


def random_model(teacher: nn.Module, spec: ArchSpec, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A model of the teacher's family with `spec`'s (uniform) sizes and random weights."""
    from transformers import AutoModelForCausalLM

    adapter = adapter_for(teacher)
    config = copy.deepcopy(teacher.config)
    config.hidden_size = spec.hidden_size
    config.num_hidden_layers = spec.num_layers
    config.num_attention_heads = spec.num_heads
    if hasattr(config, "num_key_value_heads"):
        config.num_key_value_heads = spec.num_kv_heads
    config.head_dim = spec.head_dim
    setattr(config, adapter.intermediate_field, spec.intermediate_size)
    for field in ("layer_types", "sliding_window_pattern_per_layer", "no_rope_layers"):
        values = getattr(config, field, None)
        if isinstance(values, list):  # one entry per layer: the first ones (the pattern repeats)
            setattr(config, field, values[: spec.num_layers])
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


class LatencyCache:
    """Timings by shape key, in a JSON file (written atomically after each new measurement)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path).expanduser() if path else default_cache_path()
        self.hits = 0
        self.measured = 0
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def timing(
        self, teacher: nn.Module, spec: ArchSpec, *, batch: int, context: int, new_tokens: int, dtype=None
    ) -> dict:
        """{decode_s_per_token, prefill_s, decode_tokens_per_s, prefill_tokens_per_s, batch, context,
        device, cached} for a model of `spec`'s shape on the teacher's device."""
        device = next(teacher.parameters()).device
        dtype = dtype or next(teacher.parameters()).dtype
        key = shape_key(spec, dtype, device, batch, context, new_tokens)
        if key in self.entries:
            self.hits += 1
            return {**self.entries[key], "cached": True}
        model = random_model(teacher, spec, dtype, device)
        run = measure_model(
            model, batch_sizes=(batch,), prompt_len=context, new_tokens=new_tokens, repeats=REPEATS
        )
        row = run["runs"][0]
        del model
        entry = {
            "decode_s_per_token": row["latency_per_token_s"],
            "decode_tokens_per_s": row["decode_tokens_per_s"],
            "prefill_s": batch * context / row["prefill_tokens_per_s"],
            "prefill_tokens_per_s": row["prefill_tokens_per_s"],
            "batch": batch,
            "context": context,
            "new_tokens": new_tokens,
            "device": device_name(device),
        }
        self.entries[key] = entry
        self.measured += 1
        self._save()
        return {**entry, "cached": False}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.entries, indent=1, sort_keys=True)
        atomic.write_file(self.path, lambda tmp: tmp.write_text(text))
