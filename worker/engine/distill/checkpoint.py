"""Atomic training checkpoints: everything needed to continue a run exactly.

One file, `checkpoint.pt` (student weights, optimizer, scheduler, RNG states, step, data position,
metric history), written to a temporary name and renamed over the old one, so a crash or a kill
leaves either the previous checkpoint or the new one, never half of one. `checkpoint.json` beside it
is a torch-free summary (step, tokens, time) for the platform. A corrected teacher is stored once in
`corrected_teacher.pt`.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path

import torch

from worker.engine import atomic

CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "checkpoint.json"
TEACHER_FILE = "corrected_teacher.pt"


def _atomic_json(obj: dict, path: Path) -> None:
    atomic.write_file(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True)))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | os.PathLike, state: dict) -> Path:
    """Write `state` (see `distill`) atomically; returns the checkpoint path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    atomic.torch_save(state, path)
    summary = {k: state[k] for k in ("step", "tokens", "elapsed", "stopped", "finished") if k in state}
    summary["config"] = state.get("config")
    _atomic_json(summary, directory / SUMMARY_FILE)
    return path


def read_state_file(path: Path, map_location="cpu", *, weights_only: bool = True):
    """`torch.load` of one checkpoint file; a truncated or foreign file is a ValueError naming it (torch
    raises RuntimeError, UnpicklingError or EOFError, with a traceback's worth of advice)."""
    try:
        # Python's RNG state is a tuple of ints: plain containers, so weights_only loading is enough.
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, KeyError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]  # no advice
        raise ValueError(
            f"cannot resume: {path} is damaged or not a checkpoint ({detail}); "
            "remove the work directory to start over"
        ) from None


def load_checkpoint(directory: str | os.PathLike, map_location="cpu") -> dict | None:
    path = Path(directory) / CHECKPOINT_FILE
    if not path.exists():
        return None
    return read_state_file(path, map_location)


def save_teacher(directory: str | os.PathLike, teacher: torch.nn.Module) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic.torch_save(teacher.state_dict(), directory / TEACHER_FILE)


def load_teacher_into(directory: str | os.PathLike, teacher: torch.nn.Module) -> bool:
    path = Path(directory) / TEACHER_FILE
    if not path.exists():
        return False
    teacher.load_state_dict(read_state_file(path))
    return True


# ---- either format: one file in one process, DCP directories under torchrun (sharded_checkpoint.py) ----
# A run may resume in the other mode: a one-process checkpoint under N ranks (the full state dicts are
# loaded into the sharded student and optimizer) and a sharded one in one process (DCP loads without a
# process group). Saving in one format removes the other's checkpoint, so only the newest is read.


def saved_format(directory: str | os.PathLike) -> str | None:
    """ "plain" (checkpoint.pt), "sharded" (checkpoint.dcp) or None; the newer file when both are there
    (a crash between a save and the removal of the other format)."""
    from worker.engine.distill.sharded_checkpoint import META_FILE, sharded_checkpoint_path

    plain, sharded = Path(directory) / CHECKPOINT_FILE, sharded_checkpoint_path(directory)
    if plain.exists() and sharded is not None:
        return "plain" if plain.stat().st_mtime >= (sharded / META_FILE).stat().st_mtime else "sharded"
    return "plain" if plain.exists() else "sharded" if sharded is not None else None


def saved_step(directory: str | os.PathLike) -> int | None:
    """The step of the checkpoint in `directory`, from its torch-free summary (None: no summary)."""
    try:
        return int(_summary(directory)["step"])
    except (OSError, KeyError, TypeError, ValueError):  # missing, unreadable or not a summary
        return None


def saved_steps(directory: str | os.PathLike) -> int | None:
    """The planned steps (`config.steps`) of the run the checkpoint in `directory` belongs to (None:
    not recorded): a resume may change them, which reshapes the learning-rate schedule."""
    try:
        return int(_summary(directory)["config"]["steps"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _summary(directory: str | os.PathLike) -> dict:
    return json.loads((Path(directory) / SUMMARY_FILE).read_text())


def remove_training_state(directory: str | os.PathLike) -> None:
    """Remove an earlier run's checkpoint (either format, with its summary and corrected teacher), so that
    the directory never mixes two runs' files. Other files (the platform's rank logs) stay."""
    from worker.engine.distill.sharded_checkpoint import SHARDED_DIR

    directory = Path(directory)
    for name in (CHECKPOINT_FILE, SUMMARY_FILE, TEACHER_FILE):
        (directory / name).unlink(missing_ok=True)
    for name in (SHARDED_DIR, f".{SHARDED_DIR}.old", f".{SHARDED_DIR}.tmp"):
        shutil.rmtree(directory / name, ignore_errors=True)


def read_training_state(directory: str | os.PathLike, ctx) -> dict | None:
    """The saved run's metadata (a one-process checkpoint: everything) or None; weights load in
    `restore_training_state`."""
    found = saved_format(directory)
    if found == "sharded":
        from worker.engine.distill.sharded_checkpoint import read_sharded_meta

        return read_sharded_meta(directory)
    return load_checkpoint(directory) if found == "plain" else None


def restore_training_state(directory, ctx, state: dict, student, optimizer) -> None:
    """Student weights, optimizer and RNG states from the checkpoint `state` came from, whichever mode
    wrote it."""
    if "student" not in state:  # sharded: DCP reshards to any number of ranks, one process included
        from worker.engine.distill.sharded_checkpoint import load_sharded

        load_sharded(directory, ctx, student, optimizer)
        return
    if ctx.distributed:
        from worker.engine.distill.sharded_checkpoint import load_full_into_sharded

        load_full_into_sharded(state, student, optimizer)
        return
    try:
        student.load_state_dict(state["student"])
    except RuntimeError as exc:  # a checkpoint of another architecture
        raise ValueError(
            f"cannot resume: the checkpoint does not fit this student ({exc})".splitlines()[0]
        ) from None
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])


def save_training_state(directory, ctx, meta: dict, student, optimizer) -> Path:
    """`meta` (step, scheduler, data position, history...) with the weights, optimizer and RNG states."""
    from worker.engine.distill.sharded_checkpoint import remove_sharded, save_sharded

    if ctx.distributed:
        path = save_sharded(directory, ctx, meta, student, optimizer)
        if ctx.is_main:
            (Path(directory) / CHECKPOINT_FILE).unlink(missing_ok=True)  # a one-process run's, now older
        return path
    full = {**meta, "student": student.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state()}
    path = save_checkpoint(directory, full)
    remove_sharded(directory)  # a run on N ranks before this one resumed here: its checkpoint is older
    return path
