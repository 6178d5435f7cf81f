"""The Minitron depth-vs-width study in miniature, on the demo teacher.

From the teacher this builds, with real importance scores and real surgery:
  depth   - a contiguous block of layers removed (block-loss ranking), ~50% of non-embedding params;
  width   - MLP neurons and hidden channels cut (all heads and layers kept) to about the same size;
  width-ce    - the same width cut, trained with cross-entropy only (no teacher): what KD buys;
  width-random - a width cut of the same shape chosen by *random* importance, then distilled:
                 what importance buys.
Every student is distilled (or CE-trained) on the same token budget, then reported side by side:
perplexity on the test split before and after, the offline lm-eval tasks, and prefill / decode
speedup over the teacher measured in the same run.

    python examples/depth_vs_width_study.py [--budget-steps 200] [--batch-size 8] [--seq-len 256]
        [--teacher DIR] [--device cpu] [--out study.json]

Small settings (e.g. --budget-steps 10 --ppl-docs 10 --lm-eval-limit 20) run in minutes on a laptop CPU;
the numbers then only show that the pipeline works, not who wins.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np
import torch


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_teacher(args):
    from worker.engine.loading import load_model

    source = args.teacher
    if source is None:
        from worker.demo import demo_teacher_path

        source = str(demo_teacher_path())
    teacher, tokenizer = load_model(source, device=args.device)
    return source, teacher.float(), tokenizer


def width_targets(spec, depth_non_embedding: int, hidden_fraction: float):
    """(hidden, intermediate) with hidden ~ hidden_fraction x D whose non-embedding size is closest to
    the depth student's (Minitron's 4B-width kept 75% of hidden and ~64% of the MLP)."""
    from worker.engine.plan import PlanTargets, PrunePlan, plan_stats

    step = max(1, spec.head_dim // 2)
    hidden = max(step, int(round(spec.hidden_size * hidden_fraction / step)) * step)
    best = None
    for inter in range(step, spec.intermediate_size + 1, step):
        plan = PrunePlan(targets=PlanTargets(hidden_size=hidden, intermediate_size=inter))
        gap = abs(plan_stats(plan, spec)["params_non_embedding"] - depth_non_embedding)
        if best is None or gap < best[0]:
            best = (gap, inter)
    return hidden, best[1]


def random_scores(scores, seed: int):
    from worker.engine.plan import ImportanceScores

    rng = np.random.default_rng(seed)
    return ImportanceScores(
        heads=rng.random(scores.heads.shape),
        neurons=rng.random(scores.neurons.shape),
        hidden=rng.random(scores.hidden.shape),
        layers={k: rng.random(v.shape) for k, v in scores.layers.items()},
    )


def build_students(teacher, tokenizer, args):
    from worker.engine.adapters import arch_spec
    from worker.engine.data import calibration_batches, read_documents
    from worker.engine.importance import compute_importance
    from worker.engine.plan import PlanTargets, PrunePlan, fill_plan, plan_stats
    from worker.engine.surgery import apply_plan

    spec = arch_spec(teacher)
    say(f"[importance] {args.calibration_samples} calibration samples of {args.seq_len} tokens")
    batches = calibration_batches(
        tokenizer,
        read_documents("demo", "calibration"),
        seq_len=args.seq_len,
        num_samples=args.calibration_samples,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    block = spec.num_layers // 2
    result = compute_importance(teacher, batches, scans=("bi", "drop", "block"), block_size=block)
    scores = result.scores(batch="l2", seq="mean")

    depth_plan = fill_plan(
        PrunePlan(targets=PlanTargets(num_layers=spec.num_layers - block, layer_method="block")), spec, scores
    )
    depth_size = plan_stats(depth_plan, spec)["params_non_embedding"]
    hidden, inter = width_targets(spec, depth_size, args.hidden_fraction)
    width_request = PrunePlan(targets=PlanTargets(hidden_size=hidden, intermediate_size=inter))
    plans = {
        "depth": depth_plan,
        "width": fill_plan(width_request, spec, scores),
        "width-ce": None,  # same cut as width
        "width-random": fill_plan(width_request, spec, random_scores(scores, args.seed)),
    }
    plans["width-ce"] = plans["width"]
    students = {}
    for name, plan in plans.items():
        stats = plan_stats(plan, spec)
        say(
            f"[prune] {name}: layers {stats['spec']['num_layers']}, hidden {stats['spec']['hidden_size']}, "
            f"mlp {stats['spec']['intermediate_size']}, {stats['percent_of_teacher_non_embedding']}% non-emb"
        )
        students[name] = (apply_plan(copy.deepcopy(teacher), plan), plan, stats)
    return students, spec


def evaluate(model, teacher, tokenizer, test_docs, args) -> dict:
    from worker.engine.evaluation import LOCAL_TASKS, perplexity, run_lm_eval

    ppl = perplexity(model, test_docs, tokenizer, context=args.seq_len, batch_size=args.batch_size)[
        "perplexity"
    ]
    scores = run_lm_eval(
        model,
        tokenizer,
        LOCAL_TASKS,
        documents=test_docs,
        limit=args.lm_eval_limit,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    by = {(r["task"], r["metric"]): r["value"] for r in scores}
    return {
        "ppl": ppl,
        "cloze_acc": by.get(("prunescope_cloze", "acc")),
        "cloze_acc_norm": by.get(("prunescope_cloze", "acc_norm")),
        "rolling_bpb": by.get(("prunescope_rolling", "bits_per_byte")),
        "lm_eval": scores,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None, help="teacher directory (default: the demo teacher)")
    parser.add_argument(
        "--budget-steps", type=int, default=200, help="optimizer steps per student (same for all)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--hidden-fraction", type=float, default=0.75)
    parser.add_argument("--ppl-docs", type=int, default=40, help="test documents for perplexity and lm-eval")
    parser.add_argument("--ppl-chars", type=int, default=6000, help="characters kept per test document")
    parser.add_argument("--lm-eval-limit", type=int, default=100, help="samples per lm-eval task")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="write all numbers as JSON (with a manifest) here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from worker.engine.data import PackedTokens, read_documents
    from worker.engine.distill import DistillConfig, distill
    from worker.engine.evaluation import make_manifest, throughput, write_result

    began = time.time()
    source, teacher, tokenizer = load_teacher(args)
    # Held-out text: the test split's documents, each cut to --ppl-chars (whole stdlib files are long).
    test_docs = [doc[: args.ppl_chars] for doc in read_documents("demo", "test")[: args.ppl_docs]]
    say("[data] packing train / validation splits")
    train = PackedTokens(tokenizer, read_documents("demo", "train"), args.seq_len)
    val = PackedTokens(tokenizer, read_documents("demo", "validation"), args.seq_len)
    students, spec = build_students(teacher, tokenizer, args)
    rows = {
        "teacher": {
            **evaluate(teacher, teacher, tokenizer, test_docs, args),
            "params_non_embedding": spec.param_count()["non_embedding"],
            "percent_non_embedding": 100.0,
        }
    }
    for name, (student, plan, stats) in students.items():
        say(f"[{name}] evaluating before training")
        before = evaluate(student, teacher, tokenizer, test_docs, args)
        mode = "ce" if name == "width-ce" else "kd"
        config = DistillConfig(
            mode=mode,
            steps=args.budget_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            min_lr=args.lr / 10,
            warmup_steps=max(1, args.budget_steps // 20),
            val_every=max(1, args.budget_steps // 4),
            val_batches=4,
            seed=args.seed,
        )

        def log(m, name=name):
            if m.get("phase") == "validation":
                say(f"[{name}] step {m['step']} val_loss {m['val_loss']:.3f} val_kl {m['val_kl'] or 0:.3f}")

        say(f"[{name}] {'CE-only training' if mode == 'ce' else 'distilling'} for {args.budget_steps} steps")
        result = distill(student, teacher, train, val, config, callback=log)
        after = evaluate(student, teacher, tokenizer, test_docs, args)
        speed = throughput(teacher, student, batch_sizes=(1, 8), prompt_len=128, new_tokens=32, repeats=3)
        rows[name] = {
            "params_non_embedding": stats["params_non_embedding"],
            "percent_non_embedding": stats["percent_of_teacher_non_embedding"],
            "shape": {
                k: stats["spec"][k] for k in ("num_layers", "hidden_size", "intermediate_size", "num_heads")
            },
            "plan": plan.model_dump(mode="json"),
            "ppl_before": before["ppl"],
            "ppl": after["ppl"],
            "cloze_acc_before": before["cloze_acc"],
            "cloze_acc": after["cloze_acc"],
            "cloze_acc_norm": after["cloze_acc_norm"],
            "rolling_bpb": after["rolling_bpb"],
            "lm_eval": after["lm_eval"],
            "final_validation": result.final_validation,
            "tokens": result.history[-1]["tokens"],
            "speedup": speed["speedup"],
        }

    header = (
        f"{'model':<13}{'non-emb %':>10}{'ppl before':>12}{'ppl after':>11}{'cloze acc':>10}{'bpb':>7}"
        f"{'prefill x1':>11}{'decode x1':>10}{'prefill x8':>11}{'decode x8':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        sp = r.get("speedup")

        def fmt(v, f):
            return format(v, f) if isinstance(v, (int, float)) else format("-", f[0] + f[1:].split(".")[0])

        print(
            f"{name:<13}{fmt(r['percent_non_embedding'], '>10.1f')}{fmt(r.get('ppl_before'), '>12.1f')}"
            f"{fmt(r['ppl'], '>11.2f')}{fmt(r['cloze_acc'], '>10.3f')}{fmt(r['rolling_bpb'], '>7.3f')}"
            f"{fmt(sp[0]['prefill'] if sp else None, '>11.2f')}{fmt(sp[0]['decode'] if sp else None, '>10.2f')}"
            f"{fmt(sp[1]['prefill'] if sp else None, '>11.2f')}{fmt(sp[1]['decode'] if sp else None, '>10.2f')}"
        )
    tokens = rows["width"]["tokens"]
    print(
        f"token budget per student: {tokens:,} tokens ({args.budget_steps} steps); device {args.device}; "
        f"{time.time() - began:.0f} s"
    )
    if args.out:
        manifest = make_manifest(
            models={"teacher": teacher},
            data={"source": "demo"},
            seed=args.seed,
            teacher_source=source,
            settings=vars(args),
        )
        write_result(args.out, "depth_vs_width_study", rows, manifest)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
