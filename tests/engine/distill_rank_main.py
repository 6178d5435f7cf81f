"""One rank of a tiny distillation, for tests/engine/test_distributed_distill.py and bench/.

Run plainly (one process, today's path) or under `torchrun --nproc-per-node N` (FSDP2 over gloo). The
student, teacher and data are the fixed tiny ones of `distill_helpers`, so every launch sees the same
run. Rank 0 writes `student.pt` (the gathered full state dict) and `history.json`; every rank writes
`rank<r>.json` (how it ended) and `pid<r>` (for the fault tests).

    python tests/engine/distill_rank_main.py OUT [--steps 10] [--batch-size 4] [--resume] ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script by torchrun
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.engine.distill_helpers import packed, tiny_llama  # noqa: E402
from worker.engine.distill import DistillConfig, distill  # noqa: E402
from worker.engine.distill.distributed import DistillContext  # noqa: E402
from worker.engine.distill.memory import memory_options  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--teacher-placement", default="auto")
    p.add_argument("--stop-at", type=int, default=0, help="rank 0 alone asks to stop before this step")
    p.add_argument("--hang-at", type=int, default=0, help="the last rank sleeps before this step")
    p.add_argument("--val-batches", type=int, default=2)
    p.add_argument("--intermediate-weight", type=float, default=0.0)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=24)
    p.add_argument("--teacher-correction-steps", type=int, default=0)
    p.add_argument("--log-every", type=int, default=1, help="steps whose metrics carry every rank's figures")
    args = p.parse_args(argv)

    ctx = DistillContext.from_environment()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"pid{ctx.rank}").write_text(str(os.getpid()))
    teacher = tiny_llama(seed=1, layers=args.layers + 1, hidden=args.hidden)
    student = tiny_llama(seed=2, layers=args.layers, hidden=args.hidden)
    train, val = (
        packed("train", seq_len=args.seq_len, docs=4),
        packed("validation", seq_len=args.seq_len, docs=2),
    )
    config = DistillConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=3,
        val_every=5,
        val_batches=args.val_batches,
        chunk_tokens=16,
        seed=5,
        checkpoint_every=args.checkpoint_every,
        teacher_placement=args.teacher_placement,
        gradient_checkpointing=args.gradient_checkpointing,
        intermediate_weight=args.intermediate_weight,
        teacher_correction_steps=args.teacher_correction_steps,
        log_every=args.log_every,
    )
    steps_seen = []

    def should_stop() -> bool:
        steps_seen.append(len(steps_seen))
        step = len(steps_seen) - 1 + start_step[0]
        if args.hang_at and ctx.rank == ctx.world_size - 1 and step >= args.hang_at:
            time.sleep(3600)  # a hung rank: the others must fail, not wait forever
        return ctx.is_main and bool(args.stop_at) and step >= args.stop_at

    start_step = [0]
    if args.resume:
        summary = json.loads((out / "work" / "checkpoint.json").read_text())
        start_step[0] = summary["step"]
    history = []
    with memory_options(student, teacher, config):
        result = distill(
            student,
            teacher,
            train,
            val,
            config,
            callback=history.append,  # train, validation and teacher-correction records (rank 0)
            checkpoint_dir=out / "work",
            resume=args.resume,
            should_stop=should_stop,
            context=ctx,
        )
    state = ctx.full_state_dict(student)
    # the corrected teacher, gathered (the run may have sharded it for the distillation)
    teacher_state = ctx.full_state_dict(result.teacher) if result.teacher is not None else None
    if ctx.is_main:
        import torch

        torch.save(state, out / "student.pt")
        if teacher_state is not None:
            torch.save(teacher_state, out / "teacher.pt")
        (out / "history.json").write_text(
            json.dumps(
                {
                    "history": result.history,
                    "validation": result.validation,
                    "context": ctx.describe(),
                    "correction": [m for m in history if m.get("phase") == "teacher_correction"],
                }
            )
        )
    (out / f"rank{ctx.rank}.json").write_text(
        json.dumps({"steps": result.steps_completed, "stopped": result.stopped, "placement": ctx.placement})
    )
    # Every rank's files are written before any exits: a rank exiting 3 (stopped) makes torchrun's agent
    # terminate the ranks still running.
    ctx.barrier()
    ctx.close()
    return 3 if result.stopped else 0


if __name__ == "__main__":
    from tests.engine.torchrun_helpers import exit_fast

    exit_fast(main)  # a rank's torch teardown costs seconds under load, for nothing the tests check
