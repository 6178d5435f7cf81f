"""The plan schema, its validation messages, its cost preview and filling targets from scores.

Torch-free: specs are written out (`tests.tiny_models.tiny_spec`, the tiny Llama's shapes).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.tiny_models import tiny_spec
from worker.engine.plan import (
    ImportanceScores,
    PlanError,
    PlanTargets,
    PrunePlan,
    expert_alignment,
    fill_plan,
    fill_warnings,
    hidden_alignment,
    plan_stats,
    resulting_spec,
    validate_plan,
)
from worker.engine.spec import ArchSpec, LayerShape


def gpt2_spec() -> ArchSpec:
    return tiny_spec(
        family="gpt2",
        model_type="gpt2",
        num_kv_heads=8,
        head_dim=4,
        intermediate_size=128,
        qkv_bias=True,
        o_bias=True,
        mlp_gated=False,
        mlp_bias=True,
        norm_bias=True,
        position_embeddings=128,
        tie_word_embeddings=True,
    )


def errors(plan: PrunePlan, spec: ArchSpec) -> list[str]:
    return [f"{m.field}: {m.text}" for m in validate_plan(plan, spec) if m.level == "error"]


def scores_for(spec: ArchSpec, seed: int = 0) -> ImportanceScores:
    rng = np.random.default_rng(seed)
    L = spec.num_layers
    return ImportanceScores(
        heads=rng.random((L, spec.num_heads)),
        neurons=rng.random((L, spec.intermediate_size)),
        hidden=rng.random(spec.hidden_size),
        layers={
            "block_importance": np.array([0.9, 0.1, 0.5, 0.3]),
            "drop_loss": np.array([2.0, 0.4, 0.2, 1.0]),
            "block_loss_k2": np.array([1.5, 0.7, 0.9]),
        },
    )


# ---- schema ------------------------------------------------------------------------------------


def test_plan_json_round_trip_with_string_layer_keys():
    plan = PrunePlan(
        drop_layers=[3, 1, 3],
        remove_heads={0: [5, 1]},
        remove_kv_groups={2: [1]},
        remove_neurons={1: [0, 2]},
        remove_hidden=[7, 3],
        targets=PlanTargets(intermediate_size=40),
    )
    text = plan.model_dump_json()
    assert json.loads(text)["remove_heads"] == {"0": [1, 5]}  # JSON keys are strings
    back = PrunePlan.model_validate_json(text)
    assert back == plan
    assert back.drop_layers == [1, 3] and back.remove_hidden == [3, 7]  # sorted, de-duplicated


def test_plan_rejects_unknown_fields_and_bad_target_values():
    with pytest.raises(ValueError, match="remove_layers"):
        PrunePlan.model_validate({"remove_layers": [1]})
    with pytest.raises(ValueError, match="head_mode"):
        PrunePlan.model_validate({"targets": {"head_mode": "random"}})
    with pytest.raises(ValueError, match="heads_per_layer"):
        PrunePlan.model_validate({"targets": {"heads_per_layer": 0}})


def test_plan_module_is_torch_free():
    code = "import sys, worker.engine.plan; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- validation ---------------------------------------------------------------------------------


def test_valid_plan_has_no_messages():
    plan = PrunePlan(remove_heads={i: [0, 2, 4, 6] for i in (0, 1, 3)}, drop_layers=[2])
    assert validate_plan(plan, tiny_spec()) == []


def test_unequal_gqa_groups_are_rejected_with_valid_counts():
    # Group 0 (heads 0, 1) loses one head, the others none.
    (msg,) = errors(PrunePlan(remove_heads={1: [0]}), tiny_spec())
    assert "remove_heads.1" in msg and "[1, 2, 2, 2]" in msg
    assert "same number" in msg and "Valid head counts near 7: 4, 6, 8" in msg


def test_fully_emptied_group_is_removed_with_its_heads():
    # Removing both query heads of group 3 removes the group: 3 groups x 2 heads stay, which is valid.
    plan = PrunePlan(remove_heads={0: [6, 7]})
    assert errors(plan, tiny_spec()) == []
    layer0 = resulting_spec(plan, tiny_spec()).layer_shapes()[0]
    assert (layer0.num_heads, layer0.num_kv_heads) == (6, 3)


def test_zero_heads_and_zero_neurons_are_rejected():
    spec = tiny_spec()
    (msg,) = errors(PrunePlan(remove_kv_groups={2: [0, 1, 2, 3]}), spec)
    assert "keep no attention head" in msg and "drop_layers" in msg
    (msg,) = errors(PrunePlan(remove_neurons={0: list(range(48))}), spec)
    assert "keep no MLP neuron" in msg
    # An empty layer: both messages.
    both = errors(PrunePlan(remove_heads={1: list(range(8))}, remove_neurons={1: list(range(48))}), spec)
    assert len(both) == 2


def test_dropping_all_layers_and_out_of_range_indices_are_rejected():
    spec = tiny_spec()
    (msg,) = errors(PrunePlan(drop_layers=[0, 1, 2, 3]), spec)
    assert "cannot drop all 4 layers" in msg and "at most 3" in msg
    assert "valid: 0..3" in errors(PrunePlan(drop_layers=[4]), spec)[0]
    assert "valid: 0..7" in errors(PrunePlan(remove_heads={0: [8]}), spec)[0]
    assert "valid: 0..3" in errors(PrunePlan(remove_kv_groups={0: [4]}), spec)[0]
    assert "valid: 0..47" in errors(PrunePlan(remove_neurons={0: [-1]}), spec)[0]
    assert "valid: 0..31" in errors(PrunePlan(remove_hidden=[32]), spec)[0]
    assert "valid: 0..3" in errors(PrunePlan(remove_neurons={9: [0]}), spec)[0]
    assert "all 32 hidden channels" in errors(PrunePlan(remove_hidden=list(range(32))), spec)[0]


def test_gpt2_hidden_size_must_be_a_multiple_of_head_dim():
    (msg,) = errors(PrunePlan(remove_hidden=[0, 1]), gpt2_spec())
    assert "head_dim = n_embd / n_head" in msg and "nearby valid hidden sizes: 28, 32" in msg
    # A target says the same rule in the same words, and offers no size above the model's own.
    (target_msg,) = errors(PrunePlan(targets=PlanTargets(hidden_size=30)), gpt2_spec())
    assert target_msg == msg.replace("remove_hidden:", "targets.hidden_size:")
    assert hidden_alignment(gpt2_spec()) == 4  # head_dim: the whole rule, for every caller


def test_nearby_hidden_sizes_stop_at_the_model_hidden_size():
    # A whole KV group removed leaves 6 heads, which 32 is not a multiple of: 36 cannot be kept.
    spec = tiny_spec()
    (msg,) = errors(PrunePlan(remove_kv_groups={i: [0] for i in range(4)}), spec)
    assert msg.endswith("nearby valid hidden sizes: 30"), msg


def test_llama_hidden_size_must_be_a_multiple_of_the_head_count():
    # LlamaConfig refuses hidden_size % num_attention_heads != 0, even with an explicit head_dim.
    spec = tiny_spec()
    (msg,) = errors(PrunePlan(remove_hidden=[0, 1, 2]), spec)
    assert msg.startswith("remove_hidden:") and "nearby valid hidden sizes: 24, 32" in msg
    (msg,) = errors(PrunePlan(targets=PlanTargets(hidden_size=20)), spec)
    assert msg.startswith("targets.hidden_size:") and "nearby valid hidden sizes: 16, 24" in msg
    # With whole KV groups removed the config keeps 4 heads, so 20 becomes valid.
    assert (
        errors(PrunePlan(remove_kv_groups={i: [0, 1] for i in range(4)}, remove_hidden=list(range(12))), spec)
        == []
    )
    # Other families only keep head_dim, so any hidden size is fine there.
    assert errors(PrunePlan(remove_hidden=[0, 1, 2]), tiny_spec(family="qwen3", model_type="qwen3")) == []


@pytest.mark.parametrize(
    "plan",
    [
        {"targets": {"hidden_size": 1}},
        {"targets": {"hidden_size": 20}},
        {"targets": {"intermediate_size": 10_000, "num_layers": 9}},
        {"targets": {"heads_per_layer": 3}},
        {"remove_hidden": [0, 1, 2], "targets": {"hidden_size": 16}},
        {"remove_heads": {"0": [0, 1, 2, 3, 4, 5, 6, 7]}, "drop_layers": [9]},
    ],
)
def test_every_error_names_a_field_the_plan_has(plan):
    """The API turns a message's field into the 422's loc (body.plan + the path) and the planner marks
    that input: a path the plan does not have marks nothing (targets.hidden_size was "hidden_size")."""
    msgs = [m for m in validate_plan(PrunePlan.model_validate(plan), tiny_spec()) if m.level == "error"]
    assert msgs
    for m in msgs:
        head, _, rest = m.field.partition(".")
        assert head in PrunePlan.model_fields, m
        if head == "targets":
            assert rest.split(".")[0] in PlanTargets.model_fields, m


@pytest.mark.parametrize(
    "family,model_type,config",
    [("gemma2", "gemma2", "Gemma2Config"), ("gemma3", "gemma3_text", "Gemma3TextConfig")],
)
def test_gemma_hidden_size_must_be_a_multiple_of_the_head_count(family, model_type, config):
    # Gemma's configs validate it too (head_dim is explicit there, so only the config needs it);
    # OLMo 2 and Granite configs do not, and take any hidden size.
    spec = tiny_spec(family=family, model_type=model_type, layer_norms=4, tie_word_embeddings=True)
    (msg,) = errors(PrunePlan(remove_hidden=[0, 1, 2]), spec)
    assert (
        f"{config} requires hidden_size to be a multiple" in msg
        and "nearby valid hidden sizes: 24, 32" in msg
    )
    for other in ("olmo2", "granite"):
        assert errors(PrunePlan(remove_hidden=[0, 1, 2]), tiny_spec(family=other, model_type=other)) == []


def test_param_budget_keeps_llama_hidden_sizes_loadable():
    spec = tiny_spec()
    for fraction in (0.35, 0.5, 0.6):
        budget = int(spec.param_count()["total"] * fraction)
        plan = fill_plan(PrunePlan(targets=PlanTargets(param_budget=budget)), spec, scores_for(spec))
        new = resulting_spec(plan, spec)
        assert new.hidden_size % new.num_heads == 0
        assert errors(plan, spec) == []
        assert plan_stats(plan, spec)["params_total"] <= budget


def test_gpt2_head_cut_without_matching_hidden_warns_it_is_not_vanilla():
    msgs = validate_plan(PrunePlan(remove_heads={i: [0, 1] for i in range(4)}), gpt2_spec())
    (warning,) = msgs
    assert warning.level == "warning" and "6 x 4 != 32" in warning.text and "keep hidden 24" in warning.text
    plan = PrunePlan(remove_heads={i: [0, 1] for i in range(4)}, remove_hidden=list(range(8)))
    assert validate_plan(plan, gpt2_spec()) == []


def test_phi3_needs_the_same_head_count_in_every_layer():
    spec = tiny_spec(family="phi3", model_type="phi3")
    (msg,) = errors(PrunePlan(remove_heads={0: [0, 2, 4, 6]}), spec)
    assert "Phi-3" in msg and "[4, 8]" in msg
    assert errors(PrunePlan(remove_heads={i: [0, 2, 4, 6] for i in range(4)}), spec) == []


def test_non_uniform_plan_warns_about_the_save_format():
    (warning,) = validate_plan(PrunePlan(remove_neurons={0: [1]}), tiny_spec())
    assert warning.level == "warning" and "Prunescope format" in warning.text


def test_removals_on_dropped_layers_warn():
    msgs = validate_plan(PrunePlan(drop_layers=[1], remove_neurons={1: [0]}), tiny_spec())
    assert [m.level for m in msgs] == ["warning"] and "no effect" in msgs[0].text


# ---- stats -------------------------------------------------------------------------------------


def test_plan_stats_matches_the_cost_model_of_the_resulting_spec():
    spec = tiny_spec()
    plan = PrunePlan(
        drop_layers=[3],
        remove_heads={i: [0, 2, 4, 6] for i in range(3)},
        remove_neurons={i: list(range(16)) for i in range(3)},
        remove_hidden=list(range(8)),
    )
    stats = plan_stats(plan, spec)
    # By hand: 3 layers, d=24, 4 heads x 8, 4 KV heads x 8, MLP 32, untied embeddings.
    d, h, g, f = 24, 4 * 8, 4 * 8, 32
    layer = d * h + 2 * d * g + h * d + 3 * d * f + 2 * d
    expected = 3 * layer + d + 2 * 96 * d
    assert stats["params_total"] == expected
    assert stats["params_non_embedding"] == expected - 2 * 96 * d
    assert stats["percent_of_teacher_total"] == round(100 * expected / spec.param_count()["total"], 2)
    assert stats["kv_cache_bytes_per_token"] == 3 * 2 * 4 * 8 * 2
    assert stats["uniform"] and stats["vanilla_loadable"]
    assert stats["spec"]["num_layers"] == 3 and stats["spec"]["hidden_size"] == 24


def test_resulting_spec_lists_layers_when_they_differ():
    new = resulting_spec(PrunePlan(remove_kv_groups={1: [0]}, drop_layers=[0]), tiny_spec())
    assert new.layers == [
        LayerShape(num_heads=6, num_kv_heads=3, intermediate_size=48),
        LayerShape(num_heads=8, num_kv_heads=4, intermediate_size=48),
        LayerShape(num_heads=8, num_kv_heads=4, intermediate_size=48),
    ]
    assert plan_stats(PrunePlan(remove_kv_groups={1: [0]}), tiny_spec())["vanilla_loadable"] is False


# ---- filling targets ----------------------------------------------------------------------------


def test_fill_heads_within_groups_keeps_the_best_head_of_every_group():
    spec = tiny_spec()
    scores = scores_for(spec)
    plan = fill_plan(PrunePlan(targets=PlanTargets(heads_per_layer=4)), spec, scores)
    assert plan.targets is None and plan.remove_kv_groups == {}
    for layer in range(4):
        removed = plan.remove_heads[layer]
        for g in range(4):
            a, b = scores.heads[layer, 2 * g], scores.heads[layer, 2 * g + 1]
            assert removed[g] == (2 * g if a < b else 2 * g + 1)
    assert errors(plan, spec) == []


def test_fill_heads_whole_groups_drops_the_weakest_groups():
    spec = tiny_spec()
    scores = scores_for(spec)
    plan = fill_plan(
        PrunePlan(targets=PlanTargets(heads_per_layer=4, head_mode="whole_groups")), spec, scores
    )
    for layer in range(4):
        group_scores = scores.heads[layer].reshape(4, 2).sum(axis=1)
        assert plan.remove_kv_groups[layer] == sorted(np.argsort(group_scores)[:2].tolist())
    assert plan_stats(plan, spec)["spec"]["num_kv_heads"] == 2


def test_fill_heads_rejects_counts_the_groups_cannot_share():
    spec = tiny_spec()
    with pytest.raises(PlanError, match="multiple of the 4 KV groups.*nearby valid: 4, 8"):
        fill_plan(PrunePlan(targets=PlanTargets(heads_per_layer=6)), spec, scores_for(spec))
    with pytest.raises(PlanError, match="whole groups"):
        fill_plan(
            PrunePlan(targets=PlanTargets(heads_per_layer=5, head_mode="whole_groups")),
            spec,
            scores_for(spec),
        )


def test_fill_neurons_and_hidden_keep_the_highest_scores():
    spec = tiny_spec()
    scores = scores_for(spec)
    plan = fill_plan(PrunePlan(targets=PlanTargets(intermediate_size=40, hidden_size=24)), spec, scores)
    for layer in range(4):
        kept = set(range(48)) - set(plan.remove_neurons[layer])
        assert min(scores.neurons[layer][list(kept)]) > max(scores.neurons[layer][plan.remove_neurons[layer]])
    assert plan.remove_hidden == sorted(np.argsort(scores.hidden)[:8].tolist())
    assert resulting_spec(plan, spec).intermediate_size == 40


@pytest.mark.parametrize(("method", "expected"), [("bi", [1, 3]), ("drop", [1, 2]), ("block", [1, 2])])
def test_fill_layers_by_each_method(method, expected):
    spec = tiny_spec()
    plan = fill_plan(
        PrunePlan(targets=PlanTargets(num_layers=2, layer_method=method)), spec, scores_for(spec)
    )
    assert plan.drop_layers == expected


def filled_warnings(spec: ArchSpec, **targets) -> list[tuple[str, str]]:
    t = PlanTargets(**targets)
    plan = fill_plan(PrunePlan(targets=t), spec, scores_for(spec))
    assert not errors(plan, spec)
    return [(m.field, m.text) for m in fill_warnings(plan, spec, t) if m.level == "warning"]


def test_fill_warns_of_degenerate_and_unaligned_widths():
    """Outside UI audit 15: extreme targets filled without a word. A width at most 1/8 of the teacher's
    is said (once, not also as unaligned), so is one that leaves the teacher's multiple of 8; widths
    picked unit by unit (validate_plan) stay the user's choice."""
    spec = tiny_spec()  # 8 heads / 4 KV groups, MLP 48, hidden 32
    ((field, text),) = filled_warnings(spec, intermediate_size=1)
    assert field == "targets.intermediate_size"
    assert text.startswith("MLP width 1 of the teacher's 48 in every kept layer") and "degenerate" in text
    ((field, text),) = filled_warnings(spec, intermediate_size=44, hidden_size=24)
    assert (
        field == "targets.intermediate_size"
        and "MLP width 44 in every kept layer is not a multiple of 8" in text
    )
    assert "nearby multiples: 40, 48" in text
    assert filled_warnings(spec, intermediate_size=40, hidden_size=24, num_layers=2) == []
    wide = tiny_spec(num_heads=16, num_kv_heads=2)
    ((field, text),) = filled_warnings(wide, heads_per_layer=2)
    assert field == "targets.heads_per_layer" and text.startswith("query heads 2 of the teacher's 16")
    # A budget chose the widths: the warning names the budget.
    budget = int(spec.param_count()["total"] * 0.2)
    found = filled_warnings(spec, param_budget=budget)
    assert found and all(f == "targets.param_budget" for f, _ in found), found
    # By hand: no such warning (the layers only differ in width).
    hand = PrunePlan(remove_neurons={i: list(range(47)) for i in range(4)})
    assert [m.level for m in validate_plan(hand, spec)] == []


