"""Minitron importance estimation: heads, MLP neurons, hidden channels and layers of a causal LM.

Public API (interface #3 of the brief):
    compute_importance(model, batches, *, scans=("bi", "drop", "block"), block_size=2, progress=None,
                       metadata=None) -> ImportanceResult
        scans: any of "bi", "drop", "block" (the default) and "angular" (Gromov et al.'s block angular
        distance, read in the same pass)
    ImportanceResult.scores(batch="l2", seq="mean") -> ImportanceScores
    ImportanceResult.rank_stability() -> dict[axis, float]
    ImportanceResult.save(dir) / ImportanceResult.load(dir); .manifest

Modules, one job each: `stats` (torch-free sum -> score arithmetic), `accumulators` (float32 running
sums on the device), `hooks` (where each score is read), `layer_scan` (drop / block loss scans with
prefix reuse), `compute` (the pass), `result` (torch-free scores, rank stability), `artifact` (disk
format), `provenance` (manifest). `ImportanceResult` and the artifact are torch-free; `compute_importance`
is imported lazily so that loading an artifact does not import torch.

Models larger than the device: `streamed.compute_importance_streamed(checkpoint_dir, batches, ...)` runs
the same pass one decoder layer at a time from the safetensors checkpoint (same result; its activations
live in `activation_store`), and `offload.choose_mode` decides between the two (`--offload`, the job's
`offload`).
"""

from __future__ import annotations

from worker.engine.importance.result import ImportanceResult

__all__ = ["ImportanceResult", "compute_importance"]


def __getattr__(name: str):
    if name == "compute_importance":
        from worker.engine.importance.compute import compute_importance

        return compute_importance
    raise AttributeError(name)
