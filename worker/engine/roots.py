"""The allowed-roots rule of the platform: a path a job reads, every symlink followed, lies in or under one
of the server's allowed roots (PRUNESCOPE_ALLOWED_ROOTS). The API checks what a user registers with it
(backend/paths.py), the workers check every file again before they read it (worker.engine.streaming for
data, `check_model_inside` for a teacher's folder), so a link put inside an allowed folder cannot reach
elsewhere. Torch-free."""

from __future__ import annotations

import os
from pathlib import Path


class OutsideRoots(ValueError):
    """A file resolves (through a symlink) outside every allowed root: it is not read."""


def inside_roots(path: str | os.PathLike, roots: list[Path]) -> bool:
    """Whether `path`, every symlink followed, lies in or under one of `roots` (resolved paths)."""
    real = Path(path).resolve()
    return any(real == root or real.is_relative_to(root) for root in roots)


def check_inside_roots(files: list[Path], roots: list[Path] | None, what: str = "data file") -> None:
    """Raise OutsideRoots naming the first of `files` that resolves outside `roots` (None: no limit)."""
    if roots is None:
        return
    for file in files:
        if not inside_roots(file, roots):
            allowed = ", ".join(str(r) for r in roots)
            raise OutsideRoots(
                f"{what} {file} resolves to {Path(file).resolve()}, outside the allowed roots "
                f"({allowed}): a link out of them is not read"
            )


def check_model_inside(folder: str | os.PathLike, roots: list[Path] | None) -> None:
    """A model folder and every entry in it (config, weight shards, their index, tokenizer files: what
    `from_pretrained` opens) resolve inside `roots`."""
    path = Path(folder).expanduser()
    check_inside_roots([path], roots, "model folder")
    if path.is_dir():
        check_inside_roots(sorted(path.resolve().iterdir()), roots, "model file")
