"""Tiny random models of every supported family, built from configs (no hub access)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 96
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


def tiny_configs() -> dict:
    return {
        "llama": LlamaConfig(**COMMON, head_dim=8, tie_word_embeddings=False),
        "llama_tied": LlamaConfig(**COMMON, head_dim=8, tie_word_embeddings=True),
        "mistral": MistralConfig(**COMMON, head_dim=8, sliding_window=None, tie_word_embeddings=False),
        "qwen2": Qwen2Config(**COMMON, tie_word_embeddings=False),
        "qwen3": Qwen3Config(**COMMON, head_dim=8, tie_word_embeddings=False),
        "phi3": Phi3Config(**COMMON, tie_word_embeddings=False, pad_token_id=0),
        "gpt2": GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=8, n_positions=128, bos_token_id=1, eos_token_id=2
        ),
    }


FAMILIES = list(tiny_configs())


def tiny_model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = tiny_configs()[name]
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init puts norms at 1 and biases at 0; perturb them so tests see every parameter.
    with torch.no_grad():
        for name_, p in model.named_parameters():
            if "norm" in name_ or "ln_" in name_ or name_.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()
