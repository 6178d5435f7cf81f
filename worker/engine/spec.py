"""Torch-free description of a decoder-only architecture and its cost model.

Shared by the engine, the backend and the dashboard (which mirrors `param_count` in JS), so the
numbers a user sees before a cut are the numbers the cut produces. Parameter counts are exact for
every supported family: the tests compare them with `sum(p.numel())` of real models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

# The context FLOPs/token are counted at (attention grows with it), unless the model takes fewer positions:
# ArchSpec.flops_context; the dashboard's costmodel.js flopsContext is the same rule.
FLOPS_CONTEXT = 2048


class LayerShape(BaseModel):
    """Width of one decoder layer (layers may differ after a non-uniform cut).

    Mixture-of-experts layers (num_experts > 0): `intermediate_size` is each expert's FFN width (one
    width per layer: the experts are stored as fused [experts, ...] tensors)."""

    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    num_experts: int = 0  # 0: a dense MLP


class ArchSpec(BaseModel):
    family: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    dtype: str = "float32"
    # Which parameter groups exist; they decide the exact parameter count.
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_gated: bool = True
    mlp_bias: bool = False
    norm_bias: bool = False
    qk_norm: bool = False
    # q/k norms over all heads (OLMo 2: heads x head_dim and kv_heads x head_dim) instead of head_dim.
    qk_norm_full_width: bool = False
    layer_norms: int = 2  # norms per layer (Gemma 2 / 3: pre and post norms around both sublayers)
    position_embeddings: int = 0
    # The positions the model was built for (config_max_positions); 0: unknown (a spec stored before
    # this field; spec_max_positions then falls back on a learned position table).
    max_positions: int = 0
    # Mixture of experts (Qwen3-MoE, Mixtral): experts per layer (0: dense) and experts each token is
    # routed to (top-k). Total parameters count every expert, active ones only top-k per layer.
    num_experts: int = 0
    experts_per_token: int = 0
    # Qwen2-MoE: a dense "shared expert" MLP every token runs, gated by a [1, hidden] sigmoid gate, beside
    # the routed experts of each MoE layer (0: none). Pruning keeps its width.
    shared_expert_intermediate_size: int = 0
    # Sliding-window attention (Gemma 2 / 3): the window and how many layers use it (0: none). The
    # memory planner needs them: past the window those layers' attention gets a mask.
    sliding_window: int = 0
    sliding_layers: int = 0
    # Present only when layers differ; otherwise every layer has the top-level widths.
    layers: list[LayerShape] | None = None

    def layer_shapes(self) -> list[LayerShape]:
        if self.layers is not None:
            return list(self.layers)
        shape = LayerShape(
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            num_experts=self.num_experts,
        )
        return [shape] * self.num_layers

    # ---- cost model -------------------------------------------------------------------------

    def experts_used(self, shape: LayerShape, active: bool) -> int:
        """Expert FFNs counted for a layer: all of them, or the top-k a token runs (active)."""
        return min(self.experts_per_token, shape.num_experts) if active else shape.num_experts

    def layer_params(self, shape: LayerShape, hidden: int | None = None, active: bool = False) -> int:
        d = self.hidden_size if hidden is None else hidden
        hd, h, g, f = self.head_dim, shape.num_heads, shape.num_kv_heads, shape.intermediate_size
        attn = d * h * hd + 2 * d * g * hd + h * hd * d
        if self.qkv_bias:
            attn += h * hd + 2 * g * hd
        if self.o_bias:
            attn += d
        if self.qk_norm:
            attn += (h + g) * hd if self.qk_norm_full_width else 2 * hd
        mlp = (3 if self.mlp_gated else 2) * d * f
        if self.mlp_bias:
            mlp += (2 if self.mlp_gated else 1) * f + d
        if shape.num_experts:  # each expert is one gated MLP; the router is [experts, hidden]
            mlp = (
                mlp * self.experts_used(shape, active) + shape.num_experts * d + self.shared_expert_params(d)
            )
        norms = self.layer_norms * self.norm_params(d)
        return attn + mlp + norms

    def shared_expert_params(self, hidden: int) -> int:
        fs = self.shared_expert_intermediate_size
        return 3 * hidden * fs + hidden if fs else 0

    def norm_params(self, hidden: int) -> int:
        return hidden * (2 if self.norm_bias else 1)

    def embedding_params(self, hidden: int | None = None) -> int:
        d = self.hidden_size if hidden is None else hidden
        embed = self.vocab_size * d + self.position_embeddings * d
        return embed if self.tie_word_embeddings else embed + self.vocab_size * d

    def param_count(self, hidden: int | None = None, layers: list[LayerShape] | None = None) -> dict:
        """Total, non-embedding and active parameters for a (possibly pruned) shape of this family.

        `active`: the parameters one token runs through (all but the experts outside its top-k);
        equal to `total` for dense models."""
        d = self.hidden_size if hidden is None else hidden
        shapes = self.layer_shapes() if layers is None else layers
        body = sum(self.layer_params(s, d) for s in shapes) + self.norm_params(d)
        active = sum(self.layer_params(s, d, active=True) for s in shapes) + self.norm_params(d)
        embedding = self.embedding_params(d)
        return {
            "total": body + embedding,
            "non_embedding": body,
            "embedding": embedding,
            "active": active + embedding,
        }

    def flops_context(self) -> int:
        """The context FLOPs/token are counted at by default: FLOPS_CONTEXT tokens, or the model's
        positions when it has fewer (a 512-position model never attends over 2048 tokens)."""
        limit = spec_max_positions(self)
        return min(FLOPS_CONTEXT, limit) if limit else FLOPS_CONTEXT

    def flops_per_token(
        self, context: int | None = None, hidden: int | None = None, layers: list[LayerShape] | None = None
    ) -> int:
        """Forward FLOPs for one token at the given context (None: `flops_context()`): 2 x matmul
        weights + attention scores.

        Mixture-of-experts layers: the router plus the token's top-k experts only."""
        context = self.flops_context() if context is None else context
        d = self.hidden_size if hidden is None else hidden
        shapes = self.layer_shapes() if layers is None else layers
        matmul = 0
        for s in shapes:
            hd = self.head_dim
            matmul += d * s.num_heads * hd * 2 + 2 * d * s.num_kv_heads * hd
            mlp = (3 if self.mlp_gated else 2) * d * s.intermediate_size
            if s.num_experts:
                mlp = (
                    mlp * self.experts_used(s, active=True) + s.num_experts * d + self.shared_expert_params(d)
                )
            matmul += mlp
            matmul += 2 * context * s.num_heads * hd  # QK^T and AV against the whole context
        matmul += self.vocab_size * d  # LM head
        return 2 * matmul

    def kv_cache_bytes_per_token(
        self, layers: list[LayerShape] | None = None, bytes_per_value: int = 2
    ) -> int:
        shapes = self.layer_shapes() if layers is None else layers
        return sum(2 * s.num_kv_heads * self.head_dim * bytes_per_value for s in shapes)

    def summary(self) -> dict:
        counts = self.param_count()
        return {
            **self.model_dump(exclude={"layers"}),
            "uniform": self.layers is None,
            "layers": [s.model_dump() for s in self.layer_shapes()],
            "params_total": counts["total"],
            "params_non_embedding": counts["non_embedding"],
            "params_active": counts["active"],
            "flops_per_token": self.flops_per_token(),
            "flops_context": self.flops_context(),
            "kv_cache_bytes_per_token": self.kv_cache_bytes_per_token(),
        }


