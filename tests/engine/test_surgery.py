"""Real structural pruning: the cut model computes what the masked unpruned model computes.

For every family in tests/tiny_models.FAMILIES and every exact cut (heads, KV groups, neurons,
layers, all at once), the pruned model's float32 logits equal those of the unpruned model with the
same units masked, its parameter count equals the plan's prediction, and generation with a KV cache
gives the same tokens as generation without one.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tests.tiny_models import COMMON, FAMILIES, VOCAB, tiny_model
from worker.engine import masking
from worker.engine.adapters import adapter_for, arch_spec, count_parameters
from worker.engine.masking import masked
from worker.engine.plan import PlanError, PlanTargets, PrunePlan, plan_stats
from worker.engine.surgery import apply_plan

# Same head count in every layer (Phi-3 requires it) but different heads and groups per layer.
HEADS = PrunePlan(remove_heads={0: [0, 2, 4, 6], 1: [1, 3, 5, 7], 2: [0, 3, 4, 7], 3: [1, 2, 5, 6]})
GROUPS = PrunePlan(remove_kv_groups={0: [0, 3], 1: [1, 2], 2: [0, 1], 3: [2, 3]})
NEURONS = PrunePlan(remove_neurons={0: list(range(10)), 1: [3, 17, 29, 40], 3: [47]})
LAYERS = PrunePlan(drop_layers=[1, 2])
COMBINED = PrunePlan(
    drop_layers=[2],
    remove_heads={0: [1, 3, 5, 7], 1: [0, 2, 4, 6], 3: [0, 2, 4, 6]},
    remove_neurons={0: [5, 6], 3: list(range(20))},
)
EXACT_CUTS = {"heads": HEADS, "groups": GROUPS, "neurons": NEURONS, "layers": LAYERS, "combined": COMBINED}
# Different head counts per layer (every family but Phi-3, whose config holds one head count).
UNEVEN_HEADS = PrunePlan(remove_heads={0: [0, 2, 4, 6]}, remove_kv_groups={2: [1]}, drop_layers=[3])
HIDDEN = PrunePlan(remove_hidden=list(range(0, 32, 4)))  # 32 -> 24 channels (a multiple of GPT-2's head_dim)


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, 11), generator=torch.Generator().manual_seed(seed))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def assert_cache_generation_consistent(model) -> None:
    prompt = inputs(2)[:1, :5]
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    with_cache = model.generate(prompt, use_cache=True, **kw)
    without = model.generate(prompt, use_cache=False, **kw)
    assert with_cache.shape == (1, 11)
    assert torch.equal(with_cache, without)


def check_cut_equals_mask(family: str, plan: PrunePlan) -> None:
    model = tiny_model(family)
    spec = arch_spec(model)
    ids = inputs()
    with masked(model, plan):
        expected = logits(model, ids)
    full = logits(model, ids)
    assert not torch.allclose(full, expected, atol=1e-4)  # the cut matters on these inputs
    stats = plan_stats(plan, spec)
    pruned = apply_plan(model, plan)
    assert pruned is model
    torch.testing.assert_close(logits(pruned, ids), expected, atol=1e-5, rtol=0)
    assert count_parameters(pruned) == stats["params_total"]
    assert arch_spec(pruned).param_count()["total"] == stats["params_total"]  # ArchSpec of the real model
    assert arch_spec(pruned).summary()["layers"] == stats["spec"]["layers"]
    assert_cache_generation_consistent(pruned)


@pytest.mark.parametrize("cut", list(EXACT_CUTS))
@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_logits_equal_masked_logits(family, cut):
    check_cut_equals_mask(family, EXACT_CUTS[cut])


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "phi3"])
def test_uneven_head_counts_per_layer(family):
    check_cut_equals_mask(family, UNEVEN_HEADS)
    model = apply_plan(tiny_model(family), UNEVEN_HEADS)
    shapes = arch_spec(model).layer_shapes()
    assert [(s.num_heads, s.num_kv_heads) for s in shapes][:3] == (
        [(4, 4), (8, 8), (7, 7)] if family == "gpt2" else [(4, 4), (8, 4), (6, 3)]
    )


def test_masking_leaves_the_model_unchanged_afterwards():
    model = tiny_model("llama")
    ids = inputs()
    before = logits(model, ids)
    with masked(model, COMBINED):
        assert not torch.allclose(logits(model, ids), before)
    torch.testing.assert_close(logits(model, ids), before, atol=0, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_channel_cut_shapes_params_and_generation(family):
    model = tiny_model(family)
    spec = arch_spec(model)
    adapter = adapter_for(model)
    tied = adapter.lm_head(model).weight is adapter.embed(model).weight
    stats = plan_stats(HIDDEN, spec)
    apply_plan(model, HIDDEN)
    assert adapter.embed(model).weight.shape == (VOCAB, 24)
    assert adapter.lm_head(model).weight.shape == (VOCAB, 24)
    assert (adapter.lm_head(model).weight is adapter.embed(model).weight) == tied
    if adapter.position_embed(model) is not None:
        assert adapter.position_embed(model).weight.shape == (128, 24)
    assert adapter.final_norm(model).weight.shape == (24,)
    for layer in adapter.layers(model):
        assert all(n.weight.shape == (24,) for n in adapter.norms(layer))
        assert adapter.in_features(adapter.qkv(layer)[0]) == 24
        assert adapter.out_features(adapter.attn_out(layer)) == 24
        assert adapter.out_features(adapter.mlp_out(layer)) == 24
    assert model.config.hidden_size == 24 and model.config.head_dim == spec.head_dim
    assert count_parameters(model) == stats["params_total"]
    assert arch_spec(model).head_dim == spec.head_dim  # head_dim is kept
    assert torch.isfinite(logits(model, inputs())).all()
    assert_cache_generation_consistent(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_config_and_module_attributes_follow_the_cut(family):
    model = tiny_model(family)
    plan = PrunePlan(
        drop_layers=[0],
        remove_heads={i: [0, 1, 2, 3] for i in range(1, 4)},  # whole groups 0, 1 (GPT-2: 4 heads)
        remove_neurons={i: list(range(8)) for i in range(1, 4)},
    )
    apply_plan(model, plan)
    adapter = adapter_for(model)
    config = model.config
    assert config.num_hidden_layers == 3 and len(adapter.layers(model)) == 3
    assert config.head_dim == arch_spec(model).head_dim
    inter = getattr(config, adapter.intermediate_field)
    if family == "gpt2":
        assert inter == 120
        # n_head stays n_embd / head_dim so GPT-2 keeps deriving head_dim = 4; the layers hold 4 heads.
        assert config.num_attention_heads == 8
        attn = adapter.attn(adapter.layers(model)[0])
        assert (attn.num_heads, attn.split_size, attn.head_dim) == (4, 16, 4)
    else:
        assert inter == 40
        assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
        attn = adapter.attn(adapter.layers(model)[0])
        assert attn.num_key_value_groups == 2
    for i, layer in enumerate(adapter.layers(model)):
        assert adapter.attn(layer).layer_idx == i  # the KV cache indexes layers by position


def test_per_layer_config_lists_are_sliced_with_the_layers():
    # Sliding and full attention layers alternate: the mask of each kept layer must stay its own.
    config = Qwen2Config(
        **COMMON,
        use_sliding_window=True,
        sliding_window=3,
        layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    plan = PrunePlan(drop_layers=[1])
    ids = inputs()
    with masked(model, plan):
        expected = logits(model, ids)
    apply_plan(model, plan)
    assert model.config.layer_types == ["full_attention", "full_attention", "sliding_attention"]
    torch.testing.assert_close(logits(model, ids), expected, atol=1e-5, rtol=0)
    assert_cache_generation_consistent(model)


def test_qwen3_per_head_norms_are_kept_whole():
    model = tiny_model("qwen3")
    attn = adapter_for(model).attn(model.model.layers[0])
    q_norm = attn.q_norm.weight.detach().clone()
    apply_plan(model, HEADS)
    assert attn.q_norm.weight.shape == (8,)  # head_dim, shared by the remaining heads
    assert torch.equal(attn.q_norm.weight, q_norm)
    assert attn.q_proj.weight.shape == (4 * 8, 32) and attn.k_proj.weight.shape == (4 * 8, 32)


def test_qwen2_biases_and_gpt2_fused_weights_are_sliced():
    qwen = apply_plan(tiny_model("qwen2"), GROUPS)
    attn = qwen.model.layers[0].self_attn
    assert attn.q_proj.bias.shape == (4 * 4,) and attn.k_proj.bias.shape == (2 * 4,)
    gpt = tiny_model("gpt2")
    c_attn = gpt.transformer.h[0].attn.c_attn
    kept_v = c_attn.weight[:, 64 + 4 : 64 + 8].detach().clone()  # V columns of head 1
    apply_plan(gpt, PrunePlan(remove_heads={0: [0, 2, 3, 4, 5, 6, 7]}))
    assert c_attn.weight.shape == (32, 12) and c_attn.bias.shape == (12,)
    assert torch.equal(c_attn.weight[:, 8:12], kept_v)


def test_phi3_fused_projections_are_sliced():
    model = tiny_model("phi3")
    layer = model.model.layers[0]
    apply_plan(model, PrunePlan(remove_kv_groups={i: [0] for i in range(4)}, remove_neurons={0: [0, 1]}))
    assert layer.self_attn.qkv_proj.weight.shape == ((6 + 2 * 3) * 4, 32)
    assert layer.mlp.gate_up_proj.weight.shape == (2 * 46, 32)
    assert layer.mlp.down_proj.weight.shape == (32, 46)


def test_invalid_plan_is_rejected_before_anything_changes():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = PrunePlan(remove_neurons={0: [1]}, remove_heads={1: [0]})  # neuron cut fine, heads uneven
    with pytest.raises(PlanError, match="same number"):
        apply_plan(model, bad)
    with pytest.raises(ValueError, match="fill_plan"):
        apply_plan(model, PrunePlan(targets=PlanTargets(intermediate_size=8)))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hidden_mask_preview_zeroes_the_channels_everywhere(family):
    # A preview only: norms still average over all channels, so no equivalence is claimed.
    model = tiny_model(family)
    adapter = adapter_for(model)
    seen = []
    hooks = [adapter.lm_head(model).register_forward_pre_hook(lambda _m, a: seen.append(a[0]))]
    for layer in adapter.layers(model):
        hooks.append(adapter.qkv(layer)[0].register_forward_pre_hook(lambda _m, a: seen.append(a[0])))
    with masked(model, HIDDEN):
        logits(model, inputs())
    for hook in hooks:
        hook.remove()
    assert len(seen) == 5
    assert all((x[..., HIDDEN.remove_hidden] == 0).all() for x in seen)
    assert all((x[..., 1] != 0).any() for x in seen)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # CUDA runs where there is one


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", ["llama_tied", "phi3", "gpt2", "gemma2", "olmo2"])
def test_cut_keeps_device_and_dtype(family, device):
    model = tiny_model(family).to(device)
    ids = inputs().to(device)
    with masked(model, COMBINED):
        expected = logits(model, ids)
    apply_plan(model, COMBINED)
    torch.testing.assert_close(logits(model, ids), expected, atol=1e-5, rtol=0)
    assert {p.device.type for p in model.parameters()} == {device}
    half = tiny_model(family).to(device=device, dtype=torch.bfloat16)
    apply_plan(half, COMBINED)
    apply_plan(half, HIDDEN)
    assert {(p.device.type, p.dtype) for p in half.parameters()} == {(device, torch.bfloat16)}
    out = half.generate(ids[:1, :4], max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7) and out.device.type == device


def test_olmo2_full_width_qk_norms_are_sliced_with_the_heads(monkeypatch):
    model = tiny_model("olmo2")  # head_dim 4: q_norm spans 8 x 4, k_norm 4 x 4
    attn = model.model.layers[0].self_attn
    q_norm, k_norm = attn.q_norm.weight.detach().clone(), attn.k_norm.weight.detach().clone()
    ids = inputs()
    # Without the mask's norm emulation the statistic would still span the removed heads: the cut
    # model (whose norms see only the kept heads) would then differ from the masked one.
    monkeypatch.setattr(masking, "_norm_over_kept", lambda keep: lambda *_: None)
    with masked(model, GROUPS):
        plain_zeroing = logits(model, ids)
    monkeypatch.undo()
    with masked(model, GROUPS):
        expected = logits(model, ids)
    apply_plan(model, GROUPS)  # layer 0 loses KV groups 0 and 3, i.e. query heads 0, 1, 6, 7
    kept_q = [c for h in (2, 3, 4, 5) for c in range(4 * h, 4 * h + 4)]
    kept_k = [c for g in (1, 2) for c in range(4 * g, 4 * g + 4)]
    assert torch.equal(attn.q_norm.weight, q_norm[kept_q]) and torch.equal(attn.k_norm.weight, k_norm[kept_k])
    torch.testing.assert_close(logits(model, ids), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(logits(model, ids), plain_zeroing, atol=1e-4)


def test_gemma_layer_types_follow_dropped_layers():
    # Gemma 3: layers 0, 1, 3 slide over 4 tokens, layer 2 is global with its own RoPE base. Dropping
    # layer 0 must keep each remaining layer's mask and rotary table (11-token inputs: the window bites).
    for family, drop, types in (
        ("gemma3", [0], ["sliding_attention", "full_attention", "sliding_attention"]),
        ("gemma3", [2], ["sliding_attention"] * 3),
        ("gemma2", [1, 2], ["sliding_attention", "full_attention"]),
    ):
        model = tiny_model(family)
        check_cut_equals_mask(family, PrunePlan(drop_layers=drop))
        apply_plan(model, PrunePlan(drop_layers=drop))
        assert model.config.layer_types == types
        assert [layer.self_attn.sliding_window for layer in model.model.layers] == [
            4 if t == "sliding_attention" else None for t in types
        ]


def test_gemma_hidden_cut_rescales_embeddings_as_a_reload_would():
    # Gemma multiplies embeddings by sqrt(config.hidden_size), rebuilt from the config on load: the cut
    # model uses sqrt(24) like its reload. (Hence no pruned == masked claim for hidden cuts: the masked
    # teacher keeps sqrt(32), besides the norms' statistics over all channels.)
    for family in ("gemma2", "gemma3"):
        model = tiny_model(family)
        apply_plan(model, HIDDEN)
        embed = model.model.embed_tokens
        assert embed.embed_scale.item() == pytest.approx(24**0.5) and embed.scalar_embed_scale == 24**0.5
        rebuilt = type(model)(model.config).model.embed_tokens
        assert torch.equal(rebuilt.embed_scale, embed.embed_scale)
