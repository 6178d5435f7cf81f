"""`prunescope distill`, `prunescope evaluate` and `prunescope benchmark`.

    prunescope distill STUDENT [--teacher T] [--data demo] [--steps N] ... -o OUT
    prunescope distill STUDENT --data CORPUS_DIR --stream [--data-format jsonl] [--text-field text] -o OUT
    prunescope evaluate MODEL [--data demo] [--split test] [--tasks prunescope_cloze,prunescope_rolling] [-o R.json]
    prunescope benchmark --teacher T --student S [--batch-sizes 1,8] [-o R.json]

`--teacher` defaults to the shipped demo teacher. `distill --mode ce` is the baseline without a teacher.
Distillation checkpoints go to `--work-dir` (default OUT.work); `--resume` continues from there exactly.
A run without `--resume` refuses a work dir that holds a checkpoint unless `--overwrite` discards it.
Ctrl-C / SIGTERM or creating `--stop-file` stops at the next step boundary with a checkpoint.

Under `torchrun --nproc-per-node N` (or `srun`) the same command runs as N ranks: FSDP2-sharded student,
`--batch-size` the global batch, sharded checkpoints in the work dir (on a filesystem every node sees),
rank 0 alone prints and saves (`torchrun ... -m worker.cli distill ...`, as distill jobs with `gpus: N` run it).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.cli import CliError, check_append_file, check_output_dir, check_positions, say
from worker.cli.data_options import add_data_options, check_data_found, data_source, open_stream
from worker.cli.importance_commands import _check_device
from worker.engine.distill_defaults import DEFAULTS as D


def _csv_ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("expected positive integers")
    return values


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(subparsers) -> None:
    d = subparsers.add_parser(
        "distill", help="distill a pruned student from its teacher (or train it CE-only)"
    )
    d.add_argument("student", help="student model directory (e.g. the output of prunescope prune)")
    d.add_argument("--teacher", default=None, help="teacher model (default: the demo teacher)")
    d.add_argument(
        "--data",
        default="demo",
        help="data source: demo, a .txt/.jsonl/.jsonl.gz/.parquet file or a folder of them (default: demo)",
    )
    add_data_options(d)
    d.add_argument("-o", "--out", required=True, type=Path, help="output directory for the distilled student")
    d.add_argument("--work-dir", type=Path, default=None, help="checkpoints (default: OUT.work)")
    d.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work-dir")
    d.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty output directory and, without --resume, start afresh over an earlier "
        "run's checkpoint in --work-dir (removed once the models and data have loaded)",
    )
    d.add_argument(
        "--mode", choices=("kd", "ce"), default="kd", help="kd (default) or ce: baseline, no teacher"
    )
    # Defaults: worker.engine.distill_defaults (the same for the API and the engine).
    d.add_argument("--steps", type=int, default=D.steps)
    d.add_argument("--batch-size", type=int, default=D.batch_size)
    d.add_argument("--grad-accum", type=int, default=D.grad_accum)
    d.add_argument("--seq-len", type=int, default=D.seq_len)
    d.add_argument("--lr", type=float, default=D.lr, help="peak learning rate")
    d.add_argument("--min-lr", type=float, default=D.min_lr, help="final learning rate")
    d.add_argument("--warmup", type=int, default=D.warmup_steps)
    d.add_argument("--temperature", type=float, default=D.temperature)
    d.add_argument("--kd-weight", type=float, default=D.kd_weight)
    d.add_argument("--ce-weight", type=float, default=D.ce_weight)
    d.add_argument(
        "--intermediate-weight",
        type=float,
        default=D.intermediate_weight,
        help="cosine loss on hidden states of kept layers (layer map from the student's plan)",
    )
    d.add_argument("--teacher-correction-steps", type=int, default=D.teacher_correction_steps)
    d.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute each student layer's activations in backward (less memory, ~1/3 more compute)",
    )
    d.add_argument(
        "--weights-dtype",
        choices=("float32", "bfloat16"),
        default=D.weights_dtype,
        help="dtype of student and teacher weights, gradients and AdamW states (bfloat16: half the memory)",
    )
    d.add_argument(
        "--teacher-placement",
        choices=("auto", "replicate", "shard"),
        default=D.teacher_placement,
        help="under torchrun: a whole teacher per rank or sharded like the student (auto: by memory)",
    )
    d.add_argument(
        "--val-every",
        type=int,
        default=D.val_every,
        help="validate every N steps (0: only at step 0 and after the last step)",
    )
    d.add_argument("--val-batches", type=int, default=D.val_batches)
    d.add_argument("--checkpoint-every", type=int, default=D.checkpoint_every)
    d.add_argument("--seed", type=int, default=D.seed)
    d.add_argument("--device", default="cpu")
    d.add_argument(
        "--stop-file", type=Path, default=None, help="stop (with a checkpoint) when this file appears"
    )
    d.add_argument("--log-every", type=int, default=10)
    d.add_argument(
        "--metrics-jsonl",
        type=Path,
        default=None,
        help="append each step's and validation's metrics here as JSON lines (rank 0; a job follows it)",
    )
    d.set_defaults(handler=_distill)

    e = subparsers.add_parser("evaluate", help="perplexity and lm-eval scores of a model on held-out text")
    e.add_argument("model")
    e.add_argument("--data", default="demo")
    e.add_argument("--split", default="test")
    e.add_argument(
        "--tasks",
        type=_csv,
        default=["prunescope_cloze", "prunescope_rolling"],
        help="comma-separated lm-eval tasks ('none' to skip); local: prunescope_cloze,prunescope_rolling",
    )
    e.add_argument("--limit", type=int, default=None, help="samples per lm-eval task")
    e.add_argument("--max-documents", type=int, default=None, help="documents for perplexity")
    # Unset: the engine's window (worker.engine.evaluation.perplexity), not a teacher's protocol in the
    # app (128 every 64 by default): give both to compare a CLI number with the dashboard's.
    e.add_argument(
        "--context",
        type=int,
        default=None,
        help="window in tokens (default: the model's positions, at most 1024)",
    )
    e.add_argument("--stride", type=int, default=None, help="tokens between windows (default: context / 2)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="cpu")
    e.add_argument("-o", "--out", type=Path, default=None, help="write the result JSON here")
    e.set_defaults(handler=_evaluate)

    b = subparsers.add_parser("benchmark", help="prefill/decode throughput of a student vs its teacher")
    b.add_argument("--teacher", default=None, help="teacher model (default: the demo teacher)")
    b.add_argument("--student", required=True)
    b.add_argument("--batch-sizes", type=_csv_ints, default=[1, 8])
    b.add_argument("--prompt-len", type=int, default=128)
    b.add_argument("--new-tokens", type=int, default=32)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--device", default="cpu")
    b.add_argument("-o", "--out", type=Path, default=None)
    b.set_defaults(handler=_benchmark)


def _teacher_source(value: str | None) -> str:
    if value:
        return value
    from worker.demo import demo_teacher_path

    return str(demo_teacher_path())


def _load(source: str, device: str):
    from worker.engine.loading import load_model

    say(f"[load] {source}")
    return load_model(source, device=device)


def _student_plan(source: str):
    from worker.engine.loading import MANIFEST_FILE

    path = Path(source) / MANIFEST_FILE
    if not path.is_file():
        return None
    plan = json.loads(path.read_text()).get("plan")
    if not plan:
        return None
    from worker.engine.plan import PrunePlan

    return PrunePlan.model_validate(plan)


def _distill(args) -> int:
    """Check paths and settings before loading anything, load the models and data, train, save."""
    from worker.engine.distill.distributed import DistillContext

    source, streamed = data_source(args)
    out, work = _checked_paths(args, source, streamed)
    config = _distill_config(args)
    if args.seq_len < 2:
        raise CliError(f"--seq-len must be at least 2, got {args.seq_len}")
    if args.mode == "ce" and args.teacher is not None:  # the same flags for kd and ce runs are fine
        say(f"[mode ce] --teacher {args.teacher} is not read: the baseline trains on labels alone")
    _check_device(args.device)  # only checked: under torchrun each rank picks its own cuda:N from it
    ctx = DistillContext.from_environment(args.device)  # one process unless launched by torchrun/srun
    models = _load_models(args, "cpu" if ctx.distributed else args.device)  # sharding moves each share
    check_positions("--seq-len", args.seq_len, models.configs(args.student))
    config = _with_intermediate_targets(args, config, models)
    train, val = _open_data(args, source, streamed, models.tokenizer, config, ctx)
    if args.overwrite and not args.resume and ctx.is_main:
        _discard_earlier_run(work)
    if args.resume and ctx.is_main and args.metrics_jsonl is not None:
        _drop_records_after_checkpoint(args.metrics_jsonl, work)
    result, weights, sharded = _train(args, config, models, train, val, work, ctx)
    if not ctx.is_main:
        return 3 if result.stopped else 0
    if result.correction_stopped_at is not None:
        say(
            f"[stopped] during teacher correction, after step {result.correction_stopped_at} of "
            f"{config.teacher_correction_steps}; --resume runs the correction again"
        )
        return 3
    if result.stopped:
        say(f"[stopped] after step {result.steps_completed}; resume with --resume (checkpoint in {work})")
        return 3
    if sharded:
        models.student = _whole_student(args.student, weights)
        models.teacher = models.teacher_source  # sharded or not, its weights are those of its source
    _save(args, out, config, models, result, ctx, data=_data_record(args, source, streamed, train))
    return 0


@dataclass
class _Models:
    student: Any
    tokenizer: Any
    teacher: Any = None  # None with --mode ce
    teacher_source: str | None = None
    plan: Any = None  # the student's PrunePlan, from its manifest when it has one
    # The dtype the student was pruned in: it trains in --weights-dtype and is saved in this one again, so
    # a bfloat16 teacher's student stays bfloat16 (as big as its teacher's dtype says, measured alike).
    saved_dtype: Any = None

    def configs(self, student_source: str) -> dict:
        """source -> config of each model a run feeds (the teacher only in kd mode)."""
        found = {student_source: self.student.config}
        if self.teacher is not None:
            found[self.teacher_source] = self.teacher.config
        return found


def _checked_paths(args, source: str, streamed: bool) -> tuple[Path, Path]:
    """(output dir, work dir), or a one-line CliError for a bad data path, a non-empty output, a
    --resume with no checkpoint or an earlier run's checkpoint in the way — before any model is loaded."""
    if streamed and source != "demo" and not source.startswith("hf:"):
        from worker.engine.shards import list_shards

        list_shards(source, args.data_format)
    out = args.out.expanduser().resolve()
    check_output_dir("-o", out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise CliError(f"output {out} exists and is not empty (use --overwrite)")
    work = (args.work_dir or out.with_name(out.name + ".work")).expanduser().resolve()
    check_output_dir("--work-dir", work)
    check_append_file("--metrics-jsonl", args.metrics_jsonl)
    _check_checkpoint(args, work)
    return out, work


def _check_checkpoint(args, work: Path) -> None:
    """--resume needs a checkpoint; a fresh run must not overwrite one at its first save (hours of
    distillation) unless --overwrite says so. Every rank under torchrun reads the same files before any
    is written, so all of them refuse alike, before the process group exists."""
    from worker.engine.distill.checkpoint import saved_format, saved_step, saved_steps

    found = saved_format(work) is not None
    if args.resume and not found:
        raise CliError(f"--resume: no checkpoint in {work}")
    planned = saved_steps(work) if args.resume else None
    if planned is not None and planned != args.steps:  # allowed (to extend a run), but said
        say(
            f"[resume] --steps {args.steps}, the checkpoint's run planned {planned}: the learning-rate "
            f"schedule (warm-up, then cosine to --min-lr) is recomputed over {args.steps} steps"
        )
    if found and not args.resume and not args.overwrite:
        step = saved_step(work)
        at = f" at step {step}" if step is not None else ""
        raise CliError(
            f"work directory {work} holds a checkpoint{at} of an earlier run: pass --resume to continue it "
            "or --overwrite to start afresh (or choose another --work-dir)"
        )


def _drop_records_after_checkpoint(metrics: Path, work: Path) -> None:
    """A resume repeats the steps after its checkpoint: their records of the stopped run leave the
    --metrics-jsonl file, so each step is in it once (teacher-correction records are kept: the corrected
    teacher is reloaded, not trained again)."""
    from worker.engine import atomic
    from worker.engine.distill.checkpoint import saved_step

    step = saved_step(work)
    if step is None or not metrics.is_file():
        return
    lines = metrics.read_text().splitlines(keepends=True)

    def kept(line: str) -> bool:
        try:
            record = json.loads(line)
        except ValueError:
            return True  # not ours to judge
        return record.get("phase") == "teacher_correction" or record.get("step", 0) <= step

    keep = [line for line in lines if kept(line)]
    if len(keep) < len(lines):
        atomic.write_file(metrics, lambda tmp: tmp.write_text("".join(keep)))
        removed = len(lines) - len(keep)
        say(f"[resume] {removed} record(s) after step {step} removed from {metrics}: those steps run again")


def _discard_earlier_run(work: Path) -> None:
    """--overwrite without --resume: remove the earlier run's checkpoint now, once the models and data
    have loaded (a typo in a path still leaves it), rather than letting the new run's first save replace
    it: until then the directory would pair the old checkpoint with this run's corrected teacher, and
    a --resume would silently continue the old run with the wrong teacher."""
    from worker.engine.distill.checkpoint import remove_training_state, saved_format, saved_step

    if saved_format(work) is not None:
        say(f"[overwrite] removing the earlier run's checkpoint (step {saved_step(work)}) in {work}")
    remove_training_state(work)


def _distill_config(args):
    """The DistillConfig of the flags; a bad value is a CliError naming its flag."""
    from pydantic import ValidationError

    from worker.engine.distill import DistillConfig

    try:
        return DistillConfig(
            mode=args.mode,
            steps=args.steps,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            lr=args.lr,
            min_lr=args.min_lr,
            warmup_steps=args.warmup,
            temperature=args.temperature,
            kd_weight=args.kd_weight,
            ce_weight=args.ce_weight,
            intermediate_weight=args.intermediate_weight,
            teacher_correction_steps=args.teacher_correction_steps,
            gradient_checkpointing=args.gradient_checkpointing,
            weights_dtype=args.weights_dtype,
            teacher_placement=args.teacher_placement,
            val_every=args.val_every,
            val_batches=args.val_batches,
            checkpoint_every=args.checkpoint_every,
            seed=args.seed,
            log_every=args.log_every,  # under torchrun: every rank's figures in those steps' metrics
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a rule between fields (min_lr > lr...): its own text names them
            raise CliError(first["msg"].removeprefix("Value error, ")) from None
        raise CliError(
            f"--{'-'.join(str(p) for p in first['loc']).replace('_', '-')}: {first['msg']}"
        ) from None


def _load_models(args, device: str) -> _Models:
    """The student, the teacher (kd mode), one tokenizer for both and the student's plan."""
    student, tokenizer = _load(args.student, device)
    models = _Models(student=student, tokenizer=tokenizer, plan=_student_plan(args.student))
    models.saved_dtype = next(student.parameters()).dtype
    if args.mode == "kd":
        models.teacher_source = _teacher_source(args.teacher)
        models.teacher, teacher_tok = _load(models.teacher_source, device)
        models.tokenizer = models.tokenizer or teacher_tok
        vocab = models.teacher.get_input_embeddings().num_embeddings
        if vocab != student.get_input_embeddings().num_embeddings:
            raise CliError("student and teacher have different vocabularies")
    if models.tokenizer is None:
        raise CliError(f"no tokenizer found with {args.student}")
    return models


def _with_intermediate_targets(args, config, models: _Models):
    """With --intermediate-weight, the config maps the student's layers and hidden channels onto the
    teacher's, by the student's prune plan."""
    if not args.intermediate_weight:
        return config
    from worker.engine.adapters import arch_spec
    from worker.engine.distill import hidden_channels_from_plan, layer_map_from_plan

    if models.plan is None:
        raise CliError("--intermediate-weight needs the student's prune plan (prunescope_manifest.json)")
    spec = arch_spec(models.teacher)
    return config.model_copy(
        update={
            "layer_map": layer_map_from_plan(models.plan.drop_layers, spec.num_layers),
            "hidden_channels": hidden_channels_from_plan(models.plan.remove_hidden, spec.hidden_size),
        }
    )


def _open_data(args, source: str, streamed: bool, tokenizer, config, ctx):
    """(train, validation) token blocks: streamed (this rank's share of the train split) or tokenized."""
    from worker.engine.data import PackedTokens, read_documents

    if streamed:
        say(f"[data] {source}: streaming the train split, validation from the first validation blocks")
        train = open_stream(
            args, tokenizer, source, "train", repeat=True, rank=ctx.rank, world_size=ctx.world_size
        )
        first_val = open_stream(args, tokenizer, source, "validation", repeat=False)
        val = PackedTokens.from_blocks(
            first_val.take(config.val_batches * config.batch_size, allow_fewer=True)
        )
        return train, val
    say(f"[data] {source}: tokenizing train and validation splits")
    train = PackedTokens(tokenizer, read_documents(source, "train"), args.seq_len)
    val = PackedTokens(tokenizer, read_documents(source, "validation"), args.seq_len)
    return train, val


def _train(args, config, models: _Models, train, val, work: Path, ctx):
    """Run the distillation until its last step or a stop (Ctrl-C, SIGTERM, --stop-file); (result, the
    full student weights or None when stopped, whether they were gathered from shards)."""
    from worker.engine.distill import distill
    from worker.engine.distill.memory import memory_options

    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}

    def should_stop() -> bool:
        return stop.is_set() or (args.stop_file is not None and args.stop_file.exists())

    try:
        with memory_options(models.student, models.teacher, config):
            result = distill(
                models.student,
                models.teacher,
                train,
                val,
                config,
                callback=_reporter(args, config),
                checkpoint_dir=work,
                resume=args.resume,
                should_stop=should_stop,
                context=ctx,
            )
        weights = None if result.stopped else ctx.full_state_dict(models.student)
        if ctx.distributed and not result.stopped:  # reported with world_size (ctx.describe)
            ctx.placement["peak_memory_per_rank"] = ctx.peak_memory_per_rank()
        return result, weights, ctx.distributed
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        ctx.close()


def _reporter(args, config):
    """The callback of each training record: a line in --metrics-jsonl (the worker tails it live) and
    every --log-every steps a line on stderr."""

    def report(m: dict) -> None:
        if args.metrics_jsonl is not None:  # one line per record, flushed
            with args.metrics_jsonl.open("a") as f:
                f.write(json.dumps(m, default=float) + "\n")
        if m.get("phase") == "validation":
            kl = "" if m["val_kl"] is None else f" val_kl {m['val_kl']:.4f}"
            say(f"[val] step {m['step']} val_loss {m['val_loss']:.4f} ppl {m['val_ppl']:.2f}{kl}")
        elif m.get("phase") == "teacher_correction":
            if m["step"] % args.log_every == 0:
                say(f"[teacher-correction] step {m['step']} ce {m['ce_loss']:.4f}")
        elif m["step"] % args.log_every == 0 or m["step"] == 1:
            say(
                f"[train] step {m['step']}/{config.steps} loss {m['loss']:.4f} kd {m['kd_loss']:.4f} "
                f"ce {m['ce_loss']:.4f} lr {m['lr']:.2e} {m['tokens_per_s']:.0f} tok/s"
            )

    return report


def _data_record(args, source: str, streamed: bool, train) -> dict:
    return {"source": source, "seq_len": args.seq_len, **({"stream": train.describe()} if streamed else {})}


def _save(args, out: Path, config, models: _Models, result, ctx, data: dict) -> None:
    """The distilled student with its manifest (what it was distilled from and how) and the result
    record; prints the one-line JSON summary."""
    from worker.engine.evaluation import make_manifest, write_result
    from worker.engine.loading import save_model

    models.student.to(models.saved_dtype)  # before its manifest records its weights
    teacher = models.teacher
    manifest = make_manifest(
        models={"student": models.student, **({"teacher": teacher} if teacher is not None else {})},
        data=data,
        seed=args.seed,
        student_source=args.student,
        teacher_source=models.teacher_source,
    )
    save_model(
        models.student,
        models.tokenizer,
        out,
        {
            "kind": "distilled-student",
            "student_source": args.student,
            "teacher": models.teacher_source,
            "plan": models.plan.model_dump(mode="json") if models.plan is not None else None,
            "distill": config.model_dump(mode="json"),
            "final_validation": result.final_validation,
            "steps": result.steps_completed,
            "tokens": result.history[-1]["tokens"] if result.history else 0,
            **ctx.describe(),  # world_size, nodes, teacher placement
        },
        overwrite=args.overwrite,
    )
    write_result(
        out / "distill_result.json",
        "distill",
        {"history": result.history, "validation": result.validation, "distributed": ctx.describe()},
        manifest,
    )
    say(f"[save] {out}")
    print(
        json.dumps({"output": str(out), "steps": result.steps_completed, **(result.final_validation or {})})
    )


def _whole_student(source: str, weights: dict):
    """A plain (unsharded) copy of the student holding the gathered weights, to save as today."""
    from worker.engine.loading import load_model

    student, _ = load_model(source, device="cpu")  # in the dtype it was pruned in: the weights cast to it
    student.load_state_dict(weights)
    return student.eval()


def _evaluate(args) -> int:
    from backend.settings import Settings
    from worker.engine.data import read_documents
    from worker.engine.evaluation import check_tasks, evaluate_model, make_manifest, write_result

    for flag in ("limit", "max_documents", "context", "stride", "batch_size"):
        value = getattr(args, flag)  # 0 would read as "not given" below (all documents, default context)
        if value is not None and value < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    tasks = [t for t in args.tasks if t.lower() != "none"]
    try:
        check_tasks(tasks)  # before the perplexity pass, not after it
    except ValueError as exc:
        raise CliError(f"--tasks: {exc}") from None
    _check_result_path(args.out)
    _check_device(args.device)
    check_data_found(args.data)
    from worker.engine.distributed import DistributedContext

    # Under torchrun / srun: data-parallel, each rank scoring its share of the windows and of each lm-eval
    # model call, the sums all-reduced: the one-process numbers, saved once by rank 0.
    ctx = DistributedContext.from_environment(args.device)
    model, tokenizer = _load(args.model, str(ctx.device) if ctx.distributed else args.device)
    if tokenizer is None:
        raise CliError(f"no tokenizer found with {args.model}")
    check_positions("--context", args.context or 0, {args.model: model.config})
    documents = read_documents(args.data, args.split)
    scored = len(documents) if args.max_documents is None else min(args.max_documents, len(documents))
    if ctx.is_main:
        ranks = f" over {ctx.world_size} ranks" if ctx.distributed else ""
        say(f"[perplexity] {args.data}:{args.split} ({scored} of {len(documents)} documents){ranks}")

    def tasks_next() -> None:
        if ctx.is_main:
            say(f"[lm-eval] {', '.join(tasks)}")

    result = evaluate_model(
        model,
        tokenizer,
        documents,
        context=args.context,
        stride=args.stride,
        batch_size=args.batch_size,
        max_documents=args.max_documents,
        tasks=tasks,
        limit=args.limit,
        seed=args.seed,
        cache_root=Settings().cache,
        task_documents=documents,  # local tasks from the text evaluated (a job: from the demo corpus)
        ranks=ctx,
        before_tasks=tasks_next,
    )
    ctx.close()
    if not ctx.is_main:
        return 0
    if args.out:
        manifest = make_manifest(
            models={"model": model},
            data={"source": args.data, "split": args.split},
            seed=args.seed,
            model_source=args.model,
        )
        write_result(args.out, "evaluation", result, manifest)
        say(f"[save] {args.out}")
    print(json.dumps(result, indent=2))
    return 0


def _benchmark(args) -> int:
    from worker.engine.evaluation import make_manifest, throughput, write_result

    _check_result_path(args.out)
    _check_device(args.device)
    teacher_source = _teacher_source(args.teacher)
    teacher, _ = _load(teacher_source, args.device)
    student, _ = _load(args.student, args.device)
    check_positions(
        "--prompt-len + --new-tokens",
        args.prompt_len + args.new_tokens,
        {teacher_source: teacher.config, args.student: student.config},
    )
    report = throughput(
        teacher,
        student,
        batch_sizes=args.batch_sizes,
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
    )
    if args.out:
        manifest = make_manifest(
            models={"teacher": teacher, "student": student},
            data=None,
            seed=0,
            teacher_source=teacher_source,
            student_source=args.student,
        )
        write_result(args.out, "throughput", report, manifest)
    for s in report["speedup"]:
        say(
            f"[speedup] batch {s['batch_size']}: prefill x{s['prefill']:.2f}  decode x{s['decode']:.2f}  "
            f"memory x{s['memory']:.2f}"
        )
    print(json.dumps(report, indent=2))
    return 0


def _check_result_path(out: Path | None) -> None:
    """-o names the result file: a directory there would fail only after the whole run."""
    if out is not None and out.is_dir():
        raise CliError(f"-o: {out} is a directory; give the result file's path, e.g. {out / 'result.json'}")
