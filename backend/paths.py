"""Checks on user-supplied local paths: only under the configured roots, no `..`, no symlink escape."""

from __future__ import annotations

import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class PathNotAllowed(Exception):
    """The path resolves outside every allowed root (maps to HTTP 403)."""


def looks_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") != 1


def check_local_path(source: str, roots: list[Path]) -> Path:
    """Resolve `source` (following symlinks) and require it to lie inside one of `roots`."""
    raw = Path(source).expanduser()
    if ".." in raw.parts:
        raise PathNotAllowed(f"path {source!r} contains '..'")
    resolved = raw.resolve()  # follows every symlink, so a link pointing outside is caught below
    for root in roots:
        if resolved == root or resolved.is_relative_to(root):
            if not resolved.exists():
                raise FileNotFoundError(f"path {source!r} does not exist")
            return resolved
    allowed = ", ".join(str(r) for r in roots)
    raise PathNotAllowed(f"path {source!r} is outside the allowed roots ({allowed})")
