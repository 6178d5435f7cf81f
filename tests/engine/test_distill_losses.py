"""The chunked (fused LM-head) distillation loss equals the full-logit formula, gradients included."""

import math

import pytest
import torch

from worker.engine.distill import (
    LossWeights,
    chunked_distill_loss,
    cosine_state_loss,
    hidden_channels_from_plan,
    layer_map_from_plan,
    reference_distill_loss,
)
from worker.engine.distill.schedule import lr_at


def _setup(seed=0, n=37, d=16, v=50, bias=True):
    g = torch.Generator().manual_seed(seed)
    s_hidden = torch.randn(n, d, generator=g, requires_grad=True)
    s_head = torch.nn.Linear(d, v, bias=bias)
    t_head = torch.nn.Linear(24, v, bias=bias)
    with torch.no_grad():
        for p in (*s_head.parameters(), *t_head.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
    t_hidden = torch.randn(n, 24, generator=g)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[[3, 10, 11]] = -100  # ignored positions
    return s_hidden, s_head, t_hidden, t_head, labels


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize(
    "weights,chunk",
    [
        (LossWeights(kd=1.0, ce=0.0, temperature=1.0), 7),
        (LossWeights(kd=0.7, ce=0.3, temperature=2.0), 5),
        (LossWeights(kd=0.0, ce=1.0, temperature=1.0), 64),
        (LossWeights(kd=1.0, ce=0.5, temperature=0.5), 1),
        (LossWeights(kd=1.0, ce=0.0, temperature=1.0), None),  # automatic: one chunk here
    ],
)
def test_chunked_loss_and_gradients_equal_full_logits(weights, chunk):
    s_hidden, s_head, t_hidden, t_head, labels = _setup()
    total, kd, ce = chunked_distill_loss(
        s_hidden, s_head, labels, weights, teacher_hidden=t_hidden, teacher_head=t_head, chunk_tokens=chunk
    )
    ref_total, ref_kd, ref_ce = reference_distill_loss(s_head(s_hidden), t_head(t_hidden), labels, weights)
    assert abs(total.item() - ref_total.item()) <= 1e-6 * max(1.0, abs(ref_total.item()))
    assert abs(kd.item() - ref_kd.item()) <= 1e-6 * max(1.0, ref_kd.item())
    assert abs(ce.item() - ref_ce.item()) <= 1e-6 * max(1.0, ref_ce.item())
    params = [s_hidden, s_head.weight, s_head.bias]
    got = _grads(total, params)
    want = _grads(ref_total, params)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-6, rtol=1e-5), (g - w).abs().max()
    assert got[0].abs().sum() > 0  # the check is not vacuous


def test_gradient_wrt_full_student_logits_matches():
    """Gradient wrt the (virtual) student logits: the loss through an identity head of size V."""
    s_hidden, _, t_hidden, t_head, labels = _setup(seed=1, d=50, bias=False)
    identity = torch.nn.Linear(50, 50, bias=False)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(50))
    weights = LossWeights(kd=1.0, ce=0.2, temperature=1.5)
    total, *_ = chunked_distill_loss(
        s_hidden, identity, labels, weights, teacher_hidden=t_hidden, teacher_head=t_head, chunk_tokens=6
    )
    (g,) = torch.autograd.grad(total, s_hidden)
    logits = s_hidden.detach().clone().requires_grad_(True)
    ref, *_ = reference_distill_loss(logits, t_head(t_hidden), labels, weights)
    (want,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(g, want, atol=1e-6)


def test_teacher_gets_no_gradient_and_kl_of_identical_models_is_zero():
    s_hidden, s_head, _, _, labels = _setup(seed=2, bias=False)
    t_hidden = s_hidden.detach().clone()
    total, kd, _ = chunked_distill_loss(
        s_hidden, s_head, labels, LossWeights(), teacher_hidden=t_hidden, teacher_head=s_head, chunk_tokens=8
    )
    assert abs(kd.item()) < 1e-6
    total.backward()
    assert s_head.weight.grad.abs().max() < 1e-6  # KL minimum: zero gradient


def test_no_grad_path_matches_and_tied_head_accumulates():
    s_hidden, s_head, t_hidden, t_head, labels = _setup(seed=3)
    weights = LossWeights(kd=1.0, ce=0.5)
    with torch.no_grad():
        total_ng, *_ = chunked_distill_loss(
            s_hidden, s_head, labels, weights, teacher_hidden=t_hidden, teacher_head=t_head, chunk_tokens=9
        )
    total, *_ = chunked_distill_loss(
        s_hidden, s_head, labels, weights, teacher_hidden=t_hidden, teacher_head=t_head, chunk_tokens=9
    )
    assert total_ng.item() == pytest.approx(total.item(), abs=1e-6)
    # Gradient accumulates with other uses of the same weight (tied embeddings).
    extra = s_head.weight.sum()
    (total + extra).backward()
    ref_head = torch.nn.Linear(16, 50)
    ref_head.load_state_dict(s_head.state_dict())
    ref_total, *_ = reference_distill_loss(ref_head(s_hidden.detach()), t_head(t_hidden), labels, weights)
    (ref_total + ref_head.weight.sum()).backward()
    assert torch.allclose(s_head.weight.grad, ref_head.weight.grad, atol=1e-6)


def test_cosine_state_loss_and_plan_maps():
    a = torch.randn(2, 5, 8, requires_grad=True)
    t = torch.randn(2, 5, 10)
    channels = hidden_channels_from_plan([1, 4], 10)
    assert channels == [0, 2, 3, 5, 6, 7, 8, 9]
    loss = cosine_state_loss([a], [t], channels)
    want = (1 - torch.nn.functional.cosine_similarity(a, t[..., channels], dim=-1)).mean()
    assert loss.item() == pytest.approx(want.item(), abs=1e-6)
    assert cosine_state_loss([t[..., channels]], [t], channels).item() == pytest.approx(0.0, abs=1e-6)
    assert layer_map_from_plan([1, 2], 5) == [0, 3, 4]
    assert hidden_channels_from_plan([], 10) is None
    with pytest.raises(ValueError, match="out of range"):
        layer_map_from_plan([7], 5)
    with pytest.raises(ValueError, match="does not match"):
        cosine_state_loss([a], [t])


def test_schedule_warmup_then_cosine_to_minimum():
    lrs = [lr_at(s, peak=1.0, minimum=0.1, warmup=4, total=20) for s in range(20)]
    assert lrs[0] == pytest.approx(0.25) and lrs[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert lr_at(20, peak=1.0, minimum=0.1, warmup=4, total=20) == pytest.approx(0.1)
    assert lrs[12] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
