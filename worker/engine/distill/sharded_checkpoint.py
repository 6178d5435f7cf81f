"""Checkpoints of a run on N ranks: `torch.distributed.checkpoint` (DCP), atomic, reshardable.

Layout under the checkpoint directory (a filesystem every rank sees):

- `checkpoint.dcp/`: the DCP save of the sharded student and optimizer (each rank writes its shards),
  `meta.pt` (rank 0: step, scheduler, data position, history, config) and `rng_<rank>.pt` per rank.
- `checkpoint.json`: the torch-free summary, as in one process, plus `world_size`.

All ranks write into `.checkpoint.dcp.tmp`; after a barrier rank 0 moves the old checkpoint aside,
renames the new one into place and deletes the old one, so a crash leaves a complete checkpoint
(`checkpoint.dcp`, or `.checkpoint.dcp.old` if it struck between the two renames; loading takes
either). DCP reshards on load, so a run may resume on a different number of ranks, one process included;
a one-process checkpoint loads into N ranks through `load_full_into_sharded`.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch

from worker.engine.distill.checkpoint import (
    SUMMARY_FILE,
    _atomic_json,
    read_state_file,
    rng_state,
    set_rng_state,
)

SHARDED_DIR = "checkpoint.dcp"
META_FILE = "meta.pt"


def sharded_checkpoint_path(directory: str | os.PathLike) -> Path | None:
    directory = Path(directory)
    for name in (SHARDED_DIR, f".{SHARDED_DIR}.old"):
        if (directory / name / META_FILE).is_file():
            return directory / name
    return None


def _states(student, optimizer):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optim = get_state_dict(student, optimizer)
    return {"model": model, "optim": optim}


def save_sharded(directory: str | os.PathLike, ctx, meta: dict, student, optimizer) -> Path:
    import torch.distributed.checkpoint as dcp

    directory = Path(directory)
    final, tmp, old = (directory / n for n in (SHARDED_DIR, f".{SHARDED_DIR}.tmp", f".{SHARDED_DIR}.old"))
    if ctx.is_main:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a crashed save's leftovers
    ctx.barrier()
    dcp.save(_states(student, optimizer), checkpoint_id=str(tmp))
    torch.save(rng_state(), tmp / f"rng_{ctx.rank}.pt")
    if ctx.is_main:
        torch.save(dict(meta, world_size=ctx.world_size), tmp / META_FILE)
    ctx.barrier()
    if ctx.is_main:
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        summary = {k: meta[k] for k in ("step", "tokens", "elapsed", "stopped", "finished") if k in meta}
        _atomic_json(
            dict(summary, config=meta.get("config"), world_size=ctx.world_size, nodes=ctx.nodes),
            directory / SUMMARY_FILE,
        )
    ctx.barrier()
    return final


def read_sharded_meta(directory: str | os.PathLike) -> dict | None:
    path = sharded_checkpoint_path(directory)
    if path is None:
        return None
    return read_state_file(path / META_FILE)


def load_sharded(directory: str | os.PathLike, ctx, student, optimizer) -> None:
    """Load weights, optimizer and RNG states into this rank (any number of ranks: DCP reshards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = sharded_checkpoint_path(directory)
    states = _states(student, optimizer)
    with warnings.catch_warnings():  # in one process DCP warns that it loads without a process group
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(states, checkpoint_id=str(path))
    set_state_dict(student, optimizer, model_state_dict=states["model"], optim_state_dict=states["optim"])
    saved_ranks = len(list(path.glob("rng_*.pt")))
    # RNG streams are per rank; with another world size rank r takes saved rank r mod the old count.
    rng = read_state_file(path / f"rng_{ctx.rank % saved_ranks}.pt")
    set_rng_state(rng)


def remove_sharded(directory: str | os.PathLike) -> None:
    for name in (SHARDED_DIR, f".{SHARDED_DIR}.old"):
        shutil.rmtree(Path(directory) / name, ignore_errors=True)


def load_full_into_sharded(state: dict, student, optimizer) -> None:
    """A one-process checkpoint (full state dicts) into this rank's shards of the student and optimizer.

    The plain optimizer state is keyed by parameter index (the optimizer's order: the student's
    trainable parameters); torch.distributed.checkpoint's full optimizer state dict by parameter name.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(student, state["student"], options=full)
    names = [name for name, p in student.named_parameters() if p.requires_grad]
    plain = state["optimizer"]
    by_name = {
        "state": {names[i]: value for i, value in plain["state"].items()},
        "param_groups": [dict(g, params=[names[i] for i in g["params"]]) for g in plain["param_groups"]],
    }
    set_optimizer_state_dict(student, optimizer, optim_state_dict=by_name, options=full)
    set_rng_state(state["rng"])
