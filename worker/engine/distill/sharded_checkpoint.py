"""Checkpoints of a run on N ranks: `torch.distributed.checkpoint` (DCP), atomic, reshardable.

Layout under the checkpoint directory (a filesystem every rank sees):

- `checkpoint.dcp/`: the DCP save of the sharded student and optimizer (each rank writes its shards),
  `meta.pt` (rank 0: step, scheduler, data position, history, config) and `rng_<rank>.pt` per rank.
- `checkpoint.json`: the torch-free summary, as in one process, plus `world_size`.

All ranks write into `.checkpoint.dcp.tmp`; after a barrier rank 0 moves the old checkpoint aside,
renames the new one into place and deletes the old one, so a crash leaves a complete checkpoint
(`checkpoint.dcp`, or `.checkpoint.dcp.old` if it struck between the two renames; loading takes
either). DCP reshards on load, so a run may resume on a different number of ranks.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from worker.engine.distill.checkpoint import SUMMARY_FILE, _atomic_json, rng_state, set_rng_state

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
    return torch.load(path / META_FILE, map_location="cpu", weights_only=True)


def load_sharded(directory: str | os.PathLike, ctx, student, optimizer) -> None:
    """Load weights, optimizer and RNG states into this rank (any number of ranks: DCP reshards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = sharded_checkpoint_path(directory)
    states = _states(student, optimizer)
    dcp.load(states, checkpoint_id=str(path))
    set_state_dict(student, optimizer, model_state_dict=states["model"], optim_state_dict=states["optim"])
    saved_ranks = len(list(path.glob("rng_*.pt")))
    # RNG streams are per rank; with another world size rank r takes saved rank r mod the old count.
    rng = torch.load(path / f"rng_{ctx.rank % saved_ranks}.pt", map_location="cpu", weights_only=True)
    set_rng_state(rng)
