"""Importance pass cost, measured side by side in one run on the same batches.

Prints:
1. time of the hooked importance pass (width axes + Block Importance) against a plain
   `torch.inference_mode()` forward over the same batches: the ratio (target <= 1.15x); and against
   a forward of the base model alone (no LM head), which is all the pass runs when no loss scan is
   asked for (the loss scans apply the LM head in chunks, `chunked_head.py`);
2. peak memory of both. CUDA: `torch.cuda.max_memory_allocated` (exact, in-process). CPU: torch's CPU
   allocations are invisible to tracemalloc, so each pass runs in a fresh child process (same model,
   same batches, glibc's mmap threshold pinned so freed tensors leave RSS) while a thread samples
   the RSS (/proc/self/statm) every 0.2 ms; reported: peak RSS above the RSS just before the pass
   (a sampled estimate; short spikes between samples can be missed);
3. the layer scans (single-layer drop and k-block): layer-forward evaluations with prefix reuse against
   the naive count (one full L-layer pass per cut), and their times against actually running the cut
   models (naive timing), plus the scan cache size (L x batch x seq x hidden per batch).

Usage:
    python bench/importance_bench.py                                   # CPU, random Llama from a config
    python bench/importance_bench.py --device cuda --dtype bfloat16 --hidden 2048 --layers 16 --seq-len 1024
    python bench/importance_bench.py --model path/to/model             # any supported checkpoint
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model dir (default: a random Llama built from a config)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=None, help="default: 2.75 x hidden")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--block-size", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="alternating timed repeats (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--attn", default="sdpa", help="attention implementation for the config-built model")
    p.add_argument("--profile", action="store_true", help="also print the importance pass's top kernels")
    p.add_argument("--child", choices=["plain", "importance"], default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build(args):
    dtype = getattr(torch, args.dtype)
    if args.model:
        from worker.engine.loading import load_model

        model, _ = load_model(args.model, dtype=args.dtype, device=args.device)
    else:
        from transformers import AutoModelForCausalLM, LlamaConfig

        config = LlamaConfig(
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            intermediate_size=args.intermediate or int(2.75 * args.hidden) // 8 * 8,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            num_key_value_heads=args.kv_heads,
            max_position_embeddings=max(args.seq_len, 128),
        )
        config._attn_implementation = args.attn
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(args.device).eval()
    vocab = model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(1)
    batches = []
    for first in range(0, args.samples, args.batch_size):
        n = min(args.batch_size, args.samples - first)
        ids = torch.randint(3, vocab, (n, args.seq_len), generator=gen)
        mask = torch.ones_like(ids)
        mask[0, args.seq_len * 3 // 4 :] = 0  # calibration batches are right-padded; padding is masked
        batches.append({"input_ids": ids.to(args.device), "attention_mask": mask.to(args.device)})
    return model, batches


def plain_pass(model, batches):
    with torch.inference_mode():
        for b in batches:
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)


def base_pass(model, batches):
    """Up to the final norm only: the work the importance pass does when no loss scan needs logits."""
    with torch.inference_mode():
        for b in batches:
            model.base_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)


def importance_pass(model, batches, scans=("bi",), block_size=2):
    from worker.engine.importance import compute_importance

    # The weights hash is a one-off provenance cost, not per token: timed separately in main().
    return compute_importance(model, batches, scans=scans, block_size=block_size, hash_weights=False)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def naive_drop_scan(model, batches, k: int) -> float:
    """What the scan replaces: every cut model run in full (layers really removed, shared weights)."""
    from worker.engine.adapters import adapter_for
    from worker.engine.chunked_head import final_hidden_states, output_head
    from worker.engine.importance.layer_scan import token_losses

    adapter = adapter_for(model)
    parent_path, _, attr = adapter.layers_path.rpartition(".")
    parent = model.get_submodule(parent_path)
    full, count = getattr(parent, attr), model.config.num_hidden_layers
    try:
        with torch.inference_mode():
            for i in range(count - k + 1):
                setattr(
                    parent, attr, torch.nn.ModuleList([m for j, m in enumerate(full) if not i <= j < i + k])
                )
                model.config.num_hidden_layers = count - k
                for b in batches:  # the same (chunked-head) loss as the scans: only the layer work differs
                    hidden = final_hidden_states(model, b["input_ids"], b["attention_mask"])
                    token_losses(hidden, output_head(model), b["input_ids"], b["attention_mask"])
    finally:
        setattr(parent, attr, full)
        model.config.num_hidden_layers = count
    return 0.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Peak RSS seen by a background thread while the block runs."""

    def __enter__(self):
        self.before = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.0002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def child(args) -> None:
    model, batches = build(args)
    fn = plain_pass if args.child == "plain" else importance_pass
    fn(model, batches[:1])  # warm-up: lazy inits (kernels, rotary caches) are not the pass's memory
    with RssSampler() as sampler:
        fn(model, batches)
    print(json.dumps({"before": sampler.before, "peak": sampler.peak}))


