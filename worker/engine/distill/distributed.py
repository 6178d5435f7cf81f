"""One process or N ranks: what the distillation loop needs to know about where it runs.

`DistributedContext()` is the single-process context: every method is the identity (or a plain local
call), so the loop reads the same either way. `DistributedContext.from_environment()` under torchrun
(or SLURM `srun` with MASTER_ADDR/MASTER_PORT set) joins the process group (gloo on CPU, NCCL on CUDA,
with a collective timeout so a dead or hung rank fails the job instead of hanging it) and shards the
student with FSDP2 (`fully_shard` per decoder layer, then the rest), the teacher too or replicated.

Data: `batch_size` is the *global* batch. Each rank takes rows rank, rank + W, ... of it (a token stream
built with this rank and world size yields exactly those blocks), so N ranks see the samples a single
process sees. Every training block is a full block of real tokens, so each rank's token-weighted mean
has the same denominator (B / W x (S - 1)) and FSDP's mean reduction of the gradients is the global
token mean, as in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

import torch
from torch import nn

from worker.engine.adapters import adapter_for
from worker.engine.distill.config import DistillConfig
from worker.engine.distill.losses import LossWeights

TIMEOUT_ENV = "PRUNESCOPE_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
# "auto" replicates the teacher when a full copy takes at most this share of the memory left per rank.
REPLICATE_SHARE = 0.25


class LossModule(nn.Module):
    """The student's (and teacher's) forward plus the chunked loss, as one module call.

    Under FSDP2 the LM heads' weights must be unsharded while the chunked loss reads them, which holds
    only inside the forward of the module that owns them: this module is the FSDP root. A replicated
    teacher is held outside the module tree so the root does not shard it.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None, *, shard_teacher: bool):
        super().__init__()
        self.student = student
        if shard_teacher:
            self.teacher = teacher
        else:
            self.__dict__["teacher"] = teacher  # not a submodule: FSDP leaves it whole

    def forward(self, ids, weights: LossWeights, config: DistillConfig, use_teacher: bool = True):
        from worker.engine.distill.loop import batch_loss

        return batch_loss(self.student, self.teacher if use_teacher else None, ids, weights, config)


def _env_int(*names: str) -> int | None:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
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
    per_node = _env_int(env[3]) or world
    return {"rank": rank, "world_size": world, "local_rank": local, "local_world_size": per_node}


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

        for key, name in (("rank", "RANK"), ("world_size", "WORLD_SIZE"), ("local_rank", "LOCAL_RANK")):
            os.environ.setdefault(name, str(ranks[key]))  # srun: init_process_group reads env://
        kind = torch.device(device).type
        if kind == "cuda":
            torch.cuda.set_device(ranks["local_rank"])
            dev = torch.device("cuda", ranks["local_rank"])
        else:
            dev = torch.device("cpu")
        timeout = timeout_s or float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if kind == "cuda" else "gloo", timeout=timedelta(seconds=timeout))
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

    @staticmethod
    def scalar(value) -> float:
        """A float from a tensor that may be a DTensor (FSDP's gradient norm)."""
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        return float(value)

    # -- data -------------------------------------------------------------------------------------

    def check(self, config: DistillConfig) -> None:
        if config.batch_size % self.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} (the global batch) must be a multiple of the "
                f"{self.world_size} ranks; use {config.batch_size // self.world_size * self.world_size or self.world_size}"
            )
        if self.distributed and config.teacher_correction_steps:
            raise ValueError("teacher correction runs in one process only; correct the teacher first")

    def local_rows(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[self.rank :: self.world_size]

    def local_batch(self, data, index: int, batch_size: int, seed: int) -> torch.Tensor:
        """This rank's rows of global batch `index` (a token stream is already sharded by rank)."""
        if hasattr(data, "load_state_dict"):
            if (data.rank, data.world_size) != (self.rank, self.world_size):
                raise ValueError(
                    f"the token stream is for rank {data.rank} of {data.world_size}, "
                    f"this is rank {self.rank} of {self.world_size}"
                )
            return data.batch(index, batch_size // self.world_size, seed)
        return self.local_rows(data.batch(index, batch_size, seed))

    def stream_position(self, data) -> dict | None:
        """The stream's position at the global batch boundary: the last rank's (it has read every block
        of the batches served), the same whatever the number of ranks, so a resume may reshard it."""
        if not hasattr(data, "state_dict"):
            return None
        return self.gather_objects(data.state_dict())[-1]

    def localize_stream_position(self, saved: dict | None) -> dict | None:
        if saved is None:
            return None
        fingerprint = dict(saved.get("fingerprint", {}), rank=self.rank, world_size=self.world_size)
        return dict(saved, fingerprint=fingerprint)

    # -- models -----------------------------------------------------------------------------------

    def teacher_placement(self, teacher: nn.Module | None, choice: str) -> Literal["replicate", "shard"]:
        if teacher is None or not self.distributed:
            self.placement = {"teacher": "replicate" if teacher is not None else None}
            return "replicate"
        if choice != "auto":
            self.placement = {"teacher": choice, "teacher_reason": "asked for"}
            return choice
        size = sum(p.numel() * p.element_size() for p in teacher.parameters())
        if self.device.type == "cuda":
            free = torch.cuda.mem_get_info(self.device)[0]
        else:
            per_node = max(1, self.world_size // self.nodes)
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // per_node
        chosen = "replicate" if size <= REPLICATE_SHARE * free else "shard"
        self.placement = {
            "teacher": chosen,
            "teacher_reason": f"a full teacher copy is {size / 2**30:.2f} GiB, {free / 2**30:.1f} GiB free per rank",
        }
        return chosen

    def prepare(self, student: nn.Module, teacher: nn.Module | None, config: DistillConfig) -> LossModule:
        """The module whose forward gives the losses; under torchrun the student is FSDP2-sharded."""
        shard_teacher = self.teacher_placement(teacher, config.teacher_placement) == "shard"
        module = LossModule(student, teacher, shard_teacher=shard_teacher)
        if not self.distributed:
            return module
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy()
        if self.device.type == "cuda" and config.bf16:  # bf16 compute, fp32 gradient reduction
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in adapter_for(student).layers(student):
            fully_shard(layer, mesh=self.mesh, mp_policy=mp)
        if teacher is not None:
            if shard_teacher:  # forward only: each layer gathered for its forward, freed after
                for layer in adapter_for(teacher).layers(teacher):
                    fully_shard(layer, mesh=self.mesh, mp_policy=mp)
            else:
                teacher.to(self.device)
        fully_shard(module, mesh=self.mesh, mp_policy=mp)
        return module

    def set_gradient_sync(self, module: nn.Module, enabled: bool) -> None:
        """Reduce gradients only after the last micro-batch of an accumulation (they sum locally)."""
        if self.distributed:
            module.set_requires_gradient_sync(enabled)

    def full_state_dict(self, student: nn.Module) -> dict | None:
        """The student's whole state dict on CPU on the main rank (None on the others)."""
        if not self.distributed:
            return student.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(
            student, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return state if self.is_main else None
