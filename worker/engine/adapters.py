"""Where each architecture family keeps its parts.

An adapter names the decoder layers, attention and MLP projections, norms, embeddings and LM head of
one family, and how its projections are laid out (separate or fused, Linear or Conv1D). Importance
hooks and surgery read models only through adapters, so adding a family means adding one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from worker.engine.dtypes import dtype_name
from worker.engine.spec import ArchSpec, LayerShape, config_max_positions, text_config


class UnsupportedArchitecture(ValueError):
    pass


def _get(obj, dotted: str):
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


@dataclass(frozen=True)
class Adapter:
    family: str
    model_types: tuple[str, ...]
    layers_path: str  # decoder layers (nn.ModuleList), from the *ForCausalLM model
    embed_path: str
    final_norm_path: str
    lm_head_path: str
    attn_name: str  # attention module inside a layer
    attn_out_name: str  # output projection inside the attention module; its input is the heads
    mlp_name: str
    mlp_out_name: str  # down projection inside the MLP; its input is the neurons
    norm_names: tuple[str, ...]  # norms inside a layer whose outputs are hidden-channel activations
    # "separate": q_proj/k_proj/v_proj; "fused_rows": one Linear [q|k|v]; "fused_conv1d": GPT-2 c_attn.
    qkv_layout: str = "separate"
    qkv_names: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    # "gated": gate_proj/up_proj; "gated_fused": one Linear [gate|up]; "plain": a single up projection.
    mlp_layout: str = "gated"
    mlp_in_names: tuple[str, ...] = ("gate_proj", "up_proj")
    conv1d: bool = False  # GPT-2 style Conv1D weights are stored [in, out]
    position_embed_path: str | None = None
    # q/k norms inside the attention module. Per head (Qwen3, Gemma 3): they act over head_dim, which
    # pruning keeps, so no cut touches them. Full width (OLMo 2): q_norm spans heads x head_dim and
    # k_norm kv_heads x head_dim, so head cuts slice them like q_proj / k_proj rows.
    qk_norm_names: tuple[str, ...] = ()
    qk_norm_full_width: bool = False
    # Gemma multiplies embeddings by sqrt(hidden_size), a buffer that config.hidden_size rebuilds.
    embed_scale_sqrt_hidden: bool = False
    # Config fields the family's forward applies to the logits after the LM head (chunked_head applies
    # them too): Granite divides by `logits_scaling`, Gemma soft-caps with `final_logit_softcapping`.
    logits_divisor_field: str | None = None
    logits_softcap_field: str | None = None
    # Config field holding the MLP size (GPT-2 calls it n_inner; None there means 4 x n_embd).
    intermediate_field: str = "intermediate_size"
    # Mixture of experts (transformers 5 layout): the MLP module holds a router `gate` (weight
    # [experts, hidden]) and `experts` with fused 3-D weights gate_up_proj [experts, 2 x width, hidden]
    # ([gate | up] rows per expert) and down_proj [experts, hidden, width]. `intermediate_field` is
    # then the config field of one expert's width.
    moe: bool = False
    router_name: str = "gate"
    experts_name: str = "experts"
    num_experts_field: str = "num_experts"
    experts_per_token_field: str = "num_experts_per_tok"
    # The hub's per-expert layout that save_pretrained writes (expert_layout.py): the MoE module's name
    # on disk and each expert's (gate, up, down) projection names.
    shared_expert_name: str | None = None  # Qwen2-MoE's dense shared expert (kept whole by every cut)
    shared_expert_gate_name: str | None = None
    disk_moe_name: str = "mlp"
    disk_expert_names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")

    # ---- locating parts -------------------------------------------------------------------
    def layers(self, model: nn.Module) -> nn.ModuleList:
        return _get(model, self.layers_path)

    def embed(self, model: nn.Module) -> nn.Embedding:
        return _get(model, self.embed_path)

    def final_norm(self, model: nn.Module) -> nn.Module:
        return _get(model, self.final_norm_path)

    def lm_head(self, model: nn.Module) -> nn.Module:
        return _get(model, self.lm_head_path)

    def position_embed(self, model: nn.Module) -> nn.Embedding | None:
        return _get(model, self.position_embed_path) if self.position_embed_path else None

    def attn(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.attn_name)

    def attn_out(self, layer: nn.Module) -> nn.Module:
        return getattr(self.attn(layer), self.attn_out_name)

    def qkv(self, layer: nn.Module) -> tuple[nn.Module, ...]:
        attn = self.attn(layer)
        return tuple(getattr(attn, n) for n in self.qkv_names)

    def mlp(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.mlp_name)

    def mlp_out(self, layer: nn.Module) -> nn.Module:
        return getattr(self.mlp(layer), self.mlp_out_name)

    def is_moe_layer(self, layer: nn.Module) -> bool:
        return self.moe and hasattr(self.mlp(layer), self.experts_name)

    def router(self, layer: nn.Module) -> nn.Module:
        return getattr(self.mlp(layer), self.router_name)

    def experts(self, layer: nn.Module) -> nn.Module:
        return getattr(self.mlp(layer), self.experts_name)

    def shared_expert(self, layer: nn.Module) -> tuple[nn.Module, ...]:
        """(gate_proj, up_proj, down_proj, sigmoid gate) of the layer's shared expert; () when it has none."""
        mlp = self.mlp(layer)
        if not self.shared_expert_name or not hasattr(mlp, self.shared_expert_name):
            return ()
        shared = getattr(mlp, self.shared_expert_name)
        return (
            shared.gate_proj,
            shared.up_proj,
            shared.down_proj,
            getattr(mlp, self.shared_expert_gate_name),
        )

    def mlp_in(self, layer: nn.Module) -> tuple[nn.Module, ...]:
        mlp = self.mlp(layer)
        return tuple(getattr(mlp, n) for n in self.mlp_in_names)

    def norms(self, layer: nn.Module) -> tuple[nn.Module, ...]:
        return tuple(getattr(layer, n) for n in self.norm_names)

    def qk_norms(self, layer: nn.Module) -> tuple[nn.Module, ...]:
        attn = self.attn(layer)
        return tuple(getattr(attn, n) for n in self.qk_norm_names)

    # ---- widths of one layer, read from its weights (valid after non-uniform surgery) ---------
    def out_features(self, module: nn.Module) -> int:
        return module.weight.shape[1] if self.conv1d else module.weight.shape[0]

    def in_features(self, module: nn.Module) -> int:
        return module.weight.shape[0] if self.conv1d else module.weight.shape[1]

    def layer_num_heads(self, layer: nn.Module, head_dim: int) -> int:
        return self.in_features(self.attn_out(layer)) // head_dim

    def layer_intermediate_size(self, layer: nn.Module) -> int:
        if self.is_moe_layer(layer):
            return self.experts(layer).down_proj.shape[2]
        return self.in_features(self.mlp_out(layer))

    def layer_num_experts(self, layer: nn.Module) -> int:
        return self.experts(layer).down_proj.shape[0] if self.is_moe_layer(layer) else 0

    def layer_num_kv_heads(self, layer: nn.Module, head_dim: int) -> int:
        if self.qkv_layout == "separate":
            return self.out_features(self.qkv(layer)[1]) // head_dim
        heads = self.layer_num_heads(layer, head_dim)
        if self.qkv_layout == "fused_conv1d":  # GPT-2: no GQA
            return heads
        total = self.out_features(self.qkv(layer)[0]) // head_dim
        return (total - heads) // 2

    def layer_shape(self, layer: nn.Module, head_dim: int) -> LayerShape:
        return LayerShape(
            num_heads=self.layer_num_heads(layer, head_dim),
            num_kv_heads=self.layer_num_kv_heads(layer, head_dim),
            intermediate_size=self.layer_intermediate_size(layer),
            num_experts=self.layer_num_experts(layer),
        )

    # ---- the architecture summary ---------------------------------------------------------
    @staticmethod
    def head_dim(model: nn.Module) -> int:
        """head_dim as the config states it (families without the field derive it: hidden / heads)."""
        cfg = text_config(model.config)
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def spec(self, model: nn.Module) -> ArchSpec:
        cfg, text = model.config, text_config(model.config)
        hidden = text.hidden_size
        head_dim = self.head_dim(model)
        layers = self.layers(model)
        shapes = [self.layer_shape(layer, head_dim) for layer in layers]
        first = shapes[0]
        uniform = all(s == first for s in shapes)
        attn_out = self.attn_out(layers[0])
        qkv0 = self.qkv(layers[0])[0]
        mlp_out = None if self.is_moe_layer(layers[0]) else self.mlp_out(layers[0])
        norm0 = self.norms(layers[0])[0]
        pos = self.position_embed(model)
        param = next(model.parameters())
        sliding = list(getattr(text, "layer_types", None) or []).count("sliding_attention")
        return ArchSpec(
            family=self.family,
            model_type=cfg.model_type,
            num_layers=len(layers),
            hidden_size=hidden,
            num_heads=first.num_heads,
            num_kv_heads=first.num_kv_heads,
            head_dim=head_dim,
            intermediate_size=first.intermediate_size,
            vocab_size=self.embed(model).weight.shape[0],
            tie_word_embeddings=self.lm_head(model).weight is self.embed(model).weight,
            dtype=dtype_name(param.dtype),
            qkv_bias=getattr(qkv0, "bias", None) is not None,
            o_bias=getattr(attn_out, "bias", None) is not None,
            mlp_gated=self.mlp_layout != "plain",
            mlp_bias=getattr(mlp_out, "bias", None) is not None,
            norm_bias=getattr(norm0, "bias", None) is not None,
            qk_norm=bool(self.qk_norm_names),
            qk_norm_full_width=self.qk_norm_full_width,
            layer_norms=len(self.norm_names),
            position_embeddings=pos.weight.shape[0] if pos is not None else 0,
            max_positions=config_max_positions(cfg),
            num_experts=first.num_experts,
            experts_per_token=getattr(text, self.experts_per_token_field, 0) if self.moe else 0,
            shared_expert_intermediate_size=(
                self.shared_expert(layers[0])[2].weight.shape[1] if self.shared_expert(layers[0]) else 0
            ),
            sliding_window=(getattr(text, "sliding_window", None) or 0) if sliding else 0,
            sliding_layers=sliding,
            layers=None if uniform else shapes,
        )


