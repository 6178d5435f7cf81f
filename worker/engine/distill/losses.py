"""Distillation losses, computed in token chunks so full B x S x V logits never exist.

The logit loss is forward KL(teacher || student) on next-token distributions at temperature tau,
scaled by tau^2 (Hinton et al.): the gradient of KL(softmax(t/tau) || softmax(s/tau)) wrt the student
logits s is (p_s - p_t) / tau, so the tau^2 factor keeps its size comparable across temperatures.
Optionally mixed with the student's cross-entropy on the labels (at temperature 1).

`chunked_distill_loss` takes the *final hidden states* and the LM-head weights of both models and
projects one chunk of tokens at a time. The gradient wrt the student's logits is closed-form, so the
forward pass computes it chunk by chunk and turns it straight into gradients for the hidden states and
the head weight (as Liger-Kernel's fused linear cross-entropy does): memory is O(chunk x V) and no
logits are recomputed in backward. `reference_distill_loss` is the plain full-logit formula, kept for
tests and as the definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The LM head is applied chunk by chunk by the shared definition (one for losses and evaluation).
from worker.engine.chunked_head import (
    IGNORE_INDEX,
    OutputHead,
    as_output_head,
    auto_chunk_tokens,
    chunk_logits,
    chunk_spans,
)


@dataclass
class LossWeights:
    kd: float = 1.0  # weight of tau^2 * KL(teacher || student)
    ce: float = 0.0  # weight of the student's cross-entropy on the labels
    temperature: float = 1.0


def reference_distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    weights: LossWeights,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, kd, ce) from full logits [N, V]; positions whose label is IGNORE_INDEX are skipped."""
    mask = labels != IGNORE_INDEX
    count = mask.sum().clamp(min=1)
    tau = weights.temperature
    s = student_logits.float()
    ce = F.cross_entropy(s, labels, ignore_index=IGNORE_INDEX, reduction="sum") / count
    kd = s.new_zeros(())
    if teacher_logits is not None:
        log_ps = F.log_softmax(s / tau, dim=-1)
        log_pt = F.log_softmax(teacher_logits.float() / tau, dim=-1)
        kl_rows = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
        kd = (kl_rows * mask).sum() / count
    total = weights.kd * tau * tau * kd + weights.ce * ce
    return total, kd, ce


def _chunk_pass(
    s_hidden, weight, bias, t_hidden, t_weight, t_bias, labels, weights, chunk_tokens, want, s_post, t_post
):
    """One sweep over token chunks: loss sums and, where `want` says so, gradients of the total loss.

    `s_post` / `t_post` (OutputHead) post-process each side's logits (soft-cap, scaling); the gradient
    wrt the final logits is taken back through it to the raw logits before it reaches h and W."""
    want_h, want_w, want_b = want
    n = s_hidden.shape[0]
    mask = labels != IGNORE_INDEX
    count = mask.sum().clamp(min=1).to(torch.float32)
    tau = weights.temperature
    kd_sum = torch.zeros((), dtype=torch.float32, device=s_hidden.device)
    ce_sum = torch.zeros((), dtype=torch.float32, device=s_hidden.device)
    grad_h = torch.empty_like(s_hidden) if want_h else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
    grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if want_b else None
    use_teacher = t_hidden is not None  # KL is reported even at weight 0
    for start, end in chunk_spans(n, chunk_tokens):
        h = s_hidden[start:end]
        y = labels[start:end]
        m = mask[start:end].to(torch.float32)
        z = s_post.finish(chunk_logits(h, weight, bias))
        log_p = F.log_softmax(z, dim=-1)
        safe_y = y.clamp(min=0).unsqueeze(-1)
        ce_sum += -(log_p.gather(-1, safe_y).squeeze(-1) * m).sum()
        grad_z = None
        if any(want):
            grad_z = torch.zeros_like(z)
            if weights.ce != 0.0:  # d CE / dz = softmax(z) - onehot(y)
                g = log_p.exp()
                g.scatter_add_(-1, safe_y, torch.full_like(safe_y, -1, dtype=g.dtype))
                grad_z += (weights.ce / count) * g * m.unsqueeze(-1)
        if use_teacher:
            zt = t_post.finish(chunk_logits(t_hidden[start:end], t_weight, t_bias))
            log_pt = F.log_softmax(zt / tau, dim=-1)
            log_ps = log_p if tau == 1.0 else F.log_softmax(z / tau, dim=-1)
            pt = log_pt.exp()
            kd_sum += ((pt * (log_pt - log_ps)).sum(-1) * m).sum()
            if grad_z is not None and weights.kd != 0.0:  # d (tau^2 KL) / dz = tau * (p_s - p_t)
                grad_z += (weights.kd * tau / count) * (log_ps.exp() - pt) * m.unsqueeze(-1)
        if grad_z is not None:
            grad_z = s_post.raw_gradient(z, grad_z)
            gz = grad_z.to(h.dtype)
            if want_h:
                grad_h[start:end] = gz @ weight.to(h.dtype)
            if want_w:
                grad_w += (gz.t() @ h).float()
            if want_b:
                grad_b += grad_z.sum(0)
    kd = kd_sum / count
    ce = ce_sum / count
    total = weights.kd * tau * tau * kd + weights.ce * ce if use_teacher else weights.ce * ce
    return total, kd, ce, (grad_h, grad_w, grad_b)