def test_fill_layers_block_needs_the_matching_scan():
    spec = tiny_spec()
    with pytest.raises(ValueError, match="block_loss_k3.*has: block_importance, block_loss_k2, drop_loss"):
        fill_plan(PrunePlan(targets=PlanTargets(num_layers=1)), spec, scores_for(spec))


def with_angular(spec: ArchSpec, distances: list[float]) -> ImportanceScores:
    scores = scores_for(spec)
    scores.layers[f"block_angular_k{spec.num_layers - len(distances) + 1}"] = np.array(distances)
    return scores


@pytest.mark.parametrize(
    ("distances", "expected"),
    [
        ([0.4, 0.2, 0.1], [2, 3]),  # block loss would drop [1, 2]: the methods disagree here
        ([0.05, 0.3, 0.2], [0, 1]),
        ([0.3, 0.1, 0.1], [1, 2]),  # equal minima: the first block, as for the block-loss method
    ],
)
def test_fill_layers_by_angular_drops_the_block_with_the_smallest_distance(distances, expected):
    spec = tiny_spec()
    targets = PlanTargets(num_layers=2, layer_method="angular")
    plan = fill_plan(PrunePlan(targets=targets), spec, with_angular(spec, distances))
    assert plan.drop_layers == expected and plan.targets is None
    assert resulting_spec(PrunePlan(targets=targets), spec).num_layers == 2  # sizes without scores


