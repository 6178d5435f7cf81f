"""One-shot CUDA check of the engine's numerical claims (run where a GPU is present; CI has none).

The CPU test suite proves these on every family; this runs the same claims with the models and data on
the GPU, in float32 with TF32 off (so kernels, not precision, are what differs):

- cut == masked: for every tiny family and every exact cut of tests/engine/test_surgery.py, the pruned
  model's logits equal the masked teacher's;
- the chunked KD loss (fused LM head) equals the full-logit formula, loss and gradients;
- resume-exactness: 8 distillation steps straight == 4 + stop + resume + 4 (losses and final weights).

Prints the worst difference of each and exits non-zero on any failure. `--device cpu` runs it on a CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.engine.distill_helpers import packed, tiny_llama  # noqa: E402
from tests.engine.test_surgery import EXACT_CUTS, inputs  # noqa: E402
from tests.tiny_models import FAMILIES, tiny_model  # noqa: E402
from worker.engine.distill import (  # noqa: E402
    DistillConfig,
    LossWeights,
    chunked_distill_loss,
    distill,
    reference_distill_loss,
)
from worker.engine.masking import masked  # noqa: E402
from worker.engine.surgery import apply_plan  # noqa: E402

TOLERANCE = 1e-4  # float32 on different kernels (the cut model's matmuls have other shapes)


def check_cuts(device: torch.device) -> list[str]:
    failures = []
    for family in FAMILIES:
        worst = 0.0
        for cut, plan in EXACT_CUTS.items():
            model = tiny_model(family).to(device)
            ids = inputs().to(device)
            with torch.no_grad(), masked(model, plan):
                expected = model(ids).logits
            with torch.no_grad():
                got = apply_plan(model, plan)(ids).logits
            diff = float((got - expected).abs().max())
            worst = max(worst, diff)
            if diff > TOLERANCE:
                failures.append(f"cut==masked {family}/{cut}: {diff:.1e}")
        print(f"cut == masked  {family:11s} worst |logit difference| {worst:.1e}")
    return failures


def check_chunked_loss(device: torch.device) -> list[str]:
    g = torch.Generator().manual_seed(0)
    n, d, v = 4096, 256, 32000
    s_hidden = torch.randn(n, d, generator=g).to(device).requires_grad_()
    s_head = torch.nn.Linear(d, v).to(device)
    t_head = torch.nn.Linear(d, v).to(device)
    t_hidden = torch.randn(n, d, generator=g).to(device)
    labels = torch.randint(0, v, (n,), generator=g).to(device)
    weights = LossWeights(kd=1.0, ce=0.5, temperature=2.0)
    total, _, _ = chunked_distill_loss(
        s_hidden, s_head, labels, weights, teacher_hidden=t_hidden, teacher_head=t_head, chunk_tokens=512
    )
    ref, _, _ = reference_distill_loss(s_head(s_hidden), t_head(t_hidden), labels, weights)
    params = [s_hidden, s_head.weight, s_head.bias]
    got, want = torch.autograd.grad(total, params), torch.autograd.grad(ref, params)
    loss_rel = abs(total.item() - ref.item()) / abs(ref.item())
    grad = max(float((a - b).abs().max()) for a, b in zip(got, want))
    print(
        f"chunked KD loss vs full logits ({n} tokens, vocab {v}): loss rel {loss_rel:.1e}, grads {grad:.1e}"
    )
    return [] if loss_rel <= 1e-5 and grad <= 1e-5 else [f"chunked loss: {loss_rel:.1e} / {grad:.1e}"]


def check_resume(device: torch.device) -> list[str]:
    train, val = packed("train", seq_len=24, docs=4), packed("validation", seq_len=24, docs=2)
    config = dict(steps=8, batch_size=2, lr=3e-3, warmup_steps=2, val_every=0, val_batches=1, seed=5)
    teacher = tiny_llama(seed=1, layers=3).to(device)
    straight = tiny_llama(seed=2).to(device)
    full = distill(straight, teacher, train, val, DistillConfig(**config))
    with tempfile.TemporaryDirectory() as tmp:
        steps = []
        first = tiny_llama(seed=2).to(device)
        distill(
            first,
            teacher,
            train,
            val,
            DistillConfig(**config, checkpoint_every=2),
            callback=lambda m: steps.append(m) if m.get("phase") == "train" else None,
            checkpoint_dir=tmp,
            should_stop=lambda: len(steps) >= 4,
        )
        resumed = tiny_llama(seed=3).to(device)
        rest = distill(resumed, teacher, train, val, DistillConfig(**config), checkpoint_dir=tmp, resume=True)
    loss = max(abs(a["loss"] - b["loss"]) for a, b in zip(rest.history, full.history))
    weights = max(
        float((a - b).abs().max())
        for a, b in zip(resumed.state_dict().values(), straight.state_dict().values())
    )
    on = next(resumed.parameters()).device
    print(f"resume: 8 straight vs 4 + resume + 4 on {on}: |loss| {loss:.1e}, |weights| {weights:.1e}")
    return [] if loss <= 1e-6 and weights <= 1e-6 else [f"resume: {loss:.1e} / {weights:.1e}"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    device = torch.device(p.parse_args().device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    failures = check_cuts(device) + check_chunked_loss(device) + check_resume(device)
    if device.type == "cuda":
        print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__)
    print("FAILED: " + "; ".join(failures) if failures else "all engine checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
