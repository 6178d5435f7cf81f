"""Whether this process is one rank of several (torchrun, or SLURM `srun`), read from the launcher's
environment without torch (the CLI asks before it imports anything heavy), and whether it has joined
their process group yet (`worker.engine.distributed.DistributedContext.from_environment` says so)."""

from __future__ import annotations

import os
import re

# Set when this process starts joining its ranks' process group: before that every rank ran the same
# checks of the same arguments, so an error then is every rank's alike (worker.cli prints it once).
group_joined = False


def _env_int(*names: str) -> int | None:
    for name in names:
        found = re.match(r"\d+", os.environ.get(name, ""))  # SLURM may write "2(x3)": 2 tasks on 3 nodes
        if found:
            return int(found.group())
    return None


def launched_ranks() -> dict | None:
    """rank, world size, local rank and local world size from torchrun or SLURM, or None if neither."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        env = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    elif "SLURM_PROCID" in os.environ and "MASTER_ADDR" in os.environ:  # srun without torchrun
        env = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE")
    else:
        return None
    rank, world = _env_int(env[0]), _env_int(env[1])
    local = _env_int(env[2]) or 0
    per_node = _env_int(env[3]) or _slurm_tasks_per_node(world) or world
    return {"rank": rank, "world_size": world, "local_rank": local, "local_world_size": per_node}


def _slurm_tasks_per_node(world: int) -> int | None:
    """srun sets SLURM_NTASKS_PER_NODE only when asked for it (--ntasks-per-node); the step's node count
    is always there, and tasks spread evenly over it."""
    nodes = _env_int("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
    return max(1, world // nodes) if nodes else None


def first_of_its_node() -> bool:
    """This process is its node's first rank, or no rank at all (one process)."""
    ranks = launched_ranks()
    return ranks is None or ranks["local_rank"] == 0