def test_fill_layers_angular_needs_the_block_size_equal_to_the_layers_dropped():
    spec = tiny_spec()
    scores = with_angular(spec, [0.4, 0.2, 0.1])  # k = 2
    targets = PlanTargets(num_layers=1, layer_method="angular")  # drops 3
    with pytest.raises(ValueError, match="'block_angular_k3'.*has: block_angular_k2, block_importance"):
        fill_plan(PrunePlan(targets=targets), spec, scores)
    # The block-loss method still reads its own scan from the same scores.
    assert fill_plan(PrunePlan(targets=PlanTargets(num_layers=2)), spec, scores).drop_layers == [1, 2]


def test_layer_method_is_checked_by_the_schema():
    assert PrunePlan.model_validate_json('{"targets": {"num_layers": 2, "layer_method": "angular"}}')
    with pytest.raises(ValueError, match="layer_method"):
        PlanTargets(num_layers=2, layer_method="gromov")


def test_fill_param_budget_shrinks_mlp_first_then_hidden():
    spec = tiny_spec()
    scores = scores_for(spec)
    full = spec.param_count()["total"]
    # A small cut is met by the MLP alone: the largest MLP under the budget.
    budget = full - 4 * 3 * 32 * 5  # 5 neurons per layer less
    plan = fill_plan(PrunePlan(targets=PlanTargets(param_budget=budget)), spec, scores)
    new = resulting_spec(plan, spec)
    assert (new.intermediate_size, new.hidden_size) == (43, 32)
    assert plan_stats(plan, spec)["params_total"] <= budget
    # A deep cut also shrinks the hidden size, and still respects the budget. The hidden size moves in
    # steps of 8 here (the head count), so the MLP takes what the step left: one channel more would pass
    # the budget or the balanced MLP of the next hidden step, 24 x (d + 8) / 32 (it never grew back).
    for fraction in (0.5, 0.4, 0.3):
        budget = int(full * fraction)
        plan = fill_plan(PrunePlan(targets=PlanTargets(param_budget=budget)), spec, scores)
        new = resulting_spec(plan, spec)
        f, d = new.intermediate_size, new.hidden_size
        assert d < 32 and plan_stats(plan, spec)["params_total"] <= budget
        wider = new.model_copy(update={"intermediate_size": f + 1})
        assert f + 1 > 24 * (d + 8) // 32 or wider.param_count()["total"] > budget, fraction