def cpu_peak_rss(argv, mode: str) -> dict:
    cmd = [sys.executable, __file__, *argv, "--child", mode]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed tensors go back to the OS
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args)
    from worker.engine.adapters import arch_spec
    from worker.engine.importance.layer_scan import naive_layer_count, scan_layer_count

    model, batches = build(args)
    spec = arch_spec(model)
    device = args.device
    L, k = spec.num_layers, args.block_size
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    print(
        f"model: {spec.family} L={L} hidden={spec.hidden_size} heads={spec.num_heads}/{spec.num_kv_heads} "
        f"mlp={spec.intermediate_size} vocab={spec.vocab_size} dtype={args.dtype} device={device} "
        f"threads={torch.get_num_threads()}"
    )
    print(
        f"data: {args.samples} samples x {args.seq_len} tokens, batch {args.batch_size} ({tokens} real tokens)"
    )

    # 1. time, alternating so that load changes on a shared machine hit both sides alike
    plain_pass(model, batches)
    importance_pass(model, batches)  # warm-up
    plain_t, hooked_t, base_t = [], [], []
    for _ in range(args.repeats):
        plain_t.append(timed(lambda: plain_pass(model, batches), device)[0])
        hooked_t.append(timed(lambda: importance_pass(model, batches), device)[0])
        base_t.append(timed(lambda: base_pass(model, batches), device)[0])
    p, h, b = statistics.median(plain_t), statistics.median(hooked_t), statistics.median(base_t)
    print(
        f"[time] plain inference_mode forward: {p * 1e3:.1f} ms | importance pass (heads, neurons, hidden, BI): "
        f"{h * 1e3:.1f} ms | ratio {h / p:.3f}x (target <= 1.15x; medians of {args.repeats}, "
        f"min ratio {min(hooked_t) / min(plain_t):.3f}x)"
    )
    # Without a loss scan the importance pass stops at the final norm (no LM head): the same work as this.
    print(
        f"[time] base-model forward without the LM head: {b * 1e3:.1f} ms | importance pass / base "
        f"{h / b:.3f}x (min ratio {min(hooked_t) / min(base_t):.3f}x)"
    )

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        with profile(activities=activities) as prof:
            importance_pass(model, batches)
            sync(device)
        key = "cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=18))

    from worker.engine.importance.provenance import weights_sha256

    hash_t = timed(lambda: weights_sha256(model), device)[0]
    print(f"[time] one-off weights SHA-256 for the manifest (not in the ratio): {hash_t * 1e3:.1f} ms")

    # 2. memory
    model_bytes = sum(t.numel() * t.element_size() for t in {id(x): x for x in model.parameters()}.values())
    heads, F = spec.num_heads, spec.intermediate_size
    norms = 2 * L + 1
    sums_bytes = 2 * 4 * 4 * (L * heads + L * F + norms * spec.hidden_size + L)
    if device.startswith("cuda"):
        peaks = {}
        for name, fn in (("plain", plain_pass), ("importance", importance_pass)):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn(model, batches)
            sync(device)
            peaks[name] = torch.cuda.max_memory_allocated() - base
        print(
            f"[memory] torch.cuda.max_memory_allocated above the loaded model ({mib(model_bytes)}): "
            f"plain {mib(peaks['plain'])} (= one batch's activations) | importance {mib(peaks['importance'])} | "
            f"extra {mib(peaks['importance'] - peaks['plain'])} (running sums {mib(sums_bytes)})"
        )
    else:
        plain = cpu_peak_rss(argv, "plain")
        hooked = cpu_peak_rss(argv, "importance")
        plain_peak, hooked_peak = plain["peak"] - plain["before"], hooked["peak"] - hooked["before"]
        print(
            f"[memory] sampled peak RSS above the loaded model's process (fresh child per pass; model "
            f"{mib(model_bytes)}): plain {mib(plain_peak)} (= one batch's activations) | importance "
            f"{mib(hooked_peak)} | extra {mib(hooked_peak - plain_peak)} (running sums {mib(sums_bytes)})"
        )

    # 3. layer scans
    n_batches = len(batches)
    scan_t, result = timed(lambda: importance_pass(model, batches, ("bi", "drop", "block"), k), device)
    ev = result.manifest["evaluations"]
    for name, kk in (("drop (k=1)", 1), (f"block k={k}", k)):
        ours, naive = scan_layer_count(L, kk) * n_batches, naive_layer_count(L, kk) * n_batches
        print(
            f"[scan] {name}: {ours} layer forwards with prefix reuse vs naive {naive} "
            f"(({L - kk + 1} cuts x {L} layers) x {n_batches} batches) = {ours / naive:.2f}x"
        )
    assert ev["layer_forwards_scans"] == ev["layer_forwards_scans_expected"]
    naive_t = timed(lambda: (naive_drop_scan(model, batches, 1), naive_drop_scan(model, batches, k)), device)[
        0
    ]
    cache_bytes = (
        L
        * args.batch_size
        * args.seq_len
        * spec.hidden_size
        * torch.finfo(getattr(torch, args.dtype)).bits
        // 8
    )
    print(
        f"[scan] time: importance pass + both scans {scan_t * 1e3:.1f} ms (counted {ev['layer_forwards_scans']} scan "
        f"layer forwards) vs naive cut models alone {naive_t * 1e3:.1f} ms; prefix cache per batch "
        f"L x B x S x D = {mib(cache_bytes)}"
    )


if __name__ == "__main__":
    main()
