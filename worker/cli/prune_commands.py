"""`prunescope summary`, `prunescope plan-stats` and `prunescope prune`.

    prunescope summary MODEL [--json]
    prunescope plan-stats MODEL --plan plan.json [--importance RUN_DIR] [--json]
    prunescope prune MODEL --plan plan.json [--importance RUN_DIR] -o OUT [--dtype D] [--overwrite]
                     [--out-of-core | --in-memory] [--shard-size GB]

A plan file holds one `PrunePlan` (see worker/engine/plan/schema.py), for example
    {"drop_layers": [3], "remove_heads": {"0": [1, 5]}, "targets": {"intermediate_size": 2048}}
Targets are filled from the importance run given with --importance (its default aggregation:
L2 over the batch, mean over the sequence, unless --batch-agg/--seq-agg say otherwise).
`prune` cuts out of core (tensor by tensor from the checkpoint, never loading the teacher) with
--out-of-core, or by itself when the teacher is bigger than the threshold; it says which and why.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from worker.cli import CliError, check_output_dir, say


def _read_plan(path: str):
    from pydantic import ValidationError

    from worker.engine.plan import PrunePlan

    file = Path(path)
    if not file.is_file():
        raise CliError(f"plan file not found: {path}")
    try:
        return PrunePlan.model_validate_json(file.read_bytes())  # bytes: pydantic names bad UTF-8 too
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "plan"
        raise CliError(f"bad plan {path}: {where}: {first['msg']} ({exc.error_count()} problem(s))") from None


def _load(args):
    from worker.engine.loading import load_model

    say(f"[load] {args.model}")
    return load_model(
        args.model,
        dtype=getattr(args, "dtype", None),
        trust_remote_code=getattr(args, "trust_remote_code", False),
    )


def _resolve_plan(args, spec, plan):
    """(the explicit plan, the importance run's manifest or None): targets filled from the importance
    run, then validated (errors raise). Reads no weight: a bad plan is refused before a big teacher is
    hashed or loaded (`_check_same_weights` compares the run's weights once they are read)."""
    from worker.engine.plan import PlanError, check_plan, fill_plan, fill_warnings

    importance_manifest = None
    targets = plan.targets
    if plan.needs_filling():
        if not args.importance:
            raise CliError("the plan has targets: give the importance run to rank by with --importance")
        from worker.engine.importance import ImportanceResult

        if not Path(args.importance).is_dir():
            raise CliError(f"importance run not found: {args.importance}")
        result = ImportanceResult.load(args.importance)
        importance_manifest = result.manifest
        scores = result.scores(batch=args.batch_agg, seq=args.seq_agg)
        try:
            plan = fill_plan(plan, spec, scores)
        except PlanError as exc:
            raise CliError(f"bad plan: {exc}") from None
    try:
        warnings = check_plan(plan, spec)
    except PlanError as exc:
        raise CliError(f"bad plan: {exc}") from None
    if importance_manifest is not None:  # filled here: degenerate or slow widths the targets gave
        warnings += fill_warnings(plan, spec, targets)
    for w in warnings:
        say(f"warning: {w.field}: {w.text}")
    return plan, importance_manifest


def _check_same_weights(weights_hash: Callable[[str | None], str], manifest: dict | None) -> None:
    """Scores measured on other weights rank the wrong units: warn (the user may know better). The
    weights are compared in the dtype the importance run loaded them in: `search` scores in float32
    the bfloat16 checkpoint `importance` read as it is, and those are the same weights. `weights_hash(dtype)`
    is the model's weights SHA-256 as loaded in `dtype` (None: as loaded here). No run: nothing to do."""
    expected = (manifest or {}).get("weights_sha256")
    if expected and weights_hash(manifest.get("dtype")) != expected:
        say("warning: the importance run was measured on different weights than this model")


def _hash_in(own_hash: str, own_dtype: str, rehash: Callable[[str], str]) -> Callable[[str | None], str]:
    """`weights_hash` for `_check_same_weights` from the hash already taken in the model's own dtype."""
    return lambda dtype: own_hash if dtype in (None, own_dtype) else rehash(dtype)


def _print_json_or_table(data: dict, as_json: bool, keys: list[str]) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
        return
    width = max(len(k) for k in keys)
    for k in keys:
        value = data[k]
        if isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        print(f"{k:<{width}}  {value}")


SUMMARY_KEYS = [
    "family",
    "model_type",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "hidden_size",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
    "dtype",
    "uniform",
    "params_total",
    "params_non_embedding",
    "flops_per_token",
    "flops_context",  # the tokens of context FLOPs/token are counted at
    "kv_cache_bytes_per_token",
]


def cmd_summary(args) -> int:
    from worker.engine.adapters import arch_spec

    model, _tok = _load(args)
    summary = arch_spec(model).summary()
    moe = ["num_experts", "experts_per_token", "params_active"] if summary["num_experts"] else []
    _print_json_or_table(summary, args.json, SUMMARY_KEYS + moe)
    if not args.json and not summary["uniform"]:
        for i, layer in enumerate(summary["layers"]):
            print(f"layer {i}: {layer}")
    return 0


STATS_KEYS = [
    "params_total",
    "params_non_embedding",
    "percent_of_teacher_total",
    "percent_of_teacher_non_embedding",
    "flops_per_token",
    "flops_context",  # the tokens of context FLOPs/token are counted at
    "kv_cache_bytes_per_token",
    "uniform",
    "vanilla_loadable",
]


def cmd_plan_stats(args) -> int:
    from worker.engine.adapters import arch_spec
    from worker.engine.importance.provenance import weights_sha256
    from worker.engine.plan import plan_stats

    plan = _read_plan(args.plan)
    model, _tok = _load(args)
    spec = arch_spec(model)
    plan, importance_manifest = _resolve_plan(args, spec, plan)
    _check_same_weights(lambda dtype: weights_sha256(model, dtype), importance_manifest)
    stats = plan_stats(plan, spec)
    if args.json:
        print(json.dumps({"plan": plan.model_dump(mode="json"), **stats}, indent=2))
    else:
        moe = ["params_active", "percent_of_teacher_active"] if spec.num_experts else []
        _print_json_or_table(stats, False, STATS_KEYS + moe)
    return 0


def cmd_prune(args) -> int:
    from backend.settings import Settings
    from worker.engine.out_of_core import resolve_mode

    out = Path(args.output)
    check_output_dir("-o", out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise CliError(f"output {out} exists and is not empty (use --overwrite to replace it)")
    original_plan = _read_plan(args.plan)
    mode = "always" if args.out_of_core else "never" if args.in_memory else "auto"
    try:
        checkpoint, why = resolve_mode(
            args.model, mode, Settings().out_of_core_threshold_gb, dtype=args.dtype
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    say(f"[surgery] {why}")
    if checkpoint is not None:
        return _prune_out_of_core(args, checkpoint, original_plan, out, why)
    return _prune_in_memory(args, original_plan, out, why)


def _prune_in_memory(args, original_plan, out: Path, why: str) -> int:
    from tqdm import tqdm

    from worker.engine.adapters import arch_spec, count_parameters
    from worker.engine.dtypes import model_dtype_name
    from worker.engine.importance.provenance import weights_sha256
    from worker.engine.loading import save_model
    from worker.engine.plan import kept_layers
    from worker.engine.surgery import apply_plan

    # The plan is checked on the config's shapes first: a typo is said before the teacher is loaded.
    plan, importance_manifest = _resolve_plan(args, _config_spec(args), original_plan)
    model, tokenizer = _load(args)
    spec = arch_spec(model)
    teacher = _teacher_record(args, spec, weights_sha256(model))  # hashed once: the surgery changes it
    own = model_dtype_name(model)
    _check_same_weights(
        _hash_in(teacher["weights_sha256"], own, lambda dtype: weights_sha256(model, dtype)),
        importance_manifest,
    )
    stats = _stats(spec, plan)
    steps = len(kept_layers(plan, spec)) + bool(plan.remove_hidden) + bool(plan.drop_layers)
    with tqdm(total=steps, desc="prune", unit="step", file=sys.stderr) as bar:
        apply_plan(model, plan, progress=lambda msg: (bar.set_postfix_str(msg), bar.update(1)))
    if count_parameters(model) != stats["params_total"]:  # the cost model and the cut must agree
        raise RuntimeError("pruned parameter count differs from the plan's prediction")
    manifest = _manifest(args, teacher, original_plan, plan, importance_manifest, stats, why)
    say(f"[save] {out}")
    path = save_model(model, tokenizer, out, manifest, overwrite=args.overwrite)
    _print_json_or_table({"output": str(path), **stats}, False, ["output", *STATS_KEYS])
    return 0


def _prune_out_of_core(args, checkpoint, original_plan, out: Path, why: str) -> int:
    """The same student, cut tensor by tensor from the checkpoint (worker/engine/out_of_core.py)."""
    from tqdm import tqdm

    from worker.engine.dtypes import dtype_name
    from worker.engine.out_of_core import checkpoint_weights_sha256, prune_checkpoint

    spec = checkpoint.spec
    plan, importance_manifest = _resolve_plan(args, spec, original_plan)  # before any weight is read
    say("[hash] teacher weights, tensor by tensor")
    teacher = _teacher_record(args, spec, checkpoint_weights_sha256(checkpoint))
    own = dtype_name(checkpoint.dtype)
    _check_same_weights(
        _hash_in(teacher["weights_sha256"], own, lambda dtype: checkpoint_weights_sha256(checkpoint, dtype)),
        importance_manifest,
    )
    stats = _stats(spec, plan)
    manifest = _manifest(args, teacher, original_plan, plan, importance_manifest, stats, why)
    say(f"[save] {out}")
    with tqdm(desc="prune", unit="tensor", file=sys.stderr) as bar:

        def progress(done: int, total: int, name: str) -> None:
            bar.total = total
            bar.set_postfix_str(name)
            bar.update(1)

        pruned = prune_checkpoint(
            args.model,
            plan,
            out,
            manifest,
            checkpoint=checkpoint,
            max_shard_bytes=int(args.shard_size * 1e9),
            overwrite=args.overwrite,
            progress=progress,
        )
    if pruned.spec.param_count()["total"] != stats["params_total"]:  # the cost model and the cut agree
        raise RuntimeError("pruned parameter count differs from the plan's prediction")
    _print_json_or_table({"output": str(pruned.path), **stats}, False, ["output", *STATS_KEYS])
    return 0


def _teacher_record(args, spec, weights_hash: str) -> dict:
    return {
        "source": str(args.model),
        "weights_sha256": weights_hash,
        "params_total": spec.param_count()["total"],
    }


def _config_spec(args):
    """The teacher's shapes from its config alone, in the dtype it will be loaded in."""
    from worker.engine.loading import config_spec

    return config_spec(
        args.model, dtype=args.dtype, trust_remote_code=getattr(args, "trust_remote_code", False)
    )


def _stats(spec, plan) -> dict:
    from worker.engine.plan import plan_stats

    stats = plan_stats(plan, spec)
    say(f"[prune] {spec.param_count()['total']:,} -> {stats['params_total']:,} parameters")
    return stats


def _manifest(args, teacher, original_plan, plan, importance_manifest, stats, why: str) -> dict:
    return {
        "kind": "pruned-student",
        "teacher": teacher,
        "plan_requested": original_plan.model_dump(mode="json"),
        "plan": plan.model_dump(mode="json"),
        "importance": {"run": str(args.importance), "manifest": importance_manifest}
        if importance_manifest
        else None,
        "aggregation": {"batch": args.batch_agg, "seq": args.seq_agg} if importance_manifest else None,
        "stats": {k: stats[k] for k in STATS_KEYS},
        "surgery": why,
    }


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", required=True, help="plan JSON file (a PrunePlan)")
    parser.add_argument("--importance", help="importance run directory, to fill the plan's targets")
    from worker.engine.importance.stats import BATCH_REDUCTIONS, SEQ_REDUCTIONS

    parser.add_argument("--batch-agg", default="l2", choices=BATCH_REDUCTIONS)
    parser.add_argument("--seq-agg", default="mean", choices=SEQ_REDUCTIONS)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="local model directory or hub id")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code")


def register(subparsers) -> None:
    p = subparsers.add_parser("summary", help="architecture summary of a model")
    _model_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_summary)

    p = subparsers.add_parser("plan-stats", help="cost of a prune plan, without cutting")
    _model_arguments(p)
    _plan_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_plan_stats)

    p = subparsers.add_parser("prune", help="cut a model to a plan and save the student")
    _model_arguments(p)
    _plan_arguments(p)
    p.add_argument("-o", "--output", required=True, help="output directory (written atomically)")
    p.add_argument("--dtype", help="load dtype, e.g. float32 or bfloat16 (default: the checkpoint's)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--out-of-core",
        action="store_true",
        help="cut tensor by tensor from the safetensors checkpoint (peak memory about one tensor); "
        "default: when the teacher is bigger than PRUNESCOPE_OUT_OF_CORE_THRESHOLD_GB (else half the available RAM)",
    )
    mode.add_argument("--in-memory", action="store_true", help="load the whole teacher and cut it in memory")
    p.add_argument(
        "--shard-size",
        type=_positive_float,
        default=2.0,
        help="out-of-core output shard size in GB (default 2)",
    )
    p.set_defaults(handler=cmd_prune)


MAX_SHARD_GB = 1e9  # an exabyte: bigger is a typo (and inf or 1e300 overflow the byte count)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 1e-9 <= value <= MAX_SHARD_GB:  # NaN too; below 1e-9 GB a shard would be under one byte
        raise argparse.ArgumentTypeError(
            f"must be a number of GB from 1e-9 to {MAX_SHARD_GB:g}, got {text!r}"
        )
    return value
