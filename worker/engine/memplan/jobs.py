"""Each job's peak under one import path, as before the split into one module a job: `distill`
(distillation, teacher correction), `importance` (the importance pass, its streamed pass's stores and
passes), `evaluation` (perplexity, lm-eval, benchmark) and `prune` (in memory, out of core). New code
imports from `worker.engine.memplan` or the job's own module."""

from __future__ import annotations

from worker.engine.memplan.distill import distill_memory, teacher_correction_memory
from worker.engine.memplan.evaluation import evaluation_memory
from worker.engine.memplan.importance import (
    DEFAULT_SCANS,
    importance_memory,
    importance_options,
    importance_streams,
    loss_scan_sizes,
    spill_limit_bytes,
    store_capacity,
    store_placement,
    streamed_layer_copies,
    streamed_passes,
    streamed_store_count,
)
from worker.engine.memplan.peak import job_peak
from worker.engine.memplan.peak import layer_weight_bytes as _layer_weight_bytes  # its name before
from worker.engine.memplan.prune import (
    gathered_rows_numel,
    prune_memory,
    saved_expert_copies_numel,
    tensor_dims,
    tensor_numels,
)

__all__ = [
    "DEFAULT_SCANS",
    "_layer_weight_bytes",
    "distill_memory",
    "evaluation_memory",
    "gathered_rows_numel",
    "importance_memory",
    "importance_options",
    "importance_streams",
    "job_peak",
    "loss_scan_sizes",
    "prune_memory",
    "saved_expert_copies_numel",
    "spill_limit_bytes",
    "store_capacity",
    "store_placement",
    "streamed_layer_copies",
    "streamed_passes",
    "streamed_store_count",
    "teacher_correction_memory",
    "tensor_dims",
    "tensor_numels",
]
