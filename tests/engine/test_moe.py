"""Mixture of experts (Qwen3-MoE, Mixtral, Qwen2-MoE with its shared expert): cost model, plans, surgery, reload and generation.

The experts of a layer are fused 3-D tensors (transformers 5): gate_up_proj [E, 2F, D], down_proj
[E, D, F], plus the router `gate` [E, D]. Every cut is checked against the masked teacher
(worker/engine/masking.py: removed experts' router logits at -inf, removed expert channels zeroed),
which needs no weight change, to 1e-5: expert removal, per-expert channel cuts, both with head and
layer cuts. Qwen3-MoE's tiny config does not renormalise the top-k probabilities, Mixtral does, so
both routings are covered.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.engine.test_loading import tiny_tokenizer
from tests.tiny_models import MOE_FAMILIES, VOCAB, tiny_model
from worker.engine.adapters import arch_spec, count_parameters
from worker.engine.loading import LAYERS_FILE, load_model, save_model
from worker.engine.masking import masked
from worker.engine.plan import (
    ImportanceScores,
    PlanError,
    PrunePlan,
    fill_plan,
    plan_stats,
    resulting_spec,
    validate_plan,
)
from worker.engine.surgery import apply_plan

E, K, F = 6, 2, 12  # tiny configs: experts, top-k, expert width


def ids() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, 11), generator=torch.Generator().manual_seed(5))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(ids()).logits


# Expert widths go 12 -> 8: fp32 grouped_mm kernels need widths in multiples of 4 (16 bytes).
PER_EXPERT = {e: [e, (e + 1) % F, 6 + e % 3, 9 + e % 3] for e in range(E)}  # each expert its own 4
CUTS = {
    "experts": PrunePlan(remove_experts={0: [1, 4], 2: [0, 1, 2, 3]}),
    "experts_uniform": PrunePlan(remove_experts={i: [i, 5] for i in range(4)}),
    "expert_channels": PrunePlan(remove_expert_neurons={i: PER_EXPERT for i in range(4)}),
    "combined": PrunePlan(
        remove_experts={1: [2]},
        remove_expert_neurons={1: {e: PER_EXPERT[e] for e in range(E) if e != 2}},
        remove_heads={0: [1, 3, 5, 7]},
        remove_kv_groups={2: [1]},
        drop_layers=[3],
    ),
}


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_parameter_count_is_exact_and_active_counts_top_k_experts(family):
    model = tiny_model(family)
    spec = arch_spec(model)
    assert (spec.num_experts, spec.experts_per_token, spec.intermediate_size) == (E, K, F)
    counts = spec.param_count()
    assert counts["total"] == count_parameters(model)
    expert = 3 * spec.hidden_size * F  # one gated expert FFN
    assert counts["total"] - counts["active"] == spec.num_layers * (E - K) * expert
    summary = spec.summary()
    assert summary["params_active"] == counts["active"] and summary["layers"][0]["num_experts"] == E
    # FLOPs per token run the router and top-k experts only.
    dense_like = spec.model_copy(update={"num_experts": 0, "experts_per_token": 0})
    shared = spec.shared_expert_params(spec.hidden_size)  # Qwen2-MoE: every token runs it
    assert (shared > 0) == (family == "qwen2_moe")
    per_layer_extra = 2 * ((K - 1) * expert + E * spec.hidden_size + shared)
    assert spec.flops_per_token() == dense_like.flops_per_token() + spec.num_layers * per_layer_extra


def test_parameter_counts_at_qwen3_30b_a3b_shape_on_meta():
    """The published 30.5B total / 3.3B active, and numel of the real-shaped model (no weights)."""
    from transformers import Qwen3MoeConfig

    from tests.real_shapes import qwen3_30b_a3b

    config = Qwen3MoeConfig(
        vocab_size=151936,
        hidden_size=2048,
        moe_intermediate_size=768,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        num_experts=128,
        num_experts_per_tok=8,
        max_position_embeddings=40960,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    spec = arch_spec(model)
    assert spec.model_copy(update={"dtype": "bfloat16"}) == qwen3_30b_a3b(dtype="bfloat16")
    counts = spec.param_count()
    assert counts["total"] == count_parameters(model) == 30_532_122_624
    assert counts["active"] == 3_353_032_704


@pytest.mark.parametrize("family", MOE_FAMILIES)
@pytest.mark.parametrize("cut", list(CUTS))
def test_cut_equals_masked_teacher(family, cut):
    plan = CUTS[cut]
    model = tiny_model(family)
    with masked(model, plan):
        expected = logits(model)
    teacher = logits(model)
    student = apply_plan(copy.deepcopy(model), plan)
    got = logits(student)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got - teacher).abs().max() > 1e-3  # the cut changed the model
    new = resulting_spec(plan, arch_spec(model))
    assert arch_spec(student) == new
    assert count_parameters(student) == new.param_count()["total"]
    stats = plan_stats(plan, arch_spec(model))
    assert stats["params_total"] == count_parameters(student)
    assert stats["params_active"] < stats["teacher_params_active"] or cut == "experts"


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_greedy_generation_with_kv_cache_equals_masked_teacher(family):
    plan = CUTS["combined"]
    model = tiny_model(family)
    prompt = ids()[:1, :5]
    with torch.no_grad(), masked(model, plan):
        expected = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    student = apply_plan(copy.deepcopy(model), plan)
    with torch.no_grad():
        got = student.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_uniform_cut_reloads_with_vanilla_from_pretrained(family, tmp_path):
    plan = PrunePlan(
        remove_experts={i: [i, 5] for i in range(4)},
        remove_expert_neurons={i: {e: PER_EXPERT[e] for e in range(E)} for i in range(4)},
        remove_hidden=list(range(0, 32, 4)),  # 32 -> 24: a multiple of 4 (grouped_mm alignment)
    )
    student = apply_plan(tiny_model(family), plan)
    expected = logits(student)
    out = save_model(student, tiny_tokenizer(), tmp_path / "s", {"plan": plan.model_dump(mode="json")})
    assert not (out / LAYERS_FILE).exists()
    stock = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    torch.testing.assert_close(logits(stock), expected, atol=1e-6, rtol=0)
    assert arch_spec(stock).num_experts == E - 2 and arch_spec(stock).intermediate_size == F - 4


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_per_layer_expert_counts_reload_through_our_format(family, tmp_path):
    plan = CUTS["combined"]
    student = apply_plan(tiny_model(family), plan)
    expected = logits(student)
    out = save_model(student, tiny_tokenizer(), tmp_path / "s", {"plan": plan.model_dump(mode="json")})
    assert (out / LAYERS_FILE).exists()
    loaded, _ = load_model(out, attn_implementation="eager")
    torch.testing.assert_close(logits(loaded), expected, atol=1e-6, rtol=0)
    assert [s.num_experts for s in arch_spec(loaded).layer_shapes()] == [E, E - 1, E]


# ---- plan validation and filling -------------------------------------------------------------


def messages(plan: PrunePlan, family: str = "qwen3_moe") -> dict[str, str]:
    spec = arch_spec(tiny_model(family))
    return {m.field: m.text for m in validate_plan(plan, spec) if m.level == "error"}


def test_fewer_experts_than_top_k_is_refused_with_the_valid_range():
    errors = messages(PrunePlan(remove_experts={0: [0, 1, 2, 3, 4]}))
    assert "keep 1 of 6 experts, fewer than the 2" in errors["remove_experts.0"]
    assert "remove at most 4" in errors["remove_experts.0"] and "2, 3, 4 kept" in errors["remove_experts.0"]


def test_expert_widths_must_agree_within_a_layer_and_stay_aligned():
    errors = messages(PrunePlan(remove_expert_neurons={1: {0: [1, 2, 3, 4]}}))
    assert "widths 8 (experts [0]), 12 (experts [1, 2, 3, 4, 5])" in errors["remove_expert_neurons.1"]
    errors = messages(PrunePlan(remove_expert_neurons={1: {e: [0] for e in range(E)}}))
    assert (
        "multiple of 4" in errors["remove_expert_neurons.1"] and "8, 12" in errors["remove_expert_neurons.1"]
    )
    errors = messages(PrunePlan(remove_neurons={2: [0]}))
    assert "remove_expert_neurons.2" in errors["remove_neurons.2"]
    errors = messages(PrunePlan(remove_experts={0: [6]}))
    assert "valid: 0..5" in errors["remove_experts.0"]


def test_a_refused_plan_changes_nothing():
    model = tiny_model("mixtral")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PlanError):
        apply_plan(model, PrunePlan(remove_experts={0: [0, 1, 2, 3, 4]}))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def moe_scores(spec, rng) -> ImportanceScores:
    L, H = spec.num_layers, spec.num_heads
    return ImportanceScores(
        heads=rng.random((L, H)),
        neurons=np.zeros((L, 0)),
        hidden=rng.random(spec.hidden_size),
        experts=rng.random((L, E)),
        expert_neurons=rng.random((L, E, F)),
    )


def test_fill_keeps_the_best_experts_and_each_experts_best_channels():
    spec = arch_spec(tiny_model("qwen3_moe"))
    scores = moe_scores(spec, np.random.default_rng(0))
    plan = fill_plan(PrunePlan(targets={"experts_per_layer": 4, "intermediate_size": 8}), spec, scores)
    for layer in range(spec.num_layers):
        assert plan.remove_experts[layer] == sorted(np.argsort(scores.experts[layer])[:2].tolist())
        for e in set(range(E)) - set(plan.remove_experts[layer]):
            expected = sorted(np.argsort(scores.expert_neurons[layer, e])[:4].tolist())
            assert plan.remove_expert_neurons[layer][e] == expected
        assert set(plan.remove_expert_neurons[layer]).isdisjoint(plan.remove_experts[layer])
    assert validate_plan(plan, spec) == []
    assert arch_spec(apply_plan(tiny_model("qwen3_moe"), plan)) == resulting_spec(plan, spec)


@pytest.mark.parametrize("budget", ["param_budget", "active_param_budget"])
def test_budgets_in_total_or_active_parameters(budget):
    spec = arch_spec(tiny_model("mixtral"))
    key = "total" if budget == "param_budget" else "active"
    teacher = spec.param_count()[key]
    target = int(teacher * 0.8)
    plan = fill_plan(PrunePlan(targets={budget: target}), spec, moe_scores(spec, np.random.default_rng(1)))
    new = resulting_spec(plan, spec)
    assert new.param_count()[key] <= target
    assert new.intermediate_size % 4 == 0 and new.hidden_size % 4 == 0
    # The largest aligned width under the budget: 4 more channels per expert would not fit.
    if new.hidden_size == spec.hidden_size:
        wider = new.model_copy(update={"intermediate_size": new.intermediate_size + 4})
        assert wider.param_count()[key] > target
    errors = messages(PrunePlan(targets={"experts_per_layer": 1}), "mixtral")
    assert "nearby valid: 2, 3, 4" in errors["targets.experts_per_layer"]
    assert math.isfinite(plan_stats(plan, spec)["percent_of_teacher_active"])


# ---- out of core ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", MOE_FAMILIES)
@pytest.mark.parametrize("cut", ["combined", "experts_uniform", "expert_channels"])
def test_out_of_core_cut_equals_in_memory_cut(family, cut, tmp_path):
    """The teacher on disk has the hub's per-expert layout (Mixtral: block_sparse_moe.experts.{e}.w1..w3);
    out-of-core surgery reads only the kept experts' tensors and writes the same weights."""
    from tests.engine.test_out_of_core import load_by_contract, save_teacher
    from worker.engine.out_of_core import prune_checkpoint

    plan = CUTS[cut]
    teacher = tiny_model(family)
    source = save_teacher(teacher, tmp_path / "teacher")
    out = prune_checkpoint(source, plan, tmp_path / "student", {}, max_shard_bytes=16_000).path
    expected = apply_plan(copy.deepcopy(teacher), plan)
    got = load_by_contract(out)
    want, have = expected.state_dict(), got.state_dict()
    assert sorted(want) == sorted(have)
    for name, tensor in want.items():
        assert torch.equal(have[name], tensor), name
    torch.testing.assert_close(logits(got), logits(expected), atol=0, rtol=0)


def test_cli_shows_active_parameters_and_refuses_too_few_experts(tmp_path, capsys):
    from tests.engine.test_loading import tiny_tokenizer
    from worker.cli import main

    teacher = tmp_path / "teacher"
    tiny_model("mixtral").save_pretrained(teacher)
    tiny_tokenizer().save_pretrained(teacher)
    spec = arch_spec(tiny_model("mixtral"))
    assert main(["summary", str(teacher)]) == 0
    out = capsys.readouterr().out
    assert f"params_active             {spec.param_count()['active']:,}" in out
    plan = tmp_path / "plan.json"
    plan.write_text('{"remove_experts": {"0": [0, 1, 2, 3, 4]}}')
    assert main(["prune", str(teacher), "--plan", str(plan), "-o", str(tmp_path / "student")]) != 0
    assert "remove at most 4 experts" in capsys.readouterr().err
    assert not (tmp_path / "student").exists()
