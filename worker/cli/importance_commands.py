"""`prunescope importance MODEL --data SOURCE -o RUN_DIR`: one calibration pass -> an importance artifact.

Defaults fit a CPU and the offline demo (the shipped teacher and corpus); the papers use 1024 samples
of 4096+ tokens on GPUs (`--samples 1024 --seq-len 4096 --device cuda --dtype bfloat16`). A model
larger than the device's free memory is streamed one decoder layer at a time from its safetensors
checkpoint (`--offload`, worker/engine/importance/offload.py); the scores are the same either way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from worker.cli.data_options import add_data_options, data_source, open_stream

SCAN_HELP = (
    "bi = Block Importance, drop = single-layer drop loss, block = loss of each block of k layers, "
    "angular = angular distance across each block of k layers (Gromov et al., same pass, opt-in)"
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "importance",
        help="estimate head / neuron / hidden-channel / layer importance on calibration data",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "model", nargs="?", default=None, help="model directory or hub id (default: the demo teacher)"
    )
    parser.add_argument(
        "--model-name",
        default=None,
        help="what the manifest records as the model (default: the model argument); a job's ranks pass "
        "the teacher's stored source (e.g. demo), as its one-process run records it",
    )
    parser.add_argument(
        "--data", default="demo", help="calibration source: demo, a .txt/.jsonl/.parquet file or dir, hf:<id>"
    )
    add_data_options(parser)  # --stream: calibration samples are the first blocks of the calibration split
    parser.add_argument(
        "--samples", type=int, default=64, help="calibration samples (default 64; paper 1024)"
    )
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sample (default 256)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--block-size",
        type=int,
        default=2,
        help="k of the contiguous-block scans, block and angular (default 2)",
    )
    parser.add_argument(
        "--scans",
        default="bi,drop,block",
        help=f"comma-separated layer scans ({SCAN_HELP}); none: width scores only",
    )
    parser.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype"
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    parser.add_argument(
        "--offload",
        default="auto",
        choices=["auto", "never", "always"],  # worker.engine.importance.offload.OFFLOAD_CHOICES
        help="stream the model one decoder layer at a time from its safetensors checkpoint: auto (when "
        "the in-memory pass, by the memory planner's estimate at these settings, exceeds the device's "
        "usable memory; default), always, never",
    )
    parser.add_argument(
        "--spill-dir",
        type=Path,
        default=None,
        help="streamed: where activations that fit neither the device nor RAM are memory-mapped "
        "(default: PRUNESCOPE_SPILL_DIR, else the system temporary directory)",
    )
    parser.add_argument(
        "--spill-limit-gb",
        type=float,
        default=None,
        help="streamed: at most this many GB of activations on the spill disk; scans that need more run in "
        "several passes over the checkpoint (default: PRUNESCOPE_SPILL_LIMIT_GB, else the spill "
        "directory's free space less 2 GiB)",
    )
    parser.add_argument("-o", "--out", required=True, type=Path, help="run directory for the artifact")
    # For a worker supervising the ranks (worker/importance_ranks.py): stop when the file appears (each
    # rank exits 3 at its next batch), and rank 0's progress as JSON lines.
    parser.add_argument("--stop-file", type=Path, default=None, help="stop when this file appears (exit 3)")
    parser.add_argument(
        "--metrics-jsonl", type=Path, default=None, help="append rank 0's progress records to this file"
    )
    parser.set_defaults(handler=_importance)


def _check_options(args) -> tuple[str, ...]:
    from worker.cli import CliError

    for flag in ("samples", "batch_size", "block_size"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.seed < 0:  # numpy's generator refuses it later with a message naming no flag
        raise CliError(f"--seed must be 0 or more, got {args.seed}")
    if args.seq_len < 2:
        raise CliError(f"--seq-len must be at least 2, got {args.seq_len}")
    # NaN too; inf or 1e300 would overflow the byte count (an exabyte is far beyond any disk)
    if args.spill_limit_gb is not None and not 0 < args.spill_limit_gb <= 1e9:
        raise CliError(f"--spill-limit-gb must be a positive number of GB, got {args.spill_limit_gb}")
    from worker.engine.importance.result import SCANS

    scans = tuple(s.strip() for s in args.scans.split(",") if s.strip())
    bad = [s for s in scans if s not in SCANS]
    if scans == ("none",):  # width scores only (heads, neurons, hidden), as a job with scans: []
        scans = ()
    elif bad or not scans:
        raise CliError(
            f"--scans: unknown scan {bad[0] if bad else '(none)'!r}; choose from {', '.join(SCANS)} "
            "(none: width scores only)"
        )
    from worker.cli import check_append_file, check_output_dir
    from worker.engine.importance.artifact import is_artifact

    check_append_file("--metrics-jsonl", args.metrics_jsonl)
    out = args.out
    check_output_dir("-o", out)
    if args.spill_dir is not None:  # used only when activations outgrow RAM: maybe hours into the run
        check_output_dir("--spill-dir", args.spill_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_artifact(out))):
        raise CliError(f"-o: {out} exists and is not an importance run directory; choose another output")
    return scans


def _check_device(device: str) -> str:
    from worker.cli import CliError
    from worker.devices import DeviceUnavailable, check_device

    try:
        return check_device(device)
    except DeviceUnavailable as exc:
        raise CliError(f"--device: {exc}") from None


def _importance(args: argparse.Namespace) -> int:
    """The command: every check that needs no model first, then the model, the batches and the pass."""
    scans = _check_options(args)
    source, streamed = data_source(args)
    device = _check_device(args.device)
    if args.model is None:
        from worker.demo import demo_teacher_path

        args.model = str(demo_teacher_path())
    documents = _read_calibration_source(args, source, streamed)

    from worker.engine.distributed import DistributedContext

    # Under torchrun / srun: data-parallel, each rank scores its share of the batches (one process else).
    ctx = DistributedContext.from_environment(device)
    if ctx.distributed and ctx.device.type == "cuda":
        device = str(ctx.device)
    mode = _choose_mode(args, scans, streamed, device, ctx)
    model, tokenizer = _load_model_and_tokenizer(args, mode, device)
    batches, stream_description = _calibration_batches(args, tokenizer, source, streamed, documents)
    metadata = _metadata(args, source, stream_description, ctx)
    result = _run_pass(args, mode, model, batches, scans, metadata, device, ctx)
    ctx.close()
    if not ctx.is_main:
        return 0
    out = result.save(args.out)
    _print_summary(result, out)
    return 0


def _read_calibration_source(args, source: str, streamed: bool) -> list[str] | None:
    """The documents of a source read whole (None when streamed): a bad source is a one-line error
    before the model loads. A streamed source is only listed here; it is read as the batches are made."""
    from worker.engine.data import read_documents

    if not streamed:
        return read_documents(source, "calibration")
    if source != "demo" and not source.startswith("hf:"):
        from worker.engine.shards import list_shards

        list_shards(source, args.data_format)
    return None


def _choose_mode(args, scans: tuple[str, ...], streamed: bool, device: str, ctx):
    """In memory or layer-streamed (--offload; auto: by the memory planner's estimate of the in-memory
    pass at these settings), said on stderr before anything is loaded."""
    from worker.cli import CliError
    from worker.engine.importance.offload import choose_mode

    run = {  # the settings the in-memory pass's peak depends on, by the API's names
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "samples": args.samples,
        "scans": scans,
        "block_size": args.block_size,
        "stream": streamed,
    }
    mode = choose_mode(args.model, run, offload=args.offload, dtype=args.dtype, device=device)
    if ctx.distributed and mode.streamed:
        raise CliError("layer-streamed importance runs in one process; under torchrun use --offload never")
    if ctx.is_main:
        print(f"importance: {mode.describe()}", file=sys.stderr)
    return mode


def _load_model_and_tokenizer(args, mode, device: str):
    """The model (None when streamed: its weights are read layer by layer later; only the tokenizer now)
    and the tokenizer, checked against the model so a mismatch fails before the pass: --seq-len within
    its positions, every token id within its vocabulary."""
    from worker.cli import CliError, check_positions
    from worker.engine.loading import load_model, load_tokenizer
    from worker.engine.spec import text_config

    if mode.streamed:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(args.model)
        model, tokenizer = None, load_tokenizer(args.model)
        vocab = text_config(config).vocab_size
    else:
        model, tokenizer = load_model(args.model, dtype=args.dtype, device=device)
        config = model.config
        vocab = model.get_input_embeddings().weight.shape[0]
    check_positions("--seq-len", args.seq_len, {args.model: config})
    tokenizer = _tokenizer(args, tokenizer)
    if len(tokenizer) > vocab:
        raise CliError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary only {vocab}")
    return model, tokenizer


def _tokenizer(args, model_tokenizer):
    """--tokenizer when given, else the model's own; a CLI error when neither loads."""
    from worker.cli import CliError
    from worker.engine.loading import load_tokenizer

    tokenizer = model_tokenizer
    if args.tokenizer:
        try:
            tokenizer = load_tokenizer(args.tokenizer)
        except FileNotFoundError as exc:  # a path that is not there, or a hub id not in the cache
            raise CliError(f"--tokenizer: {exc}") from None
        if tokenizer is None:  # a missing path or one without tokenizer files
            raise CliError(f"--tokenizer: no tokenizer found at {args.tokenizer}")
    if tokenizer is None:
        raise CliError(f"{args.model} has no tokenizer files; pass --tokenizer DIR")
    return tokenizer


