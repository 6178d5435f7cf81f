"""One process or N ranks (torchrun, or SLURM `srun`): who am I, and the collectives the engine uses.

`DistributedContext()` is the single-process context: every collective is the identity, so code written
against it reads the same either way. `DistributedContext.from_environment()` under torchrun (or `srun`
with MASTER_ADDR/MASTER_PORT set) joins the process group: gloo on CPU, NCCL on CUDA, with a collective
timeout (PRUNESCOPE_DIST_TIMEOUT_S, default 600 s, read in `worker.engine.env`) so a dead or hung rank
fails the job instead of hanging it. It is built on `torch.distributed` alone: no home-made exchange.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from datetime import timedelta

import torch

from worker.engine.env import dist_timeout_s
from worker.engine.launch import launched_ranks


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    nodes: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mesh: object = None  # a DeviceMesh when distributed
    placement: dict = field(default_factory=dict)  # how the models were placed (reported)

    @property
    def distributed(self) -> bool:
        return self.mesh is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str = "cpu", timeout_s: float | None = None) -> DistributedContext:
        """Join the launcher's process group, or the single-process context when not launched."""
        ranks = launched_ranks()
        if ranks is None:
            return cls(device=torch.device(device))
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        if "RANK" not in os.environ and ranks["rank"] == 0:  # SLURM's variables: say what is awaited
            print(
                f"[ranks] SLURM task 0 of {ranks['world_size']}: waiting for the others at "
                f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '?')} (outside an srun step, "
                "unset SLURM_PROCID to run one process)",
                file=sys.stderr,
                flush=True,
            )
        for key, name in (("rank", "RANK"), ("world_size", "WORLD_SIZE"), ("local_rank", "LOCAL_RANK")):
            os.environ.setdefault(name, str(ranks[key]))  # srun: init_process_group reads env://
        kind = torch.device(device).type
        if kind == "cuda":
            torch.cuda.set_device(ranks["local_rank"])
            dev = torch.device("cuda", ranks["local_rank"])
        else:
            dev = torch.device("cpu")
        timeout = timeout_s or dist_timeout_s()
        if not dist.is_initialized():
            # CUDA: NCCL for the tensors on the GPU, gloo beside it for the small CPU collectives (stop
            # flags, metric means, DCP's planning); NCCL alone refuses a CPU tensor (seen on an H200).
            backend = "cpu:gloo,cuda:nccl" if kind == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        mesh = init_device_mesh(kind, (ranks["world_size"],))
        return cls(
            rank=ranks["rank"],
            world_size=ranks["world_size"],
            local_rank=ranks["local_rank"],
            nodes=max(1, ranks["world_size"] // max(1, ranks["local_world_size"])),
            device=dev,
            mesh=mesh,
        )

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.mesh = None

    def describe(self) -> dict:
        return {"world_size": self.world_size, "nodes": self.nodes, **self.placement}

    def peak_memory_per_rank(self) -> list[int]:
        """Every rank's peak memory so far, in rank order (collective): CUDA's peak allocated bytes on
        the rank's device, on CPU the process's peak resident set."""
        if self.device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            import resource

            peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB
        return [int(p) for p in self.gather_objects(peak)]

    # -- collectives (the identity in one process) ------------------------------------------------

    def mean(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def sum(self, values: list[float]) -> list[float]:
        return [v * self.world_size for v in self.mean(values)]

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any (a stop seen by one rank stops them all)."""
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def gather_objects(self, obj) -> list:
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum_(self, tensors) -> None:
        """Sum each tensor over the ranks, in place."""
        if self.distributed:
            import torch.distributed as dist

            for t in tensors:
                dist.all_reduce(t)

    def local_rows(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch: rank, rank + W, ..."""
        return batch[self.rank :: self.world_size]

    @staticmethod
    def scalar(value) -> float:
        """A float from a tensor that may be a DTensor (FSDP's gradient norm)."""
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        return float(value)
