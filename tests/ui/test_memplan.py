"""The dashboard sizes jobs in JS (frontend/js/memplan.js) as the user types; these tests run that JS in
node and require the exact numbers of worker/engine/memplan/ on a grid of architectures (every tiny
family, mixture-of-experts ones too, a Llama-3.1-8B and a Qwen3-30B-A3B shape, non-uniform pruned students) and settings,
Gemma 2's eager attention, Gemma 3's sliding-window masks, Phi-3's fused projections and padded batches (repeated keys and values) included;
prune jobs in memory and out of core."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from tests.real_shapes import qwen3_30b_a3b
from tests.tiny_models import FAMILIES, MOE_FAMILIES, tiny_model
from tests.ui.dashboard_js import run_dashboard_js
from tests.ui.test_costmodel import llama8b
from worker.engine import memplan
from worker.engine.adapters import arch_spec
from worker.engine.spec import ArchSpec, LayerShape

DRIVER = """
import * as mp from "./js/memplan.js";
const cases = JSON.parse(await new Promise((resolve) => {
  let data = ""; process.stdin.on("data", (c) => (data += c)); process.stdin.on("end", () => resolve(data));
}));
const out = cases.map(({ fn, args }) => {
  if (fn === "distill") return mp.distillMemory(args.student, args.teacher, args.opts);
  if (fn === "correction") return mp.teacherCorrectionMemory(args.student, args.teacher, args.opts);
  if (fn === "importance") return mp.importanceMemory(args.spec, args.opts);
  if (fn === "evaluation") return mp.evaluationMemory(args.spec, args.opts);
  if (fn === "prune") return mp.pruneMemory(args.teacher, args.student, args.opts);
  if (fn === "candidates") return mp.distillCandidates(args.settings);
  if (fn === "usable") return mp.usableBytes(args.memory);
  if (fn === "saved") return mp.savedBytesPerToken(args.spec, args.act, args.checkpointing, args.seq_len);
  throw new Error(fn);
});
process.stdout.write(JSON.stringify(out));
"""


def specs() -> dict[str, ArchSpec]:
    out = {name: arch_spec(tiny_model(name)) for name in FAMILIES + MOE_FAMILIES}
    moe = qwen3_30b_a3b()  # then with experts cut per layer
    out["qwen3_30b_a3b"] = moe
    out["moe_pruned"] = moe.model_copy(
        update={
            "num_layers": 2,
            "layers": [
                LayerShape(num_heads=32, num_kv_heads=4, intermediate_size=768, num_experts=96),
                LayerShape(num_heads=32, num_kv_heads=4, intermediate_size=512, num_experts=6),
            ],
        }
    )
    # Gemma 3, cut unevenly: its three sliding-window layers (a count, not positions) past the window
    g3 = out["gemma3"]
    out["gemma3_pruned"] = g3.model_copy(
        update={
            "layers": [
                LayerShape(num_heads=h, num_kv_heads=g, intermediate_size=f)
                for h, g, f in ((8, 4, 64), (4, 2, 64), (8, 2, 32), (2, 1, 64))
            ]
        }
    )
    big = llama8b()
    out["llama8b"] = big
    # A small vocabulary and a cut of both MLP dims: out of core, the MLP tensors' gathered rows are the peak
    out["llama8b_v1k"] = big.model_copy(update={"vocab_size": 1024})
    out["cut_v1k"] = big.model_copy(
        update={"vocab_size": 1024, "hidden_size": 3072, "intermediate_size": 9000}
    )
    out["pruned"] = big.model_copy(
        update={
            "num_layers": 3,
            "layers": [
                LayerShape(num_heads=32, num_kv_heads=8, intermediate_size=9000),
                LayerShape(num_heads=16, num_kv_heads=4, intermediate_size=14336),
                LayerShape(num_heads=32, num_kv_heads=8, intermediate_size=4096),
            ],
        }
    )
    return out


def test_estimates_match_python(tmp_path: Path):
    all_specs = specs()
    cases, expected = [], []

    def add(fn, args, value):
        cases.append({"fn": fn, "args": args})
        expected.append(value)

    for name, spec in all_specs.items():
        summary = spec.summary()
        teacher = all_specs[{"pruned": "llama8b", "cut_v1k": "llama8b_v1k"}.get(name, name)]
        for act, ckpt, seq in itertools.product((2, 4), (False, True), (0, 96)):
            add(
                "saved",
                {"spec": summary, "act": act, "checkpointing": ckpt, "seq_len": seq},
                memplan.saved_bytes_per_token(spec, act, ckpt, seq),
            )
        grid = itertools.product(
            (1, 3, 8), (128, 2048), ("float32", "bfloat16"), (False, True), ("cpu", "cuda"), (1, 4)
        )
        for batch, seq, dtype, ckpt, device, gpus in grid:
            opts = dict(
                batch_size=batch,
                seq_len=seq,
                weights_dtype=dtype,
                gradient_checkpointing=ckpt,
                device=device,
                num_gpus=gpus,
            )
            for t in (teacher, None):
                add(
                    "distill",
                    {"student": summary, "teacher": None if t is None else t.summary(), "opts": opts},
                    memplan.distill_memory(spec, t, **opts),
                )
            add(
                "correction",
                {"student": summary, "teacher": teacher.summary(), "opts": opts},
                memplan.teacher_correction_memory(spec, teacher, **opts),
            )
        for batch, seq, streamed, scans, device, padded, dtype in itertools.product(
            (1, 8),
            (128, 4096),
            (False, True),
            (False, True),
            ("cpu", "cuda"),
            (False, True),
            ("float32", "bfloat16"),
        ):
            opts = dict(
                batch_size=batch,
                seq_len=seq,
                streamed=streamed,
                loss_scans=scans,
                device=device,
                padded=padded,
                weights_dtype=dtype,
            )
            add("importance", {"spec": summary, "opts": opts}, memplan.importance_memory(spec, **opts))
        # Streamed with its activation stores: scan sets, samples, and budgets that spill part of them.
        for scans, samples, budgets, device in itertools.product(
            (["bi"], ["bi", "drop", "block", "angular"], ["block"]),
            (None, 64),
            # (device, host, disk); a disk budget caps the stores: several passes, or none fits
            ((None, 0, None), (0, 0, None), (5 << 20, 3 << 30, None), (1 << 30, 1 << 20, None))
            + ((0, 0, 1 << 30), (1 << 24, 1 << 26, 1 << 26), (0, 0, 1 << 20)),
            ("cpu", "cuda"),
        ):
            opts = dict(
                batch_size=2,
                seq_len=256,
                streamed=True,
                scans=scans,
                block_size=3,
                samples=samples,
                device_budget=budgets[0],
                host_budget=budgets[1],
                disk_budget=budgets[2],
                device=device,
            )
            add("importance", {"spec": summary, "opts": opts}, memplan.importance_memory(spec, **opts))
        for batch, seq, new, dtype, device, padded in itertools.product(
            (1, 8), (128, 2048), (0, 32), ("float32", "bfloat16"), ("cpu", "cuda"), (False, True)
        ):
            opts = dict(
                batch_size=batch,
                seq_len=seq,
                new_tokens=new,
                weights_dtype=dtype,
                device=device,
                padded=padded,
            )
            add("evaluation", {"spec": summary, "opts": opts}, memplan.evaluation_memory(spec, **opts))
        for mode, dtype, cut in itertools.product(
            ("in_memory", "out_of_core"), (None, "float32", "bfloat16"), (False, True)
        ):
            opts = dict(mode=mode, weights_dtype=dtype)
            student = spec if cut else None  # a cut student (pruned / moe_pruned of their teachers)
            add(
                "prune",
                {"teacher": teacher.summary(), "student": None if student is None else summary, "opts": opts},
                memplan.prune_memory(teacher, student, **opts),
            )
    for settings in (
        {"batch_size": 8},
        {"batch_size": 5, "gradient_checkpointing": True},
        {"batch_size": 2, "weights_dtype": "bfloat16"},
        {"batch_size": 1, "gradient_checkpointing": True, "weights_dtype": "bfloat16"},
    ):
        add("candidates", {"settings": settings}, memplan.distill_candidates(settings))
    for memory in (
        {"kind": "cuda", "total_bytes": 85_899_345_920, "free_bytes": 1},
        {"kind": "cpu", "total_bytes": 1 << 36, "free_bytes": 12_345_678_901},
    ):
        add("usable", {"memory": memory}, memplan.usable_bytes(memory))

    got = run_dashboard_js(tmp_path, DRIVER, stdin=json.dumps(cases))
    assert len(got) == len(expected) > 1000
    for case, js, py in zip(cases, got, expected, strict=True):
        assert js == py, (case["fn"], case["args"].get("opts"), js, py)
