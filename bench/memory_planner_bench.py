"""The memory planner (worker/engine/memplan/) against real peaks: distillation, importance, evaluation, pruning.

Each case runs in a fresh subprocess (so one case's allocator state cannot leak into the next) and
reports, side by side with the planner's estimate:

- `tensors`: the peak of live tensor bytes. On CUDA `torch.cuda.max_memory_allocated`. On CPU the
  tensors alive when the measured step starts (every live tensor storage, counted once) plus the
  peak of the CPU allocator's own running total during the step (`torch.profiler`,
  profile_memory=True: each allocation event's "Total Allocated"); this is what the planner
  estimates. Memory-mapped file storages are not allocator memory and are left out: the profiler
  reports each safetensors read as the whole file mapped (a streamed pass's loaded parameters are
  views into one private mapping of the checkpoint file per tensor, 26 MiB of "allocations" for
  2 MiB of weights in the DEEP case), and the disk tier's store buffers are file mappings too.
- `rss`: the process's peak resident set (Linux VmHWM) above its RSS before the models were built,
  with glibc's mmap threshold pinned to 64 KiB so freed tensors go back to the OS. It includes the
  Python / allocator overhead the planner does not model, so it is printed, not targeted.

Distillation is measured over its second step (AdamW's moments exist from the first), through the real
`distill()` loop with `memory_options`; importance through `compute_importance` (two batches, loss scans
on); streamed importance through `compute_importance_streamed` from a saved checkpoint (four batches,
its activation stores on the device or spilled); pruning from a saved checkpoint, in memory (the loaded
teacher's mapped weights counted as live tensors, then the cut and the save measured) or out of core
(`prune_checkpoint`; the reader's anonymous-map buffers drawn from the allocator instead, same bytes, so
the profiler sees them); evaluation as `perplexity` scores one batch (final hidden states, then the chunked-head NLL). The
target is |estimate / tensors - 1| <= 15% for every case.

Besides Llama, the families whose attention or projections differ: Gemma 2 (transformers runs its soft-capped
attention with the eager kernel: [B, H, S, S] scores, masks, repeated keys and values; soft-capped final
logits) and Phi-3 (fused qkv_proj and gate_up_proj), through the same job paths; and padded calibration
batches (`padded=True`: attention gets a mask, so grouped keys and values are repeated to every head).
`--family gemma2`, `--padded` and `--only KIND` pick cases; `--tensors-only` skips the RSS runs.

Usage:
    python bench/memory_planner_bench.py            # all cases (CPU, or CUDA when available)
    python bench/memory_planner_bench.py --quick    # three cases
    python bench/memory_planner_bench.py --device cpu
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

M_MMAP_THRESHOLD = -3

# (name, teacher config, student config): Llama-style models built from configs (no downloads).
SMALL = dict(hidden=128, intermediate=384, layers=4, heads=4, kv=2, vocab=4096)
WIDE_VOCAB = dict(hidden=96, intermediate=256, layers=3, heads=4, kv=2, vocab=32768)
DEEP = dict(hidden=64, intermediate=192, layers=8, heads=4, kv=4, vocab=2048)
# Small vocabulary, wide layers: activations dominate (where checkpointing matters).
WIDE = dict(hidden=256, intermediate=768, layers=4, heads=8, kv=2, vocab=512)
# The families whose attention / projections differ from Llama's: Gemma 2 (eager attention, soft-capped
# [B, H, S, S] scores; grouped queries, so its keys and values are repeated) and Phi-3 (fused qkv_proj and
# gate_up_proj). Sequences of 256 make the scores as big as an MLP's working set.
GEMMA2 = dict(family="gemma2", hidden=128, intermediate=384, layers=4, heads=4, kv=2, vocab=4096)
PHI3 = dict(family="phi3", hidden=128, intermediate=512, layers=4, heads=4, kv=2, vocab=512)
# Gemma 3 (SDPA): three sliding-window layers (window 128) and one global layer; sequences of 1024 reach
# past the window, so the sliding layers get a [B, 1, S, S] mask (SDPA saves its additive copy per layer)
# and repeat their keys and values; narrow layers and a small vocabulary make that visible.
GEMMA3 = dict(family="gemma3", hidden=64, intermediate=192, layers=4, heads=4, kv=1, vocab=512)
# A mixture of experts (prune cases only): 8 experts of width 256 per layer, fused expert tensors.
QWEN3_MOE = dict(family="qwen3_moe", hidden=128, intermediate=256, layers=3, heads=4, kv=2, vocab=1024)


def half(cfg: dict) -> dict:
    return {**cfg, "intermediate": cfg["intermediate"] // 2, "layers": max(1, cfg["layers"] - 1)}


CASES = [
    # kind, model config, settings
    ("distill", SMALL, dict(batch_size=4, seq_len=128)),
    ("distill", SMALL, dict(batch_size=4, seq_len=128, gradient_checkpointing=True)),
    ("distill", SMALL, dict(batch_size=4, seq_len=128, weights_dtype="bfloat16")),
    ("distill", SMALL, dict(batch_size=8, seq_len=256)),
    ("distill", SMALL, dict(batch_size=8, seq_len=256, gradient_checkpointing=True)),
    ("distill", WIDE_VOCAB, dict(batch_size=4, seq_len=128)),
    ("distill", DEEP, dict(batch_size=8, seq_len=128)),
    ("distill", DEEP, dict(batch_size=8, seq_len=128, gradient_checkpointing=True)),
    ("distill", WIDE, dict(batch_size=8, seq_len=256)),
    ("distill", WIDE, dict(batch_size=8, seq_len=256, gradient_checkpointing=True)),
    ("distill", WIDE, dict(batch_size=8, seq_len=256, weights_dtype="bfloat16")),
    ("distill", WIDE, dict(batch_size=8, seq_len=256, weights_dtype="bfloat16", gradient_checkpointing=True)),
    ("distill-ce", SMALL, dict(batch_size=4, seq_len=128)),
    ("importance", SMALL, dict(batch_size=8, seq_len=128)),
    ("importance", WIDE_VOCAB, dict(batch_size=4, seq_len=128)),
    ("evaluate", SMALL, dict(batch_size=8, seq_len=128)),
    ("importance", WIDE, dict(batch_size=8, seq_len=256)),
    ("evaluate", WIDE, dict(batch_size=8, seq_len=256)),
    # Streamed importance: 4 batches; the activation stores (main + one per open cut) all on the device,
    # or all spilled to disk (device budget 0). The disk tier's store buffers and the loaded weights'
    # checkpoint mappings are mapped files, not allocator memory: `tensors` leaves them out on CPU as
    # CUDA's max_memory_allocated does.
    ("importance-streamed", DEEP, dict(batch_size=8, seq_len=128)),
    ("importance-streamed", DEEP, dict(batch_size=8, seq_len=128, device_budget=0)),
    ("importance", GEMMA2, dict(batch_size=8, seq_len=256)),
    ("importance-streamed", GEMMA2, dict(batch_size=8, seq_len=256)),
    ("evaluate", GEMMA2, dict(batch_size=8, seq_len=256)),
    ("distill", GEMMA2, dict(batch_size=4, seq_len=256)),
    ("distill", GEMMA2, dict(batch_size=4, seq_len=256, gradient_checkpointing=True)),
    ("importance", PHI3, dict(batch_size=8, seq_len=256)),
    ("evaluate", PHI3, dict(batch_size=8, seq_len=256)),
    ("distill", PHI3, dict(batch_size=4, seq_len=256)),
    ("importance", GEMMA3, dict(batch_size=4, seq_len=1024)),
    ("evaluate", GEMMA3, dict(batch_size=4, seq_len=1024)),
    ("distill", GEMMA3, dict(batch_size=2, seq_len=1024)),
    ("distill", GEMMA3, dict(batch_size=2, seq_len=1024, gradient_checkpointing=True)),
    # Padded calibration batches: SDPA gets a mask, so grouped keys and values are repeated to every head.
    ("importance", SMALL, dict(batch_size=8, seq_len=256, padded=True)),
    ("importance-streamed", SMALL, dict(batch_size=8, seq_len=256, padded=True)),
    # Prune jobs, from a saved checkpoint: in memory (load, cut, save) or out of core (tensor by tensor).
    # Every other MLP neuron and every fourth hidden channel go (scattered, as importance picks them: the
    # out-of-core reader reads such rows through the whole tensor); batch / seq do not apply.
    ("prune", SMALL, dict(batch_size=1, seq_len=1)),
    ("prune-ooc", SMALL, dict(batch_size=1, seq_len=1)),
    ("prune", PHI3, dict(batch_size=1, seq_len=1)),
    ("prune-ooc", PHI3, dict(batch_size=1, seq_len=1)),
    ("prune", WIDE_VOCAB, dict(batch_size=1, seq_len=1)),
    ("prune-ooc", WIDE_VOCAB, dict(batch_size=1, seq_len=1)),
    ("prune", QWEN3_MOE, dict(batch_size=1, seq_len=1)),
    ("prune-ooc", QWEN3_MOE, dict(batch_size=1, seq_len=1)),
    # Wide layers and a small vocabulary: the MLP tensors are the largest, so the out-of-core peak is the
    # reader's scattered-row path (the whole tensor, the gathered kept rows, their cut columns).
    ("prune-ooc", WIDE, dict(batch_size=1, seq_len=1)),
]
QUICK = [8, 9, 13]
# `--real` (CUDA only): Llama-3.1-8B's shapes, random weights built on the device; the distillation
# student is `half` of it (~6.3B). Measured once each (no RSS run: the point is the device peak).
LLAMA_8B = dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv=8, vocab=128256)
REAL_CASES = [
    ("distill", LLAMA_8B, dict(batch_size=4, seq_len=2048, weights_dtype="bfloat16")),
    (
        "distill",
        LLAMA_8B,
        dict(batch_size=4, seq_len=2048, weights_dtype="bfloat16", gradient_checkpointing=True),
    ),
    ("importance", LLAMA_8B, dict(batch_size=8, seq_len=2048)),
    ("evaluate", LLAMA_8B, dict(batch_size=8, seq_len=2048)),
]


def build(cfg: dict, seed: int, dtype, device: str = "cpu"):
    """A random model of `cfg`'s shape: Llama, or `cfg["family"]` (gemma2: eager attention with soft-capped
    scores, as transformers runs it; phi3: fused qkv_proj and gate_up_proj)."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, Phi3Config

    torch.manual_seed(seed)
    shape = dict(
        vocab_size=cfg["vocab"],
        hidden_size=cfg["hidden"],
        intermediate_size=cfg["intermediate"],
        num_hidden_layers=cfg["layers"],
        num_attention_heads=cfg["heads"],
        num_key_value_heads=cfg["kv"],
        head_dim=cfg["hidden"] // cfg["heads"],
        max_position_embeddings=4096,
    )
    family = cfg.get("family", "llama")
    if family == "gemma2":  # Gemma 2's released caps and layout; sliding window shorter than the inputs
        config = Gemma2Config(
            **shape,
            query_pre_attn_scalar=shape["head_dim"],
            sliding_window=64,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            tie_word_embeddings=True,
        )
        config._attn_implementation = "eager"  # what load_model gives (Gemma 2 has no SDPA support)
    elif (
        family == "gemma3"
    ):  # the text model as load_model gives it (SDPA); the window shorter than the inputs
        from transformers import Gemma3TextConfig

        config = Gemma3TextConfig(
            **shape,
            query_pre_attn_scalar=shape["head_dim"],
            sliding_window=128,
            layer_types=["sliding_attention"] * (cfg["layers"] - 1) + ["full_attention"],
            tie_word_embeddings=True,
        )
        config._attn_implementation = "sdpa"
    elif family == "qwen3_moe":
        from transformers import Qwen3MoeConfig

        moe = {k: v for k, v in shape.items() if k != "intermediate_size"}
        config = Qwen3MoeConfig(
            **moe,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=cfg["intermediate"],
            norm_topk_prob=False,
            tie_word_embeddings=False,
        )
        config._attn_implementation = "sdpa"
    else:
        extra = {"pad_token_id": 0} if family == "phi3" else {}  # (its default id is past a tiny vocabulary)
        config = (Phi3Config if family == "phi3" else LlamaConfig)(
            **shape, tie_word_embeddings=False, **extra
        )
        config._attn_implementation = "sdpa"  # what load_model gives (transformers' default)
    # On CUDA build straight on the device: initialising an 8B model on the CPU takes minutes.
    with torch.device(device if device.startswith("cuda") else "cpu"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)


