"""Mixture-of-experts weights on disk vs in memory.

transformers 5 holds a layer's experts as fused 3-D parameters (`experts.gate_up_proj` [E, 2F, D],
`experts.down_proj` [E, D, F]) but `save_pretrained` writes the hub's per-expert layout, which
`from_pretrained` fuses again on load: Qwen3-MoE `mlp.experts.{e}.{gate,up,down}_proj.weight`, Mixtral
`block_sparse_moe.experts.{e}.{w1,w3,w2}.weight` (gate, up, down) and `block_sparse_moe.gate.weight`.
Our loader (non-uniform students, `loading._load_layers_format`) reads safetensors directly, so it
fuses them here, the same way; out-of-core surgery reads fused tensors (or the kept experts' part of
them) straight from the per-expert files through `FusedExpertReader`.
"""

from __future__ import annotations

import re

import torch

from worker.engine.adapters import Adapter
from worker.engine.checkpoint_reader import MissingTensor


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


_FUSED = re.compile(r"^(.*\.)([^.]+)\.([^.]+)\.(gate_up_proj|down_proj)$")


class FusedExpertReader:
    """The model's fused expert tensors (and router), read from a checkpoint in the per-expert layout.

    `reader` is a CheckpointReader (`names()`, `shape`, `read(name, keep)`); `read(name, dims)` takes the
    per-dimension selection of a cut map (kept experts first), so only the kept experts' tensors and,
    within them, the kept hidden columns are read."""

    def __init__(self, reader, adapter: Adapter):
        self.reader, self.adapter = reader, adapter
        self.names = set(reader.names())

    def _disk(self, prefix: str, expert: int, part: str) -> str:
        a = self.adapter
        for p in (prefix, prefix.partition(".")[2]):  # base-model checkpoints omit the first prefix
            name = f"{p}{a.disk_moe_name}.experts.{expert}.{part}.weight"
            if name in self.names:
                return name
        raise MissingTensor(
            f"the checkpoint has no tensor {prefix}{a.disk_moe_name}.experts.{expert}.{part}.weight"
        )

    def _parse(self, name: str) -> tuple[str, str] | None:
        match = _FUSED.match(name)
        a = self.adapter
        if not match or (match.group(2), match.group(3)) != (a.mlp_name, a.experts_name):
            return None
        return match.group(1), match.group(4)

    def router_name(self, name: str) -> str | None:
        a = self.adapter
        suffix = f"{a.mlp_name}.{a.router_name}.weight"
        if not name.endswith(suffix):
            return None
        prefix = name[: -len(suffix)]
        for p in (prefix, prefix.partition(".")[2]):
            disk = f"{p}{a.disk_moe_name}.{a.router_name}.weight"
            if disk in self.names:
                return disk
        return None

    def covers(self, name: str) -> bool:
        return self._parse(name) is not None

    def _count(self, prefix: str) -> int:
        e = 0
        while True:
            try:
                self._disk(prefix, e, self.adapter.disk_expert_names[2])
            except MissingTensor:
                return e
            e += 1

    def shape(self, name: str) -> tuple[int, ...]:
        prefix, kind = self._parse(name)
        gate, _, down = self.adapter.disk_expert_names
        E = self._count(prefix)
        if kind == "gate_up_proj":
            f, d = self.reader.shape(self._disk(prefix, 0, gate))
            return (E, 2 * f, d)
        d, f = self.reader.shape(self._disk(prefix, 0, down))
        return (E, d, f)

    def read(self, name: str, dims=()) -> torch.Tensor:
        prefix, kind = self._parse(name)
        dims = tuple(dims) + (None,) * (3 - len(dims))
        experts = dims[0] if dims[0] is not None else range(self._count(prefix))
        gate, up, down = self.adapter.disk_expert_names
        parts = []
        for e in experts:
            if kind == "gate_up_proj":  # rows [gate | up]; dims[1] (rows) is never cut by the cut map
                rows = [self.reader.read(self._disk(prefix, e, p), (None, dims[2])) for p in (gate, up)]
                part = torch.cat(rows)
                if dims[1] is not None:
                    part = part.index_select(0, torch.as_tensor(dims[1], dtype=torch.long))
            else:
                part = self.reader.read(self._disk(prefix, e, down), (dims[1], dims[2]))
            parts.append(part)
        return torch.stack(parts)


__all__ = ["FusedExpertReader", "fuse_expert_weights"]
