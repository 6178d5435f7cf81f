"""The distillation's memory options: activation checkpointing changes nothing numerically (same loss
and gradients to 1e-6) and is switched off again; bfloat16 weights train on CPU (weights, gradients and
AdamW moments in bf16, the loss in float32). The memory they save is measured in
bench/memory_planner_bench.py, not asserted here."""

from __future__ import annotations

import math

import pytest
import torch

from tests.engine.distill_helpers import packed, tiny_llama
from worker.engine.distill import DistillConfig, batch_loss, distill
from worker.engine.distill.memory import memory_options


def _loss_and_grads(student, teacher, ids, config):
    student.zero_grad(set_to_none=True)
    student.train()
    with memory_options(student, teacher, config):
        total, kd, ce, _ = batch_loss(student, teacher, ids, config.loss_weights, config)
        total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in student.named_parameters()}


def test_checkpointing_gives_the_same_loss_and_gradients():
    teacher, student = tiny_llama(0, layers=3), tiny_llama(1, layers=3)
    # Dropout-free model, so the recomputed forward is the same forward.
    ids = packed(seq_len=24).batch(0, 3, 0)
    plain = DistillConfig(ce_weight=0.5, chunk_tokens=16)
    ckpt = plain.model_copy(update={"gradient_checkpointing": True})
    loss_a, grads_a = _loss_and_grads(student, teacher, ids, plain)
    loss_b, grads_b = _loss_and_grads(student, teacher, ids, ckpt)
    assert torch.allclose(loss_a, loss_b, atol=1e-6, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5), name
    assert not student.model.gradient_checkpointing  # switched off again on exit


def test_checkpointing_is_really_on_inside():
    """Inside the options each layer keeps only its input for backward: far fewer saved tensors."""
    student = tiny_llama(1, layers=3).train()
    ids = packed(seq_len=24).batch(0, 2, 0)

    def saved_count(config):
        count = [0]

        def pack(t):
            count[0] += 1
            return t

        with (
            memory_options(student, None, config),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            student.model(input_ids=ids, use_cache=False)
        return count[0]

    plain = saved_count(DistillConfig(mode="ce"))
    ckpt = saved_count(DistillConfig(mode="ce", gradient_checkpointing=True))
    assert ckpt < plain / 3, (ckpt, plain)


def test_bf16_weights_train_on_cpu():
    teacher, student = tiny_llama(0), tiny_llama(1)
    config = DistillConfig(
        steps=3,
        batch_size=2,
        lr=1e-3,
        warmup_steps=0,
        val_every=0,
        val_batches=1,
        weights_dtype="bfloat16",
        gradient_checkpointing=True,
    )
    before = {n: p.detach().float().clone() for n, p in student.named_parameters()}
    with memory_options(student, teacher, config):
        assert {p.dtype for p in student.parameters()} == {torch.bfloat16}
        assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
        result = distill(student, teacher, packed(seq_len=24), packed("validation", seq_len=24), config)
    assert result.steps_completed == 3
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert any(not torch.equal(before[n], p.float()) for n, p in student.named_parameters())
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}


def test_unknown_weights_dtype_is_refused():
    with pytest.raises(ValueError, match="weights_dtype"):
        DistillConfig(weights_dtype="float16")


def test_distill_applies_the_options_itself():
    """A library call of distill() gets what its config says, with no memory_options around it:
    bf16 weights, checkpointing on during the steps and off after; nested inside the CLI's / worker's
    memory_options it leaves checkpointing to the outer one."""
    teacher, student = tiny_llama(0), tiny_llama(1)
    config = DistillConfig(
        steps=2,
        batch_size=2,
        warmup_steps=0,
        val_every=0,
        val_batches=1,
        weights_dtype="bfloat16",
        gradient_checkpointing=True,
    )
    seen = []

    def callback(m):
        if m.get("phase") == "train":
            seen.append((student.model.gradient_checkpointing, next(student.parameters()).dtype))

    data = (packed(seq_len=24), packed("validation", seq_len=24))
    distill(student, teacher, *data, config, callback=callback)
    assert seen == [(True, torch.bfloat16)] * 2
    assert not student.model.gradient_checkpointing
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
    with memory_options(student, teacher, config):
        distill(student, teacher, *data, config)
        assert student.model.gradient_checkpointing  # the outer wrapper's, still on
    assert not student.model.gradient_checkpointing


def test_distill_refuses_a_bad_call_before_casting():
    student = tiny_llama(1)
    config = DistillConfig(weights_dtype="bfloat16")
    with pytest.raises(ValueError, match="needs a teacher"):
        distill(student, None, packed(seq_len=24), packed("validation", seq_len=24), config)
    assert {p.dtype for p in student.parameters()} == {torch.float32}
