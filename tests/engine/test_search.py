"""Architecture search: valid plans within budgets, listed losses equal to the real cut's, alignment,
limits, the frontier, measured latency with its cache."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from tests.engine.search_helpers import settings, teacher_and_importance
from worker.engine.adapters import arch_spec
from worker.engine.masking import masked
from worker.engine.plan import PrunePlan, plan_stats, resulting_spec, validate_plan
from worker.engine.search import run_search
from worker.engine.search.budgets import computed_cost, parse_budget
from worker.engine.search.scoring import plan_loss
from worker.engine.search.space import ComputedCosts, enumerate_architectures


def search(family="llama", **overrides):
    model, importance, batches = teacher_and_importance(family)
    report = run_search(model, None, importance, settings(**overrides), batches=batches)
    return model, importance, batches, report.to_json()


def test_every_candidate_is_valid_and_within_its_budgets():
    model, _, _, report = search(budgets=["params=70%", "memory=60%@2,64"], tolerance=0.01)
    spec = arch_spec(model)
    teacher = spec.param_count()["total"]
    candidates = report["candidates"]
    assert len(candidates) >= 5
    assert [c["rank"] for c in candidates] == list(range(1, len(candidates) + 1))
    assert [c["loss"] for c in candidates] == sorted(c["loss"] for c in candidates)
    for c in candidates:
        plan = PrunePlan.model_validate(c["plan"])
        assert plan.targets is None
        assert not [m for m in validate_plan(plan, spec) if m.level == "error"], c["id"]
        stats = plan_stats(plan, spec)
        assert stats["params_total"] == c["params"]
        assert c["params"] <= 0.70 * teacher * 1.01
        w = 4  # float32
        memory = stats["params_total"] * w + 2 * 64 * stats["kv_cache_bytes_per_token"] * w // 2
        assert c["memory_bytes"] == memory
        teacher_memory = teacher * w + 2 * 64 * spec.kv_cache_bytes_per_token(bytes_per_value=w)
        assert c["memory_bytes"] <= 0.60 * teacher_memory * 1.01
        assert all(b["fits"] for b in c["budgets"].values())
    assert {c["cut"] for c in candidates} >= {"depth", "width", "mixed"}


def test_non_embedding_parameter_budget():
    model, _, _, report = search(budgets=["params_non_embedding=50%"], tolerance=0.0)
    teacher = arch_spec(model).param_count()["non_embedding"]
    assert report["candidates"]
    for c in report["candidates"]:
        plan = PrunePlan.model_validate(c["plan"])
        assert c["params_non_embedding"] == plan_stats(plan, arch_spec(model))["params_non_embedding"]
        assert c["params_non_embedding"] <= 0.5 * teacher


def test_listed_loss_equals_the_loss_of_the_really_cut_model():
    model, _, batches, report = search(budgets=["params=75%"])
    candidates = report["candidates"]
    # Every kind of cut: depth only, widths only (hidden too) and both.
    for c in candidates:
        cut = plan_loss(model, PrunePlan.model_validate(c["plan"]), batches)
        assert math.isclose(c["loss"], cut, rel_tol=0, abs_tol=1e-5), c["id"]
    assert any(c["plan"]["remove_hidden"] for c in candidates)
    assert any(c["plan"]["drop_layers"] and c["plan"]["remove_neurons"] for c in candidates)
    assert report["teacher"]["loss"] == pytest.approx(plan_loss(model, PrunePlan(), batches), abs=1e-5)


@pytest.mark.parametrize("family", ["gemma3", "qwen3", "olmo2", "gpt2", "phi3"])
def test_listed_loss_equals_the_real_cut_for_per_layer_masks_and_qk_norms(family):
    """Gemma 3 mixes sliding and global layers (each kept layer keeps its own mask) and rescales its
    embeddings after a hidden cut; Qwen 3 has q/k norms, OLMo 2 full-width ones; GPT-2 fused Conv1D
    attention and head_dim-aligned hidden sizes; Phi-3 fused qkv. The teacher is left unchanged."""
    model, _, batches, report = search(family, budgets=["params=80%"])
    assert report["candidates"] and any(c["plan"]["remove_hidden"] for c in report["candidates"])
    assert report["teacher"]["loss"] == pytest.approx(plan_loss(model, PrunePlan(), batches), abs=1e-6)
    for c in report["candidates"]:
        cut = plan_loss(model, PrunePlan.model_validate(c["plan"]), batches)
        assert math.isclose(c["loss"], cut, rel_tol=0, abs_tol=1e-5), c["id"]


def test_masked_model_gives_the_same_loss_as_the_cut_one():
    """Scoring cuts the model (faster, exact for hidden cuts too); for heads, MLP and depth the masked
    teacher agrees with it."""
    model, _, batches, report = search(budgets=["params=75%"], max_cut={"hidden": 0.0})
    from worker.engine.chunked_head import output_head
    from worker.engine.importance.layer_scan import token_losses

    c = next(c for c in report["candidates"] if c["cut"] == "mixed")
    plan = PrunePlan.model_validate(c["plan"])
    total = count = 0.0
    with masked(model, plan), torch.no_grad():
        for batch in batches:
            hidden = model.base_model(**batch, use_cache=False)[0]
            nll, tokens = token_losses(
                hidden, output_head(model), batch["input_ids"], batch["attention_mask"]
            )
            total, count = total + float(nll.sum()), count + float(tokens.sum())
    assert math.isclose(c["loss"], total / count, abs_tol=1e-5)


def test_lm_eval_task_runs_on_the_top_candidates_really_cut(monkeypatch):
    """lm-eval itself is tested in test_evaluation_lm_eval; here: which models it is given, and where its
    scores land (only the top N rows)."""
    import worker.engine.evaluation.lm_eval_runner as runner

    model, importance, batches = teacher_and_importance()
    seen = []

    def fake_lm_eval(student, tokenizer, tasks, *, limit, seed):
        seen.append((arch_spec(student), plan_loss(student, PrunePlan(), batches), tasks, limit))
        return [{"task": tasks[0], "metric": "acc", "value": 0.5 + len(seen), "stderr": None}]

    monkeypatch.setattr(runner, "run_lm_eval", fake_lm_eval)
    s = settings(budgets=["params=70%"], lm_eval_task="prunescope_cloze", lm_eval_top=2, lm_eval_limit=7)
    rows = run_search(model, object(), importance, s, batches=batches).to_json()["candidates"]
    assert [r["lm_eval"][0]["value"] for r in rows[:2]] == [1.5, 2.5]
    assert all(r["lm_eval"] is None for r in rows[2:])
    for row, (spec, loss, tasks, limit) in zip(rows, seen):
        assert spec == resulting_spec(PrunePlan.model_validate(row["plan"]), arch_spec(model))
        assert math.isclose(loss, row["loss"], abs_tol=1e-5) and tasks == ["prunescope_cloze"] and limit == 7


def test_step_alignment_and_cut_limits_are_respected():
    model, importance, _ = teacher_and_importance()
    spec = arch_spec(model)
    s = settings(
        budgets=["params=99%"], mlp_step=16, hidden_step=16, max_width_cut=0.34, max_cut={"depth": 0.25}
    )
    archs = enumerate_architectures(spec, importance.scores(), s)
    assert {a.intermediate_size for a in archs} == {48, 32}  # 16 would cut 67% > 34%
    assert {a.num_layers for a in archs} == {4, 3}  # at most 1 of 4 layers
    for a in archs:
        assert a.hidden_size == 32 or (a.hidden_size % 16 == 0 and a.hidden_size % a.heads_per_layer == 0)
        assert a.heads_per_layer >= 8 * (1 - 0.34)
        plan = a.plan(spec, importance.scores())
        assert not [m for m in validate_plan(plan, spec) if m.level == "error"]
        assert plan_stats(plan, spec)["params_total"] == a.spec(spec).param_count()["total"]
    _, _, _, report = search(budgets=["params=90%"], mlp_step=16, hidden_step=16, max_width_cut=0.34)
    for c in report["candidates"]:
        assert c["axes"]["intermediate_size"] in (48, 32)
        assert len(c["plan"]["drop_layers"]) <= 2


def test_fast_computed_costs_equal_the_cost_model_for_every_architecture():
    model, importance, _ = teacher_and_importance()
    spec = arch_spec(model)
    archs = enumerate_architectures(spec, importance.scores(), settings(budgets=["params=50%"]))
    costs = ComputedCosts(spec)
    budgets = [parse_budget(t) for t in ("params=50%", "params_non_embedding=1M", "memory=1GB@3,100")]
    assert len(archs) > 100
    for a in archs:
        for b in budgets:
            assert costs(b, a) == computed_cost(b, a.spec(spec)), (a.id, b.text)


def test_frontier_keeps_only_candidates_that_cannot_grow():
    _, _, _, everything = search(budgets=["params=70%"], frontier_only=False)
    _, _, _, front = search(budgets=["params=70%"])
    ids = {c["id"] for c in everything["candidates"]}
    assert {c["id"] for c in front["candidates"]} < ids
    by_id = {c["id"]: c for c in everything["candidates"]}
    for c in front["candidates"]:
        a = c["axes"]
        bigger_mlp = c["id"].replace(f".F{a['intermediate_size']}.", f".F{a['intermediate_size'] + 8}.")
        assert bigger_mlp not in by_id  # one MLP step more would not fit
    assert everything["stats"]["within_budget"] == len(everything["candidates"])


def test_latency_budget_uses_measured_times_cached_by_shape(tmp_path):
    cache = tmp_path / "latency.json"
    model, importance, batches = teacher_and_importance()
    s = settings(
        budgets=["params=80%", "latency=100%@1,8", "throughput=50%@1,8"],
        latency_new_tokens=2,
        tolerance=0.5,
        max_width_cut=0.25,
    )
    first = run_search(model, None, importance, s, batches=batches, latency_cache=cache).to_json()
    assert first["stats"]["shapes_timed"] > 0 and cache.is_file()
    second = run_search(model, None, importance, s, batches=batches, latency_cache=cache).to_json()
    assert second["stats"]["shapes_timed"] == 0
    assert second["stats"]["latency_cache_hits"] >= first["stats"]["shapes_timed"]
    for c in second["candidates"]:
        assert c["latency"]["cached"] is True and c["latency"]["decode_s_per_token"] > 0
        same = next(x for x in first["candidates"] if x["id"] == c["id"])
        assert same["latency"]["decode_s_per_token"] == c["latency"]["decode_s_per_token"]
        fig = c["budgets"]["latency=100%@1,8"]
        assert fig["value"] == c["latency"]["decode_s_per_token"] and fig["value"] <= fig["limit"] * 1.5
        fig = c["budgets"]["throughput=50%@1,8"]  # a minimum; the same timing (same shape, batch, context)
        assert fig["value"] == c["latency"]["decode_tokens_per_s"] and fig["value"] >= fig["limit"] * 0.5
    teacher_rate = second["teacher"]["budgets"]["throughput=50%@1,8"]
    assert (
        second["budgets"][2]["limit"] == pytest.approx(0.5 * teacher_rate) and second["budgets"][2]["minimum"]
    )


def test_a_budget_nothing_meets_says_how_small_the_space_goes():
    _, _, _, report = search(budgets=["params=10%"])
    assert report["candidates"] == [] and report["stats"]["within_budget"] == 0
    assert "no architecture of the space meets params=10%" in report["stats"]["note"]
    assert "loosen the cut limits" in report["stats"]["note"]


@pytest.mark.parametrize(
    ("budgets", "words"),
    [
        (["params=10%"], "the fewest parameters"),
        (["params=60%"], None),
        (["memory=5%@1,8"], "the least memory"),
        (["params=80%", "params_non_embedding=5%"], "the fewest non-embedding parameters"),
    ],
)
def test_the_submit_check_agrees_with_the_search_and_words_the_note_per_kind(budgets, words):
    """feasible.nothing_fits_computed (what POST /searches and the CLI refuse up front, torch-free on the
    spec) refuses exactly the budgets the search lists nothing for, and both name the budget's own
    measure, not "the smallest parameter count" for every kind (audit 18)."""
    from worker.engine.search.feasible import nothing_fits_computed

    model, _, _, report = search(budgets=budgets)
    refused = nothing_fits_computed(arch_spec(model), settings(budgets=budgets))
    assert (refused is not None) == (report["candidates"] == []) == (words is not None), report["stats"]
    if words:
        note = report["stats"]["note"]
        assert note.split(":")[0] == refused[1].split(":")[0], (note, refused)
        assert f": {words} any architecture of the space reaches (" in note, note
        assert f": {words} any architecture of the space reaches is " in refused[1], refused


def test_bad_budgets_and_settings_name_the_field():
    for text, words in [
        ("params", "KIND=VALUE"),
        ("size=5", "unknown kind"),
        ("params=5Q", "unknown unit"),
        ("memory=0GB", "positive"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_budget(text)
    with pytest.raises(ValidationError) as info:
        settings(budgets=["params=60%", "params=50%"])
    assert info.value.errors()[0]["loc"] == ("budgets",)
    with pytest.raises(ValidationError) as info:
        settings(budgets=["params=60%"], max_width_cut=1.5)
    assert info.value.errors()[0]["loc"] == ("max_width_cut",)
    model, importance, batches = teacher_and_importance()
    with pytest.raises(ValueError, match="max_candidates"):
        run_search(
            model, None, importance, settings(budgets=["params=50%"], max_candidates=3), batches=batches
        )
