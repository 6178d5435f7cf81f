"""Peak bytes of perplexity, lm-eval and the throughput benchmark (`evaluation_memory`)."""

from __future__ import annotations

from worker.engine.memplan.activations import forward_working_bytes, nll_chunk_buffers
from worker.engine.memplan.peak import job_peak
from worker.engine.memplan.units import auto_chunk_tokens, dtype_bytes
from worker.engine.spec import ArchSpec


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
    return job_peak(
        parts, batch_size=batch_size, seq_len=seq_len, new_tokens=new_tokens, device=device, phases=phases
    )
