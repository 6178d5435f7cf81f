"""`prunescope train-teacher` and `prunescope build-corpus`: rebuild the offline demo assets."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train-teacher",
        help="train the demo teacher from scratch (resumes from --work-dir)",
        description="Train a small Llama teacher on a corpus with the project's recipe and save it with a model card.",
    )
    train.add_argument(
        "--out", type=Path, default=None, help="output directory (default: the shipped demo teacher)"
    )
    train.add_argument(
        "--work-dir",
        type=Path,
        default=Path("runs/teacher-work"),
        help="checkpoints (default: runs/teacher-work)",
    )
    train.add_argument(
        "--tokenizer", type=Path, default=None, help="tokenizer directory (default: the demo tokenizer)"
    )
    train.add_argument("--data", default="demo", help="data source (see worker.engine.data; default: demo)")
    train.add_argument("--steps", type=int, default=None)
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--seq-len", type=int, default=None)
    train.add_argument("--lr", type=float, default=None, help="peak learning rate")
    train.add_argument("--warmup", type=int, default=None, help="warmup steps")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--eval-every", type=int, default=None)
    train.add_argument("--checkpoint-every", type=int, default=None)
    train.add_argument(
        "--hidden", type=int, default=None, help="hidden size (a smaller model for quick trials)"
    )
    train.add_argument("--layers", type=int, default=None)
    train.add_argument("--intermediate", type=int, default=None)
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    train.set_defaults(handler=_train_teacher)

    corpus = subparsers.add_parser(
        "build-corpus", help="rebuild the demo corpus and tokenizer from the stdlib sources"
    )
    corpus.add_argument(
        "--stdlib", type=Path, default=None, help="CPython Lib directory (default: this Python's)"
    )
    corpus.add_argument("--out", type=Path, default=None, help="demo directory (default: worker/demo)")
    corpus.add_argument("--no-tokenizer", action="store_true")
    corpus.set_defaults(handler=_build_corpus)


_RECIPE_FLAGS = {
    "steps": "steps",
    "batch_size": "batch_size",
    "seq_len": "seq_len",
    "lr": "peak_lr",
    "warmup": "warmup_steps",
    "seed": "seed",
    "eval_every": "eval_every",
    "checkpoint_every": "checkpoint_every",
    "hidden": "hidden_size",
    "layers": "num_layers",
    "intermediate": "intermediate_size",
    "data": "data",
}


def _train_teacher(args: argparse.Namespace) -> int:
    from worker.cli import CliError

    overrides = {
        field: getattr(args, flag) for flag, field in _RECIPE_FLAGS.items() if getattr(args, flag) is not None
    }
    for name in (
        "steps",
        "batch_size",
        "seq_len",
        "eval_every",
        "checkpoint_every",
        "hidden",
        "layers",
        "intermediate",
    ):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CliError(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise CliError("--threads must be at least 1")
    if args.lr is not None and not 0 < args.lr < float("inf"):  # inf trained a teacher of NaNs
        raise CliError(f"--lr must be a positive finite number, got {args.lr}")
    if args.seed is not None and args.seed < 0:
        raise CliError(f"--seed must be 0 or more, got {args.seed}")
    if args.tokenizer is not None and not Path(args.tokenizer).is_dir():
        raise CliError(f"--tokenizer: {args.tokenizer} is not a directory")
    from worker.cli import check_output_dir

    for flag, path in (("--out", args.out), ("--work-dir", args.work_dir)):
        if path is not None:
            check_output_dir(flag, path)

    import torch

    from worker.demo import TEACHER_DIR
    from worker.engine.teacher import TeacherRecipe, train_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = TeacherRecipe(**overrides)
    if recipe.warmup_steps >= recipe.steps:
        raise CliError(f"--warmup ({recipe.warmup_steps}) must be smaller than --steps ({recipe.steps})")
    if recipe.hidden_size % recipe.num_heads:
        raise CliError(f"--hidden must be a multiple of the {recipe.num_heads} heads")
    if recipe.hidden_size != TeacherRecipe().hidden_size:
        recipe.head_dim = recipe.hidden_size // recipe.num_heads
    out = args.out if args.out is not None else TEACHER_DIR
    summary = train_teacher(
        out,
        recipe,
        tokenizer_path=args.tokenizer,
        work_dir=args.work_dir,
        resume=not args.no_resume,
        log=lambda m: print(m, flush=True),
    )
    print(f"teacher saved to {out} (validation ppl {summary['validation']['ppl']:.3f})")
    return 0


def _build_corpus(args: argparse.Namespace) -> int:
    from worker.demo import build_corpus

    argv = []
    if args.stdlib is not None:
        argv += ["--stdlib", str(args.stdlib)]
    if args.out is not None:
        argv += ["--out", str(args.out)]
    if args.no_tokenizer:
        argv.append("--no-tokenizer")
    return build_corpus.main(argv)
