"""Whether this process is one rank of several (torchrun, or SLURM `srun`), read from the launcher's
environment without torch (the CLI asks before it imports anything heavy), and which rank of a node
prints an error every rank hits (`first_to_say`)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path


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


def first_to_say(message: str) -> bool:
    """Whether this process is the first of its launch's ranks on this node to say `message`. The ranks
    of a node check the same arguments against the same files, so a bad input fails them all alike and
    would be printed once per rank; a message only one rank hits (its device, its shard) is its own and
    still printed. Each message claims a marker file named by its hash (O_EXCL: one rank wins) in a
    folder of this launch. One process, or a node where no marker can be made: always."""
    launch = _launch_id()
    if launch is None:
        return True
    folder = Path(tempfile.gettempdir()) / f"prunescope-said-{launch}"
    marker = folder / hashlib.sha256(message.encode()).hexdigest()[:16]
    try:
        folder.mkdir(exist_ok=True)
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    except OSError:
        return True
    return True


def _launch_id() -> str | None:
    """One launch's ranks on this node, apart from every other launch: their launcher process (torchrun's
    agent, or srun's step daemon: the ranks' parent) by pid and start time (a pid is reused; the pair is
    not), and torchrun's restart count (a restarted attempt says its errors again). None: not a rank."""
    if launched_ranks() is None:
        return None
    parent = os.getppid()
    try:  # field 22 of /proc/PID/stat, after the command in parentheses (which may hold spaces)
        started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "0"
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return f"{os.getuid()}-{parent}-{started}-{restart}"