def test_fill_param_budget_out_of_reach_says_so():
    spec = tiny_spec()
    with pytest.raises(PlanError, match="cannot be reached.*drop layers or heads"):
        fill_plan(PrunePlan(targets=PlanTargets(param_budget=100)), spec, scores_for(spec))


def test_fill_rejects_a_target_together_with_explicit_removals():
    spec = tiny_spec()
    plan = PrunePlan(drop_layers=[0], targets=PlanTargets(num_layers=2))
    with pytest.raises(PlanError, match="either drop_layers or targets.num_layers"):
        fill_plan(plan, spec, scores_for(spec))


def test_fill_checks_score_shapes():
    spec = tiny_spec()
    scores = scores_for(spec)
    scores.heads = scores.heads[:, :4]
    with pytest.raises(ValueError, match="'heads' have shape"):
        fill_plan(PrunePlan(targets=PlanTargets(heads_per_layer=4)), spec, scores)


def test_targets_are_previewed_without_importance_scores():
    spec = tiny_spec()
    plan = PrunePlan(
        targets=PlanTargets(
            num_layers=3, layer_method="bi", heads_per_layer=4, intermediate_size=40, hidden_size=24
        )
    )
    stats = plan_stats(plan, spec)
    assert (stats["spec"]["num_layers"], stats["spec"]["num_heads"], stats["spec"]["hidden_size"]) == (
        3,
        4,
        24,
    )
    filled = fill_plan(plan, spec, scores_for(spec))
    assert plan_stats(filled, spec)["params_total"] == stats["params_total"]
    budget = PrunePlan(targets=PlanTargets(param_budget=spec.param_count()["total"] // 2))
    assert plan_stats(budget, spec)["params_total"] <= spec.param_count()["total"] // 2
    (msg,) = errors(PrunePlan(targets=PlanTargets(param_budget=10)), spec)
    assert "cannot be reached" in msg


@pytest.mark.parametrize(
    "explicit", [{"remove_neurons": {0: [0, 1]}}, {"remove_hidden": [0, 1, 2, 3, 4, 5, 6, 7]}]
)
def test_a_parameter_budget_with_explicit_width_cuts_is_refused(explicit):
    """fill_plan's budget chooses the MLP and hidden widths itself: it silently replaced the explicit cuts
    of a plan that gave both (every other explicit + target pair was already refused)."""
    spec = tiny_spec()
    plan = PrunePlan.model_validate({**explicit, "targets": {"param_budget": 200_000}})
    (msg,) = errors(plan, spec)
    assert msg.startswith("targets.param_budget: give either remove_") and "the budget chooses" in msg


def test_expert_alignment_reads_memplans_dtype_table():
    moe = tiny_spec(num_experts=4, experts_per_token=2)
    assert expert_alignment(moe.model_copy(update={"dtype": "bfloat16"})) == 8
    assert expert_alignment(moe.model_copy(update={"dtype": "float64"})) == 2
    # An element size it does not know is refused, as memplan refuses it, not guessed as 4 bytes.
    with pytest.raises(ValueError, match="unknown dtype 'float8_e4m3fn'"):
        expert_alignment(moe.model_copy(update={"dtype": "float8_e4m3fn"}))
    assert expert_alignment(tiny_spec(dtype="float8_e4m3fn")) == 1  # dense: no alignment to keep


def test_marks_inside_dropped_layers_are_one_warning():
    """Dropping layers that hold marks is routine (mark units, then drop the layer): one line says those
    entries have no effect, instead of one warning per layer and entry piling up in the planner (outside
    UI audit 13)."""
    from tests.real_shapes import llama_3_1_8b

    spec = llama_3_1_8b()
    plan = PrunePlan(
        drop_layers=[4, 5], remove_heads={4: [0, 1, 2, 3]}, remove_neurons={4: [1], 5: [2], 6: [3]}
    )
    moot = [m for m in validate_plan(plan, spec) if m.field == "drop_layers"]
    assert [(m.level, m.text) for m in moot] == [
        ("warning", "layers 4, 5 are dropped: remove_heads, remove_neurons there have no effect")
    ]
    assert not [m for m in validate_plan(plan, spec) if m.level == "error"]
