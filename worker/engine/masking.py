"""Reproduce a plan on the unpruned model with hooks, without changing any weight.

Removed heads and neurons have their contribution zeroed at the input of the output projection
(o_proj / down_proj; exactly what removing those columns does), and dropped layers pass their input
through unchanged. OLMo 2's q_norm / k_norm, which span all heads, take their statistic over the kept
heads only, as the cut model's sliced norms do. Mixture-of-experts layers: removed experts' router
logits are -inf (softmax and top-k then run over the kept experts only, as with the cut router) and
removed expert channels are zeroed between the expert's activation and its down projection. For these
cuts the pruned model's logits equal the
masked model's (the equivalence tests check it). Removed hidden channels are zeroed in the embeddings,
every block's outputs and every norm's output: a preview only, since LayerNorm/RMSNorm statistics
still average over all channels, unlike the pruned model's (and Gemma's cut model scales its
embeddings by sqrt of the new hidden size).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from worker.engine.adapters import adapter_for
from worker.engine.plan import PrunePlan, check_plan, layer_head_removal


def _zero_input_channels(channels: torch.Tensor):
    def hook(_module, args):
        x = args[0].clone()
        x[..., channels] = 0
        return (x, *args[1:])

    return hook


def _zero_output_channels(channels: torch.Tensor):
    def hook(_module, _args, output):
        if isinstance(output, tuple):
            first = output[0].clone()
            first[..., channels] = 0
            return (first, *output[1:])
        output = output.clone()
        output[..., channels] = 0
        return output

    return hook


def _norm_over_kept(keep: torch.Tensor):
    """A norm over all heads' width (OLMo 2's q_norm / k_norm) as the cut model computes it: statistic
    and weights over the kept channels only. The removed channels keep their values: the heads they
    feed are zeroed at the output projection, and a removed KV group is read only by removed heads."""
    running = []

    def hook(module, args, output):
        if running:  # the call below re-enters this hook
            return None
        running.append(True)
        try:
            kept_weight = {"weight": module.weight.index_select(0, keep)}
            kept = torch.func.functional_call(module, kept_weight, (args[0].index_select(-1, keep),))
        finally:
            running.pop()
        output = output.clone()
        output[..., keep] = kept
        return output

    return hook


def _masked_router(router: nn.Module, removed: torch.Tensor):
    """The router's forward (transformers' TopKRouter: softmax in float32, top-k, renormalised unless
    `norm_topk_prob` is False; Mixtral always renormalises) with removed experts' logits at -inf."""

    def forward(hidden_states):
        hidden_states = hidden_states.reshape(-1, router.weight.shape[1])
        logits = nn.functional.linear(hidden_states, router.weight)
        logits = logits.index_fill(-1, removed, float("-inf"))
        probs = torch.softmax(logits, dim=-1, dtype=torch.float)
        top_value, top_index = torch.topk(probs, router.top_k, dim=-1)
        if getattr(router, "norm_topk_prob", True):
            top_value = top_value / top_value.sum(dim=-1, keepdim=True)
        return logits, top_value.to(logits.dtype), top_index

    return forward


def _masked_experts(experts: nn.Module, channel_mask: torch.Tensor):
    """The experts' forward with each expert's removed channels zeroed before its down projection
    (channel_mask [E, F]: 1 kept, 0 removed)."""

    def forward(hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        for e in range(experts.gate_up_proj.shape[0]):
            token, slot = torch.where(top_k_index == e)
            if token.numel() == 0:
                continue
            gate, up = nn.functional.linear(hidden_states[token], experts.gate_up_proj[e]).chunk(2, dim=-1)
            h = experts.act_fn(gate) * up * channel_mask[e].to(up.dtype)
            y = nn.functional.linear(h, experts.down_proj[e]) * top_k_weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out

    return forward


def _skip_layer(*args, **kwargs):
    """A dropped decoder layer: its output is its input hidden states."""
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


@contextmanager
def masked(model: nn.Module, plan: PrunePlan) -> Iterator[nn.Module]:
    """Within the block, `model` behaves like `apply_plan(model, plan)` (see the module note)."""
    if plan.needs_filling():
        raise ValueError("the plan has targets: fill it from importance scores (fill_plan) first")
    adapter = adapter_for(model)
    spec = adapter.spec(model)
    check_plan(plan, spec)
    layers = adapter.layers(model)
    device = next(model.parameters()).device
    handles = []
    patched = []
    try:
        for i, layer in enumerate(layers):
            if i in plan.drop_layers:
                layer.forward = _skip_layer  # instance attribute shadows the class forward
                patched.append(layer)
                continue
            heads, groups = layer_head_removal(plan, spec, i)
            if heads:
                hd = spec.head_dim
                cols = torch.tensor([h * hd + j for h in heads for j in range(hd)], device=device)
                out = adapter.attn_out(layer)
                handles.append(out.register_forward_pre_hook(_zero_input_channels(cols)))
            if heads and adapter.qk_norm_full_width:
                q_norm, k_norm = adapter.qk_norms(layer)
                shape = spec.layer_shapes()[i]
                for norm, removed, units in (
                    (q_norm, heads, shape.num_heads),
                    (k_norm, groups, shape.num_kv_heads),
                ):
                    keep = [u * hd + j for u in range(units) if u not in set(removed) for j in range(hd)]
                    keep_index = torch.tensor(keep, device=device)
                    handles.append(norm.register_forward_hook(_norm_over_kept(keep_index)))
            if plan.remove_neurons.get(i):
                cols = torch.tensor(plan.remove_neurons[i], device=device)
                out = adapter.mlp_out(layer)
                handles.append(out.register_forward_pre_hook(_zero_input_channels(cols)))
            if plan.remove_experts.get(i):
                router = adapter.router(layer)
                router.forward = _masked_router(router, torch.tensor(plan.remove_experts[i], device=device))
                patched.append(router)
            if plan.remove_expert_neurons.get(i):
                experts = adapter.experts(layer)
                mask = torch.ones(experts.down_proj.shape[0], experts.down_proj.shape[2], device=device)
                for e, channels in plan.remove_expert_neurons[i].items():
                    mask[e, channels] = 0
                experts.forward = _masked_experts(experts, mask)
                patched.append(experts)
        if plan.remove_hidden:
            channels = torch.tensor(plan.remove_hidden, device=device)
            zero = _zero_output_channels(channels)
            modules = [adapter.embed(model), adapter.position_embed(model), adapter.final_norm(model)]
            for layer in layers:
                mlp_out = adapter.mlp(layer) if adapter.is_moe_layer(layer) else adapter.mlp_out(layer)
                modules += [adapter.attn_out(layer), mlp_out, *adapter.norms(layer)]
            handles += [m.register_forward_hook(zero) for m in modules if m is not None]
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for module in patched:
            del module.forward


__all__ = ["masked"]
