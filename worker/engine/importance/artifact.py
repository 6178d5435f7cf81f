"""The importance artifact on disk: one directory, written atomically, read back without torch.

    RUN_DIR/
      scores.safetensors   every running sum (float32) and loss sum, by name (see `result.py`)
      manifest.json        provenance: model, weights hash, data, samples, seq len, seed, scans, block
                           size, library versions, creation time, evaluation counts, array index

The directory is first written as a hidden sibling temp dir, then renamed into place, so a reader never
sees half an artifact. An existing artifact at the target is replaced; any other non-empty directory
is refused (it is not ours to delete).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from worker.engine.atomic import replace_dir

FORMAT = "prunescope-importance/1"
SCORES_FILE = "scores.safetensors"
MANIFEST_FILE = "manifest.json"


def is_artifact(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def write_artifact(directory: str | os.PathLike, arrays: dict[str, np.ndarray], manifest: dict) -> Path:
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"output {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not is_artifact(target):
        raise FileExistsError(f"output directory {target} is not empty and holds no importance artifact")
    target.parent.mkdir(parents=True, exist_ok=True)
    manifest = {**manifest, "format": FORMAT, "arrays": {k: list(v.shape) for k, v in arrays.items()}}
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(temp / SCORES_FILE))
        (temp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        replace_dir(temp, target)  # an empty dir or a previous artifact there is replaced
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return target


def read_artifact(directory: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"importance artifact {path} not found")
    if not is_artifact(path):
        raise ValueError(f"{path} is not an importance artifact (no {MANIFEST_FILE} of format {FORMAT})")
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    scores = path / SCORES_FILE
    if not scores.is_file():
        raise FileNotFoundError(f"importance artifact {path} has no {SCORES_FILE}")
    try:
        return load_file(str(scores)), manifest
    except SafetensorError as exc:  # truncated or overwritten: name the file, no traceback
        raise ValueError(f"importance artifact {path}: {SCORES_FILE} is damaged ({exc})") from None
