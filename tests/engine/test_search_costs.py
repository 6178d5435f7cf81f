"""What a search's figures are in, and how sure its ranks are (audit findings 3, 4, 14): memory and KV
cache priced in the teacher's stored dtype whatever it is scored in; each candidate's loss difference from
rank 1 with its paired standard error over the held-out windows, checked against a direct computation;
FLOPs/token at the teacher's context, not 2048 tokens past its positions."""

from __future__ import annotations

import copy
import math
import statistics

import pytest
import torch

from tests.engine.search_helpers import settings, teacher_and_importance
from tests.engine.test_importance_scores import padded_batches
from worker.engine.adapters import arch_spec
from worker.engine.chunked_head import output_head
from worker.engine.importance.layer_scan import token_losses
from worker.engine.plan import PrunePlan
from worker.engine.search import run_search
from worker.engine.search.noise import NOISE_SES, paired_difference
from worker.engine.surgery import apply_plan


def test_memory_is_priced_in_the_stored_dtype_not_the_scoring_one():
    """A bfloat16 checkpoint scored in float32: 2 bytes a parameter and a KV value, as its students are
    saved. An absolute budget of the bf16 teacher's own memory admits students near the teacher's size
    (priced at 4 bytes, as before, it admitted only about half of it)."""
    model, importance, batches = teacher_and_importance()
    assert next(model.parameters()).dtype == torch.float32
    spec = arch_spec(model)
    params = spec.param_count()["total"]
    kv_bf16 = spec.kv_cache_bytes_per_token(bytes_per_value=2)
    bf16_teacher = params * 2 + 1 * 16 * kv_bf16
    budget = f"memory={bf16_teacher}@1,16"
    report = run_search(
        model,
        None,
        importance,
        settings(budgets=[budget], tolerance=0.0),
        batches=batches,
        stored_dtype="bfloat16",
    ).to_json()
    assert report["teacher"]["budgets"][budget] == bf16_teacher
    assert report["teacher"]["kv_cache_bytes_per_token"] == kv_bf16
    assert report["basis"]["memory_dtype"] == report["basis"]["kv_cache_dtype"] == "bfloat16"
    assert report["basis"]["loss_dtype"] == report["basis"]["latency_dtype"] == "float32"
    assert max(c["params"] for c in report["candidates"]) > 0.7 * params  # near the whole teacher
    for c in report["candidates"]:
        kv = c["kv_cache_bytes_per_token"]
        assert kv == 2 * c["axes"]["num_layers"] * c["axes"]["num_kv_heads"] * spec.head_dim * 2
        assert c["memory_bytes"] == c["params"] * 2 + 16 * kv == c["budgets"][budget]["value"]
    # Without a stored dtype the model's own is used: float32, 4 bytes, and the same budget admits less.
    plain = run_search(model, None, importance, settings(budgets=[budget]), batches=batches).to_json()
    assert plain["basis"]["memory_dtype"] == "float32"
    assert max(c["params"] for c in plain["candidates"]) < 0.6 * params


def _window_losses(model, plan: dict, batches) -> tuple[list[float], list[float]]:
    """Per-window (summed NLL, tokens) of the model really cut to `plan`, one plain forward per batch."""
    cut = apply_plan(copy.deepcopy(model), PrunePlan.model_validate(plan))
    head = output_head(cut)
    nll, tokens = [], []
    with torch.no_grad():
        for batch in batches:
            hidden = cut.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
            n, t = token_losses(hidden, head, batch["input_ids"], batch["attention_mask"])
            nll += n.tolist()
            tokens += t.tolist()
    return nll, tokens


def test_each_rank_has_its_paired_standard_error_against_rank_one():
    """Equal windows: the SE is the textbook one, sd(per-window loss difference) / sqrt(n), computed here
    from the really cut models, and "within noise" is |diff| < 2 SE."""
    model, importance, _ = teacher_and_importance()
    _, batches = padded_batches([11] * 8, batch_size=4, seed=7)
    report = run_search(model, None, importance, settings(budgets=["params=75%"]), batches=batches).to_json()
    rows = report["candidates"]
    assert len(rows) >= 3
    best_nll, tokens = _window_losses(model, rows[0]["plan"], batches)
    assert rows[0]["loss_diff_vs_best"] == 0 and rows[0]["loss_diff_se"] == 0
    assert rows[0]["within_noise_of_best"] is None
    flags = set()
    for row in rows[1:]:
        nll, _ = _window_losses(model, row["plan"], batches)
        per_window = [(a - b) / t for a, b, t in zip(nll, best_nll, tokens)]
        assert row["loss_diff_vs_best"] == pytest.approx(statistics.fmean(per_window), abs=1e-5)
        assert row["loss_diff_se"] == pytest.approx(statistics.stdev(per_window) / math.sqrt(8), rel=1e-3)
        assert row["loss_diff_vs_best"] == pytest.approx(row["loss"] - rows[0]["loss"], abs=1e-6)
        assert row["within_noise_of_best"] == (
            abs(row["loss_diff_vs_best"]) < NOISE_SES * row["loss_diff_se"]
        )
        flags.add(row["within_noise_of_best"])
    assert flags == {True, False}  # the tiny sample separates some candidates from #1, not all


def test_paired_error_weights_unequal_windows_by_their_tokens():
    """The ratio estimate: a window of 3 tokens counts for less than one of 9; one window gives no error."""
    diff, se = paired_difference([9.0, 3.0, 6.0], [0.0, 0.0, 0.0], [9.0, 3.0, 6.0])  # 1 nat a token each
    assert diff == pytest.approx(1.0) and se == pytest.approx(0.0)
    diff, se = paired_difference([2.0], [1.0], [4.0])
    assert diff == 0.25 and se is None


def test_flops_per_token_are_counted_at_the_teachers_context():
    """The tiny teacher takes fewer than 2048 positions: FLOPs at those, and the report says at how many."""
    model, importance, batches = teacher_and_importance()
    spec = arch_spec(model)
    assert 0 < spec.max_positions < 2048
    report = run_search(model, None, importance, settings(budgets=["params=75%"]), batches=batches).to_json()
    assert report["basis"]["flops_context"] == spec.max_positions == spec.flops_context()
    assert report["teacher"]["flops_per_token"] == spec.flops_per_token(spec.max_positions)
    assert spec.flops_per_token() == spec.flops_per_token(spec.max_positions) < spec.flops_per_token(2048)
    for c in report["candidates"]:
        student = spec.model_copy(
            update=dict(
                num_layers=c["axes"]["num_layers"],
                num_heads=c["axes"]["heads_per_layer"],
                num_kv_heads=c["axes"]["num_kv_heads"],
                intermediate_size=c["axes"]["intermediate_size"],
                hidden_size=c["axes"]["hidden_size"],
            )
        )
        assert c["flops_per_token"] == student.flops_per_token(spec.max_positions)
