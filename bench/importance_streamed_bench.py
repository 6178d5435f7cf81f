"""Layer-streamed importance against the in-memory pass: time, peak memory and agreement, one run.

A random Llama is written to safetensors shards (straight from random tensors, one shard at a time:
no whole model is ever built in memory), then each mode runs in a fresh subprocess on the same
calibration batches (random token ids): "in_memory" (`load_model` + `compute_importance`) and
"streamed" (`compute_importance_streamed`: one decoder layer on the device at a time). Per mode:
wall time including the weights' load, peak resident set size above the RSS after the imports
(Linux VmHWM, reset through /proc/self/clear_refs) and, on CUDA, peak allocated device memory
(`torch.cuda.max_memory_allocated`). The two artifacts are then compared array by array.

CPU (default): a small fp32 Llama ("cpu-small", 8 layers, hidden 1024, 0.7 GB), twice: Block
Importance only, then with the drop and block loss scans (their branches are activation stores).

GPU, for a session with one (not run on the 2-core CPU machine this was written on):
    python bench/importance_streamed_bench.py --device cuda --config llama-3.1-8b
    python bench/importance_streamed_bench.py --device cuda --config llama-3.1-70b-slice10
The real Llama-3.1 configs (below, as dicts), random init, bfloat16. The 70B slice keeps 10 of the 80
layers (21 GB): both modes fit an H200, so the ratio is measured on 70B-sized layers. Writing the
weights takes a minute or two (on the GPU when there is one); `--workdir DIR --keep` reuses them.
`--layers N` keeps N layers of any config: the CPU smoke run of the GPU path,
    python bench/importance_streamed_bench.py --config llama-3.1-8b --layers 3 --dtype bfloat16 \
        --samples 2 --seq-len 64 --batch-size 1 --scans bi,drop,block --shard-gb 1
gave, on 2 shared cores: 3.41 GB of weights in 4 shards, 35.3 s vs 35.0 s, peak RSS 2.66 GB in memory vs
1.34 GB streamed, every array bit-identical.

`--store-cap N`: a third streamed run with room for only N activation stores (device tier, no disk),
so the loss scans run in several passes over the checkpoint. 2026-11-30, cpu-small, bi,drop,block,
`--store-cap 4` (16 stores needed: 5 passes, 40 layer loads), 2 shared cores: in memory 30.5 s / 812 MB
peak RSS, streamed 32.9 s (1.08x) / 527 MB, capped 36.6 s (1.20x) / 491 MB, both bit-identical to in
memory.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA_31 = dict(
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rope_scaling={
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    rms_norm_eps=1e-5,
    bos_token_id=128000,
    eos_token_id=128001,
    tie_word_embeddings=False,
    head_dim=128,
    vocab_size=128256,
)
CONFIGS = {
    # meta-llama/Llama-3.1-8B config.json
    "llama-3.1-8b": dict(
        LLAMA_31,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
    # meta-llama/Llama-3.1-70B config.json with 10 of its 80 layers
    "llama-3.1-70b-slice10": dict(
        LLAMA_31,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=10,
        num_attention_heads=64,
        num_key_value_heads=8,
    ),
    "cpu-small": dict(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    ),
}
MODES = ("in_memory", "streamed", "streamed_disk", "streamed_capped")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--config", choices=sorted(CONFIGS), default=None, help="default: cpu-small on CPU")
    p.add_argument("--layers", type=int, default=None, help="keep only this many of the config's layers")
    p.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--samples", type=int, default=None, help="default 8 on CPU, 32 on CUDA")
    p.add_argument("--seq-len", type=int, default=None, help="default 128 on CPU, 2048 on CUDA")
    p.add_argument("--batch-size", type=int, default=None, help="default 4 on CPU, 8 on CUDA")
    p.add_argument(
        "--scans",
        action="append",
        help="scan set (repeatable), e.g. bi or bi,drop,block; default: bi and bi,drop,block on CPU, "
        "bi on CUDA (the loss scans keep one activation store per cut)",
    )
    p.add_argument(
        "--disk",
        action="store_true",
        help="also stream with every activation store forced to memory-mapped files (as when RAM is short)",
    )
    p.add_argument(
        "--store-cap",
        type=int,
        default=None,
        help="also stream with room for only this many activation stores (on the device, no disk): "
        "the loss scans then run in several passes over the checkpoint",
    )
    p.add_argument(
        "--streamed-only",
        action="store_true",
        help="skip the in-memory pass (for a model that would not fit; no ratios then)",
    )
    p.add_argument("--shard-gb", type=float, default=5.0)
    p.add_argument("--workdir", type=Path, help="where the weights go (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the weights in --workdir for the next run")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.config = args.config or ("llama-3.1-8b" if cuda else "cpu-small")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.samples = args.samples or (32 if cuda else 8)
    args.seq_len = args.seq_len or (2048 if cuda else 128)
    args.batch_size = args.batch_size or (8 if cuda else 4)
    args.scans = args.scans or (["bi"] if cuda else ["bi", "bi,drop,block"])
    return args


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def calibration(args, vocab: int) -> list[dict]:
    import torch

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (args.samples, args.seq_len), generator=gen)
    return [
        {
            "input_ids": ids[i : i + args.batch_size],
            "attention_mask": torch.ones_like(ids[i : i + args.batch_size]),
        }
        for i in range(0, args.samples, args.batch_size)
    ]


def child(args) -> None:
    """One importance pass in this process; prints its measurements as JSON."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from worker.engine.importance import compute_importance
    from worker.engine.importance.streamed import compute_importance_streamed
    from worker.engine.loading import load_model

    config = AutoConfig.from_pretrained(args.model)
    with torch.device("meta"):  # warm-up for both modes: transformers imports modeling code lazily
        AutoModelForCausalLM.from_config(config)
    batches = calibration(args, config.vocab_size)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    baseline = _status_kib("VmRSS")
    scans = tuple(args.scans[0].split(","))
    t0 = time.perf_counter()
    load_seconds = None
    if args.child == "in_memory":
        model, _ = load_model(args.model, dtype=args.dtype, device=args.device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        load_seconds = time.perf_counter() - t0
        result = compute_importance(model, batches, scans=scans, hash_weights=False)
    else:
        from worker.engine.importance.activation_store import StoreBudget

        budget = (
            StoreBudget(0, 0, spill_dir=str(Path(args.out).parent)) if args.child == "streamed_disk" else None
        )
        if args.child == "streamed_capped":
            act = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
            store = args.samples * args.seq_len * config.hidden_size * act
            budget = StoreBudget(args.store_cap * store, 0, disk_bytes=0)
        result = compute_importance_streamed(
            args.model,
            batches,
            dtype=args.dtype,
            device=device,
            scans=scans,
            hash_weights=False,
            budget=budget,
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    result.save(args.out)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "load_seconds": load_seconds,
                "peak_rss_bytes": (peak - baseline) * 1024,
                "peak_cuda_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                "execution": result.manifest["execution"],
            }
        )
    )


