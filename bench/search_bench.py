"""Architecture search speed on the demo teacher: candidates scored per minute, side by side with
scoring each candidate naively (cut it, run it in full), on the same held-out batches.

Prints:
1. the search: architectures enumerated / within the budget / scored, seconds, candidates per minute,
   decoder-layer forwards made against the naive count (one full pass of every candidate);
2. naive scoring of a random sample of the same candidates (surgery + a plain forward each):
   candidates per minute, the speed-up ratio, and the largest |loss difference| (must be ~1e-6);
3. the top of the ranking.

Usage:
    python bench/search_bench.py                           # demo teacher, params=50%, every fitting candidate
    python bench/search_bench.py --frontier --budget params=60% --budget latency=80%@1,128
    python bench/search_bench.py --importance RUN_DIR      # reuse an importance run of the teacher
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(REPO / "worker/demo/teacher"))
    p.add_argument("--importance", default=None, help="importance run (default: computed here, 32 x 128)")
    p.add_argument("--budget", action="append", default=None, help="default params=50%%")
    p.add_argument("--max-cut", type=float, default=0.5, help="width and depth cut limit (default 0.5)")
    p.add_argument("--frontier", action="store_true", help="score only the frontier (default: all fitting)")
    p.add_argument("--eval-samples", type=int, default=16)
    p.add_argument("--eval-seq-len", type=int, default=128)
    p.add_argument("--naive", type=int, default=20, help="candidates scored naively for the ratio")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the search report here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import torch

    from worker.engine.data import calibration_batches, read_documents
    from worker.engine.importance import ImportanceResult, compute_importance
    from worker.engine.loading import load_model
    from worker.engine.plan import PrunePlan
    from worker.engine.search import SearchSettings, run_search
    from worker.engine.search.runner import heldout_batches
    from worker.engine.search.scoring import plan_loss

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.teacher, dtype="float32")
    if args.importance:
        importance = ImportanceResult.load(args.importance)
    else:
        t0 = time.perf_counter()
        batches = calibration_batches(
            tokenizer,
            read_documents("demo", "calibration"),
            seq_len=128,
            num_samples=32,
            batch_size=8,
            seed=0,
        )
        importance = compute_importance(
            model, batches, scans=("bi", "drop", "block", "angular"), block_size=2
        )
        print(f"importance run (32 x 128 tokens, bi/drop/block/angular): {time.perf_counter() - t0:.1f} s")
    settings = SearchSettings(
        budgets=args.budget or ["params=50%"],
        max_width_cut=args.max_cut,
        max_depth_cut=args.max_cut,
        frontier_only=args.frontier,
        eval_samples=args.eval_samples,
        eval_seq_len=args.eval_seq_len,
    )
    batches = heldout_batches(tokenizer, settings)
    with tempfile.TemporaryDirectory() as cache_dir:
        report = run_search(
            model,
            tokenizer,
            importance,
            settings,
            batches=batches,
            latency_cache=Path(cache_dir) / "latency.json",
        ).to_json()
    s = report["stats"]
    print(f"device: cpu, torch threads: {torch.get_num_threads()}, held-out tokens: {s['eval_tokens']:.0f}")
    print(
        f"search: {s['enumerated']} architectures, {s['within_budget']} within {settings.budgets}, "
        f"{s['evaluated']} scored in {s['scoring_seconds']:.1f} s (total {s['seconds']:.1f} s)"
    )
    # The raw rate (the report's candidates_per_minute is None for a search quicker than rate.MIN_SECONDS).
    search_rate = 60.0 * s["evaluated"] / s["scoring_seconds"] if s["scoring_seconds"] else float("nan")
    print(f"search: {search_rate:.1f} candidates/min")
    print(
        f"decoder-layer forwards: {s['layer_forwards']} with shared cuts and prefixes, "
        f"{s['naive_layer_forwards']} naive ({s['naive_layer_forwards'] / max(s['layer_forwards'], 1):.2f}x)"
    )
    sample = random.Random(0).sample(report["candidates"], min(args.naive, len(report["candidates"])))
    t0 = time.perf_counter()
    diffs = [abs(plan_loss(model, PrunePlan.model_validate(c["plan"]), batches) - c["loss"]) for c in sample]
    naive_seconds = time.perf_counter() - t0
    naive_rate = 60.0 * len(sample) / naive_seconds if naive_seconds else float("nan")
    print(
        f"naive: {len(sample)} candidates cut and run in full in {naive_seconds:.1f} s = {naive_rate:.1f} candidates/min"
    )
    print(f"speed-up (search / naive candidates per minute): {search_rate / naive_rate:.2f}x")
    print(f"largest |search loss - cut model loss| over the sample: {max(diffs):.2e}")
    print(f"teacher held-out loss: {report['teacher']['loss']:.4f}")
    print("rank  cut     params%   loss    id")
    for c in report["candidates"][:15]:
        print(
            f"{c['rank']:>4}  {c['cut']:<6} {100 * c['params_fraction']:>6.1f}%  {c['loss']:.4f}  {c['id']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
