"""Which part of each checkpoint tensor a prune plan keeps: the "cut map".

For every tensor name of the teacher's state dict, the cut map gives the student's name for it
(layers renumbered after drops; tensors of dropped layers are absent) and, per dimension, the indices
kept (None: the whole dimension). It is derived only from the family adapter (where parts live and
how projections are laid out), the teacher's `ArchSpec` and an explicit plan, so it needs no weights.
Both surgeries use it: the in-memory one (surgery.apply_plan) slices the model's parameters with it,
the out-of-core one reads exactly these slices from the checkpoint. A new family needs a rule here
only if it has a tensor that is cut in a way the adapter's fields do not already describe.

Layouts (Linear weights are [out, in], GPT-2 Conv1D weights [in, out]; biases follow `out`):
- separate q/k/v: q rows = kept heads' head_dim blocks, k/v rows = kept KV groups' blocks;
- fused_rows (Phi-3 qkv_proj): rows [q (H*hd) | k (G*hd) | v (G*hd)], each part cut as above;
- fused_conv1d (GPT-2 c_attn): columns [q | k | v] with one KV head per query head;
- gated / plain MLP: kept neurons are rows of each input projection and columns of the output one;
  gated_fused (Phi-3 gate_up_proj): rows [gate (F) | up (F)];
- mixture of experts: the router `gate` [E, D] keeps the kept experts' rows (Qwen2-MoE's shared expert
  and its [1, D] gate lose hidden channels only); the fused experts
  gate_up_proj [E, 2F, D] and down_proj [E, D, F] keep the kept experts along dim 0 and, per kept
  expert, its own kept channels ([gate | up] rows, down columns): a per-expert selection that one
  index set per dimension cannot state, held in `TensorCut.per_expert` (applied by `take` / `finish`);
- hidden channels: columns of every input projection and embedding, rows of every output
  projection, and norm vectors. Per-head q/k norms act on head_dim and are kept whole; full-width
  ones (OLMo 2) have one weight per q / k row and are cut like those rows.
A tensor the map does not know is kept whole; the out-of-core writer checks every shape against the
student that `apply_plan` builds on the meta device (the modules' own widths), so an unknown tensor
that should have been cut is an error, never a silent copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.engine.adapters import Adapter
from worker.engine.plan import PrunePlan, kept_experts, kept_layers, layer_head_removal
from worker.engine.spec import ArchSpec

Keep = tuple[int, ...] | None  # indices kept along one dimension; None: all of them


@dataclass(frozen=True)
class TensorCut:
    source: str  # the teacher's tensor name
    dims: tuple[Keep, ...]  # per dimension, leading dims first; missing trailing dims are kept whole
    # Expert tensors whose kept experts keep different channels: after `dims`, kept expert i (dim 0)
    # keeps indices per_expert[i] along `per_expert_dim` (all of one length).
    per_expert: tuple[tuple[int, ...], ...] | None = None
    per_expert_dim: int = 1

    @property
    def keep(self) -> tuple[Keep, ...]:
        """The per-dimension selection, for readers that select dimension by dimension; refused when a
        per-expert selection follows (such a reader would return the experts' channels uncut)."""
        if self.per_expert is not None:
            raise NotImplementedError(
                f"{self.source}: a per-expert channel cut; read `dims` and apply `finish` to the result"
            )
        return self.dims

    def shape(self, source_shape: tuple[int, ...]) -> tuple[int, ...]:
        keep = self.dims + (None,) * (len(source_shape) - len(self.dims))
        shape = [n if k is None else len(k) for n, k in zip(source_shape, keep, strict=True)]
        if self.per_expert is not None:
            shape[self.per_expert_dim] = len(self.per_expert[0])
        return tuple(shape)

    def is_identity(self) -> bool:
        return self.per_expert is None and all(k is None for k in self.dims)

    def finish(self, tensor):
        """Apply the per-expert selection to a tensor already cut to `dims` (torch, imported lazily)."""
        if self.per_expert is None:
            return tensor
        import torch

        index = torch.as_tensor(self.per_expert, dtype=torch.long, device=tensor.device)  # [E', n]
        shape = [1] * tensor.dim()
        shape[0], shape[self.per_expert_dim] = index.shape
        index = index.view(shape).expand(
            *(index.shape[1] if d == self.per_expert_dim else n for d, n in enumerate(tensor.shape))
        )
        return torch.gather(tensor, self.per_expert_dim, index)

    def take(self, tensor):
        """The kept part of the whole teacher tensor."""
        import torch

        for dim, keep in enumerate(self.dims):
            if keep is not None:
                tensor = tensor.index_select(
                    dim, torch.as_tensor(keep, dtype=torch.long, device=tensor.device)
                )
        return self.finish(tensor)


def _blocks(units: list[int], size: int, offset: int = 0) -> tuple[int, ...]:
    """Indices of the given units' blocks of `size` (heads -> their head_dim rows)."""
    return tuple(offset + u * size + j for u in units for j in range(size))


def _kept(n: int, removed) -> tuple[int, ...] | None:
    removed = set(removed)
    return tuple(i for i in range(n) if i not in removed) if removed else None


def _cat(*parts: tuple[int, ...] | None, sizes: tuple[int, ...]) -> tuple[int, ...] | None:
    """Concatenated index sets of fused parts (None where nothing is cut in any part)."""
    if all(p is None for p in parts):
        return None
    out: list[int] = []
    offset = 0
    for part, size in zip(parts, sizes, strict=True):
        out.extend(offset + i for i in (part if part is not None else range(size)))
        offset += size
    return tuple(out)


def _projection(param: str, out_keep: Keep, in_keep: Keep, conv1d: bool) -> tuple[Keep, ...]:
    if param == "bias":
        return (out_keep,)
    return (in_keep, out_keep) if conv1d else (out_keep, in_keep)


@dataclass(frozen=True)
class _LayerCut:
    q: Keep  # rows of the query projection (kept heads' blocks)
    kv: Keep  # rows of the key and of the value projections
    qkv_fused: Keep  # rows (Phi-3) or columns (GPT-2) of the fused q/k/v projection
    mlp: Keep  # kept neurons
    mlp_fused: Keep  # rows of Phi-3's gate_up_proj
    experts: Keep = None  # kept experts (router rows, dim 0 of the expert tensors)
    expert_channels: tuple[tuple[int, ...], ...] | None = None  # per kept expert; None: all kept
    expert_gate_up: tuple[tuple[int, ...], ...] | None = None  # the same as [gate | up] rows


def _layer_cut(adapter: Adapter, spec: ArchSpec, plan: PrunePlan, layer: int) -> _LayerCut:
    shape = spec.layer_shapes()[layer]
    hd, H, G, F = spec.head_dim, shape.num_heads, shape.num_kv_heads, shape.intermediate_size
    heads, groups = layer_head_removal(plan, spec, layer)
    kept_q = [h for h in range(H) if h not in set(heads)]
    kept_g = [g for g in range(G) if g not in set(groups)]
    q = _blocks(kept_q, hd) if heads else None
    kv = _blocks(kept_g, hd) if groups else None
    if adapter.qkv_layout == "fused_conv1d":  # GPT-2: one KV head per query head
        fused = _cat(q, q, q, sizes=(H * hd,) * 3)
    else:
        fused = _cat(q, kv, kv, sizes=(H * hd, G * hd, G * hd))
    mlp = _kept(F, plan.remove_neurons.get(layer, []))
    experts, channels, gate_up = None, None, None
    if shape.num_experts:
        experts = _kept(shape.num_experts, plan.remove_experts.get(layer, []))
        cuts = plan.remove_expert_neurons.get(layer, {})
        kept = kept_experts(plan, spec, layer)
        if any(cuts.get(e) for e in kept):
            channels = tuple(_kept(F, cuts.get(e, [])) or tuple(range(F)) for e in kept)
            gate_up = tuple(c + tuple(F + i for i in c) for c in channels)
    return _LayerCut(
        q=q,
        kv=kv,
        qkv_fused=fused,
        mlp=mlp,
        mlp_fused=_cat(mlp, mlp, sizes=(F, F)),
        experts=experts,
        expert_channels=channels,
        expert_gate_up=gate_up,
    )


def _expert_tensor(adapter: Adapter, sub: str, cut: _LayerCut, hidden: Keep) -> TensorCut | None:
    """Cut of the router or of a fused expert tensor (`sub` below the layer); None: not one of them."""
    mlp = adapter.mlp_name + "."
    if sub == f"{mlp}{adapter.router_name}.weight":  # [E, D]
        return TensorCut(sub, (cut.experts, hidden))
    if sub == f"{mlp}{adapter.experts_name}.gate_up_proj":  # [E, 2F, D]: rows [gate | up] per expert
        return TensorCut(sub, (cut.experts, None, hidden), cut.expert_gate_up, per_expert_dim=1)
    if sub == f"{mlp}{adapter.experts_name}.down_proj":  # [E, D, F]
        return TensorCut(sub, (cut.experts, hidden, None), cut.expert_channels, per_expert_dim=2)
    if adapter.shared_expert_name:  # Qwen2-MoE's shared expert and its gate: hidden channels only
        shared = f"{mlp}{adapter.shared_expert_name}."
        if sub in (f"{shared}gate_proj.weight", f"{shared}up_proj.weight"):
            return TensorCut(sub, (None, hidden))
        if sub == f"{shared}down_proj.weight":
            return TensorCut(sub, (hidden, None))
        if sub == f"{mlp}{adapter.shared_expert_gate_name}.weight":  # [1, D]
            return TensorCut(sub, (None, hidden))
    return None


def _layer_tensor(adapter: Adapter, sub: str, cut: _LayerCut, hidden: Keep) -> tuple[Keep, ...] | None:
    """Keep of one tensor inside a decoder layer (`sub` is its name below the layer); None: unknown."""
    module, _, param = sub.rpartition(".")
    conv = adapter.conv1d
    attn, mlp = adapter.attn_name + ".", adapter.mlp_name + "."
    if module in adapter.norm_names:
        return (hidden,)
    if module.startswith(attn):
        name = module[len(attn) :]
        if adapter.qkv_layout == "separate" and name in adapter.qkv_names:
            rows = cut.q if name == adapter.qkv_names[0] else cut.kv
            return _projection(param, rows, hidden, conv)
        if name in adapter.qkv_names:  # one fused projection
            return _projection(param, cut.qkv_fused, hidden, conv)
        if name == adapter.attn_out_name:
            return _projection(param, hidden, cut.q, conv)
        if name in adapter.qk_norm_names:
            if not adapter.qk_norm_full_width:
                return (None,)  # per head: acts on head_dim, which is always kept
            return (cut.q if name == adapter.qk_norm_names[0] else cut.kv,)  # OLMo 2: one per q / k row
    if module.startswith(mlp):
        name = module[len(mlp) :]
        if name in adapter.mlp_in_names:
            rows = cut.mlp_fused if adapter.mlp_layout == "gated_fused" else cut.mlp
            return _projection(param, rows, hidden, conv)
        if name == adapter.mlp_out_name:
            return _projection(param, hidden, cut.mlp, conv)
    return None


def cut_map(adapter: Adapter, spec: ArchSpec, plan: PrunePlan, names: list[str]) -> dict[str, TensorCut]:
    """{student tensor name: TensorCut} for the teacher tensors `names` (an explicit, checked plan)."""
    if plan.needs_filling():
        raise ValueError("the plan has targets: fill it from importance scores (fill_plan) first")
    hidden = _kept(spec.hidden_size, plan.remove_hidden)
    new_index = {old: new for new, old in enumerate(kept_layers(plan, spec))}
    layer_cuts = {i: _layer_cut(adapter, spec, plan, i) for i in new_index}
    layers = adapter.layers_path + "."
    global_rules: dict[str, tuple[Keep, ...]] = {
        f"{adapter.embed_path}.weight": (None, hidden),
        f"{adapter.lm_head_path}.weight": (None, hidden),
        f"{adapter.final_norm_path}.weight": (hidden,),
        f"{adapter.final_norm_path}.bias": (hidden,),
    }
    if adapter.position_embed_path:
        global_rules[f"{adapter.position_embed_path}.weight"] = (None, hidden)
    out: dict[str, TensorCut] = {}
    for name in names:
        if name.startswith(layers):
            index, _, sub = name[len(layers) :].partition(".")
            old = int(index)
            if old not in new_index:
                continue  # a dropped layer
            student_name = f"{layers}{new_index[old]}.{sub}"
            expert_cut = _expert_tensor(adapter, sub, layer_cuts[old], hidden) if adapter.moe else None
            if expert_cut is not None:
                out[student_name] = TensorCut(
                    name, expert_cut.dims, expert_cut.per_expert, expert_cut.per_expert_dim
                )
                continue
            keep = _layer_tensor(adapter, sub, layer_cuts[old], hidden)
            out[student_name] = TensorCut(name, keep or ())
        else:
            out[name] = TensorCut(name, global_rules.get(name, ()))
    return out


__all__ = ["Keep", "TensorCut", "cut_map"]
