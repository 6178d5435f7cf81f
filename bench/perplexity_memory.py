"""Peak memory of perplexity with full logits (the former code) against the chunked LM head, one run.

Both sides score the same random blocks with the same random model (a Llama from a config with a large
vocabulary, default 64k) in this process, alternating old / new twice. Memory is the process's peak
resident set size (Linux VmHWM from /proc/self/status) above its RSS just before the pass; the peak is
reset before each pass by writing 5 to /proc/self/clear_refs, and glibc's mmap threshold is pinned to
64 KiB (mallopt) so every tensor bigger than that is returned to the OS when freed. It is exact for
the process (no sampling), CPU only; torch's CPU allocations are invisible to tracemalloc.

Usage:
    python bench/perplexity_memory.py                       # vocab 65536, batch 4 x 512 tokens
    python bench/perplexity_memory.py --vocab 131072 --batch-size 8 --seq-len 1024
"""

from __future__ import annotations

import argparse
import ctypes
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from worker.engine.chunked_head import auto_chunk_tokens  # noqa: E402
from worker.engine.evaluation import perplexity  # noqa: E402

M_MMAP_THRESHOLD = -3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batches", type=int, default=2)
    return p.parse_args(argv)


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def peak_above_start(fn):
    """(result, seconds, peak RSS above the RSS at the start in bytes) of fn()."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    start = _status_kib("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return out, seconds, (_status_kib("VmHWM") - start) * 1024


class Blocks:
    """The `PackedTokens` interface perplexity reads: fixed [B, S] blocks in order."""

    def __init__(self, blocks):
        self.blocks, self.seq_len = blocks, blocks[0].shape[1]

    def sequential(self, batch_size, limit=None):
        return iter(self.blocks)


@torch.no_grad()
def full_logits_perplexity(model, data) -> dict:
    """The former implementation for packed blocks: full [B, S, V] logits, one cross-entropy."""
    nll, count = 0.0, 0
    for block in data.sequential(None):
        logits = model(input_ids=block, use_cache=False).logits
        nll += float(
            F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                block[:, 1:].reshape(-1),
                reduction="sum",
            )
        )
        count += block[:, 1:].numel()
    return {"loss": nll / count, "tokens": count}


def main(argv=None) -> None:
    args = parse_args(argv)
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("needs Linux /proc (VmHWM reset through clear_refs)")
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 2,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=args.seq_len,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(1)
    data = Blocks(
        [
            torch.randint(3, args.vocab, (args.batch_size, args.seq_len), generator=gen)
            for _ in range(args.batches)
        ]
    )
    logits_bytes = args.batch_size * args.seq_len * args.vocab * 4
    chunk = auto_chunk_tokens(args.vocab)
    print(
        f"model: llama vocab={args.vocab} hidden={args.hidden} layers={args.layers} float32 cpu "
        f"threads={torch.get_num_threads()} | data: {args.batches} batches of {args.batch_size} x {args.seq_len} "
        f"| full logits per batch {logits_bytes / 2**20:.0f} MiB; chunk {chunk} tokens = "
        f"{chunk * args.vocab * 4 / 2**20:.0f} MiB of float32 logits"
    )
    sides = {
        "old (full logits)": lambda: full_logits_perplexity(model, data),
        "new (chunked head)": lambda: perplexity(model, data, batch_size=args.batch_size),
    }
    for fn in sides.values():  # warm-up: lazy inits are not the pass's memory
        fn()
    results = {}
    for round_ in (1, 2):
        for name, fn in sides.items():
            out, seconds, peak = peak_above_start(fn)
            results[name] = out
            print(
                f"[round {round_}] {name:18s}: peak RSS above start {peak / 2**20:8.1f} MiB | "
                f"{seconds:.2f} s | loss {out['loss']:.7f} over {out['tokens']} tokens"
            )
    old, new = results.values()
    rel = abs(new["loss"] - old["loss"]) / abs(old["loss"])
    print(f"same result: relative loss difference {rel:.1e} (tokens {old['tokens']} vs {new['tokens']})")
    print("memory method: Linux VmHWM (peak RSS) reset via /proc/self/clear_refs, mmap threshold 64 KiB")


if __name__ == "__main__":
    main()
