"""Layer scans: the cached-prefix losses equal the losses of models with the layers really deleted."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.engine.test_importance_scores import padded_batches
from tests.tiny_models import FAMILIES, tiny_model
from worker.engine.adapters import adapter_for
from worker.engine.chunked_head import final_hidden_states, output_head
from worker.engine.importance import compute_importance
from worker.engine.importance.layer_scan import naive_layer_count, scan_layer_count, token_losses


def without_layers(model, removed: set[int]):
    """A deep copy with decoder layers deleted, layer_idx renumbered and per-layer config sliced."""
    clone = copy.deepcopy(model)
    adapter = adapter_for(clone)
    layers = adapter.layers(clone)
    for i in sorted(removed, reverse=True):
        del layers[i]
    for new_idx, layer in enumerate(layers):
        adapter.attn(layer).layer_idx = new_idx
    config = clone.config
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [t for i, t in enumerate(config.layer_types) if i not in removed]
    return clone


def mean_loss(model, batches) -> float:
    """Naive reference: full logits of the whole model, cross-entropy over real (non-padding) pairs."""
    total, tokens = 0.0, 0.0
    with torch.no_grad():
        for b in batches:
            ids, mask = b["input_ids"], b["attention_mask"]
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
            valid = (mask[:, 1:] * mask[:, :-1]).bool()
            total += float(F.cross_entropy(logits[valid], ids[:, 1:][valid], reduction="sum"))
            tokens += float(valid.sum())
    return total / tokens


def test_token_losses_equal_full_logits_per_sample():
    model = tiny_model("gpt2")
    _, batches = padded_batches([11, 7, 9], batch_size=3)
    b = batches[0]
    ids, mask = b["input_ids"], b["attention_mask"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
        valid = (mask[:, 1:] * mask[:, :-1]).float()
        ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none") * valid
        sums, counts = token_losses(final_hidden_states(model, ids, mask), output_head(model), ids, mask)
    torch.testing.assert_close(sums, ce.sum(1), rtol=1e-6, atol=0)
    torch.testing.assert_close(counts, valid.sum(1), rtol=0, atol=0)
    assert counts.tolist() == [10, 6, 8]


@pytest.mark.parametrize("family", FAMILIES)
def test_scan_losses_equal_really_deleting_the_layers(family):
    model = tiny_model(family)
    _, batches = padded_batches([11, 7, 9], batch_size=2)
    result = compute_importance(model, batches, scans=("drop", "block"), block_size=2)
    layers = result.scores().layers
    base = mean_loss(model, batches)
    assert result.base_loss() == pytest.approx(base, rel=1e-5)
    num_layers = model.config.num_hidden_layers
    for i in range(num_layers):
        expected = mean_loss(without_layers(model, {i}), batches) - base
        assert layers["drop_loss"][i] == pytest.approx(expected, abs=1e-5), f"drop {i}"
    assert len(layers["block_loss_k2"]) == num_layers - 1
    for i in range(num_layers - 1):
        expected = mean_loss(without_layers(model, {i, i + 1}), batches) - base
        assert layers["block_loss_k2"][i] == pytest.approx(expected, abs=1e-5), f"block {i}"


def test_layer_forward_count_follows_the_formula_and_beats_naive():
    model = tiny_model("llama")
    _, batches = padded_batches([6] * 5, batch_size=2)  # 3 batches
    result = compute_importance(model, batches, scans=("bi", "drop", "block"), block_size=3)
    L, k, n_batches = 4, 3, 3
    ev = result.manifest["evaluations"]
    assert ev["batches"] == n_batches
    drop = L * (L - 1) // 2 * n_batches  # cut at i runs layers i+1 .. L-1
    block = (L - k) * (L - k + 1) // 2 * n_batches
    assert ev["layer_forwards_scans"] == drop + block == ev["layer_forwards_scans_expected"]
    assert ev["per_scan"]["drop"] == {"layer_forwards": drop, "naive_layer_forwards": L * L * n_batches}
    assert ev["per_scan"]["block_k3"]["layer_forwards"] == block < naive_layer_count(L, k) * n_batches
    assert scan_layer_count(32, 1) < naive_layer_count(32, 1) / 2  # well under L full passes at real depth


def test_block_of_one_is_the_drop_scan_computed_once():
    model = tiny_model("gpt2")
    _, batches = padded_batches([8, 5], batch_size=2)
    result = compute_importance(model, batches, scans=("drop", "block"), block_size=1)
    layers = result.scores().layers
    np.testing.assert_array_equal(layers["drop_loss"], layers["block_loss_k1"])
    assert result.manifest["evaluations"]["layer_forwards_scans"] == 4 * 3 // 2


def test_hooks_are_removed_and_training_mode_restored():
    model = tiny_model("qwen3").train()
    _, batches = padded_batches([5, 4], batch_size=2)
    compute_importance(model, batches)
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scans": ("bi", "magic")}, "unknown scan 'magic'"),
        ({"scans": ("block",), "block_size": 4}, "block size must be between 1 and 3"),
        ({"scans": ("block",), "block_size": 0}, "block size must be between 1 and 3"),
    ],
)
def test_bad_scan_options_are_rejected(kwargs, message):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=message):
        compute_importance(model, padded_batches([4], 1)[1], **kwargs)


def test_no_batches_is_an_error():
    with pytest.raises(ValueError, match="no calibration samples"):
        compute_importance(tiny_model("llama"), [])
