"""Block angular distance (Gromov et al., arXiv 2403.17887): the hooked pass's running sums equal a naive
float64 reference from `output_hidden_states`, for every family and several block sizes, at no layer
forward beyond the importance pass itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.engine.test_importance_scores import COMBOS, naive_scores, padded_batches
from tests.tiny_models import FAMILIES, tiny_model
from worker.engine.adapters import adapter_for
from worker.engine.importance import ImportanceResult, compute_importance
from worker.engine.importance.hooks import angular_distance_from_norms


def naive_angular(model, sample: torch.Tensor, k: int) -> np.ndarray:
    """Per-token arccos(cos(h_in_i, h_out_{i+k-1})) / pi of ONE unpadded sample: [T, L - k + 1], float64.

    hidden_states[i] is layer i's input and hidden_states[i + 1] its output, except the last entry,
    which transformers returns after the final norm; the last layer's raw output is read with a hook.
    """
    last_layer = adapter_for(model).layers(model)[-1]
    raw_last = []
    handle = last_layer.register_forward_hook(
        lambda m, a, out: raw_last.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            hidden = model(input_ids=sample[None], output_hidden_states=True, use_cache=False).hidden_states
    finally:
        handle.remove()
    states = [h[0].to(torch.float64).numpy() for h in hidden[:-1]] + [
        raw_last[0][0].to(torch.float64).numpy()
    ]
    num_layers = len(states) - 1
    out = []
    for i in range(num_layers - k + 1):
        a, b = states[i], states[i + k]
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        out.append(np.arccos(np.clip(cos, -1.0, 1.0)) / math.pi)
    return np.stack(out).T


@pytest.mark.parametrize("family", FAMILIES)
def test_angular_distance_matches_hidden_states_reference(family):
    model = tiny_model(family)
    samples, batches = padded_batches([9, 5, 12, 7, 3], batch_size=2)  # right padding in every batch
    for k in (1, 2, 3):
        result = compute_importance(model, batches, scans=("angular",), block_size=k, hash_weights=False)
        name = f"block_angular_k{k}"
        assert result.arrays[name].shape == (2, 4, 4 - k + 1, 1)
        per_sample = [{"angular": naive_angular(model, s, k)} for s in samples]
        for batch, seq in COMBOS:
            got = result.scores(batch=batch, seq=seq).layers[name]
            expected = naive_scores(per_sample, "angular", batch, seq)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=f"k={k} {batch}/{seq}")


def test_angular_is_the_same_alone_and_next_to_the_other_scans():
    model = tiny_model("llama")
    _, batches = padded_batches([8, 6, 5], batch_size=2)
    alone = compute_importance(model, batches, scans=("angular",), block_size=2, hash_weights=False)
    full = compute_importance(
        model, batches, scans=("bi", "drop", "block", "angular"), block_size=2, hash_weights=False
    )
    np.testing.assert_array_equal(alone.arrays["block_angular_k2"], full.arrays["block_angular_k2"])
    layers = full.scores().layers
    assert set(layers) == {"block_importance", "drop_loss", "block_loss_k2", "block_angular_k2"}
    assert np.all((layers["block_angular_k2"] > 0) & (layers["block_angular_k2"] <= 1))


def count_layer_forwards(model) -> tuple[list[int], list]:
    counter = [0]
    handles = [
        layer.register_forward_pre_hook(lambda m, a: counter.__setitem__(0, counter[0] + 1))
        for layer in adapter_for(model).layers(model)
    ]
    return counter, handles


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_angular_scan_costs_no_layer_forward_beyond_the_importance_pass(family):
    model = tiny_model(family)
    _, batches = padded_batches([6, 4, 6, 5, 3], batch_size=2)  # 3 batches
    L, n_batches = model.config.num_hidden_layers, 3

    def run(scans):
        counter, handles = count_layer_forwards(model)
        try:
            result = compute_importance(model, batches, scans=scans, block_size=2, hash_weights=False)
        finally:
            for h in handles:
                h.remove()
        return result, counter[0]

    result, measured = run(("angular",))
    ev = result.manifest["evaluations"]
    assert measured == L * n_batches == ev["layer_forwards_importance_pass"]
    assert ev["layer_forwards_scans"] == 0 == ev["layer_forwards_scans_expected"]
    assert ev["per_scan"] == {}
    # Adding it to the loss scans adds nothing either.
    _, with_angular = run(("bi", "drop", "block", "angular"))
    _, without = run(("bi", "drop", "block"))
    assert with_angular == without > L * n_batches


def test_artifact_round_trip_rank_stability_and_manifest(tmp_path):
    model = tiny_model("qwen3")
    _, batches = padded_batches([7, 5, 6, 4], batch_size=2)
    result = compute_importance(model, batches, scans=("angular",), block_size=3, hash_weights=False)
    result.save(tmp_path / "run")
    loaded = ImportanceResult.load(tmp_path / "run")
    assert loaded.manifest["scans"] == ["angular"] and loaded.block_size == 3
    assert loaded.manifest["arrays"]["block_angular_k3"] == [2, 4, 2, 1]
    np.testing.assert_array_equal(
        loaded.scores().layers["block_angular_k3"], result.scores().layers["block_angular_k3"]
    )
    assert set(loaded.rank_stability()) == {"heads", "neurons", "hidden", "block_angular_k3"}


@pytest.mark.parametrize("block_size", [0, 4])
def test_angular_block_size_must_leave_a_layer(block_size):
    with pytest.raises(ValueError, match="block size must be between 1 and 3"):
        compute_importance(
            tiny_model("llama"), padded_batches([4], 1)[1], scans=("angular",), block_size=block_size
        )


def test_half_angle_formula_keeps_small_angles_accurate():
    """Near cos = 1, arccos of a float32 cosine loses half its digits; the half-angle form does not."""
    gen = torch.Generator().manual_seed(0)
    a64 = torch.randn(64, 4096, generator=gen, dtype=torch.float64) * 30
    b64 = a64 + 1e-3 * torch.randn(64, 4096, generator=gen, dtype=torch.float64) * 30
    exact = torch.arccos((a64 * b64).sum(-1) / (a64.norm(dim=-1) * b64.norm(dim=-1))).numpy() / math.pi
    a, b = a64.float(), b64.float()
    got = angular_distance_from_norms(a.norm(dim=-1), b.norm(dim=-1), (a - b).norm(dim=-1)).double().numpy()
    np.testing.assert_allclose(got, exact, rtol=1e-3)
    naive = (
        torch.arccos(torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1)).double().numpy()
        / math.pi
    )
    assert np.abs(naive / exact - 1).max() > 10 * np.abs(got / exact - 1).max()
