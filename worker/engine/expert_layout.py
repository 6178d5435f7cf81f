"""Mixture-of-experts weights on disk vs in memory.

transformers 5 holds a layer's experts as fused 3-D parameters (`experts.gate_up_proj` [E, 2F, D],
`experts.down_proj` [E, D, F]) but `save_pretrained` writes the hub's per-expert layout, which
`from_pretrained` fuses again on load: Qwen3-MoE `mlp.experts.{e}.{gate,up,down}_proj.weight`, Mixtral
`block_sparse_moe.experts.{e}.{w1,w3,w2}.weight` (gate, up, down) and `block_sparse_moe.gate.weight`.
Our loader (non-uniform students, `loading._load_layers_format`) reads safetensors directly, so it
fuses them here, the same way.
"""

from __future__ import annotations

import re

import torch

from worker.engine.adapters import Adapter


def fuse_expert_weights(adapter: Adapter, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with every layer's per-expert tensors replaced by the fused in-memory parameters."""
    if not adapter.moe:
        return state
    disk = re.escape(adapter.disk_moe_name)
    gate_name, up_name, down_name = adapter.disk_expert_names
    pattern = re.compile(rf"^(.*\.)({disk})\.experts\.(\d+)\.(\w+)\.weight$")
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for name, tensor in state.items():
        match = pattern.match(name)
        if match:
            prefix, _, expert, part = match.groups()
            experts.setdefault(prefix, {}).setdefault(int(expert), {})[part] = tensor
        elif name.endswith(f".{adapter.disk_moe_name}.{adapter.router_name}.weight"):
            prefix = name[: -len(f"{adapter.disk_moe_name}.{adapter.router_name}.weight")]
            out[f"{prefix}{adapter.mlp_name}.{adapter.router_name}.weight"] = tensor
        else:
            out[name] = tensor
    for prefix, by_expert in experts.items():
        order = sorted(by_expert)
        if order != list(range(len(order))):
            raise ValueError(f"{prefix}: experts {order} on disk, expected 0..{len(order) - 1}")
        parts = [by_expert[e] for e in order]
        base = f"{prefix}{adapter.mlp_name}.{adapter.experts_name}."
        out[base + "gate_up_proj"] = torch.stack([torch.cat((p[gate_name], p[up_name])) for p in parts])
        out[base + "down_proj"] = torch.stack([p[down_name] for p in parts])
    return out


__all__ = ["fuse_expert_weights"]
