"""Swap a finished file or directory into place, so readers see the old version or the new one, never a mix.

Torch-free (the backend's artifact store uses it too; `torch_save` imports torch only when called).
Every writer builds its output under a temporary name on the same filesystem first; `replace_dir` and
`write_file` are the one place that then renames it in. Temporary names are unique per call (pid and a
random part), so two processes saving the same path never write into one temporary file.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def replace_dir(new: Path, target: Path) -> Path:
    """Rename the directory `new` to `target`, replacing an existing `target` whole."""
    old = None
    if target.exists():  # move the old one aside first: os.replace cannot overwrite a non-empty dir
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def write_file(path: Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a unique temporary name beside `path`, then rename it over `path`; on any
    error the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def torch_save(obj, path: Path) -> Path:
    """`torch.save(obj, path)`, atomically (`write_file`)."""
    import torch

    return write_file(path, lambda tmp: torch.save(obj, tmp))
