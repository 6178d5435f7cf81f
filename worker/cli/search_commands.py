"""`prunescope search`: every architecture within budgets, ranked by held-out loss (issue 12).

    prunescope search TEACHER --importance RUN --budget params=60% [--budget latency=4ms@1,128]
                      [--budget memory=1.5GB@1,2048] [-o DIR] [--top N] [--json] [--all] ...

Prints the ranked table (or with --json the whole report: every candidate with its explicit `plan`,
`params`, `loss`, cost figures and axes; see worker/engine/search/runner.py), and with -o writes the
top N candidates as plan files (`prunescope prune TEACHER --plan DIR/rank01-....plan.json`) beside
the report (DIR/search.json).
"""

from __future__ import annotations

import json
from pathlib import Path

from worker.cli import CliError, check_output_dir, check_positions, say

# SearchSettings field -> the flag that sets it, so a validation error names the flag.
FLAGS = {
    "budgets": "--budget",
    "tolerance": "--tolerance",
    "mlp_step": "--mlp-step",
    "hidden_step": "--hidden-step",
    "max_width_cut": "--max-width-cut",
    "max_depth_cut": "--max-depth-cut",
    "max_cut": "--max-cut",
    "head_modes": "--head-modes",
    "layer_methods": "--layer-methods",
    "data": "--data",
    "split": "--split",
    "eval_samples": "--eval-samples",
    "eval_seq_len": "--eval-seq-len",
    "eval_batch_size": "--eval-batch-size",
    "latency_new_tokens": "--latency-new-tokens",
    "max_candidates": "--max-candidates",
    "lm_eval_task": "--lm-eval-task",
    "lm_eval_top": "--lm-eval-top",
    "lm_eval_limit": "--lm-eval-limit",
}


