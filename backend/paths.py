"""What a user-supplied model/data `source` is, decided once: the demo, a hub id, or a local path that
must lie under the configured roots (no `..`, no symlink escape).

The API classifies what a user typed (`classify_source`) and stores an unambiguous form: "demo", a hub
id, or an absolute path. Workers read that stored form (`stored_source`) by its shape alone, so a hub id
is never looked up on a worker's disk, whatever happens to lie in its working directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")  # always fullmatch()
DEMO = "demo"


class PathNotAllowed(Exception):
    """The path resolves outside every allowed root (maps to HTTP 403)."""


@dataclass(frozen=True)
class Source:
    kind: Literal["demo", "hub", "path"]
    value: str  # "demo", the hub id, or the path (absolute once classified by the API)


def is_hub_id(source: str) -> bool:
    """`org/name` and nothing else: no whitespace, no leading `.`, `/` or `~`, no `..`."""
    return HUB_ID.fullmatch(source) is not None and ".." not in source


def classify_source(source: str, roots: list[Path], *, allow_hub: bool) -> Source:
    """The one decision for a source the user typed (raises PathNotAllowed / FileNotFoundError):

    - "demo" is the bundled demo;
    - an absolute, `./`, `../` or `~` path, and any other string that is not an `org/name` hub id, is a
      local path, which must exist under one of `roots` (returned resolved);
    - an `org/name` that exists, relative to this process's directory, under one of `roots` is that local
      path; any other `org/name` is a hub id (with `allow_hub`), loaded with the hub loader only.
    """
    if source == DEMO:
        return Source("demo", DEMO)
    if allow_hub and is_hub_id(source):
        resolved = Path(source).resolve()
        if _inside(resolved, roots) and _exists(resolved):
            return Source("path", str(resolved))
        return Source("hub", source)
    return Source("path", str(check_local_path(source, roots)))


def stored_source(source: str) -> Source:
    """How a worker reads a source the API stored: by shape alone, never by looking at its own disk."""
    if source == DEMO:
        return Source("demo", DEMO)
    if is_hub_id(source):
        return Source("hub", source)
    return Source("path", source)


def _exists(path: Path) -> bool:
    try:
        path.stat()
    except OSError:  # missing, or a name the file system cannot hold (too long...)
        return False
    return True


def _inside(resolved: Path, roots: list[Path]) -> bool:
    from worker.engine.roots import inside_roots  # torch-free: the rule the workers check files with too

    return inside_roots(resolved, roots)


def check_local_path(source: str, roots: list[Path]) -> Path:
    """Resolve `source` (following symlinks) and require it to lie inside one of `roots`."""
    try:
        raw = Path(source).expanduser()
    except RuntimeError as exc:  # "~someone" without a home directory
        raise FileNotFoundError(f"path {source!r}: {exc}") from exc
    if ".." in raw.parts:
        raise PathNotAllowed(f"path {source!r} contains '..'")
    resolved = raw.resolve()  # follows every symlink, so a link pointing outside is caught below
    if _inside(resolved, roots):
        try:
            resolved.stat()
        except OSError as exc:  # missing, or a name the file system cannot hold (too long...)
            raise FileNotFoundError(f"path {source!r} does not exist ({exc.strerror})") from exc
        return resolved
    from worker.engine.roots import refusal

    raise PathNotAllowed(refusal(f"path {source!r}", resolved, roots))