def write_random_checkpoint(
    name: str, dtype: str, path: Path, shard_bytes: int, device: str, layers: int | None = None
) -> int:
    """Random weights for config `name` as safetensors shards + index, one shard in memory at a time.
    Returns the weights' bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**{**CONFIGS[name], **({"num_hidden_layers": layers} if layers else {})})
    config.dtype = dtype
    torch_dtype = getattr(torch, dtype)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    path.mkdir(parents=True, exist_ok=True)
    gen_device = device if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    gen = torch.Generator(gen_device).manual_seed(0)
    shapes = {name_: param.shape for name_, param in skeleton.named_parameters()}  # tied: once
    element = torch.empty((), dtype=torch_dtype).element_size()
    shards: list[list[str]] = [[]]
    shard_size = size = 0
    for name_, shape in shapes.items():
        nbytes = shape.numel() * element
        if shards[-1] and shard_size + nbytes > shard_bytes:
            shards.append([])
            shard_size = 0
        shards[-1].append(name_)
        shard_size += nbytes
        size += nbytes
    weight_map = {}
    for index, names in enumerate(shards):
        file = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name_ in names:
            noise = torch.randn(shapes[name_], generator=gen, device=gen_device)
            t = 1.0 + 0.1 * noise if "norm" in name_ else 0.02 * noise
            tensors[name_] = t.to(torch_dtype).cpu()
            weight_map[name_] = file
        save_file(tensors, str(path / file), metadata={"format": "pt"})
        del tensors
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=1)
    )
    config.save_pretrained(path)
    return size


def run_child(args, mode: str, model: Path, out: Path, scans: str) -> dict:
    argv = [sys.executable, __file__, "--child", mode, "--model", str(model), "--out", str(out)]
    argv += ["--device", args.device, "--config", args.config, "--dtype", args.dtype, "--scans", scans]
    argv += [
        "--samples",
        str(args.samples),
        "--seq-len",
        str(args.seq_len),
        "--batch-size",
        str(args.batch_size),
    ]
    if args.store_cap:
        argv += ["--store-cap", str(args.store_cap)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_relative_difference(a_dir: Path, b_dir: Path) -> float:
    import numpy as np

    from worker.engine.importance import ImportanceResult

    a, b = ImportanceResult.load(a_dir), ImportanceResult.load(b_dir)
    worst = 0.0
    for name, x in a.arrays.items():
        y = b.arrays[name]
        worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-30), initial=0.0)))
    return worst


def _gb(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def layer_parameters(name: str, layers: int | None) -> int:
    """Parameters the importance pass multiplies through per token: the decoder layers (embeddings are a
    lookup; the BI scan needs no LM head)."""
    c = CONFIGS[name]
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    attn = c["hidden_size"] * head_dim * (2 * c["num_attention_heads"] + 2 * c["num_key_value_heads"])
    mlp = 3 * c["hidden_size"] * c["intermediate_size"]
    return (layers or c["num_hidden_layers"]) * (attn + mlp)


# Issue 10's yardstick: 1024 samples x 4096 tokens; the bench runs fewer and extrapolates per token.
YARDSTICK_TOKENS = 1024 * 4096


def report_throughput(results: dict, layer_params: int, tokens: int, args) -> None:
    """Achieved FLOP/s of each mode (2 x layer params x tokens over the pass) and the time it would take
    at the yardstick's token count (load once + pass scaled per token)."""
    flops = 2 * layer_params * tokens
    for mode, r in results.items():
        load = r["load_seconds"] or 0.0
        pass_s = max(r["seconds"] - load, 1e-9)
        scaled = load + pass_s * YARDSTICK_TOKENS / tokens
        print(
            f"{mode}: {r['seconds']:.1f} s ({load:.1f} s load), {flops / pass_s / 1e12:.1f} TFLOP/s achieved "
            f"over the pass ({flops / 1e15:.2f} PFLOP); at 1024 x 4096 tokens: ~{scaled:.0f} s"
            + ("" if r["load_seconds"] is not None else " (streamed: load interleaved, counted as pass)")
        )
        if r["load_seconds"] is None:  # the 70B slice's point: time per layer, times the real depth
            layers = args.layers or CONFIGS[args.config]["num_hidden_layers"]
            full = 80 if "70b" in args.config else layers
            print(
                f"{mode}: {r['seconds'] / layers:.2f} s per decoder layer; x {full} layers = "
                f"~{r['seconds'] / layers * full:.0f} s at this token count, peak device "
                f"{_gb(r['peak_cuda_bytes'])}"
            )


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="importance-streamed-bench-"))
    model = workdir / (args.config + (f"-{args.layers}layers" if args.layers else ""))
    try:
        if not (model / "model.safetensors.index.json").is_file():
            t0 = time.perf_counter()
            size = write_random_checkpoint(
                args.config, args.dtype, model, int(args.shard_gb * 1e9), args.device, args.layers
            )
            print(
                f"wrote {args.config} ({size / 1e9:.2f} GB {args.dtype}) in {time.perf_counter() - t0:.0f} s"
            )
        size = sum(f.stat().st_size for f in model.glob("*.safetensors"))
        tokens = args.samples * args.seq_len
        print(
            f"{args.config} on {args.device}, {args.dtype}, weights {size / 1e9:.2f} GB; "
            f"{args.samples} samples x {args.seq_len} tokens, batch {args.batch_size} ({tokens} tokens)"
        )
        modes = (
            MODES[:2]
            + (("streamed_disk",) if args.disk else ())
            + (("streamed_capped",) if args.store_cap else ())
        )
        if args.streamed_only:
            modes = tuple(m for m in modes if m != "in_memory")
        layer_params = layer_parameters(args.config, args.layers)
        for scans in args.scans:
            results = {mode: run_child(args, mode, model, workdir / f"out-{mode}", scans) for mode in modes}
            print(f"\nscans {scans}")
            report_throughput(results, layer_params, tokens, args)
            if "in_memory" not in results:
                continue
            diffs = {
                m: max_relative_difference(workdir / "out-in_memory", workdir / f"out-{m}") for m in modes[1:]
            }
            mem = results["in_memory"]
            print(f"{'':<24}" + "".join(f"{m.replace('_', ' '):>15}{'ratio':>7}" for m in modes))
            rows = [
                ("time (load + pass)", "seconds", lambda v: f"{v:.2f} s"),
                ("peak RSS above start", "peak_rss_bytes", _gb),
            ]
            if mem["peak_cuda_bytes"] is not None:
                rows.append(("peak CUDA allocated", "peak_cuda_bytes", _gb))
            for label, key, fmt in rows:
                cells = [
                    f"{fmt(results[m][key]):>15}{results[m][key] / max(mem[key], 1e-9):>7.2f}" for m in modes
                ]
                print(f"{label:<24}" + "".join(cells))
            print(f"{'in memory: of which load':<24}{mem['load_seconds']:>13.2f} s")
            for m in modes[1:]:
                stores = results[m]["execution"]["activations"]
                print(
                    f"{m}: {results[m]['execution']['passes']} pass(es), {results[m]['execution']['layer_loads']} "
                    f"layer loads; activation stores {stores['stores']} of {_gb(stores['store_bytes'])} each; "
                    f"max relative difference to in memory over every array: {diffs[m]:.2e}"
                )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
