"""Torch-free memory planner: peak bytes per device of importance, pruning, distillation and evaluation.

Shared by the engine (bench), the backend (the 409 check against the workers' memory) and the
dashboard, which mirrors it in `frontend/js/memplan.js` (tests/ui/test_memplan.py holds the two to
the same numbers). Everything is computed from an `ArchSpec` and the job's settings.

What is derived and what is fitted (bench/memory_planner_bench.py measures both):

- Derived, exact: weights, gradients and AdamW states from the exact parameter counts. Our loop keeps
  no float32 master copy: `torch.optim.AdamW` keeps its two moments in the parameters' dtype, so with
  bfloat16 weights the gradients and moments are bfloat16 too (pure-bf16 training; the loss itself
  is always computed in float32).
- Derived, exact for Llama, Mistral, Qwen2 / 3, OLMo 2, Phi-3 and Gemma 2 blocks (tests/engine/test_memplan.py
  counts the tensors autograd really saves): the activations a decoder layer saves per token,
  `saved_bytes_per_token`, with each family's norm layout (`_norm_layout`) and q/k norms, Phi-3's fused
  projections and Gemma 2's eager attention (its scores are saved: 8 bytes per head and key); Gemma 3
  within 8 bytes per token, its sliding-window layers' masks past the window included (SDPA saves an
  additive [B, 1, S, S] copy per layer: `sliding_masked_layers`); the mixture-of-experts MLPs of Qwen3-MoE, Mixtral and
  Qwen2-MoE within 4 (k + 1) bytes per layer and token (`moe_saved_bytes_per_token`). GPT-2 uses the
  same terms and is approximate.
- Derived from transformers' and torch's code, then measured (tests/engine/test_memplan.py, the bench):
  the attention buffers a layer holds while it runs (`attention_bytes`): Gemma 2's eager [B, H, S, S]
  scores and masks (transformers has no SDPA path for its soft-capped logits), keys and values
  repeated to every head (eager kernel, SDPA's math kernel, or a padded batch's or a sliding window's
  mask), the mask; a layer's MLP and attention run one after the other (`forward_working_bytes`).
- Counted from the code, then measured exactly (the bench, tests): a prune job's tensors, in memory
  (with save_pretrained's copies of a mixture of experts' gate_up tensors) and out of core (with the
  rows a scattered cut gathers, `gathered_rows_numel`).
- Counted from the code, then confirmed by profiles: the chunked loss's per-chunk logit buffers
  (`*_CHUNK_BUFFERS`).
- Fitted: the transient working set of a layer's forward / backward as `TRANSIENT_*` multiples of the
  widest per-token tensor (round numbers checked against CPU profiles of tiny models: the bench's 20
  CPU cases land at 0.95-1.14 of the measured tensor peak). A streamed importance pass peaks in its
  layer loop or at its head, never both (measured: 1.02 and 1.04). SDPA's math-kernel scores on CUDA
  in float32 with grouped queries (`math_attention_bytes`): measured on the 8B evaluation (H200). The CUDA-only terms (the autocast copy of the weights, foreach AdamW temporaries, the
  CUDA context) are derived from what torch does, not yet measured here.

Modules, one job each: `units` (dtype sizes, chunk sizes, reserves and the other fixed numbers;
`format_bytes`), `activations` (what a layer saves and holds while it runs), one module per job's
peak: `distill` (distillation, teacher correction), `importance`, `evaluation`, `prune` (sharing
`peak`: the result's shape), and `fit` (a job on a worker: `usable_bytes`, `distill_candidates`).
"""

from __future__ import annotations

from worker.engine.memplan.activations import (
    attention_bytes,
    eager_attention,
    forward_working_bytes,
    layer_saved_bytes_per_token,
    layers_saved_bytes_per_token,
    math_attention_bytes,
    moe_saved_bytes_per_token,
    nll_chunk_buffers,
    norm_saved_bytes,
    saved_bytes_per_token,
    sliding_masked_layers,
    transient_bytes_per_token,
    widest,
)
from worker.engine.memplan.distill import distill_memory, teacher_correction_memory
from worker.engine.memplan.evaluation import evaluation_memory
from worker.engine.memplan.fit import (
    describe_change,
    distill_candidates,
    spec_from_summary,
    usable_bytes,
)
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
from worker.engine.memplan.prune import (
    gathered_rows_numel,
    prune_memory,
    saved_expert_copies_numel,
    tensor_dims,
    tensor_numels,
)
from worker.engine.memplan.units import (
    AUTO_OUT_OF_CORE_RAM_FRACTION,
    BYTE_UNITS,
    CHUNK_LOGITS,
    CHUNK_LOGITS_CUDA,
    CUDA_RESERVE_BYTES,
    CUDA_RESERVE_FRACTION,
    DTYPE_BYTES,
    EAGER_FAMILIES,
    EVAL_BATCH_SIZE,
    FUSED_FAMILIES,
    HOST_RESERVE_BYTES,
    LOSS_CHUNK_BUFFERS_CE,
    LOSS_CHUNK_BUFFERS_KD,
    NLL_CHUNK_BUFFERS,
    NUM_SUMS,
    SOFTCAP_FAMILIES,
    TRANSIENT_BACKWARD,
    TRANSIENT_FORWARD,
    GiB,
    auto_chunk_tokens,
    dtype_bytes,
    format_bytes,
    logit_budget,
)
from worker.engine.spec import ArchSpec  # memplan.ArchSpec: the type its estimators take

__all__ = [
    "AUTO_OUT_OF_CORE_RAM_FRACTION",
    "ArchSpec",
    "BYTE_UNITS",
    "CHUNK_LOGITS",
    "CHUNK_LOGITS_CUDA",
    "CUDA_RESERVE_BYTES",
    "CUDA_RESERVE_FRACTION",
    "DEFAULT_SCANS",
    "DTYPE_BYTES",
    "EAGER_FAMILIES",
    "EVAL_BATCH_SIZE",
    "FUSED_FAMILIES",
    "GiB",
    "HOST_RESERVE_BYTES",
    "LOSS_CHUNK_BUFFERS_CE",
    "LOSS_CHUNK_BUFFERS_KD",
    "NLL_CHUNK_BUFFERS",
    "NUM_SUMS",
    "SOFTCAP_FAMILIES",
    "TRANSIENT_BACKWARD",
    "TRANSIENT_FORWARD",
    "attention_bytes",
    "auto_chunk_tokens",
    "describe_change",
    "distill_candidates",
    "distill_memory",
    "dtype_bytes",
    "eager_attention",
    "evaluation_memory",
    "format_bytes",
    "forward_working_bytes",
    "gathered_rows_numel",
    "importance_memory",
    "importance_options",
    "importance_streams",
    "layer_saved_bytes_per_token",
    "layers_saved_bytes_per_token",
    "logit_budget",
    "loss_scan_sizes",
    "math_attention_bytes",
    "moe_saved_bytes_per_token",
    "nll_chunk_buffers",
    "norm_saved_bytes",
    "prune_memory",
    "saved_bytes_per_token",
    "saved_expert_copies_numel",
    "sliding_masked_layers",
    "spec_from_summary",
    "spill_limit_bytes",
    "store_capacity",
    "store_placement",
    "streamed_layer_copies",
    "streamed_passes",
    "streamed_store_count",
    "teacher_correction_memory",
    "tensor_dims",
    "tensor_numels",
    "transient_bytes_per_token",
    "usable_bytes",
    "widest",
]
