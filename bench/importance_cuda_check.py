"""One-shot CUDA check of the importance engine (run where a GPU is present; the CPU tests cover the rest).

For every tiny family: scores computed on CUDA with bf16 weights are finite, accumulated in float32 and
close to CPU float32; on CUDA with float32 weights every stored sum (width axes, BI, drop / block
losses) equals the CPU result. Exits non-zero on any mismatch.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

sys.path.insert(0, ".")
from tests.tiny_models import FAMILIES, VOCAB, tiny_model  # noqa: E402
from worker.engine.importance import compute_importance  # noqa: E402


def batches(device):
    gen = torch.Generator().manual_seed(0)
    out = []
    for lengths in ([12, 9, 16, 5], [16, 14, 7, 11]):
        ids = torch.zeros(len(lengths), 16, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, n in enumerate(lengths):
            ids[row, :n] = torch.randint(3, VOCAB, (n,), generator=gen)
            mask[row, :n] = 1
        out.append({"input_ids": ids.to(device), "attention_mask": mask.to(device)})
    return out


def main() -> int:
    assert torch.cuda.is_available(), "no CUDA device"
    failures = 0
    for family in FAMILIES:
        ref = compute_importance(tiny_model(family), batches("cpu"), block_size=2)
        gpu32 = compute_importance(tiny_model(family).cuda(), batches("cuda"), block_size=2)
        gpu16 = compute_importance(
            tiny_model(family).to("cuda", torch.bfloat16), batches("cuda"), block_size=2
        )
        worst32 = max(
            float(np.max(np.abs(gpu32.arrays[k] - v) / (np.abs(v) + 1e-3))) for k, v in ref.arrays.items()
        )
        s_ref, s16 = ref.scores(), gpu16.scores()
        finite = all(np.isfinite(v).all() for v in gpu16.arrays.values())
        f32 = all(v.dtype == np.float32 for v in gpu16.arrays.values())
        rel16 = max(
            float(np.max(np.abs(getattr(s16, a) - getattr(s_ref, a)) / (np.abs(getattr(s_ref, a)) + 1e-2)))
            for a in ("heads", "neurons", "hidden")
        )
        ok = worst32 < 1e-3 and finite and f32 and rel16 < 0.1
        failures += not ok
        print(
            f"{family:11s} cuda fp32 vs cpu: max rel diff {worst32:.2e} | cuda bf16: finite={finite} "
            f"float32 sums={f32} max rel diff of width scores vs cpu fp32 {rel16:.3f} -> {'ok' if ok else 'FAIL'}"
        )
    print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
