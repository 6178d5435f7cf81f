"""`prunescope` command line. Each subcommand lives in its own module with a `register(subparsers)`.

Command modules import torch and the engine inside their handlers, so `prunescope api` stays light.
Expected failures raise `CliError` (or a ValueError/FileNotFoundError from the engine) and are
printed as one line, never as a traceback; under torchrun, once per node when every rank hits it
(`worker.engine.launch.first_to_say`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import sys

from worker.engine.launch import first_to_say

COMMAND_MODULES = (
    "worker.cli.importance_commands",
    "worker.cli.prune_commands",
    "worker.cli.teacher_commands",
    "worker.cli.distill_commands",
    "worker.cli.platform_commands",
    "worker.cli.search_commands",
)


class CliError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def say(message: str) -> None:
    """A progress line, on stderr (stdout stays for a command's result) and at once (runs are long)."""
    print(message, file=sys.stderr, flush=True)


def check_output_dir(flag: str, path) -> None:
    """Refuse, before any work, an output directory that a file stands in the way of (the path itself
    or a folder above it): the save at the end would fail with a bare OS error after the whole run."""
    from pathlib import Path

    path = Path(path).expanduser()
    for place in (path, *path.parents):
        if place.exists():
            if not place.is_dir():
                raise CliError(f"{flag}: {place} is a file, not a directory")
            return


def check_positions(flag: str, tokens: int, configs: dict, *, what: str = "") -> None:
    """Refuse sequences longer than a model's positions (`configs`: source -> its config; one naming no
    limit is not checked): past them a learned position table fails deep in the run, a RoPE model
    scores positions it never saw, and a typo such as 100000 builds attention matrices of tens of GB.
    `what`: words between the flag and the count, when the flag's value is not itself the count."""
    from worker.engine.spec import config_max_positions

    for source, config in configs.items():
        limit = config_max_positions(config)
        if limit and tokens > limit:
            raise CliError(
                f"{flag}: {what}{tokens} tokens exceed the {limit} positions of {source}; at most {limit}"
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunescope", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a command group not written yet
        module.register(subparsers)
    return parser


def check_append_file(flag: str, path) -> None:
    """A file the run appends to as it goes (--metrics-jsonl): refuse a folder or a missing parent now,
    not at the first record, after the model has loaded."""
    from pathlib import Path

    if path is None:
        return
    path = Path(path).expanduser()
    if path.is_dir():
        raise CliError(f"{flag}: {path} is a directory; give a file path")
    if not path.parent.is_dir():
        raise CliError(f"{flag}: folder {path.parent} does not exist")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    said = io.StringIO()  # argparse's usage error too (it prints, then exits 2)
    try:
        with contextlib.redirect_stderr(said):
            args = parser.parse_args(argv)
    except SystemExit:
        if said.getvalue() and first_to_say(said.getvalue()):
            sys.stderr.write(said.getvalue())
        raise
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (CliError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError) as exc:
        message = f"prunescope {args.command}: error: {exc}"
        if first_to_say(message):
            print(message, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