def _max_cut(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        axis, _, value = item.partition("=")
        try:
            out[axis.strip()] = float(value)
        except ValueError:
            raise CliError(f"--max-cut: {item!r} is not AXIS=FRACTION (e.g. depth=0.5)") from None
    return out


def settings_from_args(args):
    from pydantic import ValidationError

    from worker.engine.search import SearchSettings

    values = dict(
        budgets=args.budget or [],
        tolerance=args.tolerance,
        frontier_only=not args.all,
        mlp_step=args.mlp_step,
        hidden_step=args.hidden_step,
        max_width_cut=args.max_width_cut,
        max_depth_cut=args.max_depth_cut,
        max_cut=_max_cut(args.max_cut),
        head_modes=[m.strip() for m in args.head_modes.split(",") if m.strip()],
        layer_methods=[m.strip() for m in args.layer_methods.split(",") if m.strip()],
        data=args.data,
        split=args.split,
        eval_samples=args.eval_samples,
        eval_seq_len=args.eval_seq_len,
        eval_batch_size=args.eval_batch_size,
        seed=args.seed,
        latency_new_tokens=args.latency_new_tokens,
        max_candidates=args.max_candidates,
        dtype=args.dtype,
        lm_eval_task=args.lm_eval_task,
        lm_eval_top=args.lm_eval_top,
        lm_eval_limit=args.lm_eval_limit,
    )
    try:
        return SearchSettings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "settings"
        flag = FLAGS.get(field, f"--{field.replace('_', '-')}")
        message = first["msg"].removeprefix("Value error, ")
        if field == "budgets" and not values["budgets"]:
            message = "give at least one budget, e.g. --budget params=60%"
        raise CliError(f"{flag}: {message}") from None


def _check_latency_cache(path: str | None) -> None:
    """The cache reads an unreadable file as empty and writes its timings over it: fine for its own
    file, not for one a typo pointed at (the corpus, a plan)."""
    if path is None:
        return
    file = Path(path).expanduser()
    if file.is_dir():
        raise CliError(f"--latency-cache: {file} is a directory; give the cache file's path")
    if file.exists():
        try:
            ours = isinstance(json.loads(file.read_text()), dict)
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise CliError(
                f"--latency-cache: {file} is not a latency cache (a JSON object); it would be overwritten"
            )


def _check_lengths(settings, configs: dict) -> None:
    """The held-out windows and every timed budget's prompt + decoded tokens within the model's positions
    (past them GPT-2's position table failed with a traceback, a RoPE model scored positions it never saw)."""
    from worker.engine.search.budgets import parse_budget

    check_positions("--eval-seq-len", settings.eval_seq_len, configs)
    for text in settings.budgets:
        budget = parse_budget(text, settings.latency_batch, settings.latency_context)
        if budget.measured:  # timed on a prompt of its context, then latency_new_tokens decoded
            tokens = budget.context + settings.latency_new_tokens
            check_positions("--budget", tokens, configs, what=f"{budget.text}: its prompt + decoded ")
        elif budget.context is not None:  # memory: a KV cache of that context the model cannot hold
            check_positions("--budget", budget.context, configs, what=f"{budget.text}: its context of ")


def _check_feasible(settings, model, stored: str | None) -> None:
    """Parameter and memory budgets no architecture of the space meets, refused before the scoring
    (worker/engine/search/feasible.py, the API's check too); memory priced in `stored`, the checkpoint's
    dtype, as the search prices it (not in the dtype the model was loaded in to be scored)."""
    from worker.engine.adapters import arch_spec
    from worker.engine.search.feasible import nothing_fits_computed

    spec = arch_spec(model)
    refused = nothing_fits_computed(spec.model_copy(update={"dtype": stored}) if stored else spec, settings)
    if refused is not None:
        raise CliError(f"--budget: {refused[1]}")


def cmd_search(args) -> int:
    settings = settings_from_args(args)  # before any loading: bad flags fail fast
    if not Path(args.importance).is_dir():
        raise CliError(f"--importance: importance run not found: {args.importance}")
    out = Path(args.output) if args.output else None
    if out is not None:
        check_output_dir("-o", out)
        if out.is_dir() and any(out.iterdir()) and not (out / "search.json").is_file():
            raise CliError(f"-o: {out} is not empty and holds no search.json; choose another output")
    _check_latency_cache(args.latency_cache)

    from worker.cli.importance_commands import _check_device
    from worker.cli.prune_commands import _check_same_weights
    from worker.engine.importance import ImportanceResult
    from worker.engine.importance.provenance import weights_sha256
    from worker.engine.loading import load_model, stored_dtype
    from worker.engine.search import run_search

    device = _check_device(args.device)
    importance = ImportanceResult.load(args.importance)
    say(f"[load] {args.model}")
    model, tokenizer = load_model(args.model, dtype=settings.dtype, device=device)
    _check_same_weights(lambda dtype: weights_sha256(model, dtype), importance.manifest)
    if tokenizer is None:
        raise CliError(f"{args.model} has no tokenizer: the held-out text cannot be tokenised")
    _check_lengths(settings, {args.model: model.config})
    stored = stored_dtype(args.model)  # memory is priced as the students are saved, not as scored
    _check_feasible(settings, model, stored)

    def progress(done: int, total: int, message: str) -> None:
        say(f"[search] {message}")

    try:
        report = run_search(
            model,
            tokenizer,
            importance,
            settings,
            progress=progress,
            latency_cache=args.latency_cache,
            stored_dtype=stored,
        ).to_json()
    except ValueError as exc:  # the engine's "FIELD: ..." names a setting: say its flag
        field, sep, rest = str(exc).partition(": ")
        if sep and field in FLAGS:
            raise CliError(f"{FLAGS[field]}: {rest}") from None
        raise
    report["importance_run"] = str(args.importance)
    report["teacher_source"] = str(args.model)
    if out is not None:
        _write(out, report, args.top)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report, args.top if args.top else None)
    if not report["candidates"]:  # a script must not read an empty search as a result
        raise CliError(f"--budget: {report['stats'].get('note') or 'no architecture meets the budgets'}")
    return 0


