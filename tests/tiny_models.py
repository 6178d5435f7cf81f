"""Tiny random models of every supported family, built from configs (no hub access), and the
torch-free `ArchSpec` of the tiny Llama for tests that need only shapes (plans, the API)."""

from __future__ import annotations

from worker.engine.spec import ArchSpec

VOCAB = 96
HEAD_DIM = 8
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
)
# torch and transformers are imported inside the builders, so shape-only tests stay torch-free.
FAMILIES = [
    "llama",
    "llama_tied",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gpt2",
    "gemma2",
    "gemma3",
    "olmo2",
    "granite",
]
# Mixture-of-experts families: a list of their own because the dense tests above read one MLP per layer
# (neuron scores at `down_proj`, `remove_neurons`), which MoE layers do not have; tests/engine/test_moe.py
# runs the same kinds of checks (cut == masked, reload, generate, importance, out of core) for these.
# 6 experts, top-2, expert width 12: small, yet removing experts changes which experts tokens reach.
MOE_FAMILIES = ["qwen3_moe", "mixtral", "qwen2_moe"]
MOE = dict(COMMON, head_dim=HEAD_DIM, num_experts_per_tok=2, tie_word_embeddings=False)
# Gemma: sliding-window layers with a window shorter than the tests' 11-token inputs, so the per-layer
# masks matter; soft-caps small enough to bend the tiny model's ~0.1 logits (real Gemma 2: 30 and 50).
GEMMA = dict(
    COMMON, head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=4, tie_word_embeddings=True
)


def tiny_configs() -> dict:
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GPT2Config,
        GraniteConfig,
        LlamaConfig,
        MistralConfig,
        Olmo2Config,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    configs = {
        "llama": LlamaConfig(**COMMON, head_dim=HEAD_DIM, tie_word_embeddings=False),
        "llama_tied": LlamaConfig(**COMMON, head_dim=HEAD_DIM, tie_word_embeddings=True),
        "mistral": MistralConfig(**COMMON, head_dim=HEAD_DIM, sliding_window=None, tie_word_embeddings=False),
        "qwen2": Qwen2Config(**COMMON, tie_word_embeddings=False),
        "qwen3": Qwen3Config(**COMMON, head_dim=HEAD_DIM, tie_word_embeddings=False),
        "phi3": Phi3Config(**COMMON, tie_word_embeddings=False, pad_token_id=0),
        "gpt2": GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=8, n_positions=128, bos_token_id=1, eos_token_id=2
        ),
        "gemma2": Gemma2Config(**GEMMA, final_logit_softcapping=0.3, attn_logit_softcapping=2.0),
        # Gemma 3 has no soft-caps; layers 0, 1, 3 slide, layer 2 is global (its own RoPE base).
        "gemma3": Gemma3TextConfig(
            **GEMMA,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        ),
        "olmo2": Olmo2Config(**COMMON, tie_word_embeddings=False, pad_token_id=0),
        # Granite 3 multipliers, milder than the real ones (12, 0.22, 8) so that a cut still moves the
        # random tiny model's logits beyond the tests' tolerances; none is 1, so each one is exercised.
        "granite": GraniteConfig(
            **COMMON,
            tie_word_embeddings=False,
            embedding_multiplier=2.0,
            residual_multiplier=0.5,
            attention_multiplier=0.25,
            logits_scaling=4.0,
        ),
    }
    assert list(configs) == FAMILIES
    return configs


def tiny_moe_configs() -> dict:
    from transformers import MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

    # Qwen3-MoE's default does not renormalise the top-k probabilities, Mixtral always does: both kinds.
    return {
        "qwen3_moe": Qwen3MoeConfig(**MOE, num_experts=6, moe_intermediate_size=12, norm_topk_prob=False),
        "mixtral": MixtralConfig(
            **{**MOE, "intermediate_size": 12}, num_local_experts=6, sliding_window=None
        ),
        # Qwen2-MoE: q/k/v biases and a shared expert (width 16) beside the routed ones.
        "qwen2_moe": Qwen2MoeConfig(
            **MOE,
            num_experts=6,
            moe_intermediate_size=12,
            shared_expert_intermediate_size=16,
            norm_topk_prob=False,
        ),
    }


def tiny_model(name: str, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_moe_configs()[name] if name in MOE_FAMILIES else tiny_configs()[name]
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init puts norms at 1 and biases at 0; perturb them so tests see every parameter.
    with torch.no_grad():
        for name_, p in model.named_parameters():
            if "norm" in name_ or "ln_" in name_ or name_.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def tiny_spec(**overrides) -> ArchSpec:
    """`arch_spec(tiny_model("llama"))` written out (tests/engine/test_adapters.py checks they agree)."""
    base = dict(
        family="llama",
        model_type="llama",
        num_layers=COMMON["num_hidden_layers"],
        hidden_size=COMMON["hidden_size"],
        num_heads=COMMON["num_attention_heads"],
        num_kv_heads=COMMON["num_key_value_heads"],
        head_dim=HEAD_DIM,
        intermediate_size=COMMON["intermediate_size"],
        vocab_size=VOCAB,
        tie_word_embeddings=False,
        max_positions=COMMON["max_position_embeddings"],
    )
    return ArchSpec(**{**base, **overrides})
