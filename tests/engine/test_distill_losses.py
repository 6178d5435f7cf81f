"""The chunked (fused LM-head) distillation loss equals the full-logit formula, gradients included."""

import math

import pytest
import torch

from tests.tiny_models import FAMILIES, VOCAB, tiny_model
from worker.engine.chunked_head import OutputHead, next_token_targets
from worker.engine.distill import (
    LossWeights,
    chunked_distill_loss,
    cosine_state_loss,
    hidden_channels_from_plan,
    layer_map_from_plan,
    reference_distill_loss,
)
from worker.engine.distill.forward import final_hidden, lm_head
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


def _finished(head: OutputHead, hidden: torch.Tensor) -> torch.Tensor:
    """Gemma's / Granite's forward, written out: divide, then cap * tanh(logits / cap)."""
    z = head.linear(hidden)
    if head.divisor is not None:
        z = z / head.divisor
    if head.softcap is not None:
        z = torch.tanh(z / head.softcap) * head.softcap
    return z


POST = {
    "softcap": dict(softcap=2.0),  # Gemma 2 (these logits reach ~10: the cap bends them hard)
    "divisor": dict(divisor=8.0),  # Granite
    "both": dict(softcap=3.0, divisor=0.5),
}


@pytest.mark.parametrize("post", list(POST))
@pytest.mark.parametrize("chunk", [1, 6, None])
def test_post_processed_logits_loss_and_gradients_equal_full_logits(post, chunk):
    s_hidden, s_head, t_hidden, t_head, labels = _setup(seed=4)
    student, teacher = OutputHead(s_head, **POST[post]), OutputHead(t_head, softcap=1.5)
    weights = LossWeights(kd=0.8, ce=0.4, temperature=2.0)
    total, kd, ce = chunked_distill_loss(
        s_hidden, student, labels, weights, teacher_hidden=t_hidden, teacher_head=teacher, chunk_tokens=chunk
    )
    ref_total, ref_kd, ref_ce = reference_distill_loss(
        _finished(student, s_hidden), _finished(teacher, t_hidden), labels, weights
    )
    plain, *_ = reference_distill_loss(s_head(s_hidden), t_head(t_hidden), labels, weights)
    assert abs(ref_total.item() - plain.item()) > 1e-2  # the post-processing matters here
    for got, want in ((total, ref_total), (kd, ref_kd), (ce, ref_ce)):
        assert abs(got.item() - want.item()) <= 1e-6 * max(1.0, abs(want.item()))
    params = [s_hidden, s_head.weight, s_head.bias]
    for g, w in zip(_grads(total, params), _grads(ref_total, params)):
        assert torch.allclose(g, w, atol=1e-6, rtol=1e-5), (g - w).abs().max()


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


@pytest.mark.parametrize("family", FAMILIES)
def test_kd_from_hidden_states_equals_kd_of_the_models_own_logits(family):
    # The chunked loss sees final hidden states and the family's head (with its soft-cap / scaling);
    # the reference uses the logits each model's forward returns.
    teacher, student = tiny_model(family, seed=0), tiny_model(family, seed=1)  # eval: no dropout
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(5))
    labels = next_token_targets(ids).reshape(-1)
    weights = LossWeights(kd=1.0, ce=0.3, temperature=1.5)
    with torch.no_grad():
        t_hidden = final_hidden(teacher, ids)[0].reshape(-1, teacher.config.hidden_size)
        t_logits = teacher(ids).logits.reshape(-1, VOCAB)
    s_hidden = final_hidden(student, ids)[0].reshape(-1, student.config.hidden_size)
    total, *_ = chunked_distill_loss(
        s_hidden, lm_head(student), labels, weights, teacher_hidden=t_hidden, teacher_head=lm_head(teacher)
    )
    ref_total, *_ = reference_distill_loss(student(ids).logits.reshape(-1, VOCAB), t_logits, labels, weights)
    assert total.item() == pytest.approx(ref_total.item(), rel=1e-6)
    params = [p for p in student.parameters() if p.requires_grad]
    for g, w in zip(_grads(total, params), _grads(ref_total, params)):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)
