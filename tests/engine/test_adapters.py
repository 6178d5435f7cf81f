"""The adapters locate every part, and the torch-free cost model counts real parameters exactly."""

import pytest
from transformers import AutoModelForCausalLM, GPTNeoXConfig

from tests.tiny_models import FAMILIES, tiny_model, tiny_spec
from worker.engine.adapters import UnsupportedArchitecture, adapter_for, arch_spec, count_parameters


@pytest.mark.parametrize("family", FAMILIES)
def test_param_count_matches_real_model(family):
    model = tiny_model(family)
    spec = arch_spec(model)
    counts = spec.param_count()
    assert counts["total"] == count_parameters(model)
    embedding = model.get_input_embeddings().weight.numel()
    if not spec.tie_word_embeddings:
        embedding += model.get_output_embeddings().weight.numel()
    if spec.position_embeddings:
        embedding += adapter_for(model).position_embed(model).weight.numel()
    assert counts["non_embedding"] == count_parameters(model) - embedding


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_locates_parts(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    spec = arch_spec(model)
    layers = adapter.layers(model)
    assert len(layers) == spec.num_layers == 4
    layer = layers[0]
    assert adapter.in_features(adapter.attn_out(layer)) == spec.num_heads * spec.head_dim
    assert adapter.in_features(adapter.mlp_out(layer)) == spec.intermediate_size
    assert all(n.weight.shape == (spec.hidden_size,) for n in adapter.norms(layer))
    assert spec.num_heads == 8
    assert spec.num_kv_heads == (8 if family == "gpt2" else 4)
    assert spec.tie_word_embeddings == (family in ("llama_tied", "gpt2", "gemma2", "gemma3"))
    summary = spec.summary()
    assert summary["params_total"] == count_parameters(model)
    assert summary["kv_cache_bytes_per_token"] == 4 * 2 * spec.num_kv_heads * spec.head_dim * 2


def test_unsupported_architecture_names_supported_ones():
    config = GPTNeoXConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(
        UnsupportedArchitecture,
        match="supported: llama, mistral, qwen2, qwen3, phi3, gpt2, gemma2, gemma3_text, olmo2, granite",
    ):
        arch_spec(model)


def test_tiny_spec_is_the_tiny_llamas_spec():
    # Shape-only tests (plans, the API) use the written-out spec; it must be the real model's.
    assert arch_spec(tiny_model("llama")) == tiny_spec()


REAL_SHAPES = {  # the published models' shapes, built on "meta": no weights, no hub access
    "gemma-2-2b": (
        "Gemma2Config",
        dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8),
        dict(vocab_size=256000, num_key_value_heads=4, head_dim=256),
    ),
    "gemma-3-1b": (
        "Gemma3TextConfig",
        dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4),
        dict(vocab_size=262144, num_key_value_heads=1, head_dim=256),
    ),
    "olmo-2-1b": (
        "Olmo2Config",
        dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16),
        dict(vocab_size=100352, num_key_value_heads=16),
    ),
}


@pytest.mark.parametrize("name", list(REAL_SHAPES))
def test_param_count_of_real_shapes(name):
    # head_dim 256 with hidden 2304 / 8 heads: the count must not derive head_dim from the hidden size.
    import torch
    import transformers

    config_class, widths, rest = REAL_SHAPES[name]
    config = getattr(transformers, config_class)(**widths, **rest)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert arch_spec(model).param_count()["total"] == count_parameters(model)
