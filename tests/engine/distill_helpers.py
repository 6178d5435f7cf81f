"""Shared fixtures for the distillation and evaluation tests: the demo tokenizer, tiny Llamas over its
vocabulary, and packed blocks from a few demo-corpus documents (all small enough for 2 CPU cores)."""

from __future__ import annotations

import functools

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from worker.demo import demo_tokenizer_path
from worker.engine.data import PackedTokens, read_documents


@functools.lru_cache(maxsize=1)
def demo_tokenizer():
    return AutoTokenizer.from_pretrained(str(demo_tokenizer_path()))


def tiny_llama(
    seed: int = 0, *, layers: int = 2, hidden: int = 32, intermediate: int = 48, vocab: int | None = None
):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab or len(demo_tokenizer()),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@functools.lru_cache(maxsize=8)
def demo_documents(split: str, count: int) -> tuple[str, ...]:
    return tuple(read_documents("demo", split)[:count])


def packed(split: str = "train", *, seq_len: int = 32, docs: int = 6) -> PackedTokens:
    return PackedTokens(demo_tokenizer(), list(demo_documents(split, docs)), seq_len)
