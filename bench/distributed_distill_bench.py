"""Distillation under torchrun (FSDP2): correctness and overhead, side by side from one run.

CPU (default): the same KD run (global batch, seed, random-token data) as one plain process and as
2 gloo ranks under `torchrun`, one thread per process; prints per-step losses side by side (max
|difference|) and steady-state step time and tokens/s of each: the 2 ranks use 2 cores for the work one
process does on 1, so a ratio below 2x is FSDP2's all-gather / reduce-scatter and gloo's overhead.

CUDA (`--device cuda`, for a machine with a GPU): an 8B-config teacher (Llama-3.1-8B shapes) -> a
4B-config student (Minitron-4B-like widths), bf16, one rank under torchrun: our `distill()` loop with
FSDP2 against a minimal hand-written FSDP2 KD loop (fully_shard per layer, full-logit KL, AdamW):
step time, tokens/s, peak memory and the losses of both. Random weights, built on the GPU.

    python bench/distributed_distill_bench.py [--steps 8] [--device cpu|cuda]

Each variant runs in its own process; `--worker loop|hand --out FILE` is that process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # (hidden, intermediate, layers, heads, kv heads, vocab), seq_len, global batch
    "cpu": {
        "teacher": (256, 768, 4, 8, 4, 8192),
        "student": (192, 512, 3, 8, 4, 8192),
        "seq_len": 128,
        "batch": 8,
    },
    "cuda": {
        "teacher": (4096, 14336, 32, 32, 8, 128256),  # Llama-3.1-8B
        "student": (3072, 9216, 32, 24, 8, 128256),  # ~4.5B, Minitron-4B-like widths
        "seq_len": 2048,
        "batch": 4,
    },
}


# The H100/H200 SXM datasheet's dense bf16 rate (the bench also prints tokens/s to redo the arithmetic).
DENSE_BF16_TFLOPS = 989.0


def _model(shape, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    hidden, inter, layers, heads, kv, vocab = shape
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=hidden // heads,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _data(kind: str, steps: int):
    import numpy as np

    from worker.engine.data import PackedTokens

    s = SHAPES[kind]
    rng = np.random.default_rng(0)
    blocks = rng.integers(3, s["teacher"][5], size=(s["batch"] * (steps + 1), s["seq_len"]))
    return PackedTokens.from_blocks(blocks)


def _peak(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def _matmul_params(model) -> int:
    """Parameters multiplied per token: all but the input embedding (a lookup)."""
    return sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()


def _plan(student, teacher, kind: str, weights_dtype: str, ctx, chunk_tokens: int | None) -> dict:
    """The memory planner's estimate for this very step, and the FLOPs per token of a KD step
    (teacher forward 2 x params, student forward + backward 6 x params)."""
    from worker.engine import memplan
    from worker.engine.adapters import arch_spec

    s = SHAPES[kind]
    estimate = memplan.distill_memory(
        arch_spec(student),
        arch_spec(teacher),
        batch_size=s["batch"],
        seq_len=s["seq_len"],
        weights_dtype=weights_dtype,
        device=ctx.device.type,
        num_gpus=ctx.world_size,
        chunk_tokens=chunk_tokens,
    )
    flops = 2 * _matmul_params(teacher) + 6 * _matmul_params(student)
    return {"planned_gib": estimate["total"] / 2**30, "flops_per_token": flops}


def worker_loop(args) -> dict:
    """Our loop (`distill()` with a DistillContext): plain in one process, FSDP2 under torchrun."""
    import torch

    from worker.engine.distill import DistillConfig, distill
    from worker.engine.distill.distributed import DistillContext

    ctx = DistillContext.from_environment(args.device)
    cuda = ctx.device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(1)
    teacher = _model(SHAPES[args.kind]["teacher"], ctx.device, dtype).eval()
    torch.manual_seed(2)
    student = _model(SHAPES[args.kind]["student"], ctx.device, dtype)
    plan = _plan(student, teacher, args.kind, "bfloat16" if cuda else "float32", ctx, args.chunk_tokens)
    data = _data(args.kind, args.steps)
    config = DistillConfig(
        steps=args.steps,
        chunk_tokens=args.chunk_tokens,
        batch_size=SHAPES[args.kind]["batch"],
        lr=1e-4,
        warmup_steps=1,
        val_every=0,
        val_batches=1,
        seed=0,
        weights_dtype="bfloat16" if cuda else "float32",
        teacher_placement="replicate",
    )
    history = []
    distill(student, teacher, data, data, config, callback=history.append, context=ctx)
    train = [m for m in history if m.get("phase") == "train"]
    out = {
        "losses": [m["loss"] for m in train],
        "step_s": [m["elapsed"] - (train[i - 1]["elapsed"] if i else 0) for i, m in enumerate(train)],
        "tokens_per_step": train[0]["tokens"] if train else 0,
        "peak_gib": _peak(ctx.device),
        "world_size": ctx.world_size,
        "placement": ctx.placement,
        **plan,
    }
    ctx.close()
    return out if ctx.is_main else {}


def worker_hand(args) -> dict:
    """The minimal hand-written FSDP2 KD loop the bench compares ours against."""
    import torch
    import torch.nn.functional as F
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from worker.engine.distributed import DistributedContext

    ctx = DistributedContext.from_environment(args.device)
    cuda = ctx.device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(1)
    teacher = _model(SHAPES[args.kind]["teacher"], ctx.device, dtype).eval()
    torch.manual_seed(2)
    student = _model(SHAPES[args.kind]["student"], ctx.device, dtype)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in student.model.layers:
        fully_shard(layer, mesh=ctx.mesh, mp_policy=mp)
    fully_shard(student, mesh=ctx.mesh, mp_policy=mp)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01)
    data = _data(args.kind, args.steps)
    batch = SHAPES[args.kind]["batch"]
    losses, times = [], []
    for step in range(args.steps):
        began = time.perf_counter()
        ids = ctx.local_rows(data.batch(step, batch, 0)).to(ctx.device)
        with torch.no_grad():
            t_logits = teacher(ids).logits[:, :-1].float()
        s_logits = student(ids).logits[:, :-1].float()
        loss = F.kl_div(
            F.log_softmax(s_logits, -1).flatten(0, 1),
            F.log_softmax(t_logits, -1).flatten(0, 1),
            log_target=True,
            reduction="batchmean",
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
        losses.append(ctx.mean([float(loss.detach())])[0])
        del s_logits, t_logits, loss
    out = {
        "losses": losses,
        "step_s": times,
        "tokens_per_step": batch * data.seq_len,
        "peak_gib": _peak(ctx.device),
        "world_size": ctx.world_size,
    }
    ctx.close()
    return out if ctx.is_main else {}


def _launch(worker: str, args, ranks: int | None, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        me = [str(Path(__file__).resolve()), "--worker", worker, "--out", str(out)]
        me += ["--steps", str(args.steps), "--device", args.device]
        if args.chunk_tokens:
            me += ["--chunk-tokens", str(args.chunk_tokens)]
        if ranks is None:
            command = [sys.executable, *me]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            command += [f"--nproc-per-node={ranks}", *me]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
        subprocess.run(command, cwd=ROOT, env=env, check=True)
        return json.loads(out.read_text())


def _steady(result: dict) -> tuple[float, float]:
    times = result["step_s"][2:] or result["step_s"]  # the first steps warm up allocators / kernels
    seconds = statistics.median(times)
    return seconds, result["tokens_per_step"] / seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument(
        "--chunk-tokens",
        type=int,
        default=None,
        help="tokens per LM-head chunk of ours (default: the engine's)",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--worker", choices=("loop", "hand"), default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    args.kind = args.device
    if args.worker:
        result = (worker_loop if args.worker == "loop" else worker_hand)(args)
        if result:
            args.out.write_text(json.dumps(result))
        return 0

    if args.device == "cpu":
        # One thread per process: OpenMP teams on cores shared with other work stall badly (measured:
        # one process with 2 threads ran 7x slower per step than with 1 on a loaded 2-core machine).
        runs = {
            "1 process (plain loop)": _launch("loop", args, None, 1),
            "2 gloo ranks (FSDP2)": _launch("loop", args, 2, 1),
        }
    else:
        runs = {
            "ours: distill() + FSDP2, 1 rank": _launch("loop", args, 1, 8),
            "hand-written FSDP2 KD, 1 rank": _launch("hand", args, 1, 8),
        }
    (a_name, a), (b_name, b) = runs.items()
    print(f"\n{'step':>4}  {a_name:>32}  {b_name:>32}  |diff|")
    for i, (x, y) in enumerate(zip(a["losses"], b["losses"])):
        print(f"{i + 1:>4}  {x:>32.6f}  {y:>32.6f}  {abs(x - y):.2e}")
    print(f"max |loss difference|: {max(abs(x - y) for x, y in zip(a['losses'], b['losses'])):.2e}")
    (sa, ta), (sb, tb) = _steady(a), _steady(b)
    print(f"{a_name}: {sa * 1e3:.1f} ms/step, {ta:.0f} tok/s, peak {a['peak_gib']:.2f} GiB")
    print(f"{b_name}: {sb * 1e3:.1f} ms/step, {tb:.0f} tok/s, peak {b['peak_gib']:.2f} GiB")
    print(f"throughput ratio ({b_name} / {a_name}): {tb / ta:.2f}x")
    if args.device == "cuda":  # on CPU `peak_gib` is the RSS, not what the planner estimates
        import torch

        print(
            f"memory planner's estimate for ours: {a['planned_gib']:.2f} GiB "
            f"(measured {a['peak_gib']:.2f} GiB, ratio {a['planned_gib'] / a['peak_gib']:.2f})"
        )

        flops = a["flops_per_token"]
        for name, tps in ((a_name, ta), (b_name, tb)):
            achieved = tps * flops / 1e12
            print(
                f"{name}: {achieved:.0f} TFLOP/s achieved ({flops / 1e9:.1f} GFLOP per token), "
                f"{achieved / DENSE_BF16_TFLOPS:.0%} of the {DENSE_BF16_TFLOPS:.0f} TFLOP/s dense bf16 peak"
            )
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
