"""What a decoder layer saves for backward per token (`saved_bytes_per_token` and its parts, each
family's norm layout), its transient working set, and what its attention holds while it runs
(`attention_bytes`, `forward_working_bytes`)."""

from __future__ import annotations

from worker.engine.memplan.units import (
    EAGER_FAMILIES,
    FUSED_FAMILIES,
    NLL_CHUNK_BUFFERS,
    SOFTCAP_FAMILIES,
    TRANSIENT_BACKWARD,
    TRANSIENT_FORWARD,
)
from worker.engine.spec import ArchSpec, LayerShape


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
