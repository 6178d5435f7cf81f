"""One-shot CUDA check of layer-streamed importance (run where a GPU is present; the CPU tests cover the
rest, but not the pinned-memory tier, which exists on CUDA only).

For every tiny family, saved as a safetensors checkpoint: the streamed pass on the device equals the
in-memory pass on the same device (every array to 1e-6 relative in fp32, and bf16 too, where both run
the same kernels), with the activation stores on the device, in pinned host memory and on disk.
Exits non-zero on any mismatch. `--device cpu` runs the same checks on a CPU (no pinned tier there).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.engine.test_importance_scores import padded_batches  # noqa: E402
from tests.tiny_models import FAMILIES, tiny_model  # noqa: E402
from worker.engine.importance import compute_importance  # noqa: E402
from worker.engine.importance.activation_store import StoreBudget  # noqa: E402
from worker.engine.importance.streamed import compute_importance_streamed  # noqa: E402
from worker.engine.loading import load_model  # noqa: E402

SCANS = ("bi", "drop", "block", "angular")
TIERS = {"device": None, "host": StoreBudget(0, 1 << 40), "disk": StoreBudget(0, 0)}


def worst_relative(a, b) -> float:
    return max(
        float(np.max(np.abs(b.arrays[k] - v) / np.maximum(np.abs(v), 1e-30), initial=0.0))
        for k, v in a.arrays.items()
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    device = torch.device(args.device)
    batches = padded_batches([11, 7, 9, 12, 5], batch_size=2, seq_len=12)[1]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            path = Path(tmp) / family
            tiny_model(family).save_pretrained(path)
            for dtype in ("float32", "bfloat16"):
                model, _ = load_model(path, dtype=dtype, device=args.device)
                ref = compute_importance(model, batches, scans=SCANS)
                cells = []
                for tier, budget in TIERS.items():
                    if tier == "host" and device.type != "cuda":
                        continue
                    streamed = compute_importance_streamed(
                        path, batches, dtype=dtype, device=device, scans=SCANS, budget=budget
                    )
                    worst = worst_relative(ref, streamed)
                    used = streamed.manifest["execution"]["activations"]["stores"]
                    ok = worst <= 1e-6 and set(used) == {tier}
                    failures += not ok
                    cells.append(f"{tier} {worst:.1e} {'ok' if ok else 'FAIL'}")
                print(f"{family:11s} {dtype:8s} streamed vs in memory: " + " | ".join(cells))
    if device.type == "cuda":
        print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
