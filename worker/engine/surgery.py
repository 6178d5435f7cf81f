"""Structural pruning: apply a `PrunePlan` to a Hugging Face model by building smaller weights.

Which rows and columns of each parameter a plan keeps is the cut map's (worker/engine/cut_map.py):
separate q/k/v (Llama, Mistral, Qwen2, Qwen3...), fused [q|k|v] rows (Phi-3), GPT-2's Conv1D `c_attn`
([in, 3*d] columns), gated, fused-gated and plain MLPs, per-head q/k norms kept whole (Qwen3, Gemma 3)
and full-width ones sliced with the heads (OLMo 2), and mixture-of-experts layers (router rows and
fused expert tensors: experts removed, each kept expert's own FFN channels kept). Out-of-core surgery reads the very same slices
from the checkpoint, so the two cannot drift apart. After the cut, module attributes and config
fields are rewritten from the real weight shapes so that the stock modeling code, `generate()` and
`DynamicCache` run on the smaller model.

`resize_layer` builds empty modules of given widths; the loader uses it to restore non-uniform
students before loading their weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from worker.engine.adapters import Adapter, adapter_for
from worker.engine.cut_map import TensorCut, cut_map
from worker.engine.plan import PrunePlan, check_plan, kept_layers
from worker.engine.spec import LayerShape

Progress = Callable[[str], None] | None


# ---- one projection ------------------------------------------------------------------------------


def _replace(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(tensor.contiguous().clone(), requires_grad=old.requires_grad))


def _sync_features(module: nn.Module, conv1d: bool) -> None:
    w = module.weight
    if conv1d:  # transformers Conv1D: weight [in, out], attributes nx (in) and nf (out)
        module.nx, module.nf = w.shape[0], w.shape[1]
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = w.shape[0], w.shape[1]


def resize_projection(module: nn.Module, out_features: int, in_features: int, conv1d: bool) -> None:
    """Give a projection new, uninitialised weights of the given size (weights are loaded next)."""
    w = module.weight
    shape = (in_features, out_features) if conv1d else (out_features, in_features)
    _replace(module, "weight", torch.empty(shape, dtype=w.dtype, device=w.device))
    if getattr(module, "bias", None) is not None:
        b = module.bias
        _replace(module, "bias", torch.empty(out_features, dtype=b.dtype, device=b.device))
    _sync_features(module, conv1d)


# ---- attributes ---------------------------------------------------------------------------------


def sync_attention(attn: nn.Module, heads: int, kv_heads: int, head_dim: int) -> None:
    """Rewrite the per-module head counts the modeling code reads at run time."""
    for name, value in (
        ("num_heads", heads),
        ("num_attention_heads", heads),
        ("num_key_value_heads", kv_heads),
        ("num_key_value_groups", heads // kv_heads),
        ("split_size", heads * head_dim),  # GPT-2 splits c_attn's output in three of this size
    ):
        if hasattr(attn, name):
            setattr(attn, name, value)


def _sync_mlp(mlp: nn.Module, intermediate: int) -> None:
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = intermediate


def sync_experts(adapter: Adapter, layer: nn.Module) -> None:
    """Expert counts and widths that the router and the experts' forward read (one-hot over
    `num_experts` classes, top-k among the router's rows), from the cut weights."""
    router, experts = adapter.router(layer), adapter.experts(layer)
    num_experts, hidden, width = experts.down_proj.shape
    for module in (router, experts):
        if hasattr(module, "num_experts"):
            module.num_experts = num_experts
    for module, name, value in (
        (router, "hidden_dim", hidden),
        (experts, "hidden_dim", hidden),
        (experts, "intermediate_dim", width),
    ):
        if hasattr(module, name):
            setattr(module, name, value)


# ---- cuts ----------------------------------------------------------------------------------------


def _cut_parameters(model: nn.Module, cuts: list[TensorCut]) -> None:
    """Replace each parameter by the part its cut keeps (dims selected one after the other, then the
    per-expert channels of fused expert tensors)."""
    for cut in cuts:
        if cut.is_identity():
            continue
        module, name = _parent_and_name(model, cut.source)
        _replace(module, name, cut.take(getattr(module, name)))


def _sync_vector_module(module: nn.Module) -> None:
    """Norms record their width besides their weight."""
    if hasattr(module, "normalized_shape") and getattr(module, "weight", None) is not None:
        module.normalized_shape = tuple(module.weight.shape)


