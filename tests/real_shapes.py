"""Real models' shapes as ArchSpecs (no weights), for cost-model and memory-planner tests at scale."""

from __future__ import annotations

from worker.engine.spec import ArchSpec


def llama_3_1_8b(**overrides) -> ArchSpec:
    shape = dict(
        family="llama",
        model_type="llama",
        num_layers=32,
        hidden_size=4096,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=14336,
        vocab_size=128256,
        tie_word_embeddings=False,
    )
    return ArchSpec(**{**shape, **overrides})


def qwen3_30b_a3b(**overrides) -> ArchSpec:
    """128 experts of width 768, 8 per token (30.5B total, 3.3B active)."""
    shape = dict(
        family="qwen3_moe",
        model_type="qwen3_moe",
        num_layers=48,
        hidden_size=2048,
        num_heads=32,
        num_kv_heads=4,
        head_dim=128,
        intermediate_size=768,
        vocab_size=151936,
        tie_word_embeddings=False,
        qk_norm=True,
        num_experts=128,
        experts_per_token=8,
        max_positions=40960,
    )
    return ArchSpec(**{**shape, **overrides})
