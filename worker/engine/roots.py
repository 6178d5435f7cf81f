"""The allowed-roots rule of the platform: a path a job reads, every symlink followed, lies in or under one
of the server's allowed roots (PRUNESCOPE_ALLOWED_ROOTS). The API checks what a user registers with it
(backend/paths.py), the workers check every file again before they read it (worker.engine.streaming for
data, `check_model_inside` for a teacher's folder), so a link put inside an allowed folder cannot reach
elsewhere. The roots may carry private paths (`Roots`): the app's own state below an allowed root (its
SQLite database, the embedded broker's files), which no source may be or read. Torch-free."""

from __future__ import annotations

import os
from pathlib import Path


class OutsideRoots(ValueError):
    """A file resolves (through a symlink) outside every allowed root, or to a private path: it is not read."""


class Roots(list):
    """Allowed roots (resolved paths) and, apart, the private paths under them: files and folders the app
    keeps its own state in. Reading one as data is refused, not only pointless: a process that opens and
    closes the SQLite database file as a dataset drops every POSIX lock it holds on it, and the next
    process to close the database then deletes the write-ahead log the first one still uses."""

    def __init__(self, roots=(), private=()):
        super().__init__(roots)
        self.private = tuple(private)

    def __add__(self, other):
        return Roots([*self, *other], self.private)

    def private_part(self, real: Path) -> Path | None:
        """The private path that resolved `real` is or lies under, if any."""
        return next((p for p in self.private if real == p or real.is_relative_to(p)), None)


def _private_part(real: Path, roots: list[Path]) -> Path | None:
    return roots.private_part(real) if isinstance(roots, Roots) else None


def inside_roots(path: str | os.PathLike, roots: list[Path]) -> bool:
    """Whether `path`, every symlink followed, lies in or under one of `roots` (resolved paths) and is
    none of their private paths."""
    real = Path(path).resolve()
    if _private_part(real, roots) is not None:
        return False
    return any(real == root or real.is_relative_to(root) for root in roots)


def refusal(name: str, real: Path, roots: list[Path]) -> str:
    """Why `name` (resolving to `real`) is not read: a private path, or outside the roots."""
    private = _private_part(real, roots)
    if private is not None:
        return f"{name} resolves to {real}, part of the app's own state ({private}): it is never read as a source"
    allowed = ", ".join(str(r) for r in roots)
    return f"{name} resolves to {real}, outside the allowed roots ({allowed}): a link out of them is not read"


def check_inside_roots(files: list[Path], roots: list[Path] | None, what: str = "data file") -> None:
    """Raise OutsideRoots naming the first of `files` that resolves outside `roots` (None: no limit)."""
    if roots is None:
        return
    for file in files:
        if not inside_roots(file, roots):
            raise OutsideRoots(refusal(f"{what} {file}", Path(file).resolve(), roots))


def check_model_inside(folder: str | os.PathLike, roots: list[Path] | None) -> None:
    """A model folder and every entry in it (config, weight shards, their index, tokenizer files: what
    `from_pretrained` opens) resolve inside `roots`."""
    path = Path(folder).expanduser()
    check_inside_roots([path], roots, "model folder")
    if path.is_dir():
        check_inside_roots(sorted(path.resolve().iterdir()), roots, "model file")