def _sync_modules(adapter: Adapter, model: nn.Module, head_dim: int, hidden_before: int) -> None:
    """Module attributes that the modeling code reads at run time, from the cut weights' shapes."""
    for layer in adapter.layers(model):
        moe = adapter.is_moe_layer(layer)
        mlp_projections = (
            adapter.shared_expert(layer) if moe else (*adapter.mlp_in(layer), adapter.mlp_out(layer))
        )
        for proj in (*adapter.qkv(layer), adapter.attn_out(layer), *mlp_projections):
            _sync_features(proj, adapter.conv1d)
        if moe:
            sync_experts(adapter, layer)
        for norm in (*adapter.norms(layer), *adapter.qk_norms(layer)):
            _sync_vector_module(norm)
        shape = adapter.layer_shape(layer, head_dim)
        sync_attention(adapter.attn(layer), shape.num_heads, shape.num_kv_heads, head_dim)
        _sync_mlp(adapter.mlp(layer), shape.intermediate_size)
    _sync_vector_module(adapter.final_norm(model))
    embed = adapter.embed(model)
    hidden = embed.weight.shape[1]
    for emb in (embed, adapter.position_embed(model)):
        if emb is not None:
            emb.embedding_dim = hidden
    lm_head = adapter.lm_head(model)
    if isinstance(lm_head, nn.Linear):
        lm_head.in_features = lm_head.weight.shape[1]
    if hidden == hidden_before:
        return
    # Modules that remember the hidden size (GPT-2 attention embed_dim, Llama MLP hidden_size...).
    for module in model.modules():
        for name in ("hidden_size", "embed_dim"):
            if getattr(module, name, None) == hidden_before and not isinstance(module, nn.Embedding):
                setattr(module, name, hidden)
    if adapter.embed_scale_sqrt_hidden:
        _rescale_embedding(embed, hidden)


def _rescale_embedding(embed: nn.Module, hidden: int) -> None:
    """Gemma scales embeddings by sqrt(config.hidden_size), a buffer rebuilt from the config on load.

    The cut model gets sqrt(new hidden), the value a reload of the saved model computes, so the model in
    memory and the saved one agree. It then differs from the masked teacher by that factor on the
    embeddings (one more reason a hidden cut is no exact equivalence), which distillation absorbs; keeping
    the old factor would make every reload of the student silently compute something else.
    """
    scale = hidden**0.5
    embed.scalar_embed_scale = scale
    embed.embed_scale.fill_(scale)  # as transformers' init does, in the buffer's own dtype


