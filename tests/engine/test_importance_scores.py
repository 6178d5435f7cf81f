"""Width and Block-Importance scores against a naive per-sample reference, for every family."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tests.tiny_models import FAMILIES, VOCAB, tiny_model
from worker.engine.adapters import adapter_for
from worker.engine.importance import compute_importance

COMBOS = list(itertools.product(("mean", "l2", "var"), ("mean", "l2")))


def padded_batches(lengths, batch_size, seed=0, seq_len=None):
    """Random token windows of the given lengths, right-padded into batches like calibration_batches."""
    gen = torch.Generator().manual_seed(seed)
    seq_len = seq_len or max(lengths)
    samples = [torch.randint(3, VOCAB, (n,), generator=gen) for n in lengths]
    batches = []
    for first in range(0, len(samples), batch_size):
        chunk = samples[first : first + batch_size]
        ids = torch.zeros(len(chunk), seq_len, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, s in enumerate(chunk):
            ids[row, : len(s)], mask[row, : len(s)] = s, 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return samples, batches


def naive_token_values(model, sample: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-token scores of ONE unpadded sample, captured with plain hooks and reduced in numpy."""
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    captured: dict[str, list] = {"attn": [], "mlp": [], "norm": [], "layer": []}
    handles = []
    for layer in layers:
        handles.append(
            adapter.attn_out(layer).register_forward_pre_hook(lambda m, a: captured["attn"].append(a[0]))
        )
        handles.append(
            adapter.mlp_out(layer).register_forward_pre_hook(lambda m, a: captured["mlp"].append(a[0]))
        )
        handles.append(
            layer.register_forward_hook(
                lambda m, a, kw, out: captured["layer"].append((a[0] if a else kw["hidden_states"], out)),
                with_kwargs=True,
            )
        )
    for norm in [n for layer in layers for n in adapter.norms(layer)] + [adapter.final_norm(model)]:
        handles.append(norm.register_forward_hook(lambda m, a, out: captured["norm"].append(out)))
    try:
        with torch.no_grad():
            model(input_ids=sample[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()

    def np64(t):
        return t[0].detach().to(torch.float64).numpy()

    heads = np.stack(
        [np.linalg.norm(np64(x).reshape(len(sample), -1, head_dim), axis=-1) for x in captured["attn"]]
    )
    neurons = np.stack([np.abs(np64(x)) for x in captured["mlp"]])
    hidden = np.stack([np.abs(np64(x)) for x in captured["norm"]])
    bi = []
    for x_in, out in captured["layer"]:
        a, b = np64(x_in), np64(out[0] if isinstance(out, tuple) else out)
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        bi.append(1.0 - cos)
    # token axis first: [T, L, H], [T, L, F], [T, norms, D], [T, L]
    return {
        "heads": heads.transpose(1, 0, 2),
        "neurons": neurons.transpose(1, 0, 2),
        "hidden": hidden.transpose(1, 0, 2),
        "block_importance": np.stack(bi).T,
    }


def naive_scores(per_sample: list[dict], axis: str, batch: str, seq: str) -> np.ndarray:
    reduce_seq = {"mean": lambda x: x.mean(0), "l2": lambda x: np.sqrt((x**2).sum(0))}[seq]
    values = np.stack([reduce_seq(s[axis]) for s in per_sample])  # [samples, *units]
    out = {"mean": values.mean(0), "l2": np.sqrt((values**2).sum(0)), "var": values.var(0)}[batch]
    return out.sum(0) if axis == "hidden" else out  # hidden: per-norm scores summed over norms


@pytest.mark.parametrize("family", FAMILIES)
def test_running_sums_match_naive_per_sample_reference(family):
    model = tiny_model(family)
    samples, batches = padded_batches([9, 5, 12, 7, 3], batch_size=2)
    result = compute_importance(model, batches, scans=("bi",))
    per_sample = [naive_token_values(model, s) for s in samples]
    for batch, seq in COMBOS:
        scores = result.scores(batch=batch, seq=seq)
        for axis in ("heads", "neurons", "hidden"):
            expected = naive_scores(per_sample, axis, batch, seq)
            np.testing.assert_allclose(
                getattr(scores, axis), expected, rtol=2e-4, atol=1e-6, err_msg=f"{axis} {batch}/{seq}"
            )
        expected_bi = naive_scores(per_sample, "block_importance", batch, seq)
        np.testing.assert_allclose(scores.layers["block_importance"], expected_bi, rtol=2e-4, atol=1e-6)


def test_default_ranking_is_l2_over_batch_mean_over_sequence():
    model = tiny_model("llama")
    _, batches = padded_batches([6, 8, 4], batch_size=3)
    result = compute_importance(model, batches, scans=("bi",))
    default, explicit = result.scores(), result.scores(batch="l2", seq="mean")
    np.testing.assert_array_equal(default.heads, explicit.heads)
    assert not np.allclose(default.heads, result.scores(batch="mean", seq="mean").heads)


@pytest.mark.parametrize("family", ["llama", "gpt2", "phi3"])
def test_appending_padding_to_a_sample_changes_nothing(family):
    model = tiny_model(family)
    samples, tight = padded_batches([10, 6], batch_size=2)
    _, loose = padded_batches([10, 6], batch_size=2, seq_len=16)  # same tokens, 6 / 10 padding appended
    a = compute_importance(model, tight, block_size=1)
    b = compute_importance(model, loose, block_size=1)
    for batch, seq in COMBOS:
        sa, sb = a.scores(batch, seq), b.scores(batch, seq)
        for axis in ("heads", "neurons", "hidden"):
            np.testing.assert_allclose(getattr(sa, axis), getattr(sb, axis), rtol=1e-4, atol=1e-6)
        for name in sa.layers:
            np.testing.assert_allclose(sa.layers[name], sb.layers[name], rtol=1e-4, atol=1e-6)


def test_state_is_running_sums_only_whatever_the_number_of_samples():
    model = tiny_model("qwen2")
    few = compute_importance(model, padded_batches([5, 6], 2)[1], scans=("bi",))
    many = compute_importance(model, padded_batches([5, 6] * 6, 4)[1], scans=("bi",))
    assert {k: v.shape for k, v in few.arrays.items()} == {k: v.shape for k, v in many.arrays.items()}
    assert all(v.dtype == np.float32 for v in many.arrays.values())
    assert many.arrays["samples"].tolist() == [6, 6] and few.arrays["samples"].tolist() == [1, 1]


def test_bf16_weights_accumulate_in_float32_close_to_fp32():
    model = tiny_model("llama")
    _, batches = padded_batches([12, 9, 12, 7], batch_size=2)
    ref = compute_importance(model, batches).scores()
    low = compute_importance(model.to(torch.bfloat16), batches)
    assert low.manifest["dtype"] == "bfloat16"
    assert all(v.dtype == np.float32 for v in low.arrays.values())
    scores = low.scores()
    for axis in ("heads", "neurons", "hidden"):
        got, want = getattr(scores, axis), getattr(ref, axis)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=5e-2, atol=1e-3 * np.abs(want).max())
    np.testing.assert_allclose(
        scores.layers["block_importance"], ref.layers["block_importance"], rtol=0.1, atol=1e-2
    )
    for name in ("drop_loss", "block_loss_k2"):
        assert np.isfinite(scores.layers[name]).all()


@pytest.mark.parametrize(
    "mask_rows",
    [
        [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]],  # right padding: re-reduce short rows
        [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1]],  # left padding / holes: masked copy
    ],
)
def test_sequence_reductions_skip_padding_for_any_layout(mask_rows):
    from worker.engine.importance.accumulators import BatchContext

    mask = torch.tensor(mask_rows)
    x = torch.randn(3, 6, 5)
    ctx = BatchContext(mask, first_sample=0)
    assert ctx.right_padded == (mask_rows[0] == [1] * 6)
    out_sum, out_l2 = torch.empty(3, 5), torch.empty(3, 5)
    ctx.reduce_into(x, out_sum, out_l2)
    real = mask.bool().numpy()
    for b in range(3):
        tokens = x[b].numpy()[real[b]]
        np.testing.assert_allclose(out_sum[b].numpy(), np.abs(tokens).sum(0), rtol=1e-5)
        np.testing.assert_allclose(out_l2[b].numpy(), np.sqrt((tokens**2).sum(0)), rtol=1e-5)