def padded_batch(data, index: int, batch_size: int, padded: bool) -> dict:
    """A calibration batch; `padded`: every other row right-padded over its last quarter (short windows,
    as data.calibration_batches makes them), so attention gets a mask."""
    import torch

    ids = data.batch(index, batch_size, 0)
    mask = torch.ones_like(ids)
    if padded:
        mask[::2, -(ids.shape[1] // 4) :] = 0
    return {"input_ids": ids, "attention_mask": mask}


class RandomTokens:
    """The `PackedTokens` interface over random ids (no tokenizer in the measured process)."""

    def __init__(self, vocab: int, seq_len: int):
        self.vocab, self.seq_len = vocab, seq_len

    def batch(self, index: int, batch_size: int, seed: int):
        import torch

        g = torch.Generator().manual_seed(seed * 100_003 + index)
        return torch.randint(0, self.vocab, (batch_size, self.seq_len), generator=g)

    def sequential(self, batch_size: int, limit: int | None = None):
        yield self.batch(0, batch_size, 1)


def live_tensor_bytes() -> int:
    import torch

    seen: dict[int, int] = {}
    gc.collect()
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                st = obj.untyped_storage()
                seen[st.data_ptr()] = st.nbytes()
        except Exception:
            continue
    return sum(seen.values())


class NoProfiler:
    """The RSS run: no profiler in the process (its own bookkeeping would count as resident memory)."""

    def start(self):
        pass

    def stop(self) -> int:
        return 0


class StepProfiler:
    """CPU: live tensors at start + peak of the profiler's allocation events. CUDA: max_memory_allocated."""

    def __init__(self, device: str):
        self.device = device
        self.prof = None

    def start(self):
        import torch

        if self.device == "cuda":
            return
        self.base = live_tensor_bytes()
        self.prof = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU],
            profile_memory=True,
            record_shapes=True,
            with_stack=True,
        )
        self.prof.start()

    def stop(self) -> int:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        import tempfile

        self.prof.stop()
        # Every allocation / free of the step (an op's own temporaries too) reports the CPU allocator's
        # running total of what it allocated since profiling began. Mapped files (safetensors reads,
        # the disk tier) report through their own allocator with "Total Allocated" 0: not counted.
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            self.prof.export_chrome_trace(f.name)
            events = json.loads(Path(f.name).read_text())["traceEvents"]
        totals = [
            e["args"]["Total Allocated"]
            for e in events
            if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0
        ]
        return self.base + max(totals, default=0)


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(kind: str, cfg: dict, settings: dict, device: str, profiled: bool) -> dict:
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    import torch

    from worker.engine import memplan
    from worker.engine.adapters import arch_spec

    torch.set_num_threads(1)
    gc.collect()
    rss0 = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    wdtype = settings.get("weights_dtype", "float32")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[wdtype]
    b, s = settings["batch_size"], settings["seq_len"]
    prof = StepProfiler(device) if profiled or device == "cuda" else NoProfiler()
    if kind.startswith("distill"):
        from worker.engine.distill import DistillConfig, distill
        from worker.engine.distill.memory import memory_options

        ce = kind == "distill-ce"
        teacher = None if ce else build(cfg, 0, dtype, device)
        student = build(half(cfg), 1, dtype, device)
        config = DistillConfig(
            mode="ce" if ce else "kd",
            steps=2,
            batch_size=b,
            warmup_steps=0,
            val_every=0,
            val_batches=1,
            gradient_checkpointing=settings.get("gradient_checkpointing", False),
            weights_dtype=wdtype,
        )
        estimate = memplan.distill_memory(
            arch_spec(student),
            None if teacher is None else arch_spec(teacher),
            batch_size=b,
            seq_len=s,
            weights_dtype=wdtype,
            gradient_checkpointing=config.gradient_checkpointing,
            device=device,
        )
        measured = {}

        def callback(m):
            if m.get("phase") == "train" and m["step"] == 1:
                prof.start()
            elif m.get("phase") == "train" and m["step"] == 2:
                measured["tensors"] = prof.stop()

        data = RandomTokens(cfg["vocab"], s)
        with memory_options(student, teacher, config):
            distill(student, teacher, data, data, config, callback=callback)
    elif kind == "importance":
        from worker.engine.importance import compute_importance

        model = build(cfg, 0, dtype, device)
        estimate = memplan.importance_memory(
            arch_spec(model), batch_size=b, seq_len=s, device=device, padded=settings.get("padded", False)
        )
        data = RandomTokens(cfg["vocab"], s)
        batches = [padded_batch(data, i, b, settings.get("padded", False)) for i in range(2)]
        prof.start()
        compute_importance(model, batches, scans=("bi", "drop", "block"), hash_weights=False)
        measured = {"tensors": prof.stop()}
    elif kind == "importance-streamed":  # layer by layer from a checkpoint; stores on the device or spilled
        import tempfile

        from worker.engine.importance.activation_store import StoreBudget
        from worker.engine.importance.streamed import compute_importance_streamed

        n_batches, device_budget = 4, settings.get("device_budget")
        model = build(cfg, 0, dtype)
        spec = arch_spec(model)
        path = Path(tempfile.mkdtemp(prefix="memplan-bench-"))
        model.save_pretrained(path)
        del model
        gc.collect()
        estimate = memplan.importance_memory(
            spec,
            batch_size=b,
            seq_len=s,
            streamed=True,
            samples=n_batches * b,
            weights_dtype=wdtype,
            device=device,
            device_budget=device_budget,
            padded=settings.get("padded", False),
        )
        data = RandomTokens(cfg["vocab"], s)
        batches = [padded_batch(data, i, b, settings.get("padded", False)) for i in range(n_batches)]
        budget = StoreBudget(
            device_bytes=1 << 40 if device_budget is None else device_budget, spill_dir=str(path)
        )
        prof.start()
        compute_importance_streamed(
            path, batches, scans=("bi", "drop", "block"), device=device, budget=budget, hash_weights=False
        )
        measured = {"tensors": prof.stop()}
    elif kind in ("prune", "prune-ooc"):  # what run_prune does, in memory or out of core
        import tempfile

        from worker.engine import checkpoint_reader
        from worker.engine.loading import load_model, save_model
        from worker.engine.out_of_core import prune_checkpoint
        from worker.engine.plan import PrunePlan
        from worker.engine.surgery import apply_plan

        family = cfg.get("family", "llama")
        model = build(cfg, 0, dtype)
        teacher = arch_spec(model)
        path = Path(tempfile.mkdtemp(prefix="memplan-bench-"))
        model.save_pretrained(path / "teacher")
        cut = {i: list(range(0, cfg["intermediate"], 2)) for i in range(cfg["layers"])}
        plan = PrunePlan(  # MoE: a quarter of each layer's experts instead of neurons
            **(
                {"remove_experts": {i: [0, 5] for i in range(cfg["layers"])}}
                if family == "qwen3_moe"
                else {"remove_neurons": cut}
            ),
            remove_hidden=list(range(0, cfg["hidden"], 4)),
        )
        student = arch_spec(apply_plan(model, plan))
        del model
        gc.collect()
        mode = "out_of_core" if kind == "prune-ooc" else "in_memory"
        estimate = memplan.prune_memory(teacher, student, mode=mode, weights_dtype=wdtype)
        # The reader's owned buffers are anonymous maps (not the CPU allocator's): for the profiler to see
        # them, the same bytes come from the allocator here.
        checkpoint_reader.owned_buffer = lambda n: torch.empty(n, dtype=torch.uint8)
        if mode == "out_of_core":
            prof.start()
            prune_checkpoint(path / "teacher", plan, path / "student", {})
        else:
            # The loaded weights are views of the checkpoint's mapped file (not allocator memory): the
            # measured step is the cut and the save, on top of the live teacher (`live_tensor_bytes`).
            loaded, _ = load_model(path / "teacher", dtype=dtype)
            prof.start()
            save_model(apply_plan(loaded, plan), None, path / "student", {})
        measured = {"tensors": prof.stop()}
    elif kind == "evaluate":
        from worker.engine.chunked_head import final_hidden_states, output_head, token_nll

        model = build(cfg, 0, dtype, device).eval()
        estimate = memplan.evaluation_memory(arch_spec(model), batch_size=b, seq_len=s, device=device)
        ids = RandomTokens(cfg["vocab"], s).batch(0, b, 0).to(device)
        prof.start()
        with torch.inference_mode():  # what perplexity runs per batch of windows
            hidden = final_hidden_states(model, ids)
            token_nll(hidden, output_head(model), ids).sum()
        measured = {"tensors": prof.stop()}
    else:
        raise ValueError(kind)
    if not profiled:
        measured["rss"] = (status_kib("VmHWM") - rss0) * 1024
    return {"estimate": estimate["total"], "parts": estimate["parts"], **measured}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=None, help="run only the cases of this kind (e.g. importance-streamed)")
    p.add_argument("--family", default=None, help="run only the cases of this model family (e.g. gemma2)")
    p.add_argument("--padded", action="store_true", help="run only the cases with padded batches")
    p.add_argument("--tensors-only", action="store_true", help="skip the RSS runs (half the time)")
    p.add_argument("--real", action="store_true", help="CUDA: Llama-3.1-8B-shaped cases instead")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if args.child is not None:
        kind, cfg, settings, device, profiled = json.loads(args.child)
        print(json.dumps(child(kind, cfg, settings, device, profiled)))
        return
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cases = [CASES[i] for i in QUICK] if args.quick else CASES
    if args.real:
        if device != "cuda":
            raise SystemExit("--real needs --device cuda (8B-shaped models)")
        cases = REAL_CASES
    if args.only:
        cases = [c for c in cases if c[0] == args.only]
    if args.family:
        cases = [c for c in cases if c[1].get("family", "llama") == args.family]
    if args.padded:
        cases = [c for c in cases if c[2].get("padded")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    rows = []
    print(
        f"device: {device}; tensors = {'torch.cuda.max_memory_allocated' if device == 'cuda' else 'live tensors + CPU allocator peak (torch.profiler)'}"
    )
    print(f"{'case':<58} {'estimate':>10} {'tensors':>10} {'ratio':>6} {'rss':>10} {'ratio':>6}")
    for kind, cfg, settings in cases:
        r = {}
        # The tensor peak and the resident set, each from a clean process (the real cases: the peak only).
        for profiled in (True,) if args.real or args.tensors_only else (True, False):
            out = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps([kind, cfg, settings, device, profiled])],
                capture_output=True,
                text=True,
                env=env,
                timeout=900,
            )
            if out.returncode != 0:
                raise SystemExit(f"{kind} {settings}: FAILED\n{out.stderr[-2000:]}")
            got = json.loads(out.stdout.strip().splitlines()[-1])
            r.update({k: v for k, v in got.items() if k != "tensors" or profiled})
        label = (
            f"{kind} {cfg.get('family', 'llama')} h{cfg['hidden']} L{cfg['layers']} V{cfg['vocab']} "
            + " ".join(f"{k}={v}" for k, v in settings.items())
        )
        mib = lambda n: f"{n / 2**20:.1f}M"  # noqa: E731
        rss = f"{mib(r['rss']):>10} {r['estimate'] / r['rss']:>6.2f}" if "rss" in r else f"{'-':>10} {'-':>6}"
        print(
            f"{label:<58} {mib(r['estimate']):>10} {mib(r['tensors']):>10} {r['estimate'] / r['tensors']:>6.2f} {rss}"
        )
        rows.append({"kind": kind, "config": cfg, "settings": settings, "device": device, **r})
    ratios = [r["estimate"] / r["tensors"] for r in rows]
    if ratios:
        worst = max(ratios, key=lambda x: abs(x - 1))
        within = sum(abs(x - 1) <= 0.15 for x in ratios)
        print(f"estimate / measured tensors: {within}/{len(ratios)} within 15%; worst {worst:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