class _FusedChunkedLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, s_hidden, weight, bias, t_hidden, t_weight, t_bias, labels, weights, chunk_tokens, s_post, t_post
    ):
        want = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )
        total, kd, ce, grads = _chunk_pass(
            s_hidden,
            weight,
            bias,
            t_hidden,
            t_weight,
            t_bias,
            labels,
            weights,
            chunk_tokens,
            want,
            s_post,
            t_post,
        )
        ctx.grads = grads
        ctx.dtypes = (s_hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(kd, ce)
        return total, kd, ce

    @staticmethod
    def backward(ctx, grad_total, _grad_kd, _grad_ce):
        grad_h, grad_w, grad_b = ctx.grads
        ctx.grads = None
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        out_h = None if grad_h is None else (grad_h * grad_total).to(h_dtype)
        out_w = None if grad_w is None else (grad_w * grad_total).to(w_dtype)
        out_b = None if grad_b is None else (grad_b * grad_total).to(b_dtype)
        return out_h, out_w, out_b, None, None, None, None, None, None, None, None


def chunked_distill_loss(
    student_hidden: torch.Tensor,
    student_head: OutputHead | torch.nn.Linear,
    labels: torch.Tensor,
    weights: LossWeights,
    *,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head: OutputHead | torch.nn.Linear | None = None,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, kd, ce) over flattened positions: hidden [N, D] (final, normed), labels [N].

    Equals `reference_distill_loss(head(student_hidden), teacher_head(teacher_hidden), ...)`, gradients
    included, while holding only `chunk_tokens` x V logits at a time (default: `auto_chunk_tokens`). The teacher side is never
    differentiated. `kd` and `ce` are returned for reporting (not differentiable). A head given as an
    `OutputHead` has its logit post-processing (Gemma's soft-cap, Granite's scaling) applied, so the
    losses are those of the logits the model's own forward returns.
    """
    student_head = as_output_head(student_head)
    if chunk_tokens is None:
        chunk_tokens = auto_chunk_tokens(student_head.weight.shape[0], student_hidden.device.type)
    if chunk_tokens < 1:
        raise ValueError("chunk_tokens must be >= 1")
    if (teacher_hidden is None) != (teacher_head is None):
        raise ValueError("teacher_hidden and teacher_head go together")
    t_weight = t_bias = None
    if teacher_head is not None:
        teacher_head = as_output_head(teacher_head)
        teacher_hidden = teacher_hidden.detach()
        t_weight = teacher_head.weight.detach()
        t_bias = None if teacher_head.bias is None else teacher_head.bias.detach()
    weight, bias = student_head.weight, student_head.bias
    if not torch.is_grad_enabled():
        total, kd, ce, _ = _chunk_pass(
            student_hidden,
            weight,
            bias,
            teacher_hidden,
            t_weight,
            t_bias,
            labels,
            weights,
            chunk_tokens,
            (False, False, False),
            student_head,
            teacher_head,
        )
        return total, kd, ce
    return _FusedChunkedLoss.apply(
        student_hidden,
        weight,
        bias,
        teacher_hidden,
        t_weight,
        t_bias,
        labels,
        weights,
        chunk_tokens,
        student_head,
        teacher_head,
    )


def cosine_state_loss(
    student_states: list[torch.Tensor],
    teacher_states: list[torch.Tensor],
    hidden_channels: list[int] | None = None,
) -> torch.Tensor:
    """Mean over layer pairs and tokens of 1 - cos(student state, teacher state).

    `student_states[j]` is paired with `teacher_states[j]` (the caller applies the layer map).
    When the student's hidden size was pruned, `hidden_channels` lists the teacher channels it kept, so
    the teacher state is compared on exactly the channels the student inherited.
    """
    if len(student_states) != len(teacher_states) or not student_states:
        raise ValueError("need the same non-zero number of student and teacher states")
    index = None
    losses = []
    for s, t in zip(student_states, teacher_states):
        t = t.detach()
        if hidden_channels is not None:
            if index is None:
                index = torch.as_tensor(hidden_channels, device=t.device, dtype=torch.long)
            t = t.index_select(-1, index)
        if s.shape != t.shape:
            raise ValueError(f"student state {tuple(s.shape)} does not match teacher state {tuple(t.shape)}")
        losses.append((1.0 - F.cosine_similarity(s.float(), t.float(), dim=-1)).mean())
    return torch.stack(losses).mean()


def layer_map_from_plan(drop_layers: list[int], teacher_num_layers: int) -> list[int]:
    """Student layer j -> the teacher layer it was copied from (kept layers keep their order)."""
    dropped = set(int(i) for i in drop_layers)
    bad = sorted(i for i in dropped if not 0 <= i < teacher_num_layers)
    if bad:
        raise ValueError(f"drop_layers {bad} out of range 0..{teacher_num_layers - 1}")
    return [i for i in range(teacher_num_layers) if i not in dropped]


def hidden_channels_from_plan(remove_hidden: list[int], teacher_hidden_size: int) -> list[int] | None:
    """Teacher hidden channels the student kept, or None when none were removed."""
    if not remove_hidden:
        return None
    removed = set(int(c) for c in remove_hidden)
    return [c for c in range(teacher_hidden_size) if c not in removed]
