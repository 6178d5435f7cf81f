"""Swap a finished directory into place, so readers see the old version or the new one, never a mix.

Torch-free (the backend's artifact store uses it too). Every writer builds its output in a temporary
directory on the same filesystem first; `replace_dir` is the one place that then renames it in.
"""

from __future__ import annotations

import os
import shutil
import uuid
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