@pytest.mark.parametrize("chunk", [7, 1 << 18])  # many cache-sized slices on CPU, or one
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_abs_and_l2_sums_equal_float64_for_any_slicing(monkeypatch, chunk, dtype):
    from worker.engine.importance import accumulators

    monkeypatch.setattr(accumulators, "CPU_CHUNK_ELEMENTS", chunk)
    x = torch.randn(3, 11, 5, 4, generator=torch.Generator().manual_seed(3)).to(dtype)
    for dim in range(x.dim()):
        shape = x.shape[:dim] + x.shape[dim + 1 :]
        out_sum, out_l2 = torch.full(shape, 9.0), torch.full(shape, 9.0)
        accumulators.abs_and_l2_sums(x, dim, out_sum, out_l2)
        ref = x.double().numpy()
        np.testing.assert_allclose(out_sum.numpy(), np.abs(ref).sum(dim), rtol=1e-6)
        np.testing.assert_allclose(out_l2.numpy(), np.sqrt((ref**2).sum(dim)), rtol=1e-6)
        assert out_sum.dtype == out_l2.dtype == torch.float32
    out_sum, out_l2 = torch.full((3, 4), 9.0), torch.full((3, 4), 9.0)
    accumulators.abs_and_l2_sums(x[:, :0, 0], 1, out_sum, out_l2)  # a fully padded sample: zeros
    assert not out_sum.any() and not out_l2.any()


@pytest.mark.parametrize("family,norms", [("gemma2", 4), ("olmo2", 2)])
def test_hidden_channels_are_read_at_every_residual_width_norm(family, norms):
    # Gemma: pre and post norms around attention and MLP; OLMo 2: post norms only. One row per norm
    # per layer plus the final norm, all summed into the hidden-channel score.
    model = tiny_model(family)
    result = compute_importance(model, padded_batches([5, 6], batch_size=2)[1], scans=("bi",))
    assert len(adapter_for(model).norm_names) == norms
    assert result.arrays["hidden"].shape[2] == norms * 4 + 1
    assert (result.arrays["hidden"] > 0).any(axis=(0, 1, 3)).all()  # every norm contributed