# ---- how long a sequence the model takes -------------------------------------------------------------

# Config fields naming the positions a model was built for; the first one set counts.
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length")


def text_config(config):
    """The language model's config: a multimodal config nests it (`get_text_config`), a text-only one is
    its own."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def config_max_positions(config) -> int:
    """The positions a model was built for, from its config (a multimodal model's text config first);
    0 when the config names none. The one definition of a model's limit: the engine's checks of
    --seq-len / --context and the API's of seq_len (through the stored spec) use it."""
    for cfg in (text_config(config), config):
        for field in POSITION_FIELDS:
            value = getattr(cfg, field, None)
            if value:
                return int(value)
    return 0


def spec_max_positions(spec: ArchSpec | Mapping[str, Any]) -> int:
    """The positions a spec (or its stored summary) knows of: `max_positions`, else the rows of a learned
    position table (GPT-2); 0 when unknown (a RoPE model's spec stored before `max_positions` existed)."""
    data = spec.model_dump() if isinstance(spec, ArchSpec) else spec
    return int(data.get("max_positions") or data.get("position_embeddings") or 0)


# ---- a shape in one line -----------------------------------------------------------------------


def shape_label(
    spec: ArchSpec | Mapping[str, Any] | None, teacher: ArchSpec | Mapping | None = None
) -> str | None:
    """A model's shape as a short label, "24 layers · h 3072 · ffn 9216 · 32 heads" (the knobs a search
    turns: depth, hidden, MLP, heads), from a spec (an ArchSpec, a plan's `stats.spec`, a student's
    `spec`). A width that differs between layers reads "min–max"; KV groups are named when `teacher`'s
    differ from the model's (a cut that removed whole groups); experts when the model has them.

    The name of a bake-off's candidates and students; the dashboard's `shapeLabel`
    (frontend/js/searchmath.js) is the same function (tests/ui/test_shape_label.py holds them equal)."""
    if not spec:
        return None
    if isinstance(spec, BaseModel):
        spec = spec.model_dump()
    if isinstance(teacher, BaseModel):
        teacher = teacher.model_dump()

    def span(key: str) -> Any:
        values = [
            layer[key]
            for layer in spec.get("layers") or []
            if isinstance(layer.get(key), int | float)
            and not isinstance(layer.get(key), bool)
            and math.isfinite(layer[key])
        ]
        if not values:
            return spec.get(key)
        lo, hi = min(values), max(values)
        return f"{lo}" if lo == hi else f"{lo}–{hi}"

    kv = span("num_kv_heads")
    parts = [
        f"{spec.get('num_layers')} layers",
        f"h {spec.get('hidden_size')}",
        f"ffn {span('intermediate_size')}",
        f"{span('num_heads')} heads",
        f"{kv} KV"
        if teacher is not None and kv is not None and str(kv) != str(teacher.get("num_kv_heads"))
        else None,
        f"{span('num_experts')} experts" if spec.get("num_experts") else None,
    ]
    return " · ".join(p for p in parts if p)
