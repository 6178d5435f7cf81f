"""The memory planner's units and fixed numbers: bytes per dtype, LM-head chunk sizes, the loss's chunk
buffers, the fitted transient multiples, the reserves it keeps free, family traits, and `format_bytes`
(how the app writes a memory figure)."""

from __future__ import annotations

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
# activation (fitted on CPU profiles; see the package docstring, memplan/__init__.py).
TRANSIENT_FORWARD = 3
TRANSIENT_BACKWARD = 6
# Windows (or packed blocks) per forward of a perplexity pass: evaluation.perplexity's default, what the
# API's check and the dashboard size evaluate and preview jobs at.
EVAL_BATCH_SIZE = 8
# Per-device slack the planner keeps free: CUDA context + allocator fragmentation, as a fraction and
# a fixed amount (a job that needs 79.5 of 80 GiB does not "fit").
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