def _write(out: Path, report: dict, top: int) -> None:
    """The plans and search.json in a temporary folder beside `out`, then renamed over it: a Ctrl-C
    leaves no half-written output, and a new search's plans never mix with an earlier one's."""
    import shutil
    import tempfile

    from worker.engine.atomic import replace_dir

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for c in report["candidates"][:top]:
            path = tmp / f"rank{c['rank']:02d}-{c['id']}.plan.json"
            path.write_text(json.dumps(c["plan"]) + "\n")  # one line: long index lists
        (tmp / "search.json").write_text(json.dumps(report, indent=2) + "\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"[search] wrote the top {min(top, len(report['candidates']))} plans and search.json to {out}")


def _print_table(report: dict, top: int | None) -> None:
    from worker.engine.memplan import format_bytes
    from worker.engine.search.noise import NOISE_SES

    stats, teacher = report["stats"], report["teacher"]
    print(
        f"teacher: {teacher['params']:,} parameters, held-out loss {teacher['loss']:.4f} "
        f"({stats['eval_tokens']:.0f} tokens)"
    )
    print(f"budgets: {', '.join(b['text'] for b in report['budgets'])}")
    print(
        f"{stats['enumerated']} architectures, {stats['within_budget']} within budget, "
        f"{stats['listed']} listed (frontier: {report['settings']['frontier_only']}); scored in "
        f"{stats['scoring_seconds']:.1f} s = {stats['candidates_per_minute'] or '-'} candidates/min; "
        f"{stats['shapes_timed']} shapes timed, {stats['latency_cache_hits']} latency cache hits"
    )
    if stats.get("note"):
        print(f"note: {stats['note']}")
    print(basis_line(report.get("basis") or {}))
    header = (
        f"{'rank':>4}  {'cut':<6} {'layers':>6} {'heads':>5} {'kv':>3} {'mlp':>6} {'hidden':>6} "
        f"{'params':>12} {'%':>6} {'GFLOP/tok':>9} {'memory':>10} {'ms/tok':>7} {'loss':>8} {'vs #1 ± SE':>17} "
        f"{'ppl':>9}  id"
    )
    print(header)
    for c in report["candidates"]:
        a = c["axes"]
        memory = format_bytes(c["memory_bytes"]) if c["memory_bytes"] is not None else "-"
        latency = f"{c['latency']['decode_s_per_token'] * 1e3:.2f}" if c["latency"] else "-"
        lm_eval = "  ".join(f"{r['task']}:{r['metric']}={r['value']:.3f}" for r in c.get("lm_eval") or [])
        marker = "*" if top and c["rank"] <= top else " "
        print(
            f"{c['rank']:>4}{marker} {c['cut']:<6} {a['num_layers']:>6} {a['heads_per_layer']:>5} "
            f"{a['num_kv_heads']:>3} {a['intermediate_size']:>6} {a['hidden_size']:>6} {c['params']:>12,} "
            f"{100 * c['params_fraction']:>5.1f}% {c['flops_per_token'] / 1e9:>9.4f} {memory:>10} {latency:>7} "
            f"{c['loss']:>8.4f} {_versus_best(c):>17} {c['perplexity']:>9.2f}  {c['id']}"
            + (f"  {lm_eval}" if lm_eval else "")
            + _over(c)
        )
    if len(report["candidates"]) > 1:
        print(
            f"vs #1 ± SE: loss minus rank 1's, ± its paired standard error over the held-out windows; "
            f"~ marks a candidate within {NOISE_SES:g} SE of #1 (the sample cannot order the two)"
        )


def basis_line(basis: dict) -> str:
    """What the figures are in: the dtypes of memory, loss and latency, the context of FLOPs/token."""
    return (
        f"figures: memory and KV cache in {basis.get('memory_dtype', '?')} (the teacher's stored dtype); "
        f"loss and latency in {basis.get('loss_dtype', '?')} (the dtype scored and timed in, --dtype); "
        f"FLOPs/token at {basis.get('flops_context', '?')} tokens of context"
    )


def _versus_best(c: dict) -> str:
    """ "+0.0123 ± 0.0045 ~" (within noise of #1) for a candidate below rank 1; "#1" for it."""
    if c["rank"] == 1:
        return "#1"
    se = c.get("loss_diff_se")
    if se is None:
        return f"{c['loss_diff_vs_best']:+.4f}"
    return f"{c['loss_diff_vs_best']:+.4f} ± {se:.4f}" + (" ~" if c.get("within_noise_of_best") else "  ")


def _over(candidate: dict) -> str:
    """The budgets a candidate is past the bare limit of (the tolerance let it in): '  (+0.9% over params=60%,
    within tolerance)', so a winner over the stated budget does not pass for one within it."""
    over = [
        f"+{100 * b['over_limit']:.1f}% over {text}"
        for text, b in candidate["budgets"].items()
        if b.get("over_limit")
    ]
    return f"  ({', '.join(over)}, within tolerance)" if over else ""


def register(subparsers) -> None:
    p = subparsers.add_parser("search", help="rank every architecture within budgets by held-out loss")
    p.add_argument("model", help="teacher: local model directory or hub id")
    p.add_argument("--importance", required=True, help="importance run directory of this teacher")
    p.add_argument(
        "--budget",
        action="append",
        help="KIND=VALUE[@BATCH,CONTEXT], repeatable: params=60%%, params=5M, params_non_embedding=50%%, "
        "memory=1.5GB@1,2048, "
        "latency=4ms@1,128 (decode s/token), prefill=20ms@1,512, throughput=2000@8,128 (tokens/s, a "
        "minimum); %% = of the teacher's figure",
    )
    p.add_argument(
        "--tolerance", type=float, default=0.02, help="a cost may exceed its limit by this fraction"
    )
    p.add_argument("--all", action="store_true", help="list every fitting candidate, not only the frontier")
    p.add_argument("-o", "--output", help="directory for the top plans and search.json")
    p.add_argument("--top", type=int, default=5, help="plans written with -o (default 5)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.add_argument("--mlp-step", type=int, default=64, help="MLP sizes are multiples of this (default 64)")
    p.add_argument(
        "--hidden-step", type=int, default=64, help="hidden sizes are multiples of this (default 64)"
    )
    p.add_argument("--max-width-cut", type=float, default=0.4, help="largest share of a width axis cut (0.4)")
    p.add_argument(
        "--max-depth-cut", type=float, default=0.2, help="largest share of the layers dropped (0.2)"
    )
    p.add_argument(
        "--max-cut", action="append", metavar="AXIS=FRACTION", help="per axis (heads, mlp, hidden, depth)"
    )
    p.add_argument("--head-modes", default="whole_groups,within_groups")
    p.add_argument("--layer-methods", default="block,drop,bi,angular")
    p.add_argument("--data", default="demo", help="held-out text source (default: the demo corpus)")
    p.add_argument("--split", default="validation", help="split scored (default validation)")
    p.add_argument("--eval-samples", type=int, default=16, help="held-out windows scored (default 16)")
    p.add_argument("--eval-seq-len", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-new-tokens", type=int, default=16, help="decode steps timed per shape")
    p.add_argument(
        "--latency-cache", default=None, help="latency cache file (default ~/.cache/prunescope/latency.json)"
    )
    p.add_argument("--max-candidates", type=int, default=2000)
    p.add_argument(
        "--lm-eval-task",
        default=None,
        help="also score the top candidates on this lm-eval task (e.g. prunescope_cloze)",
    )
    p.add_argument(
        "--lm-eval-top", type=int, default=5, help="candidates scored with --lm-eval-task (default 5)"
    )
    p.add_argument("--lm-eval-limit", type=int, default=100, help="samples of the lm-eval task (default 100)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="dtype the teacher is scored and shapes are timed in (default float32); memory is priced in "
        "the teacher's stored dtype whatever this is",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (latency is measured there)")
    p.set_defaults(handler=cmd_search)
