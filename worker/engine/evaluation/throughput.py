"""Prefill and KV-cached decode speed of a teacher and a student, measured in the same run.

For each model and batch size: a warm-up round (excluded), then `repeats` timed rounds of
(1) prefill: one forward over [B, prompt_len] tokens that fills a KV cache, and (2) decode:
`new_tokens` greedy steps of one token each, reusing the cache. CUDA is synchronised around every
timed region. Reported: prefill tokens/s, decode tokens/s (B tokens per step), latency per generated
token (seconds per decode step), peak memory and parameter count, and the student/teacher ratios.

Peak memory is `torch.cuda.max_memory_allocated` on CUDA. On CPU torch has no allocator statistics,
so it is the weights plus the measured size of the KV cache after decoding (method "weights+kv_cache").

`progress(done, total, what)` counts the rounds (warm-up and timed) of every model and batch size, called
between rounds, never inside a timed region.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from worker.engine.adapters import count_parameters
from worker.engine.dtypes import dtype_name, model_dtype_name
from worker.engine.kv_cache import cache_keyword, returned_cache

RoundProgress = Callable[[int, int, str], None]  # (rounds done, rounds in all, the round just run)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_bytes(cache) -> int:
    total = 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total
    for item in cache if isinstance(cache, (tuple, list)) else []:
        for t in item:
            total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def _one_round(model, prompt, new_tokens, device):
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True)
    _sync(device)
    prefill = time.perf_counter() - t0
    cache = returned_cache(out)
    token = out.logits[:, -1:].argmax(-1)
    keyword = cache_keyword(model)  # "cache" (newer transformers) or "past_key_values"
    t1 = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, use_cache=True, **{keyword: cache})
        cache = returned_cache(out)
        token = out.logits[:, -1:].argmax(-1)
    _sync(device)
    decode = time.perf_counter() - t1
    return prefill, decode, _cache_bytes(cache)


def measure_model(
    model,
    *,
    batch_sizes=(1, 8),
    prompt_len=128,
    new_tokens=32,
    repeats=3,
    warmup=1,
    seed=0,
    progress: RoundProgress | None = None,
) -> dict:
    device = next(model.parameters()).device
    total, done = len(batch_sizes) * (warmup + repeats), 0
    if progress is not None:
        progress(0, total, "starting")

    def ran(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    was_training = model.training
    model.eval()
    vocab = model.get_input_embeddings().num_embeddings
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = []
    generator = torch.Generator().manual_seed(seed)
    try:
        for batch in batch_sizes:
            prompt = torch.randint(3, vocab, (batch, prompt_len), generator=generator).to(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for i in range(warmup):
                _one_round(model, prompt, new_tokens, device)
                ran(f"batch {batch}: warm-up {i + 1}/{warmup}")
            timings = []
            for i in range(repeats):
                timings.append(_one_round(model, prompt, new_tokens, device))
                ran(f"batch {batch}: timed round {i + 1}/{repeats}")
            prefill = statistics.median(t[0] for t in timings)
            decode = statistics.median(t[1] for t in timings)
            if device.type == "cuda":
                peak, method = torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
            else:
                peak, method = param_bytes + timings[-1][2], "weights+kv_cache"
            rows.append(
                {
                    "batch_size": batch,
                    "prompt_len": prompt_len,
                    "new_tokens": new_tokens,
                    "prefill_tokens_per_s": batch * prompt_len / prefill,
                    "decode_tokens_per_s": batch * new_tokens / decode,
                    "latency_per_token_s": decode / new_tokens,
                    "peak_memory_bytes": int(peak),
                    "memory_method": method,
                }
            )
    finally:
        model.train(was_training)
    # The dtype the rounds ran in: tok/s of float32 and bfloat16 weights are not comparable.
    dtype = model_dtype_name(model)
    return {"parameters": count_parameters(model), "device": str(device), "dtype": dtype, "runs": rows}


def throughput(
    teacher,
    student,
    *,
    batch_sizes=(1, 8),
    prompt_len=128,
    new_tokens=32,
    repeats=3,
    warmup=1,
    seed=0,
    progress: RoundProgress | None = None,
) -> dict:
    """{"teacher": ..., "student": ..., "speedup": [per batch size: prefill, decode, latency ratios]}.

    The student is measured in the teacher's dtype (cast in place when it differs): a speedup compares
    architectures, and a float32 student against a bfloat16 teacher measured the dtypes instead (5x
    "faster" on CPU, "more memory" than its teacher). The student's `cast_from` names the dtype it had."""
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError("batch_sizes must be positive integers")
    if prompt_len < 1 or new_tokens < 1 or repeats < 1:
        raise ValueError("prompt_len, new_tokens and repeats must be >= 1")
    kwargs = dict(
        batch_sizes=tuple(batch_sizes),
        prompt_len=prompt_len,
        new_tokens=new_tokens,
        repeats=repeats,
        warmup=warmup,
        seed=seed,
    )
    per_model = len(batch_sizes) * (warmup + repeats)

    def counted(offset: int, role: str) -> RoundProgress | None:
        if progress is None:
            return None
        return lambda done, _, what: progress(offset + done, 2 * per_model, f"{role}, {what}")

    dtype = next(teacher.parameters()).dtype
    own = next(student.parameters()).dtype
    if own != dtype:
        student.to(dtype)
    t = measure_model(teacher, **kwargs, progress=counted(0, "teacher"))
    s = measure_model(student, **kwargs, progress=counted(per_model, "student"))
    if own != dtype:
        s["cast_from"] = dtype_name(own)
    speedup = []
    for tr, sr in zip(t["runs"], s["runs"]):
        speedup.append(
            {
                "batch_size": tr["batch_size"],
                "prefill": sr["prefill_tokens_per_s"] / tr["prefill_tokens_per_s"],
                "decode": sr["decode_tokens_per_s"] / tr["decode_tokens_per_s"],
                "latency": tr["latency_per_token_s"] / sr["latency_per_token_s"],
                "memory": tr["peak_memory_bytes"] / sr["peak_memory_bytes"],
            }
        )
    return {
        "teacher": t,
        "student": s,
        "speedup": speedup,
        "parameter_ratio": s["parameters"] / t["parameters"],
    }
