"""The artifact store: a directory (default) or any fsspec URL (s3://, gcs://, ...) shared by all machines.

Writes are all-or-nothing: a local store writes into `<root>/.tmp/` and renames into place (atomic on one
filesystem); a remote store uploads the tree and writes a `_COMPLETE` marker last, and readers treat a
key without its marker as absent. Torch-free: the backend and the worker both use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import fsspec

from worker.engine.atomic import replace_dir

COMPLETE = "_COMPLETE"


class ArtifactStore:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.is_local = "://" not in url or url.startswith("file://")
        if self.is_local:
            self.root = Path(url.removeprefix("file://")).resolve()
            self.root.mkdir(parents=True, exist_ok=True)
        else:
            self.fs, self.base = fsspec.core.url_to_fs(self.url)

    # ---- writing -------------------------------------------------------------------------------

    def staging_dir(self) -> Path:
        """A fresh local directory to build an artifact in (on the store's filesystem when local)."""
        base = self.root / ".tmp" if self.is_local else Path(tempfile.gettempdir()) / "prunescope-staging"
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=base))

    def put_dir(self, local_dir: Path, key: str) -> str:
        """Move a finished local directory to `key`, replacing an older version whole."""
        key = _clean(key)
        if self.is_local:
            dest = self.root / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            replace_dir(local_dir, dest)
        else:
            remote = f"{self.base}/{key}"
            if self.fs.exists(remote):
                self.fs.rm(remote, recursive=True)
            self.fs.put(str(local_dir), remote, recursive=True)
            self.fs.pipe_file(f"{remote}/{COMPLETE}", b"")
            shutil.rmtree(local_dir, ignore_errors=True)
        return key

    def delete(self, key: str) -> None:
        key = _clean(key)
        if self.is_local:
            shutil.rmtree(self.root / key, ignore_errors=True)
        elif self.fs.exists(f"{self.base}/{key}"):
            self.fs.rm(f"{self.base}/{key}", recursive=True)

    # ---- reading -------------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        key = _clean(key)
        if self.is_local:
            return (self.root / key).is_dir()
        return self.fs.exists(f"{self.base}/{key}/{COMPLETE}")

    def local_dir(self, key: str, cache: Path | None = None) -> Path:
        """A local directory holding the artifact (downloaded into `cache` for a remote store)."""
        key = _clean(key)
        if self.is_local:
            path = self.root / key
            if not path.is_dir():
                raise FileNotFoundError(f"artifact {key} not found")
            return path
        if not self.exists(key):
            raise FileNotFoundError(f"artifact {key} not found")
        dest = (cache or Path(tempfile.gettempdir()) / "prunescope-cache") / key
        if not dest.is_dir():
            tmp = Path(tempfile.mkdtemp(dir=dest.parent if dest.parent.exists() else None))
            self.fs.get(f"{self.base}/{key}/", str(tmp), recursive=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
        return dest

    def size(self, key: str) -> int:
        path = self.local_dir(key)
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _clean(key: str) -> str:
    parts = [p for p in key.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") or p.startswith(".tmp") for p in parts):
        raise ValueError(f"bad artifact key {key!r}")
    return "/".join(parts)
