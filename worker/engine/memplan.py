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
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from worker.engine.spec import ArchSpec, LayerShape

GiB = 1 << 30
# Bytes per element by dtype name (the one table: plan.expert_alignment and the estimators use it).
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
# Logits held per chunk when the chunk size is automatic (the one definition: chunked_head uses it).
# CPU: 2^24 floats (64 MiB per fp32 buffer). CUDA: 2^28 (1 GiB): the LM-head matmuls need big chunks to run
# well; measured on an H200 (Llama-3.1-8B -> 4.5B KD step, 128k vocabulary, FSDP2, bf16): 130-token chunks
# (2^24) ran at 0.83x the tokens/s of a full-logit loop, 2048-token chunks at 0.98x, for 6 GiB more peak.
CHUNK_LOGITS = 1 << 24
CHUNK_LOGITS_CUDA = 1 << 28
# float32 [chunk, V] buffers alive at once inside the chunked loss, counted from
# worker/engine/distill/losses.py and confirmed by the bench's profiles: KD (z, log p, grad z, z_t / tau,
# log p_t, p_t and two products), CE only (z, log p, grad z, softmax and two products), and the
# inference-only NLL of evaluation / importance (z and its log-softmax).
LOSS_CHUNK_BUFFERS_KD = 8
LOSS_CHUNK_BUFFERS_CE = 6
NLL_CHUNK_BUFFERS = 2
# A layer's transient working set in its forward / backward, in units of a [tokens, intermediate]
# activation (fitted on CPU profiles; see the module docstring).
TRANSIENT_FORWARD = 3
TRANSIENT_BACKWARD = 6
# Per-device slack the planner keeps free: CUDA context + allocator fragmentation, as a fraction and
# a fixed amount (a job that needs 79.5 of 80 GiB does not "fit").
# Windows (or packed blocks) per forward of a perplexity pass: evaluation.perplexity's default, what the
# API's check and the dashboard size evaluate and preview jobs at.
EVAL_BATCH_SIZE = 8
CUDA_RESERVE_FRACTION = 0.05
CUDA_RESERVE_BYTES = 512 << 20
# RAM a streamed pass's activation stores leave to the rest of the process and the OS page cache
# (importance/activation_store.StoreBudget; the API's check and the dashboard size the tiers alike).
HOST_RESERVE_BYTES = 2 << 30
NUM_SUMS = 4  # float32 running sums per unit and half (worker/engine/importance/stats.py)
# A prune job with out_of_core="auto" cuts out of core when the teacher would take more than this share
# of the free RAM (out_of_core.choose_mode; backend.memcheck and jobmemory.js predict it per worker).
AUTO_OUT_OF_CORE_RAM_FRACTION = 0.5
# Families whose transformers class has no SDPA path, so their attention runs the eager kernel and
# materialises the [B, H, S, S] scores (Gemma 2: `_supports_sdpa = False`, soft-capped attention logits).
EAGER_FAMILIES = ("gemma2",)
# Families whose released configs soft-cap the final logits (Gemma 2: cap * tanh(z / cap)): the chunked
# head holds the raw logits, their tanh and the capped result at once, one buffer more than NLL_CHUNK_BUFFERS.
SOFTCAP_FAMILIES = ("gemma2",)
# Families with one fused linear for q / k / v (`qkv_proj`) and one for gate / up (`gate_up_proj`).
FUSED_FAMILIES = ("phi3",)


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of `dtype`; a ValueError for one not in DTYPE_BYTES (a guess would give wrong
    sizes and alignments)."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16") from None


def logit_budget(device: str = "cpu") -> int:
    """Logits one automatic LM-head chunk may hold on this kind of device."""
    return CHUNK_LOGITS_CUDA if str(device).startswith("cuda") else CHUNK_LOGITS