def _parent_and_name(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parent = model
    *path, last = dotted.split(".")
    for name in path:
        parent = getattr(parent, name)
    return parent, last


def renumber_layers(adapter: Adapter, model: nn.Module) -> None:
    """Layer index = position, as the KV cache indexes its per-layer entries by `layer_idx`."""
    for i, layer in enumerate(adapter.layers(model)):
        for module in (layer, adapter.attn(layer)):
            if hasattr(module, "layer_idx"):
                module.layer_idx = i


def _drop_layers(adapter: Adapter, model: nn.Module, keep: list[int]) -> None:
    layers = adapter.layers(model)
    parent, name = _parent_and_name(model, adapter.layers_path)
    setattr(parent, name, nn.ModuleList([layers[i] for i in keep]))
    renumber_layers(adapter, model)
    config = model.config
    for field in PER_LAYER_CONFIG_LISTS:
        values = getattr(config, field, None)
        if isinstance(values, list) and len(values) == len(layers):
            setattr(config, field, [values[i] for i in keep])


# Config fields holding one entry per decoder layer; sliced when layers are dropped.
PER_LAYER_CONFIG_LISTS = ("layer_types", "sliding_window_pattern_per_layer", "no_rope_layers")


# ---- config ------------------------------------------------------------------------------------


def sync_config(adapter: Adapter, model: nn.Module, head_dim: int) -> None:
    """Write the real widths into the config (widest layer where layers differ).

    head_dim is always written explicitly: families that derive it (hidden / heads) would get it
    wrong after heads or hidden channels are cut.
    """
    config = model.config
    shapes = [adapter.layer_shape(layer, head_dim) for layer in adapter.layers(model)]
    hidden = adapter.embed(model).weight.shape[1]
    config.hidden_size = hidden
    config.num_hidden_layers = len(shapes)
    config.head_dim = head_dim
    heads = max(s.num_heads for s in shapes)
    if adapter.qkv_layout == "fused_conv1d":
        # GPT-2 derives head_dim = n_embd / n_head when it builds attention: keep that true. When
        # the attention width differs from n_embd the per-layer file of the saved model has it.
        config.num_attention_heads = heads if heads * head_dim == hidden else hidden // head_dim
    else:
        config.num_attention_heads = heads
        config.num_key_value_heads = max(s.num_kv_heads for s in shapes)
    setattr(config, adapter.intermediate_field, max(s.intermediate_size for s in shapes))
    if adapter.moe:
        setattr(config, adapter.num_experts_field, max(s.num_experts for s in shapes))


# ---- the entry points ------------------------------------------------------------------------------


@torch.no_grad()
def apply_plan(model: nn.Module, plan: PrunePlan, progress: Progress = None) -> nn.Module:
    """Cut the model in place to the plan (explicit removals; fill targets first). Returns it."""
    if plan.needs_filling():
        raise ValueError("the plan has targets: fill it from importance scores (fill_plan) first")
    adapter = adapter_for(model)
    spec = adapter.spec(model)
    check_plan(plan, spec)
    if plan.drop_layers and getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
        raise ValueError(
            "this GPT-2 scales attention by 1/(layer_idx+1): dropping layers would change the "
            "scale of every later layer; prune widths only"
        )
    say = progress or (lambda _msg: None)
    hd = spec.head_dim
    embed, lm_head = adapter.embed(model), adapter.lm_head(model)
    tied = lm_head.weight is embed.weight
    cuts = cut_map(adapter, spec, plan, [name for name, _ in model.named_parameters()])  # tied: once
    per_layer: dict[int, list[TensorCut]] = {}
    outside: list[TensorCut] = []
    prefix = adapter.layers_path + "."
    for cut in cuts.values():
        if cut.source.startswith(prefix):
            per_layer.setdefault(int(cut.source[len(prefix) :].split(".")[0]), []).append(cut)
        else:
            outside.append(cut)
    kept = kept_layers(plan, spec)
    for n, i in enumerate(kept):
        _cut_parameters(model, per_layer.get(i, []))
        say(f"layer {n + 1}/{len(kept)} pruned")
    _cut_parameters(model, outside)  # embeddings, final norm, LM head: hidden channels only
    if tied:
        lm_head.weight = embed.weight
    _sync_modules(adapter, model, hd, spec.hidden_size)
    if plan.remove_hidden:
        say(f"hidden size {spec.hidden_size} -> {spec.hidden_size - len(plan.remove_hidden)}")
    if plan.drop_layers:
        _drop_layers(adapter, model, kept)
        say(f"layers {spec.num_layers} -> {len(kept)}")
    sync_config(adapter, model, hd)
    return model


@torch.no_grad()
def resize_layer(adapter: Adapter, layer: nn.Module, shape: LayerShape, head_dim: int) -> None:
    """Give one freshly built layer the given widths (empty weights, to be loaded after)."""
    hd = head_dim
    hidden = adapter.in_features(adapter.qkv(layer)[0])
    h, g, f = shape.num_heads, shape.num_kv_heads, shape.intermediate_size
    proj = adapter.qkv(layer)
    if adapter.qkv_layout == "separate":
        resize_projection(proj[0], h * hd, hidden, False)
        resize_projection(proj[1], g * hd, hidden, False)
        resize_projection(proj[2], g * hd, hidden, False)
    elif adapter.qkv_layout == "fused_rows":
        resize_projection(proj[0], (h + 2 * g) * hd, hidden, False)
    else:
        resize_projection(proj[0], 3 * h * hd, hidden, True)
    resize_projection(adapter.attn_out(layer), hidden, h * hd, adapter.conv1d)
    if adapter.qk_norm_full_width:
        for norm, width in zip(adapter.qk_norms(layer), (h * hd, g * hd), strict=True):
            _replace(norm, "weight", torch.empty(width, dtype=norm.weight.dtype, device=norm.weight.device))
    sync_attention(adapter.attn(layer), h, g, hd)
    if adapter.is_moe_layer(layer):
        _resize_experts(adapter, layer, shape.num_experts, hidden, f)
        shared = adapter.shared_expert(layer)
        if shared:  # Qwen2-MoE: width kept, hidden size follows the layer's
            gate, up, down, sigmoid_gate = shared
            width = down.weight.shape[1]
            for module, out_f, in_f in (
                (gate, width, hidden),
                (up, width, hidden),
                (down, hidden, width),
                (sigmoid_gate, 1, hidden),
            ):
                resize_projection(module, out_f, in_f, False)
        return
    if adapter.mlp_layout == "gated_fused":
        resize_projection(adapter.mlp_in(layer)[0], 2 * f, hidden, False)
    else:
        for module in adapter.mlp_in(layer):
            resize_projection(module, f, hidden, adapter.conv1d)
    resize_projection(adapter.mlp_out(layer), hidden, f, adapter.conv1d)
    _sync_mlp(adapter.mlp(layer), f)


def _resize_experts(adapter: Adapter, layer: nn.Module, experts: int, hidden: int, width: int) -> None:
    router, module = adapter.router(layer), adapter.experts(layer)
    for owner, name, shape in (
        (router, "weight", (experts, hidden)),
        (module, "gate_up_proj", (experts, 2 * width, hidden)),
        (module, "down_proj", (experts, hidden, width)),
    ):
        old = getattr(owner, name)
        _replace(owner, name, torch.empty(shape, dtype=old.dtype, device=old.device))
    sync_experts(adapter, layer)


__all__ = ["apply_plan", "renumber_layers", "resize_layer", "sync_config"]
