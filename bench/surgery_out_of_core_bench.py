"""Peak memory and time of out-of-core surgery against the in-memory surgery, on one saved teacher.

A random Llama (default ~440 MB in bfloat16, saved in 200 MB shards) is cut to one plan (2 layers
dropped, a quarter of the heads of every layer, half of every MLP) twice, each in a fresh subprocess:
in memory (load_model -> apply_plan -> save_model, what prune jobs did so far) and out of core
(prune_checkpoint: tensor by tensor from the checkpoint). Memory is each process's peak resident set
size (Linux VmHWM) above its RSS after the imports (and a warm-up that reads the teacher's structure,
so transformers' lazy imports count on neither side); time is wall clock of the cut including load and
save. The two outputs are then compared tensor by tensor (they must be bit-identical).

Usage:
    python bench/surgery_out_of_core_bench.py                     # 12 layers, hidden 1024, bf16
    python bench/surgery_out_of_core_bench.py --layers 24 --hidden 2048
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--shard-mb", type=int, default=200, help="teacher and out-of-core output shard size")
    p.add_argument("--child", choices=("in_memory", "out_of_core"), help=argparse.SUPPRESS)
    p.add_argument("--teacher", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def plan_for(args):
    from worker.engine.plan import PrunePlan

    q = args.heads // args.kv_heads
    heads = [
        g * q + k for g in range(args.kv_heads) for k in range(q // 4 or 1)
    ]  # first quarter of each group
    return PrunePlan(
        drop_layers=[args.layers // 2, args.layers // 2 + 1],
        remove_heads={i: heads for i in range(args.layers)},
        remove_neurons={i: list(range(0, args.intermediate, 2)) for i in range(args.layers)},
    )


def child(args) -> None:
    """One cut in this process; prints {"seconds", "peak_bytes", "baseline_bytes"} as JSON."""
    import torch  # noqa: F401  (imports first: the baseline includes the libraries)
    import transformers  # noqa: F401

    from worker.engine import loading, out_of_core, surgery  # noqa: F401

    plan = plan_for(args)
    # Warm-up for both sides alike: transformers imports its modeling code lazily, on first use.
    out_of_core.open_checkpoint(args.teacher)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    baseline = _status_kib("VmRSS")
    t0 = time.perf_counter()
    if args.child == "in_memory":
        model, tokenizer = loading.load_model(args.teacher)
        surgery.apply_plan(model, plan)
        loading.save_model(model, tokenizer, args.out, {})
    else:
        out_of_core.prune_checkpoint(args.teacher, plan, args.out, {}, max_shard_bytes=args.shard_mb * 10**6)
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    print(
        json.dumps(
            {"seconds": seconds, "peak_bytes": (peak - baseline) * 1024, "baseline_bytes": baseline * 1024}
        )
    )


def make_teacher(args, path: Path) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(path, max_shard_size=f"{args.shard_mb}MB")
    return sum(p.numel() * p.element_size() for p in model.parameters())


def run_child(args, mode: str, teacher: Path, out: Path) -> dict:
    argv = [sys.executable, __file__, "--child", mode, "--teacher", str(teacher), "--out", str(out)]
    for name in ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab", "shard_mb"):
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    from worker.engine.checkpoint_reader import CheckpointReader

    with tempfile.TemporaryDirectory(prefix="ooc-bench-") as tmp:
        tmp = Path(tmp)
        size = make_teacher(args, tmp / "teacher")
        shards = len(list((tmp / "teacher").glob("*.safetensors")))
        print(
            f"teacher: Llama {args.layers} layers, hidden {args.hidden}, {size / 1e6:.0f} MB bf16, {shards} shards"
        )
        results = {
            mode: run_child(args, mode, tmp / "teacher", tmp / mode) for mode in ("in_memory", "out_of_core")
        }
        a, b = CheckpointReader(tmp / "in_memory"), CheckpointReader(tmp / "out_of_core")
        identical = sorted(a.names()) == sorted(b.names()) and all(
            a.read(n).equal(b.read(n)) for n in a.names()
        )
        biggest = max(a.shape(n)[0] * (a.shape(n)[1] if len(a.shape(n)) > 1 else 1) for n in a.names()) * 2
        reader = CheckpointReader(tmp / "teacher")
        largest = max(
            (reader.shape(n)[0] * (reader.shape(n)[1] if len(reader.shape(n)) > 1 else 1)) * 2
            for n in reader.names()
        )
    mem, ooc = results["in_memory"], results["out_of_core"]
    print(f"{'':<24}{'in memory':>12}{'out of core':>14}{'ratio':>9}")
    print(
        f"{'peak RSS above start':<24}{mem['peak_bytes'] / 1e6:>9.0f} MB{ooc['peak_bytes'] / 1e6:>11.0f} MB"
        f"{ooc['peak_bytes'] / mem['peak_bytes']:>9.2f}"
    )
    print(
        f"{'time':<24}{mem['seconds']:>10.2f} s{ooc['seconds']:>12.2f} s{ooc['seconds'] / mem['seconds']:>9.2f}"
    )
    print(f"largest teacher tensor {largest / 1e6:.0f} MB, largest student tensor {biggest / 1e6:.0f} MB")
    print(f"outputs bit-identical: {identical}")


if __name__ == "__main__":
    main()