def _calibration_batches(args, tokenizer, source: str, streamed: bool, documents: list[str] | None):
    """The calibration batches, and for a streamed source its description for the manifest (None else)."""
    if streamed:
        from worker.engine.streaming import stream_calibration_batches

        stream = open_stream(args, tokenizer, source, "calibration", repeat=False)
        batches = stream_calibration_batches(stream, num_samples=args.samples, batch_size=args.batch_size)
        return batches, stream.describe()
    from worker.engine.data import calibration_batches

    batches = calibration_batches(
        tokenizer,
        documents,
        seq_len=args.seq_len,
        num_samples=args.samples,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    return batches, None


def _metadata(args, source: str, stream_description: dict | None, ctx) -> dict:
    """What the artifact's manifest records of this run's inputs, so a run can be traced and repeated."""
    metadata = {
        "model": args.model_name or args.model,
        "data": source,
        **({"data_stream": stream_description} if stream_description is not None else {}),
        "seed": args.seed,
        "seq_len_requested": args.seq_len,
        "batch_size": args.batch_size,
        "tokenizer": args.tokenizer or args.model_name or args.model,
    }
    if ctx.distributed:
        metadata["nodes"] = ctx.nodes
    return metadata


def _run_pass(args, mode, model, batches, scans: tuple[str, ...], metadata: dict, device: str, ctx):
    """The importance pass, in memory or streamed, under a progress bar (rank 0's only)."""
    from tqdm import tqdm

    from worker.engine.importance import compute_importance
    from worker.engine.importance.streamed import compute_importance_streamed

    with tqdm(
        total=args.samples,
        desc=f"importance ({mode.name})",
        unit="sample",
        file=sys.stderr,
        disable=not ctx.is_main,
    ) as bar:
        report = _progress(args, bar, ctx)
        common = dict(scans=scans, block_size=args.block_size, progress=report, metadata=metadata)
        if not mode.streamed:
            return compute_importance(model, batches, execution=mode.record(), context=ctx, **common)
        from backend.settings import Settings
        from worker.engine.memplan import spill_limit_bytes

        settings = Settings()
        return compute_importance_streamed(
            args.model,
            batches,
            dtype=args.dtype,
            device=device,
            reason=mode.reason,
            spill_dir=args.spill_dir or settings.spill_dir,
            disk_bytes=spill_limit_bytes(args.spill_limit_gb or settings.spill_limit_gb),
            **common,
        )


def _progress(args, bar, ctx):
    """The pass's progress callback: the bar, rank 0's records in --metrics-jsonl (its own samples x
    the ranks: an estimate of the whole pass), and --stop-file (exit 3, every rank at its next batch)."""
    done = 0

    def report(n: int) -> None:
        nonlocal done
        bar.update(n)
        done += n
        if args.metrics_jsonl is not None and ctx.is_main:
            import json

            record = {"phase": "calibration", "done": min(done * ctx.world_size, args.samples)}
            with args.metrics_jsonl.open("a") as f:
                f.write(json.dumps({**record, "total": args.samples}) + "\n")
        if args.stop_file is not None and args.stop_file.exists():
            raise SystemExit(3)

    return report


def _print_summary(result, out: Path) -> None:
    ev = result.manifest["evaluations"]
    print(f"importance run written to {out} ({result.samples} samples)")
    execution = result.manifest["execution"]
    print(f"mode: {execution['mode']} ({execution['reason']})")
    if execution.get("passes"):  # streamed: more than 1 when the activation stores were capped
        print(
            f"passes over the checkpoint: {execution['passes']} ({execution.get('layer_loads', '?')} layer loads)"
        )
    if "loss_base" in result.arrays:
        print(f"base LM loss: {result.base_loss():.4f}")
        for name, counts in ev["per_scan"].items():
            print(
                f"{name} scan: {counts['layer_forwards']} layer forwards "
                f"(naive, one full pass per cut: {counts['naive_layer_forwards']})"
            )
    stability = ", ".join(f"{axis} {rho:.3f}" for axis, rho in result.rank_stability().items())
    print(f"rank stability (Spearman of the two calibration halves): {stability}")
