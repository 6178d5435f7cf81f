"""Importance of a pruned model whose layers differ in width (a promoted student scored again).

The running sums are padded to the widest layer with `heads_valid` / `neurons_valid` in the artifact;
scores of the padding are NaN. Checked against a float64 per-sample reference, against the masked
teacher (the cut model's activations are the masked teacher's on the kept units), layer-streamed ==
in memory, and the heatmap payloads and `fill_plan` on the ragged scores.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tests.engine.test_importance_scores import COMBOS, naive_scores, padded_batches
from tests.tiny_models import tiny_model
from worker.engine.adapters import adapter_for
from worker.engine.importance import compute_importance
from worker.engine.importance.result import ImportanceResult
from worker.engine.importance.streamed import compute_importance_streamed
from worker.engine.loading import LAYERS_FILE, load_model, save_model
from worker.engine.masking import masked
from worker.engine.plan import PrunePlan, fill_plan, layer_head_removal
from worker.engine.surgery import apply_plan

# Layer 0 keeps one head per KV group (4 of 8), layer 1 drops a KV group (6 of 8), layers 2 and 3 keep
# 32 and 40 of 48 MLP channels: every layer has its own shape.
PLAN = PrunePlan(
    remove_heads={0: [1, 3, 5, 7]},
    remove_kv_groups={1: [2]},
    remove_neurons={2: list(range(0, 48, 3)), 3: list(range(1, 48, 6))},
)
HEADS, NEURONS = [4, 6, 8, 8], [48, 48, 32, 40]


def cut_model(family: str = "llama"):
    teacher = tiny_model(family)
    student = apply_plan(tiny_model(family), PLAN)
    return teacher, student


def ragged_token_values(model, sample: torch.Tensor) -> dict[str, list[np.ndarray]]:
    """Per-token |head| and |neuron| values of one unpadded sample, one [T, width] array per layer."""
    adapter = adapter_for(model)
    head_dim = adapter.head_dim(model)
    attn, mlp, handles = [], [], []
    for layer in adapter.layers(model):
        handles.append(adapter.attn_out(layer).register_forward_pre_hook(lambda m, a: attn.append(a[0])))
        handles.append(adapter.mlp_out(layer).register_forward_pre_hook(lambda m, a: mlp.append(a[0])))
    try:
        with torch.no_grad():
            model(input_ids=sample[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    heads = [np.linalg.norm(x[0].double().numpy().reshape(len(sample), -1, head_dim), axis=-1) for x in attn]
    return {"heads": heads, "neurons": [np.abs(x[0].double().numpy()) for x in mlp]}


def test_the_artifact_is_padded_with_per_layer_widths():
    _, student = cut_model()
    assert adapter_for(student).spec(student).layers is not None  # really non-uniform
    _, batches = padded_batches([9, 5, 12, 7], batch_size=2)
    result = compute_importance(student, batches, scans=("bi",))
    assert result.arrays["heads"].shape[2:] == (4, 8) and result.arrays["neurons"].shape[2:] == (4, 48)
    assert result.arrays["heads_valid"].tolist() == HEADS
    assert result.arrays["neurons_valid"].tolist() == NEURONS
    scores = result.scores()
    for layer in range(4):
        assert np.isfinite(scores.heads[layer, : HEADS[layer]]).all()
        assert np.isnan(scores.heads[layer, HEADS[layer] :]).all()
        assert np.isfinite(scores.neurons[layer, : NEURONS[layer]]).all()
        assert np.isnan(scores.neurons[layer, NEURONS[layer] :]).all()
    stability = result.rank_stability()
    assert np.isfinite(stability["heads"]) and np.isfinite(stability["neurons"])


def test_ragged_running_sums_match_a_per_sample_reference():
    _, student = cut_model()
    samples, batches = padded_batches([9, 5, 12, 7, 3], batch_size=2)
    result = compute_importance(student, batches, scans=("bi",))
    per_sample = [ragged_token_values(student, s) for s in samples]
    for batch, seq in COMBOS:
        scores = result.scores(batch=batch, seq=seq)
        for axis, widths in (("heads", HEADS), ("neurons", NEURONS)):
            for layer, width in enumerate(widths):
                rows = [{axis: s[axis][layer]} for s in per_sample]
                expected = naive_scores(rows, axis, batch, seq)
                got = getattr(scores, axis)[layer, :width]
                np.testing.assert_allclose(
                    got, expected, rtol=2e-4, atol=1e-6, err_msg=f"{axis} layer {layer} {batch}/{seq}"
                )


def kept_units(spec, layer: int) -> tuple[list[int], list[int]]:
    shape = spec.layer_shapes()[layer]
    heads, _ = layer_head_removal(PLAN, spec, layer)
    neurons = PLAN.remove_neurons.get(layer, [])
    return (
        [h for h in range(shape.num_heads) if h not in heads],
        [n for n in range(shape.intermediate_size) if n not in neurons],
    )


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_the_cut_model_scores_as_the_masked_teacher_on_the_kept_units(family):
    teacher, student = cut_model(family)
    _, batches = padded_batches([11, 7, 9, 12, 5], batch_size=2, seq_len=12)
    cut = compute_importance(student, batches, scans=("bi", "drop", "block"), block_size=2)
    with masked(teacher, PLAN):
        reference = compute_importance(teacher, batches, scans=("bi", "drop", "block"), block_size=2)
    spec = adapter_for(teacher).spec(teacher)
    for batch, seq in COMBOS:
        got, want = cut.scores(batch, seq), reference.scores(batch, seq)
        for layer in range(4):
            heads, neurons = kept_units(spec, layer)
            np.testing.assert_allclose(got.heads[layer, : len(heads)], want.heads[layer, heads], rtol=1e-5)
            np.testing.assert_allclose(
                got.neurons[layer, : len(neurons)], want.neurons[layer, neurons], rtol=1e-5, atol=1e-7
            )
        np.testing.assert_allclose(got.hidden, want.hidden, rtol=1e-5)
        for name in want.layers:
            np.testing.assert_allclose(got.layers[name], want.layers[name], rtol=1e-5, atol=1e-7)


def test_streamed_equals_in_memory_for_a_non_uniform_checkpoint(tmp_path):
    _, student = cut_model()
    path = save_model(student, None, tmp_path / "student", {"plan": "test"})
    assert (path / LAYERS_FILE).is_file()  # our format: not loadable by vanilla transformers

    def batches():
        return padded_batches([11, 7, 9, 12, 5], batch_size=2, seq_len=12)[1]

    scans = ("bi", "drop", "block", "angular")
    loaded, _ = load_model(str(path))
    in_memory = compute_importance(loaded, batches(), scans=scans, block_size=2)
    streamed = compute_importance_streamed(path, batches(), scans=scans, block_size=2)
    assert streamed.arrays.keys() == in_memory.arrays.keys()
    for name, expected in in_memory.arrays.items():
        np.testing.assert_allclose(streamed.arrays[name], expected, rtol=1e-6, atol=0, err_msg=name)
    for batch, seq in itertools.product(("mean", "l2", "var"), ("mean", "l2")):
        a, b = streamed.scores(batch, seq), in_memory.scores(batch, seq)
        for axis in ("heads", "neurons", "hidden"):
            np.testing.assert_allclose(getattr(a, axis), getattr(b, axis), rtol=1e-6, atol=0)
    assert streamed.manifest["weights_sha256"] == in_memory.manifest["weights_sha256"]


def test_heatmaps_and_fill_plan_read_the_ragged_artifact(tmp_path):
    from backend import heatmaps

    _, student = cut_model()
    _, batches = padded_batches([9, 5, 12, 7], batch_size=2)
    result = compute_importance(student, batches, scans=("bi",))
    result.save(tmp_path / "run")
    assert ImportanceResult.load(tmp_path / "run").arrays["neurons_valid"].tolist() == NEURONS

    heads = heatmaps.heads(tmp_path / "run", "l2", "mean", kv_groups=4)
    assert heads["widths"] == HEADS
    assert heads["z"][0][4:] == [None] * 4 and None not in heads["z"][2]
    assert heads["rank"][0][4:] == [-1] * 4 and sorted(heads["rank"][0][:4]) == [0, 1, 2, 3]

    order = heatmaps.neuron_order(tmp_path / "run", "l2", "mean")
    assert order["widths"] == NEURONS
    scores = result.scores().neurons
    for layer, width in enumerate(NEURONS):
        decoded = np.frombuffer(__import__("base64").b64decode(order["order"][layer]), dtype="<u2")
        assert sorted(decoded[:width].tolist()) == list(range(width))  # real neurons first, padding last
        assert (np.diff(scores[layer, decoded[:width]]) <= 0).all()

    sorted_map = heatmaps.neurons(
        tmp_path / "run", "l2", "mean", bins=48, order="sorted", layer_start=0, layer_end=4, start=0, end=48
    )
    assert sorted_map["widths"] == NEURONS
    assert sorted_map["z"][2][31] is not None and sorted_map["z"][2][32:] == [None] * 16
    binned = heatmaps.neurons(
        tmp_path / "run", "l2", "mean", bins=3, order="index", layer_start=2, layer_end=3, start=0, end=48
    )
    # Bin 2 of layer 2 (channels 32..47) is all padding; bin 1 the mean of channels 16..31.
    assert binned["z"][0][2] is None
    assert binned["z"][0][1] == pytest.approx(float(scores[2, 16:32].mean()), rel=1e-3)

    spec = adapter_for(student).spec(student)
    plan = fill_plan(
        PrunePlan(targets={"intermediate_size": 24, "num_layers": 3, "layer_method": "bi"}),
        spec,
        result.scores(),
    )
    kept = [layer for layer in range(4) if layer not in plan.drop_layers]
    for layer in kept:
        removed = plan.remove_neurons[layer]
        assert len(removed) == NEURONS[layer] - 24 and max(removed) < NEURONS[layer]
        # The sorted map's last real positions are exactly what fill_plan removes (ties included).
        decoded = np.frombuffer(__import__("base64").b64decode(order["order"][layer]), dtype="<u2")
        assert sorted(decoded[24 : NEURONS[layer]].tolist()) == removed


def test_targets_on_a_non_uniform_teacher_name_the_layer_they_do_not_suit():
    from worker.engine.plan import validate_plan

    _, student = cut_model()
    spec = adapter_for(student).spec(student)

    def errors(targets, **plan):
        return {
            m.field: m.text
            for m in validate_plan(PrunePlan(targets=targets, **plan), spec)
            if m.level == "error"
        }

    # Layer 2 keeps 32 MLP channels: the narrowest, named with its width.
    assert errors({"intermediate_size": 33}) == {
        "targets.intermediate_size": "at most 32 (the MLP size of layer 2, the narrowest) can be kept"
    }
    assert errors({"intermediate_size": 32}) == {}
    # Layer 0 has 4 heads in 4 groups: 6 heads is beyond it; 2 per group is not valid in layer 1 (3 groups).
    text = errors({"heads_per_layer": 6})["targets.heads_per_layer"]
    assert "in layer 0 (4 heads, 4 KV groups)" in text and "nearby valid: 4" in text
    text = errors({"heads_per_layer": 4})["targets.heads_per_layer"]
    assert "in layer 1 (6 heads, 3 KV groups)" in text and "nearby valid: 3, 6" in text
    # Whole groups: 1 head per group everywhere in layer 0, 2 per group elsewhere -> 2 heads is none's.
    assert errors({"heads_per_layer": 4, "head_mode": "whole_groups"}) == {}
    # Explicit removals: each layer's own range.
    text = errors(None, remove_neurons={2: [32]})["remove_neurons.2"]
    assert "valid: 0..31" in text
    assert errors(None, remove_heads={0: [4]})["remove_heads.0"].endswith("valid: 0..3")


def test_fill_plan_on_a_non_uniform_teacher_keeps_the_best_units_of_each_layer():
    _, student = cut_model()
    spec = adapter_for(student).spec(student)
    _, batches = padded_batches([9, 5, 12, 7], batch_size=2)
    scores = compute_importance(student, batches, scans=("bi",)).scores()
    plan = fill_plan(
        PrunePlan(targets={"heads_per_layer": 4, "head_mode": "whole_groups", "intermediate_size": 24}),
        spec,
        scores,
    )
    for layer, (heads, neurons) in enumerate(zip(HEADS, NEURONS, strict=True)):
        removed = plan.remove_neurons[layer]
        kept = [n for n in range(neurons) if n not in removed]
        assert len(kept) == 24
        assert scores.neurons[layer, kept].min() >= scores.neurons[layer, removed].max()
        groups = plan.remove_kv_groups.get(layer, [])
        assert heads - heads // spec.layer_shapes()[layer].num_kv_heads * len(groups) == 4
    cut = apply_plan(student, plan)
    assert [s.intermediate_size for s in adapter_for(cut).spec(cut).layer_shapes()] == [24] * 4
    assert [s.num_heads for s in adapter_for(cut).spec(cut).layer_shapes()] == [4] * 4


# Round 2 on the non-uniform model: layer 1 (6 heads in 3 groups) loses a group, layer 0 (4 heads in 4
# groups) one group too, layer 2 (32 channels) and layer 3 (40) lose channels within their widths.
ROUND2 = PrunePlan(
    remove_kv_groups={0: [3], 1: [0]},
    remove_neurons={2: [0, 7, 31], 3: list(range(30, 40))},
)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_cutting_a_non_uniform_teacher_equals_masking_it_in_memory_and_out_of_core(family, tmp_path):
    from worker.engine.out_of_core import prune_checkpoint

    _, student = cut_model(family)
    save_model(student, None, tmp_path / "round1", {})
    ids = padded_batches([12, 12], batch_size=2)[1][0]["input_ids"]
    with torch.no_grad():
        full = student(ids).logits
        with masked(student, ROUND2):
            expected = student(ids).logits
    assert not torch.allclose(full, expected, atol=1e-4)  # the cut matters on these inputs
    in_memory = apply_plan(student, ROUND2)
    prune_checkpoint(tmp_path / "round1", ROUND2, tmp_path / "ooc", {})
    out_of_core, _ = load_model(str(tmp_path / "ooc"))
    for model in (in_memory, out_of_core):
        shapes = adapter_for(model).spec(model).layer_shapes()
        assert [(s.num_heads, s.intermediate_size) for s in shapes] == [(3, 48), (4, 48), (8, 29), (8, 30)]
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=0)


def test_mixture_of_experts_with_uneven_heads_is_scored_uneven_experts_are_refused():
    """MoE: per-layer head counts are handled like dense models; layers that differ in experts or
    expert width are not supported yet (a clear error, nothing computed)."""
    _, batches = padded_batches([9, 5], batch_size=2)
    heads_only = apply_plan(tiny_model("qwen3_moe"), PrunePlan(remove_kv_groups={1: [0]}))
    result = compute_importance(heads_only, batches, scans=("bi",))
    assert result.arrays["heads_valid"].tolist() == [8, 6, 8, 8]
    assert np.isnan(result.scores().heads[1, 6:]).all() and np.isfinite(result.scores().experts).all()
    uneven = apply_plan(tiny_model("qwen3_moe"), PrunePlan(remove_experts={2: [0, 5]}))
    with pytest.raises(ValueError, match="differ in experts or expert width is not supported yet"):
        compute_importance(uneven, batches, scans=("bi",))