def auto_chunk_tokens(vocab_size: int, device: str = "cpu") -> int:
    """Tokens per LM-head chunk when none is given: as many as fit the device's logit budget."""
    return max(64, logit_budget(device) // max(1, vocab_size))


def spec_from_summary(summary: dict) -> ArchSpec:
    """An ArchSpec from `ArchSpec.summary()` (what the API stores for teachers and students)."""
    return ArchSpec.model_validate(
        {**summary, "layers": None if summary.get("uniform", True) else summary["layers"]}
    )


# ---- activations --------------------------------------------------------------------------------


def norm_saved_bytes(width: int, act: int, normalised: int | None = None, feeds_linear: bool = True) -> int:
    """An RMSNorm saves its float32 input, the float32 inverse RMS and the normalised input (for the
    weight's gradient: `act` bytes, float32 in Gemma's and OLMo 2's norms, `normalised`), and when a
    linear follows it hands it an `act`-byte output, which the linear saves."""
    kept = act if normalised is None else normalised
    return 4 * width + 4 + kept * width + (act * width if feeds_linear else 0)


def _norm_layout(spec: ArchSpec) -> str:
    """Where a family's norms sit: "pre" (Llama-style), "sandwich" (Gemma 2 / 3: pre and post norms
    around both sublayers) or "post" (OLMo 2: the sublayers' outputs only)."""
    if spec.layer_norms == 4:
        return "sandwich"
    return "post" if spec.family == "olmo2" else "pre"


def nll_chunk_buffers(spec: ArchSpec) -> int:
    """float32 [chunk, V] buffers of the inference NLL's chunk at once (one more with a logit soft-cap)."""
    return NLL_CHUNK_BUFFERS + (1 if spec.family in SOFTCAP_FAMILIES else 0)


def eager_attention(spec: ArchSpec) -> bool:
    """Whether the family's attention runs transformers' eager kernel (no SDPA support)."""
    return spec.family in EAGER_FAMILIES


def sliding_masked_layers(spec: ArchSpec, seq_len: int) -> int:
    """Layers whose SDPA attention gets a mask without padding: the sliding-window ones (Gemma 3) once
    the sequence reaches the window (transformers skips the mask only for S < window: measured, S = window
    gets it; a global layer runs is_causal, no mask). Gemma 2's eager kernel: none
    (its masks are `attention_bytes`' scores term)."""
    window = spec.sliding_window
    return spec.sliding_layers if window and seq_len >= window and not eager_attention(spec) else 0


def layer_saved_bytes_per_token(
    spec: ArchSpec,
    shape: LayerShape,
    act: int,
    hidden: int | None = None,
    seq_len: int = 0,
    masked: bool = False,
) -> int:
    """Bytes autograd saves per token for one decoder layer (`act`-byte activations).

    Exact against autograd's saved tensors for Llama, Mistral, Qwen2 / 3, OLMo 2, Phi-3, Gemma 2 and
    the MoE families; Gemma 3 within one rotary table (tests/engine/test_memplan.py). SDPA attention
    saves q, k, v, its output and a float32 log-sum-exp per head. Gemma 2's eager attention instead
    saves, per head, `seq_len` scores three times over: the soft-cap's tanh output (act), the float32
    softmax and its cast back to act (bfloat16 / float16 only): 8 bytes per score in either dtype.
    Phi-3's fused projections: its `v` is a view of the fused [q | k | v] output, which stays saved
    whole, and the attention output reaches o_proj as a copy (the fused query's layout).
    `masked`: SDPA gets a mask (a sliding-window layer past its window, `sliding_masked_layers`), so
    transformers repeats the keys and values to every head and SDPA saves its additive copy of the
    mask, [B, 1, S, S] in act: `seq_len` act bytes per token (measured on Gemma 3, CPU, both dtypes)."""
    d = spec.hidden_size if hidden is None else hidden
    h, g, hd, f = shape.num_heads, shape.num_kv_heads, spec.head_dim, shape.intermediate_size
    layout = _norm_layout(spec)
    f32_norms = 4 if layout != "pre" else None  # Gemma and OLMo 2 normalise in float32
    # Gemma 2's eager kernel always repeats the keys and values to all query heads; SDPA with a mask too.
    eager = eager_attention(spec)
    kv = h if eager or masked else g
    attn = act * (2 * h * hd + 2 * kv * hd)  # q, k, v, output
    if eager:
        attn += (act + 4 + (act if act != 4 else 0)) * h * seq_len
    else:
        attn += 4 * h + (act * seq_len if masked else 0)  # float32 log-sum-exp per head; the mask
    if spec.family in FUSED_FAMILIES:
        attn += act * ((h + g) * hd + h * hd)
    if spec.qk_norm:  # over each head, or (OLMo 2) over all heads at once; RoPE keeps no input
        if spec.qk_norm_full_width:
            attn += sum(norm_saved_bytes(n * hd, act, f32_norms, feeds_linear=False) for n in (h, g))
        else:
            attn += (h + g) * norm_saved_bytes(hd, act, f32_norms, feeds_linear=False)
    mlp = moe_saved_bytes_per_token(spec, shape, act, d) if shape.num_experts else 4 * act * f
    if layout == "pre":
        norms = 2 * norm_saved_bytes(d, act)
    elif layout == "sandwich":
        norms = 2 * norm_saved_bytes(d, act, 4) + 2 * norm_saved_bytes(d, act, 4, feeds_linear=False)
    else:  # post: the sublayers read the residual stream (saved once per sublayer by its linears)
        norms = 2 * norm_saved_bytes(d, act, 4, feeds_linear=False) + 2 * act * d
    return norms + attn + mlp


def moe_saved_bytes_per_token(spec: ArchSpec, shape: LayerShape, act: int, hidden: int) -> int:
    """A mixture-of-experts MLP's saved activations per token (transformers' grouped_mm experts, counted
    by tests/engine/test_memplan.py): per routed copy of the token (k of them) the expert's gate/up
    output, act(gate) and the down projection's input (4 F), its gathered input and its output before
    the routing weight multiplies it (2 D), and that weight; the router's float32 probabilities [E];
    the renormalised top-k weights and their sum (Mixtral, Qwen3-MoE's released configs; a model
    that does not renormalise saves 4 (k + 1) bytes less). Qwen2-MoE's shared expert: a dense gated
    MLP (4 Fs), its output and its sigmoid gate."""
    k = spec.experts_used(shape, active=True)
    weight = 4 if spec.family == "mixtral" else act  # Qwen casts the top-k weights to act, Mixtral not
    routed = k * (4 * act * shape.intermediate_size + 2 * act * hidden + weight)
    router = 4 * shape.num_experts + 4 * (k + 1)
    fs = spec.shared_expert_intermediate_size
    shared = 4 * act * fs + act * hidden + act if fs else 0
    return routed + router + shared


def saved_bytes_per_token(spec: ArchSpec, act: int, checkpointing: bool = False, seq_len: int = 0) -> int:
    """All saved activations per token of a full forward (up to the final norm) for backward
    (`seq_len`: the eager kernel's scores, saved per token and key)."""
    d = spec.hidden_size
    # The final norm's float32 input, inverse RMS and normalised output (float32 in Gemma and OLMo 2).
    final = norm_saved_bytes(d, act, 4 if _norm_layout(spec) != "pre" else None, feeds_linear=False)
    if checkpointing:  # each layer keeps only its input; one layer at a time is recomputed in backward
        return spec.num_layers * act * d + final
    return sum(layers_saved_bytes_per_token(spec, act, seq_len)) + final


def layers_saved_bytes_per_token(spec: ArchSpec, act: int, seq_len: int = 0) -> list[int]:
    """Each layer's saved bytes per token. The spec counts its sliding-window layers, not which they
    are: past the window the masked ones are taken to be those that save the most (exact when the
    layers are uniform)."""
    plain = [layer_saved_bytes_per_token(spec, s, act, seq_len=seq_len) for s in spec.layer_shapes()]
    masked = [
        layer_saved_bytes_per_token(spec, s, act, seq_len=seq_len, masked=True) for s in spec.layer_shapes()
    ]
    order = sorted(range(len(plain)), key=lambda i: plain[i] - masked[i])  # largest mask cost first
    chosen = set(order[: sliding_masked_layers(spec, seq_len)])
    return [masked[i] if i in chosen else plain[i] for i in range(len(plain))]


def widest(spec: ArchSpec) -> LayerShape:
    shapes = spec.layer_shapes()
    return max(shapes, key=lambda s: layer_saved_bytes_per_token(spec, s, 4))


def transient_bytes_per_token(spec: ArchSpec, act: int, backward: bool) -> int:
    """A layer's temporaries while it runs: multiples of its widest per-token tensor. A fused gate / up
    projection (Phi-3) holds its whole [tokens, 2 F] output until the product of its halves is made:
    one [tokens, F] more than separate projections in the forward (measured: exactly 1.0, against a
    Llama of the same shapes, tests/engine/test_memplan.py)."""
    s = widest(spec)
    width = max(s.intermediate_size, spec.hidden_size, s.num_heads * spec.head_dim)
    if s.num_experts:  # grouped_mm runs every routed copy of the tokens at once: [k N, F] and [k N, D]
        width = max(width, spec.experts_used(s, active=True) * max(s.intermediate_size, spec.hidden_size))
    fused = act * s.intermediate_size if spec.family in FUSED_FAMILIES and not backward else 0
    return (TRANSIENT_BACKWARD if backward else TRANSIENT_FORWARD) * act * width + fused


def _layer_weight_bytes(spec: ArchSpec, weight: int) -> int:
    return max(spec.layer_params(s) for s in spec.layer_shapes()) * weight


# ---- jobs ---------------------------------------------------------------------------------------


def _result(parts: dict[str, int], **settings) -> dict:
    parts = {k: int(v) for k, v in parts.items()}
    return {"total": sum(parts.values()), "parts": parts, "settings": settings}


def distill_memory(
    student: ArchSpec,
    teacher: ArchSpec | None,
    *,
    batch_size: int,
    seq_len: int,
    weights_dtype: str = "float32",
    gradient_checkpointing: bool = False,
    device: str = "cpu",
    autocast_bf16: bool = True,
    chunk_tokens: int | None = None,
    num_gpus: int = 1,
) -> dict:
    """Peak bytes per device of one distillation step (teacher None: the CE-only baseline).

    Peak = max(end of forward, end of backward + optimizer step); see the module docstring.
    `num_gpus` > 1 is the sharded (FSDP-style) layout the planner already sizes: parameters, gradients
    and optimizer states divided by N plus one layer's all-gathered weights, and the batch split over
    the devices.
    """
    if num_gpus < 1:
        raise ValueError("num_gpus must be >= 1")
    cuda = device.startswith("cuda")
    w = dtype_bytes(weights_dtype)
    # Activations: bf16 under CUDA autocast, else the weights' dtype.
    act = 2 if (cuda and autocast_bf16) or w == 2 else 4
    n = math.ceil(batch_size / num_gpus) * seq_len
    p_s = student.param_count()["total"]
    weights = p_s * w / num_gpus
    grads = p_s * w / num_gpus
    optimizer = 2 * p_s * w / num_gpus  # AdamW exp_avg, exp_avg_sq in the parameters' dtype
    teacher_bytes = 0 if teacher is None else teacher.param_count()["total"] * w / num_gpus
    # Sharded: each device gathers one layer's full weights at a time (and prefetches the next).
    gather = 0
    if num_gpus > 1:
        widest_model = max(
            [student] + ([teacher] if teacher is not None else []), key=lambda m: m.hidden_size
        )
        gather = 2 * _layer_weight_bytes(widest_model, w)
    # CUDA autocast caches a bf16 copy of each float32 weight that needs a gradient, for the step.
    autocast_cache = p_s * 2 / num_gpus if cuda and autocast_bf16 and w == 4 else 0

    saved = n * saved_bytes_per_token(student, act, gradient_checkpointing, seq_len)
    recompute = n * max(layers_saved_bytes_per_token(student, act, seq_len)) if gradient_checkpointing else 0
    d, v = student.hidden_size, student.vocab_size
    chunk = min(chunk_tokens or auto_chunk_tokens(v, device), n)
    # The loss holds d loss / d hidden [N, D] and a float32 head gradient [V, D] until backward;
    # while it runs, the flattened hidden states of both models and one chunk's logit buffers.
    loss_kept = n * d * act + v * d * 4
    t_hidden = 0 if teacher is None else n * teacher.hidden_size * 4
    buffers = LOSS_CHUNK_BUFFERS_CE if teacher is None else LOSS_CHUNK_BUFFERS_KD
    loss_transient = 2 * n * d * act + t_hidden + buffers * chunk * v * 4
    teacher_forward = 0
    if teacher is not None:  # the teacher runs after the student's forward, without saving anything
        teacher_forward = n * teacher.hidden_size * 4 + forward_working_bytes(
            teacher, n // seq_len, seq_len, act, device
        )
    forward_peak = saved + loss_kept + max(loss_transient, teacher_forward)
    # Backward: the saved activations free layer by layer as gradients fill in; its peak is the start
    # (all saved, plus the recomputed layer and one layer's backward temporaries).
    backward_peak = saved + recompute + loss_kept + n * transient_bytes_per_token(student, act, backward=True)
    activations = max(forward_peak, backward_peak)
    # The optimizer step: all gradients alive; CUDA's foreach AdamW allocates one state-sized temporary.
    step_extra = grads + (optimizer / 2 if cuda else 0)
    # The head's gradient (in the weights' dtype) exists from the start of backward.
    peak_dynamic = max(activations + v * d * w, step_extra)
    parts = {
        "weights": weights,
        "optimizer": optimizer,
        "teacher": teacher_bytes,
        "gather_buffer": gather,
        "autocast_cache": autocast_cache,
        "activations_and_grads": peak_dynamic,
    }
    return _result(
        parts,
        batch_size=batch_size,
        seq_len=seq_len,
        weights_dtype=weights_dtype,
        gradient_checkpointing=gradient_checkpointing,
        device="cuda" if cuda else "cpu",
        num_gpus=num_gpus,
        tokens_per_device=n,
        activations_saved=saved,
    )


def teacher_correction_memory(
    student: ArchSpec,
    teacher: ArchSpec,
    *,
    batch_size: int,
    seq_len: int,
    weights_dtype: str = "float32",
    gradient_checkpointing: bool = False,
    device: str = "cpu",
    autocast_bf16: bool = True,
    chunk_tokens: int | None = None,
    num_gpus: int = 1,
) -> dict:
    """Peak bytes per device of a distillation with teacher correction (`teacher_correction_steps` > 0,
    distill/loop.py `correct_teacher`), over its two phases (`settings["phases"]`; `total` is the larger).

    Correction: the teacher trained on CE like a baseline student (`distill_memory(teacher, None)`: in
    one process the corrected copy itself; on N ranks a sharded copy, 1/N of its weights, gradients and
    AdamW states and one layer gathered), beside what each device already holds whole: the run's teacher
    as loaded, on N ranks the corrected copy that then takes the gathered weights, and the student's
    weights (sharded only when its training starts). `parts` are this phase's.
    Distillation: the step `distill_memory` sizes with the corrected teacher, plus the loaded teacher,
    which stays whole on each device beside it."""
    options = dict(
        batch_size=batch_size,
        seq_len=seq_len,
        weights_dtype=weights_dtype,
        gradient_checkpointing=gradient_checkpointing,
        device=device,
        autocast_bf16=autocast_bf16,
        chunk_tokens=chunk_tokens,
        num_gpus=num_gpus,
    )
    w = dtype_bytes(weights_dtype)
    whole = teacher.param_count()["total"] * w
    parts = {
        "teacher": whole,
        "corrected_teacher": whole if num_gpus > 1 else 0,  # one process: the copy being trained
        "student_weights": student.param_count()["total"] * w,
        "correction_step": distill_memory(teacher, None, **options)["total"],
    }
    step = distill_memory(student, teacher, **options)
    hidden = ("tokens_per_device", "activations_saved")  # the distillation step's own
    out = _result(parts, **{k: v for k, v in step["settings"].items() if k not in hidden})
    correction = out["total"]
    distillation = step["total"] + int(whole)
    out["settings"]["phases"] = {"correction": correction, "distillation": distillation}
    out["total"] = max(correction, distillation)
    return out


DEFAULT_SCANS = ("bi", "drop", "block")  # worker/engine/importance/result.py's


def loss_scan_sizes(scans, block_size: int) -> list[int]:
    """k of each loss scan (importance/compute.py's rule: drop is k = 1, block is k = block_size)."""
    return list(
        dict.fromkeys(((1,) if "drop" in scans else ()) + ((block_size,) if "block" in scans else ()))
    )


def streamed_store_count(num_layers: int, scans=DEFAULT_SCANS, block_size: int = 2) -> int:
    """Activation stores a layer-streamed pass has open by its last layer (importance/streamed.py):
    the main stream, k angular inputs, and one store per open cut of each loss scan (L - k + 1)."""
    angular = block_size if "angular" in scans else 0
    return 1 + angular + sum(num_layers - k + 1 for k in loss_scan_sizes(scans, block_size))


def spill_limit_bytes(gb: float | None) -> int | None:
    """The disk tier's limit in bytes from a `spill_limit_gb` setting (None: unset, the spill
    directory's free space counts, which only the worker knows)."""
    return None if gb is None else int(gb * 1e9)


def store_capacity(
    store_bytes: int,
    device_budget: int | None,
    host_budget: int = 0,
    cuda: bool = False,
    disk_budget: int | None = None,
) -> int | None:
    """Stores the tiers hold at once, each whole in one tier (importance/activation_store.py's
    `ActivationStores.capacity`); None: no limit (no device or no disk budget given)."""
    if device_budget is None or disk_budget is None or store_bytes <= 0:
        return None
    return sum(max(0, b) // store_bytes for b in (device_budget, host_budget if cuda else 0, disk_budget))


def streamed_passes(
    num_layers: int, scans=DEFAULT_SCANS, block_size: int = 2, capacity: int | None = None
) -> int | None:
    """Passes over the checkpoint a layer-streamed pass makes when its tiers hold `capacity` stores
    (importance/streamed.py's `plan_passes`): 1 when every store fits; else the first pass holds the
    stream, the angular inputs and what room is left for cuts, each later one a stream and
    `capacity - 1` cuts. None: not even the first pass fits (the job is refused)."""
    angular = block_size if "angular" in scans else 0
    cuts = sum(num_layers - k + 1 for k in loss_scan_sizes(scans, block_size))
    if capacity is None or capacity >= 1 + angular + cuts:
        return 1
    first, later = capacity - 1 - angular, capacity - 1
    if first < 0 or later < 1:
        return None
    return 1 + -(-(cuts - first) // later)


def store_placement(
    count: int, store_bytes: int, device_budget: int | None, host_budget: int = 0, cuda: bool = False
) -> dict[str, int]:
    """Stores per tier under importance/activation_store.py's rule: each new store goes whole to the
    first tier with room (device, then pinned host on CUDA, then disk). No store is released before
    the last one opens, so the tiers fill in order. `device_budget` None: no limit."""
    if device_budget is None or store_bytes <= 0:
        return {"device": count, "host": 0, "disk": 0}
    on_device = min(count, max(0, device_budget) // store_bytes)
    on_host = min(count - on_device, max(0, host_budget) // store_bytes) if cuda else 0
    return {"device": on_device, "host": on_host, "disk": count - on_device - on_host}


def _importance_mlp_units(shape: LayerShape) -> int:
    """Scored MLP units of a layer (importance/hooks.py): its neurons, or per expert the three expert
    axes and its FFN channels (a mixture-of-experts layer has no neuron axis)."""
    if shape.num_experts:
        return shape.num_experts * (3 + shape.intermediate_size)
    return shape.intermediate_size


def math_attention_bytes(
    spec: ArchSpec, batch_size: int, seq_len: int, act_bytes: int, device: str, padded: bool = False
) -> int:
    """The float32 scores and their softmax, [B, H, S, S] each, that SDPA's math kernel holds at its peak
    when no fused kernel takes the call: on CUDA with float32 activations and grouped-query attention
    without a padding mask. Flash and cuDNN attention take fp16 / bf16 only, and the memory-efficient
    kernel rejects grouped queries (torch's sdp_utils.cpp: check_batch_size_and_num_heads_dense<false>),
    which transformers passes as `enable_gqa` when there is no padding mask (integrations/sdpa_attention.py);
    with one (`padded`) it repeats the keys and values itself and the memory-efficient kernel runs. Two
    buffers: measured on the math kernel (CPU profile; its code is the same on CUDA), and the H200's
    Llama-3.1-8B fp32 evaluation peak (docs/results/gpu_h200_2026-11-29/run3_memplan_eval.log).
    bf16 / fp16, multi-head attention, eager families and CPU (its flash kernel takes float32) never get
    here."""
    shapes = spec.layer_shapes()
    if not str(device).startswith("cuda") or act_bytes != 4 or padded or eager_attention(spec):
        return 0
    if not any(s.num_kv_heads < s.num_heads for s in shapes):
        return 0
    return 2 * batch_size * max(s.num_heads for s in shapes) * seq_len * seq_len * 4


def attention_bytes(
    spec: ArchSpec, batch_size: int, seq_len: int, act_bytes: int, device: str = "cpu", padded: bool = False
) -> dict[str, int]:
    """What a layer's attention holds while it runs (no autograd), beyond the per-token working set:

    - `attention_scores`: Gemma 2's eager kernel (transformers has no SDPA path for its soft-capped
      logits): [B, H, S, S] scores, act + 4 bytes each at the peak (the soft-cap's tanh and the mask's
      add hold two act copies; the softmax its act input and float32 output; the cast back its float32
      input and act output), and the model's two additive masks [B, 1, S, S] in act (full and sliding-
      window layers); or SDPA's math kernel (`math_attention_bytes`).
    - `repeated_kv`: grouped keys and values copied to every query head, [B, H, S, head_dim] each, where
      something repeats them: the eager kernel's `repeat_kv`, the math kernel's `enable_gqa`, and
      transformers' SDPA path when the batch has padding (a mask), which also builds a boolean
      [B, 1, S, S] mask that SDPA turns into an additive one in act (`attention_mask`); a sliding-window
      layer past its window gets the same mask without padding (`sliding_masked_layers`).
    Only the non-zero parts are returned."""
    shapes = spec.layer_shapes()
    h = max(s.num_heads for s in shapes)
    grouped = any(s.num_kv_heads < s.num_heads for s in shapes)
    b, s_ = batch_size, seq_len
    out: dict[str, int] = {}
    eager = eager_attention(spec)
    sliding = sliding_masked_layers(spec, seq_len) > 0
    masked = padded or sliding
    # The math kernel runs where there is no mask: every layer unless padded, the global ones if sliding.
    every_layer_masked = padded or (sliding and spec.sliding_layers >= spec.num_layers)
    math_scores = math_attention_bytes(spec, b, s_, act_bytes, device, every_layer_masked)
    if eager:
        out["attention_scores"] = b * h * s_ * s_ * (act_bytes + 4) + 2 * b * s_ * s_ * act_bytes
    elif math_scores:
        out["attention_scores"] = math_scores
    if grouped and (eager or math_scores or masked):
        out["repeated_kv"] = 2 * b * h * s_ * spec.head_dim * act_bytes
    if masked and not eager:  # transformers' boolean mask, and SDPA's additive copy of it in act
        # (without padding the boolean sliding-window mask is one [1, 1, S, S] broadcast over the batch)
        out["attention_mask"] = (b if padded else 1) * s_ * s_ + b * s_ * s_ * act_bytes
    return out


def forward_working_bytes(
    spec: ArchSpec, batch_size: int, seq_len: int, act: int, device: str = "cpu", padded: bool = False
) -> int:
    """A layer's forward working set (no autograd) beyond its input and output: the MLP's transient
    (`transient_bytes_per_token`) or the attention's (its q, k, v and output per token plus the buffers of
    `attention_bytes`), whichever is larger: the two sublayers run one after the other. Measured on a
    Gemma 3 whose sliding-window masks dominate (the bench: 0.96 / 0.97; summed, 1.27 / 1.40)."""
    n = batch_size * seq_len
    hd = spec.head_dim
    qkvo = max(act * (2 * s.num_heads * hd + 2 * s.num_kv_heads * hd) for s in spec.layer_shapes())
    attention = n * qkvo + sum(attention_bytes(spec, batch_size, seq_len, act, device, padded).values())
    return max(n * transient_bytes_per_token(spec, act, backward=False), attention)


def streamed_layer_copies(device: str) -> int:
    """Decoder layers' weights a streamed importance pass holds on `device` at once (importance_memory)."""
    return 1 if device.startswith("cuda") else 2


def importance_memory(
    spec: ArchSpec,
    *,
    batch_size: int,
    seq_len: int,
    loss_scans: bool = True,
    weights_dtype: str | None = None,
    streamed: bool = False,
    device: str = "cpu",
    samples: int | None = None,
    scans=None,
    block_size: int = 2,
    device_budget: int | None = None,
    host_budget: int = 0,
    padded: bool = False,
    disk_budget: int | None = None,
) -> dict:
    """Peak bytes of the hooked importance pass (inference mode: nothing saved for backward).

    In memory: the weights, one layer's forward temporaries, the float32 running sums and the per-head
    norm buffer; with a loss scan also each layer's cached input and the chunked head's logits.
    Streamed: the embeddings and head, then two phases that never overlap (`working` is the larger,
    `settings["phases"]` both): the layer loop (one layer's weights and the next's, one batch's
    forward temporaries, router buffers) and the head at the end (the chunked NLL's logit buffers;
    every layer is released by then), plus the activation stores (every sample's hidden states, `samples` x
    `seq_len` x hidden each; `streamed_store_count` of them) that the device budget admits
    (`store_placement`; `device_budget` None keeps them all on the device). `total` is the device's
    peak; `host_total` the pinned RAM of the stores that spill to the host tier, `disk` the rest.
    `scans` (default: drop + block + bi, or bi alone when not `loss_scans`) picks the stores.
    With a `disk_budget` too, the tiers hold `store_capacity` stores: when the scans need more they run
    in `settings["passes"]` passes over the checkpoint, each opening at most that many (None: not
    even one pass fits).
    `padded`: the calibration batches have padding (short windows), so attention gets a mask
    (`attention_bytes`).
    """
    if scans is None:
        scans = DEFAULT_SCANS if loss_scans else ("bi",)
    else:
        loss_scans = bool(loss_scan_sizes(scans, block_size))
    w = dtype_bytes(weights_dtype or spec.dtype)
    act = w
    n = batch_size * seq_len
    d, v = spec.hidden_size, spec.vocab_size
    shapes = spec.layer_shapes()
    L = spec.num_layers
    if streamed:
        weights = spec.embedding_params() * w
    else:
        weights = spec.param_count()["total"] * w
    units = sum(s.num_heads + _importance_mlp_units(s) + 1 for s in shapes) + (2 * L + 1) * d
    sums = 2 * NUM_SUMS * units * 4 + 2 * batch_size * units * 4  # running sums + per-batch [B, U] rows
    head_norms = n * L * max(s.num_heads for s in shapes) * 4
    working = n * 2 * d * act + forward_working_bytes(spec, batch_size, seq_len, act, device, padded)
    parts = {"weights": weights, "running_sums": sums, "head_norms": head_norms, "activations": working}
    experts = max(s.num_experts for s in shapes)
    if experts:  # the hooks' float32 [tokens, E] probabilities, routed flags and contributions
        parts["router_buffers"] = 3 * n * experts * 4
    if loss_scans:
        if not streamed:  # the in-memory scans re-run each layer from its cached input
            parts["layer_inputs"] = n * L * d * act
        parts["logits"] = nll_chunk_buffers(spec) * min(auto_chunk_tokens(v, device), n) * v * 4
    extra = {}
    host = disk = 0
    # Measured (bench): the peak is the larger phase's, not the layer's plus the head's. The streamed
    # layer loop holds two layers' weights on CPU (measured) but one on CUDA: the loader reads each tensor
    # into host memory and copies it to the device, and releases a layer before loading the next (the
    # 2026-11-29 H200 logs: 8B planned 1.18x, 70B slice 1.37x of the measured peak with two counted).
    layer_phase = (
        streamed_layer_copies(device) * _layer_weight_bytes(spec, w) if streamed else 0
    ) + parts.pop("activations")
    layer_phase += parts.pop("router_buffers", 0)
    head_phase = parts.pop("logits", 0)
    parts["working"] = max(layer_phase, head_phase)
    extra["phases"] = {"layer": layer_phase, "head": head_phase}
    if streamed:
        store_bytes = (samples or batch_size) * seq_len * d * act
        count = streamed_store_count(L, scans, block_size)
        cuda = device.startswith("cuda")
        capacity = store_capacity(store_bytes, device_budget, host_budget, cuda, disk_budget)
        passes = streamed_passes(L, scans, block_size, capacity)
        if passes is not None and passes > 1:
            count = capacity  # each pass opens at most what the tiers hold
        tiers = store_placement(count, store_bytes, device_budget, host_budget, cuda)
        parts["stores"] = tiers["device"] * store_bytes
        host, disk = tiers["host"] * store_bytes, tiers["disk"] * store_bytes
        extra.update(store_bytes=store_bytes, stores=tiers, passes=passes)
    out = _result(
        parts,
        batch_size=batch_size,
        seq_len=seq_len,
        streamed=streamed,
        device=device,
        loss_scans=loss_scans,
        **extra,
    )
    return {**out, "host_total": host, "disk": disk}


def importance_options(params: Mapping[str, Any], device: str) -> dict:
    """`importance_memory`'s settings from an importance run's params (the API's, or the CLI's flags
    under the same names) on a "cpu" or "cuda" device."""
    return dict(
        batch_size=params["batch_size"],
        seq_len=params["seq_len"],
        scans=tuple(params.get("scans", ())),
        block_size=params.get("block_size", 2),
        samples=params.get("samples"),
        device=device,
        # Document calibration right-pads short windows (attention gets a mask); a stream packs blocks.
        padded=not params.get("stream"),
    )


def importance_streams(need_in_memory: int, capacity: int | None) -> bool:
    """Whether an `offload` "auto" importance run streams the teacher layer by layer: when the in-memory
    pass's peak (`importance_memory(..., streamed=False)`, at the run's own batch and scans) exceeds the
    device memory it may use (`usable_bytes`; None: unknown, so in memory). The one rule: the worker
    decides by it (importance.offload), the API's check and the dashboard predict by it."""
    return capacity is not None and need_in_memory > capacity


def evaluation_memory(
    spec: ArchSpec,
    *,
    batch_size: int,
    seq_len: int,
    new_tokens: int = 0,
    weights_dtype: str | None = None,
    device: str = "cpu",
    padded: bool = False,
) -> dict:
    """Peak bytes of perplexity / lm-eval / the throughput benchmark: weights, a KV cache of
    `seq_len + new_tokens` positions (benchmark), and the larger of two phases that never overlap
    (`working`; `settings["phases"]` both): one layer's forward temporaries with its attention buffers,
    and one chunk of logits."""
    w = dtype_bytes(weights_dtype or spec.dtype)
    n = batch_size * seq_len
    v = spec.vocab_size
    layer_phase = n * 2 * spec.hidden_size * w + forward_working_bytes(
        spec, batch_size, seq_len, w, device, padded
    )
    head_phase = nll_chunk_buffers(spec) * min(auto_chunk_tokens(v, device), n) * v * 4
    parts = {
        "weights": spec.param_count()["total"] * w,
        "kv_cache": batch_size * (seq_len + new_tokens) * spec.kv_cache_bytes_per_token(bytes_per_value=w)
        if new_tokens
        else 0,
        "working": max(layer_phase, head_phase),
    }
    phases = {"layer": layer_phase, "head": head_phase}
    return _result(
        parts, batch_size=batch_size, seq_len=seq_len, new_tokens=new_tokens, device=device, phases=phases
    )


def tensor_numels(spec: ArchSpec) -> dict[str, int]:
    """Elements of the largest tensor of each kind, as the checkpoint holds it (the unit out-of-core
    surgery reads): the embeddings and an untied LM head [V, D]; per layer (the widest of each kind)
    q / k / v / o, or Phi-3's fused qkv [(H + 2 KV) hd, D]; gate / up / down, or Phi-3's fused gate_up
    [2 F, D]; a mixture of experts' fused expert tensors [E, 2 F, D] and [E, D, F] (transformers keeps
    them fused; the reader assembles them from per-expert tensors) and its router [E, D]."""
    return {k: rows * cols for k, (rows, cols) in tensor_dims(spec).items()}


def tensor_dims(spec: ArchSpec) -> dict[str, tuple[int, int]]:
    """[rows, the rest] of the largest tensor of each kind (`tensor_numels`): the reader reads rows."""
    d, hd, v = spec.hidden_size, spec.head_dim, spec.vocab_size
    fused = spec.family in FUSED_FAMILIES
    out = {"embed": (v + spec.position_embeddings, d)}
    if not spec.tie_word_embeddings:
        out["lm_head"] = (v, d)
    for s in spec.layer_shapes():
        h, g, f = s.num_heads * hd, s.num_kv_heads * hd, s.intermediate_size
        kinds = {"o": (d, h)}
        kinds.update({"qkv": (h + 2 * g, d)} if fused else {"q": (h, d), "kv": (g, d)})
        gates = 2 if spec.mlp_gated else 1
        if s.num_experts:
            e = s.num_experts
            kinds.update(
                {"experts_gate_up": (e, gates * f * d), "experts_down": (e, d * f), "router": (e, d)}
            )
            if spec.shared_expert_intermediate_size:
                kinds["shared_expert"] = (spec.shared_expert_intermediate_size, d)
        else:
            kinds.update({"gate_up": (gates * f, d)} if fused else {"up": (f, d), "down": (d, f)})
        for k, (rows, cols) in kinds.items():
            if rows * cols > math.prod(out.get(k, (0, 0))):
                out[k] = (rows, cols)
    return out


def gathered_rows_numel(teacher: ArchSpec, student: ArchSpec, kind: str) -> int:
    """The intermediate an out-of-core read of a scattered row cut holds (checkpoint_reader.read): rows
    kept in more than MAX_RUNS runs (importance-chosen neurons, heads, hidden channels: scattered as a
    rule) make it read the whole tensor, gather the kept rows into a new tensor [rows', cols] and then
    select the other dim into a third, the whole buffer still alive. Only when both dims are cut (one
    dim cut: the gather or the selection is the result); per-expert tensors are read one expert at a
    time (`prune_memory`). Contiguous kept rows are read alone (less than this upper bound)."""
    if kind.startswith("experts_"):
        return 0
    (t_rows, t_cols), (s_rows, s_cols) = tensor_dims(teacher)[kind], tensor_dims(student).get(kind, (0, 0))
    return s_rows * t_cols if 0 < s_rows < t_rows and s_cols < t_cols else 0


def prune_memory(
    teacher: ArchSpec,
    student: ArchSpec | None = None,
    *,
    mode: str = "in_memory",
    weights_dtype: str | None = None,
) -> dict:
    """Peak bytes of a prune job (worker/handlers/prune_job.py run_prune) in the mode it runs.

    `student`: the cut model's spec (None: the teacher's, an upper bound). The weights are in the
    checkpoint's dtype (`weights_dtype`, default the teacher's).

    - "in_memory" (prune_job._prune_in_memory -> surgery.apply_plan): the teacher is loaded whole
      (`teacher_weights`); `_cut_parameters` replaces each parameter by `cut.take(param)`, a new tensor.
      The replaced teacher tensors free nothing until the end: the loaded weights are views of the
      checkpoint's mapped files, each mapping alive while any of its tensors is. So the whole cut copy
      (`student_weights`) sits beside the whole teacher, and one more tensor is alive while a cut
      runs (the selection's result before the parameter swap drops its predecessor): the largest student
      tensor (`cut_tensor`; measured: without it the bench's prune cases land at 0.83-0.97);
      `save_pretrained` writes the contiguous cut tensors by pointer (safetensors >= 0.6), no copy,
      except a mixture of experts' fused gate_up tensors, which it copies, every layer's at once, to
      write them per expert (`save_copies`, `saved_expert_copies_numel`): the peak is the larger phase
      (`settings["phases"]`).
    - "out_of_core" (out_of_core.prune_checkpoint): both models live on "meta" (no memory); each output
      tensor is `CheckpointReader.read` into an owned buffer (the kept rows, or the whole tensor when the
      rows are scattered, fused like Phi-3's qkv / gate_up or cut along another dim: `read_tensor`, at
      most the teacher's tensor), then its other dims selected into a new tensor (`cut_tensor`, the
      student's tensor), then written to the open shard file (shard_writer._write_shard: no shard
      buffer). The peak is the kind of tensor (`tensor_numels`) with the largest read + cut. A mixture of
      experts' fused tensors come from per-expert checkpoint tensors (expert_layout.FusedExpertReader):
      each kept expert is read (one teacher expert at a time) and cut, and the parts are stacked into the
      cut tensor, so the read is the student's tensor + one teacher expert (measured: 1.28 when counted
      as the whole teacher tensor). Kept rows are taken to be scattered (as importance picks neurons,
      heads and hidden channels): read whole, and with the other dim cut too the gathered rows are held
      besides (`gathered_rows`, `gathered_rows_numel`; the bench's wide Llama: 0.55 without them, 1.00
      with). An upper bound: rows kept in at most MAX_RUNS runs are read alone (Phi-3 keeping the first
      half of its neurons: the estimate is 1.76x its measured peak).
    """
    w = dtype_bytes(weights_dtype or teacher.dtype)
    student = student or teacher
    t, s = tensor_numels(teacher), tensor_numels(student)
    extra = {}
    if mode == "in_memory":
        parts = {
            "teacher_weights": teacher.param_count()["total"] * w,
            "student_weights": student.param_count()["total"] * w,
        }
        largest = max(s, key=s.get)
        # Two phases that never overlap: the cut (one tensor in flight) and the save (the reverted
        # expert tensors, all at once); the larger one is the peak.
        phases = {"cut": s[largest] * w, "save": saved_expert_copies_numel(student) * w}
        parts["cut_tensor" if phases["cut"] >= phases["save"] else "save_copies"] = max(phases.values())
        extra["phases"] = phases
    elif mode == "out_of_core":
        experts = max([x.num_experts for x in teacher.layer_shapes()] + [1])

        def read(k: str) -> int:  # per-expert checkpoints: the kept experts, each cut, + one expert read
            return s.get(k, 0) + t[k] // experts if k.startswith("experts_") else t[k]

        def peak(k: str) -> int:
            return read(k) + gathered_rows_numel(teacher, student, k) + s.get(k, 0)

        largest = max(t, key=peak)
        parts = {"read_tensor": read(largest) * w, "cut_tensor": s.get(largest, 0) * w}
        gathered = gathered_rows_numel(teacher, student, largest)
        if gathered:
            parts["gathered_rows"] = gathered * w
    else:
        raise ValueError(f"unknown prune mode {mode!r}; use in_memory or out_of_core")
    return _result(parts, mode=mode, largest_tensor=largest, **extra)


def saved_expert_copies_numel(spec: ArchSpec) -> int:
    """Elements `save_pretrained` copies when it writes a mixture of experts in the checkpoint's
    per-expert format: transformers (>= 5) reverts its load-time conversion on the whole state dict
    before writing, and the revert of the fused gate_up_proj [E, 2 F, D] (a `Chunk` along dim 1) makes
    contiguous gate and up copies of every layer's tensor at once; down_proj only splits along dim 0
    (views). Qwen2 / 3-MoE and Mixtral alike (transformers' conversion_mapping). Measured: the bench's
    Qwen3-MoE in-memory prune peaks there, with all three copies alive (0.89 without this term)."""
    gates = 2 if spec.mlp_gated else 1
    return sum(s.num_experts * gates * s.intermediate_size * spec.hidden_size for s in spec.layer_shapes())


# ---- fitting it on a worker -----------------------------------------------------------------------


def usable_bytes(worker_memory: dict) -> int:
    """What a job may use on one worker's device, from its registry entry's `memory`:
    CUDA: the device's total minus a reserve (context, fragmentation; a worker runs one job per
    device); CPU: MemAvailable at the worker's last heartbeat (RAM is shared with everything else)."""
    if worker_memory.get("kind") == "cuda":
        total = int(worker_memory["total_bytes"])
        return max(0, int(total * (1 - CUDA_RESERVE_FRACTION)) - CUDA_RESERVE_BYTES)
    return int(worker_memory.get("free_bytes") or 0)


def distill_candidates(settings: dict) -> list[dict]:
    """Settings to try, nearest first: checkpointing on, bf16 weights, both; then halved batches."""
    base_batch = int(settings["batch_size"])
    toggles = [{}]
    if not settings.get("gradient_checkpointing"):
        toggles.append({"gradient_checkpointing": True})
    if settings.get("weights_dtype", "float32") == "float32":
        toggles.append({"weights_dtype": "bfloat16"})
        if not settings.get("gradient_checkpointing"):
            toggles.append({"gradient_checkpointing": True, "weights_dtype": "bfloat16"})
    batches = [base_batch]
    while batches[-1] > 1:
        batches.append(max(1, batches[-1] // 2))
    out = []
    for halvings, b in enumerate(batches):
        for t in toggles:
            change = dict(t)
            if b != base_batch:
                change["batch_size"] = b
            cost = len(t) + halvings
            out.append((cost, -b, len(t), change))
    out.sort(key=lambda c: c[:3])
    return [c[3] for c in out if c[3]]


def describe_change(change: dict) -> str:
    return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in change.items())


BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(n: float) -> str:
    """The one way the app writes a memory figure (logs, errors, the API's 409s; the dashboard's
    format.js `bytes` mirrors it): binary units, the largest in which it is at least 1, one decimal
    ("384 B", "1.5 KiB", "150.3 MiB", "17.5 GiB"). Decimal GB is left to the settings named in GB
    (PRUNESCOPE_SPILL_LIMIT_GB, spill_limit_gb, PRUNESCOPE_OUT_OF_CORE_THRESHOLD_GB) and values quoted in them."""
    i = 0
    while abs(n) >= 1024 and i < len(BYTE_UNITS) - 1:
        n /= 1024
        i += 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {BYTE_UNITS[i]}"
