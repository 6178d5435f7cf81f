"""The distillation on one process or N ranks: `DistillContext` (a `worker.engine.distributed` context).

In one process every method is the identity or a plain local call, so the loop reads the same either
way. Under torchrun it shards the student with FSDP2 (`fully_shard` per decoder layer, then the rest),
the teacher too (forward only) or replicated, by `teacher_placement`.

Data: `batch_size` is the *global* batch. Each rank takes rows rank, rank + W, ... of it (a token stream
built with this rank and world size yields exactly those blocks), so N ranks see the samples a single
process sees. Every training block is a full block of real tokens, so each rank's token-weighted mean
has the same denominator (B / W x (S - 1)) and FSDP's mean reduction of the gradients is the global
token mean, as in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from worker.engine.adapters import adapter_for
from worker.engine.distill.config import DistillConfig
from worker.engine.distill.losses import LossWeights
from worker.engine.distributed import DistributedContext
from worker.engine.streaming import is_token_stream

# "auto" replicates the teacher when the planner's step estimate with a whole teacher per rank takes at
# most this share of the memory free on the tightest rank (the rest: fragmentation, the planner's error,
# other processes on a CPU host).
REPLICATE_SHARE = 0.8


def plan_teacher_placement(
    student_spec,
    teacher_spec,
    config: DistillConfig,
    seq_len: int,
    world_size: int,
    device_type: str,
    free: int,
) -> tuple[Literal["replicate", "shard"], str]:
    """The memory planner's choice (worker.engine.memplan, the estimate the API sizes jobs by): replicate
    when a step with a whole teacher on every rank takes at most REPLICATE_SHARE of `free` (the tightest
    rank's free bytes), else shard the teacher (forward only: each layer gathered, then freed)."""
    from worker.engine import memplan

    sharded = memplan.distill_memory(
        student_spec,
        teacher_spec,
        batch_size=config.batch_size,
        seq_len=seq_len,
        weights_dtype=config.weights_dtype,
        gradient_checkpointing=config.gradient_checkpointing,
        device=device_type,
        autocast_bf16=config.bf16,
        num_gpus=world_size,
    )["total"]
    whole = teacher_spec.param_count()["total"] * memplan.dtype_bytes(config.weights_dtype)
    replicated = sharded + whole - whole // world_size  # a whole copy instead of one shard
    chosen = "replicate" if replicated <= REPLICATE_SHARE * free else "shard"
    fmt = memplan.format_bytes
    reason = (
        f"memory planner: {fmt(replicated)} per rank with the teacher replicated, {fmt(sharded)} with it "
        f"sharded; {fmt(free)} free on the tightest rank (replicated up to {REPLICATE_SHARE:.0%} of it)"
    )
    return chosen, reason


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


@dataclass
class DistillContext(DistributedContext):
    # -- data -------------------------------------------------------------------------------------

    def check(self, config: DistillConfig) -> None:
        if config.batch_size % self.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} (the global batch) must be a multiple of the "
                f"{self.world_size} ranks; use {config.batch_size // self.world_size * self.world_size or self.world_size}"
            )

    def local_batch(self, data, index: int, batch_size: int, seed: int) -> torch.Tensor:
        """This rank's rows of global batch `index` (a token stream is already sharded by rank)."""
        if is_token_stream(data):
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
        if not is_token_stream(data):
            return None
        return self.gather_objects(data.state_dict())[-1]

    def localize_stream_position(self, saved: dict | None) -> dict | None:
        if saved is None:
            return None
        fingerprint = dict(saved.get("fingerprint", {}), rank=self.rank, world_size=self.world_size)
        return dict(saved, fingerprint=fingerprint)

    # -- models -----------------------------------------------------------------------------------

    def teacher_placement(
        self, student: nn.Module, teacher: nn.Module | None, config: DistillConfig, seq_len: int
    ) -> Literal["replicate", "shard"]:
        """Replicate the teacher (no all-gathers in its forward) when the memory planner's estimate of a
        step with a whole teacher on every rank fits the smallest free memory over the ranks, else shard
        it (forward only). Reported as `teacher_placement` and `teacher_placement_reason`."""
        if teacher is None or not self.distributed:
            self.placement = {"teacher_placement": "replicate" if teacher is not None else None}
            return "replicate"
        choice = config.teacher_placement
        if choice != "auto":
            self.placement = {"teacher_placement": choice, "teacher_placement_reason": "asked for"}
            return choice
        from worker.engine.adapters import arch_spec

        if self.device.type == "cuda":
            free = torch.cuda.mem_get_info(self.device)[0]
        else:
            per_node = max(1, self.world_size // self.nodes)
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // per_node
        free = min(self.gather_objects(free))  # one decision for all ranks: sharding is collective
        chosen, reason = plan_teacher_placement(
            arch_spec(student), arch_spec(teacher), config, seq_len, self.world_size, self.device.type, free
        )
        self.placement = {"teacher_placement": chosen, "teacher_placement_reason": reason}
        return chosen

    def prepare(
        self, student: nn.Module, teacher: nn.Module | None, config: DistillConfig, seq_len: int = 2048
    ) -> LossModule:
        """The module whose forward gives the losses; under torchrun the student is FSDP2-sharded."""
        shard_teacher = self.teacher_placement(student, teacher, config, seq_len) == "shard"
        module = LossModule(student, teacher, shard_teacher=shard_teacher)
        if not self.distributed:
            return module
        from torch.distributed.fsdp import fully_shard

        mp = self._mixed_precision(config)
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

    # -- live figures -----------------------------------------------------------------------------

    def rank_figures(self, tokens_per_s: float, step_s: float) -> list[dict]:
        """Every rank's [tokens/s, peak memory bytes, step seconds] of its last step, in rank order, with
        one small all_gather (collective: every rank calls it at the same steps). Peak memory as in
        `peak_memory_per_rank`: CUDA's peak allocated bytes, on CPU the process's peak resident set."""
        if self.device.type == "cuda":
            peak = float(torch.cuda.max_memory_allocated(self.device))
        else:
            import resource

            peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB
        mine = torch.tensor([tokens_per_s, peak, step_s], dtype=torch.float64)
        rows = [mine]
        if self.distributed:
            import torch.distributed as dist

            rows = [torch.empty_like(mine) for _ in range(self.world_size)]
            dist.all_gather(rows, mine)  # a CPU tensor: gloo (beside NCCL on CUDA)
        return [
            {"rank": r, "tokens_per_s": float(t), "peak_memory_bytes": int(m), "step_s": float(s)}
            for r, (t, m, s) in enumerate(row.tolist() for row in rows)
        ]

    def _mixed_precision(self, config: DistillConfig):
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if self.device.type == "cuda" and config.bf16:  # bf16 compute, fp32 gradient reduction
            return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        return MixedPrecisionPolicy()

    def prepare_alone(self, model: nn.Module, config: DistillConfig) -> LossModule:
        """The loss module of a model trained alone on CE (the teacher's correction): under torchrun
        FSDP2-sharded in place like the student (per decoder layer, then the root)."""
        module = LossModule(model, None, shard_teacher=False)
        if self.distributed:
            from torch.distributed.fsdp import fully_shard

            mp = self._mixed_precision(config)
            for layer in adapter_for(model).layers(model):
                fully_shard(layer, mesh=self.mesh, mp_policy=mp)
            fully_shard(module, mesh=self.mesh, mp_policy=mp)
        return module

    def copy_full_weights(self, sharded: nn.Module, target: nn.Module) -> None:
        """`sharded`'s weights into the plain `target` on every rank, gathered one tensor at a time
        (collective: each DTensor's full_tensor is an all-gather, in the same order on every rank)."""
        into = target.state_dict()
        with torch.no_grad():
            for name, value in sharded.state_dict().items():
                if hasattr(value, "full_tensor"):
                    value = value.full_tensor()
                into[name].copy_(value)

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