_LLAMA_LIKE = dict(
    layers_path="model.layers",
    embed_path="model.embed_tokens",
    final_norm_path="model.norm",
    lm_head_path="lm_head",
    attn_name="self_attn",
    attn_out_name="o_proj",
    mlp_name="mlp",
    mlp_out_name="down_proj",
    norm_names=("input_layernorm", "post_attention_layernorm"),
)

_GEMMA_LIKE = dict(
    _LLAMA_LIKE,
    # Pre- and post-norms around both sublayers; all four act on the residual stream's width (the post
    # norms normalise a sublayer's output before it is added), so all four score hidden channels.
    norm_names=(
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ),
    embed_scale_sqrt_hidden=True,
    logits_softcap_field="final_logit_softcapping",
)

ADAPTERS: tuple[Adapter, ...] = (
    Adapter(family="llama", model_types=("llama",), **_LLAMA_LIKE),
    Adapter(family="mistral", model_types=("mistral",), **_LLAMA_LIKE),
    Adapter(family="qwen2", model_types=("qwen2",), **_LLAMA_LIKE),
    Adapter(family="qwen3", model_types=("qwen3",), qk_norm_names=("q_norm", "k_norm"), **_LLAMA_LIKE),
    Adapter(
        family="phi3",
        model_types=("phi3",),
        qkv_layout="fused_rows",
        qkv_names=("qkv_proj",),
        mlp_layout="gated_fused",
        mlp_in_names=("gate_up_proj",),
        **_LLAMA_LIKE,
    ),
    Adapter(
        family="gpt2",
        model_types=("gpt2",),
        layers_path="transformer.h",
        embed_path="transformer.wte",
        final_norm_path="transformer.ln_f",
        lm_head_path="lm_head",
        attn_name="attn",
        attn_out_name="c_proj",
        mlp_name="mlp",
        mlp_out_name="c_proj",
        norm_names=("ln_1", "ln_2"),
        qkv_layout="fused_conv1d",
        qkv_names=("c_attn",),
        mlp_layout="plain",
        mlp_in_names=("c_fc",),
        conv1d=True,
        position_embed_path="transformer.wpe",
        intermediate_field="n_inner",
    ),
    Adapter(family="gemma2", model_types=("gemma2",), **_GEMMA_LIKE),
    Adapter(family="gemma3", model_types=("gemma3_text",), qk_norm_names=("q_norm", "k_norm"), **_GEMMA_LIKE),
    Adapter(
        family="olmo2",
        model_types=("olmo2",),
        qk_norm_names=("q_norm", "k_norm"),
        qk_norm_full_width=True,
        # No pre-norms: the norms follow each sublayer, before its output joins the residual stream.
        **{**_LLAMA_LIKE, "norm_names": ("post_attention_layernorm", "post_feedforward_layernorm")},
    ),
    # Granite 3: Llama's layout; its embedding / residual / attention / logits multipliers are config
    # constants that no cut changes (the logits one is applied by chunked_head).
    Adapter(family="granite", model_types=("granite",), logits_divisor_field="logits_scaling", **_LLAMA_LIKE),
    # Mixture of experts: Llama's attention; the MLP is a router and fused experts (see `moe`).
    Adapter(
        family="qwen3_moe",
        model_types=("qwen3_moe",),
        qk_norm_names=("q_norm", "k_norm"),
        moe=True,
        intermediate_field="moe_intermediate_size",
        **_LLAMA_LIKE,
    ),
    Adapter(
        family="qwen2_moe",
        model_types=("qwen2_moe",),
        moe=True,
        intermediate_field="moe_intermediate_size",
        shared_expert_name="shared_expert",
        shared_expert_gate_name="shared_expert_gate",
        **_LLAMA_LIKE,
    ),
    Adapter(
        family="mixtral",
        model_types=("mixtral",),
        moe=True,
        num_experts_field="num_local_experts",
        disk_moe_name="block_sparse_moe",
        disk_expert_names=("w1", "w3", "w2"),
        **_LLAMA_LIKE,
    ),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_for_model_type(model_type: str) -> Adapter:
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise UnsupportedArchitecture(
        f"architecture '{model_type}' is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def adapter_for(model: nn.Module) -> Adapter:
    return adapter_for_model_type(model.config.model_type)


def arch_spec(model: nn.Module) -> ArchSpec:
    return adapter_for(model).spec(model)


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


__all__ = [
    "ADAPTERS",
    "Adapter",
    "SUPPORTED_MODEL_TYPES",
    "UnsupportedArchitecture",
    "adapter_for",
    "adapter_for_model_type",
    "arch_spec",
    "count_parameters",
]
