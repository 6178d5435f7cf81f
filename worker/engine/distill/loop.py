"""The distillation loop: logit KD from a frozen teacher (or a CE-only baseline), with exact resume.

Data order is a pure function of the step (`PackedTokens.batch(step * grad_accum + micro, ...)`), and
the checkpoint holds weights, optimizer, scheduler and RNG states, so stopping after step k and resuming
replays steps k+1.. exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from worker.engine.distill.checkpoint import (
    load_teacher_into,
    read_training_state,
    restore_training_state,
    save_teacher,
    save_training_state,
)
from worker.engine.distill.config import DistillConfig
from worker.engine.distill.distributed import DistillContext, LossModule
from worker.engine.distill.forward import final_hidden, lm_head
from worker.engine.distill.losses import LossWeights, chunked_distill_loss, cosine_state_loss
from worker.engine.distill.memory import memory_options
from worker.engine.distill.run_inputs import check_inputs, run_inputs
from worker.engine.distill.schedule import lambda_for
from worker.engine.streaming import is_token_stream

Callback = Callable[[dict], None]


@dataclass
class DistillResult:
    steps_completed: int
    stopped: bool  # True when should_stop() ended the run early
    history: list[dict] = field(default_factory=list)  # one metrics dict per step
    validation: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    teacher: torch.nn.Module | None = None  # the corrected teacher, when teacher correction ran
    # Stopped during teacher correction: the correction steps done (nothing of it is saved; a resume runs
    # the correction again, to the same weights: its batches and seeds are fixed).
    correction_stopped_at: int | None = None

    @property
    def final_validation(self) -> dict | None:
        return self.validation[-1] if self.validation else None


def _autocast(device: torch.device, config: DistillConfig):
    if device.type == "cuda" and config.bf16:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch_loss(student, teacher, input_ids, weights: LossWeights, config: DistillConfig):
    """(total, kd, ce, intermediate) of one batch of token blocks [B, S] (next-token targets)."""
    want_states = teacher is not None and config.intermediate_weight > 0
    s_hidden, s_states = final_hidden(student, input_ids, layer_states=want_states)
    t_hidden = t_states = None
    if teacher is not None:
        with torch.no_grad():
            t_hidden, t_states = final_hidden(teacher, input_ids, layer_states=want_states)
    labels = input_ids[:, 1:].reshape(-1)
    total, kd, ce = chunked_distill_loss(
        s_hidden[:, :-1].reshape(-1, s_hidden.shape[-1]),
        lm_head(student),
        labels,
        weights,
        teacher_hidden=None if t_hidden is None else t_hidden[:, :-1].reshape(-1, t_hidden.shape[-1]),
        teacher_head=None if teacher is None else lm_head(teacher),
        chunk_tokens=config.chunk_tokens,
    )
    inter = total.new_zeros(())
    if want_states:
        layer_map = config.layer_map if config.layer_map is not None else list(range(len(s_states)))
        if len(layer_map) != len(s_states):
            raise ValueError(f"layer_map has {len(layer_map)} entries for a {len(s_states)}-layer student")
        inter = cosine_state_loss(s_states, [t_states[i] for i in layer_map], config.hidden_channels)
        total = total + config.intermediate_weight * inter
    return total, kd, ce, inter


@torch.no_grad()
def validate(
    student, teacher, val, config: DistillConfig, *, module: LossModule | None = None, context=None
) -> dict:
    """Token-weighted student CE (and KL to the teacher, tau = 1) on the first validation blocks.

    Under N ranks each takes its rows of every validation batch (`module` is the sharded loss module);
    a rank left without rows runs the batch's first row at weight 0, since every rank must join each
    sharded forward."""
    ctx = context or DistillContext()
    module = module or LossModule(student, teacher, shard_teacher=False)
    device = ctx.device if ctx.distributed else next(student.parameters()).device
    was_training = student.training
    student.eval()
    weights = LossWeights(kd=1.0, ce=1.0, temperature=1.0)
    plain = config.model_copy(update={"intermediate_weight": 0.0})
    sums = [0.0, 0.0, 0.0]  # ce * n, kl * n, n
    try:
        for block in val.sequential(config.batch_size, limit=config.val_batches * config.batch_size):
            rows = ctx.local_rows(block)
            ids = (rows if len(rows) else block[:1]).to(device)
            with _autocast(device, config):
                _, kd, ce, _ = module(ids, weights, plain)
            n = len(rows) * (ids.shape[1] - 1)
            sums = [sums[0] + float(ce) * n, sums[1] + float(kd) * n, sums[2] + n]
    finally:
        student.train(was_training)
    ce_sum, kl_sum, count = ctx.sum(sums)
    count = int(round(count))
    val_loss = ce_sum / max(count, 1)
    return {
        "step": None,
        "val_loss": val_loss,
        "val_ppl": math.exp(min(val_loss, 700.0)),
        "val_kl": kl_sum / max(count, 1) if teacher is not None else None,
        "val_tokens": count,
    }


class CorrectionStopped(Exception):
    """`should_stop` seen during teacher correction, by every rank at the same step (`step` done)."""

    def __init__(self, step: int):
        super().__init__(f"stopped after teacher-correction step {step}")
        self.step = step


def correct_teacher(
    teacher,
    train,
    config: DistillConfig,
    callback: Callback | None = None,
    *,
    context=None,
    should_stop: Callable[[], bool] | None = None,
):
    """Fine-tune the teacher in place on the distillation data (CE) at a fraction of its peak LR.
    `should_stop()` is polled before every step (a correction can take hours on a big teacher): a stop
    raises CorrectionStopped, on every rank at the same step.

    Under N ranks (`context`) it trains an FSDP2-sharded copy on the same global batches (each rank its
    rows, gradients reduced to the global mean, clipping on the full norm), then every rank's `teacher`
    takes the corrected weights (gathered one tensor at a time), so the run can place it as the memory
    planner says; the same numbers as in one process. Only the main rank calls `callback`."""
    ctx = context or DistillContext()
    device = ctx.device if ctx.distributed else next(teacher.parameters()).device
    work = copy.deepcopy(teacher) if ctx.distributed else teacher  # sharded in place by prepare_alone
    module = ctx.prepare_alone(work, config)
    params = [p for p in work.parameters() if p.requires_grad]
    steps = config.teacher_correction_steps
    lr = config.teacher_correction_lr_factor * (config.teacher_peak_lr or config.lr)
    warmup = min(config.warmup_steps, steps // 10)
    optimizer = torch.optim.AdamW(params, lr=lr, betas=config.betas, weight_decay=config.weight_decay)
    # Short warm-up, then constant at the reduced LR (a correction, not a new training run).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup)))
    weights = LossWeights(kd=0.0, ce=1.0)
    emit = (callback if ctx.is_main else None) or (lambda _m: None)
    work.train()
    for step in range(steps):
        if ctx.any(should_stop is not None and should_stop()):
            raise CorrectionStopped(step)
        optimizer.zero_grad(set_to_none=True)
        ce_total = 0.0
        for micro in range(config.grad_accum):
            # A different seed than distillation's so the correction does not pre-view the same order.
            index = step * config.grad_accum + micro
            ids = ctx.local_batch(train, index, config.batch_size, config.seed + 7919).to(device)
            ctx.set_gradient_sync(module, micro == config.grad_accum - 1)
            with _autocast(device, config):
                total, _, ce, _ = module(ids, weights, config, use_teacher=False)
            (total / config.grad_accum).backward()
            ce_total += float(ce.detach()) / config.grad_accum
        (ce_total,) = ctx.mean([ce_total])
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.clip_grad or float("inf"))
        current_lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        emit(
            {
                "phase": "teacher_correction",
                "step": step + 1,
                "ce_loss": ce_total,
                "lr": current_lr,
                "grad_norm": ctx.scalar(grad_norm),
            }
        )
    work.zero_grad(set_to_none=True)
    if ctx.distributed:
        ctx.copy_full_weights(work, teacher)
        del module, work, optimizer
    teacher.eval()
    return teacher


def _check_resume(saved: dict, config: DistillConfig) -> None:
    for name in DistillConfig.RESUME_FIELDS:
        if saved.get(name) != getattr(config, name):
            raise ValueError(
                f"cannot resume: config field {name!r} is {getattr(config, name)!r} but the checkpoint "
                f"was made with {saved.get(name)!r}"
            )


def _restore_stream(train, saved: dict | None) -> None:
    """Put a streamed `train` back where the checkpoint left it (in-memory data needs nothing)."""
    streamed = is_token_stream(train)
    if saved is None and streamed:
        raise ValueError("cannot resume: the checkpoint was made on in-memory data, not a token stream")
    if saved is not None and not streamed:
        raise ValueError("cannot resume: the checkpoint was made on a token stream, not in-memory data")
    if saved is not None:
        train.load_state_dict(saved)


def distill(
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    train,
    val,
    config: DistillConfig | dict | None = None,
    *,
    callback: Callback | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    should_stop: Callable[[], bool] | None = None,
    context: DistillContext | None = None,
) -> DistillResult:
    """Train `student` in place from `teacher` (mode "kd") or on labels alone (mode "ce").

    `train` is `PackedTokens` or a `TokenStream` (whose position the checkpoint keeps); `val` is
    `PackedTokens`. In mode "ce" a given teacher is used only for `val_kl`.
    `callback` gets one dict per step ("phase": "train") and per validation ("phase": "validation");
    teacher-correction steps come first with "phase": "teacher_correction". `should_stop()` is polled
    before every step; when it returns True the loop saves a checkpoint and returns with stopped=True.
    With `resume=True` and a checkpoint in `checkpoint_dir`, the run continues exactly where it stopped
    (a missing checkpoint starts from step 0). The student is left in eval mode.
    `config.weights_dtype` and `config.gradient_checkpointing` are applied here (`memory_options`: both
    models cast in place, checkpointing on for the run and off again).
    `context` (`DistillContext.from_environment()` under torchrun) runs it as one of N ranks:
    `config.batch_size` is then the global batch, the student is FSDP2-sharded (its weights gather with
    `context.full_state_dict`), checkpoints are sharded (DCP) and only rank 0 calls `callback`.
    """
    if config is None:
        config = DistillConfig()
    elif isinstance(config, dict):
        config = DistillConfig.model_validate(config)
    if config.mode == "kd" and teacher is None:
        raise ValueError("mode 'kd' needs a teacher (use mode 'ce' for the baseline without one)")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    with memory_options(student, teacher, config):
        return _distill(
            student,
            teacher,
            train,
            val,
            config,
            callback=callback,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            should_stop=should_stop,
            context=context,
        )


def _distill(
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    train,
    val,
    config: DistillConfig,
    *,
    callback: Callback | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    should_stop: Callable[[], bool] | None = None,
    context: DistillContext | None = None,
) -> DistillResult:
    """The loop of `distill`, with its memory options already applied.

    In this order (the seeds are set first, so the same steps draw the same random numbers on a
    resume): the saved state, the teacher (corrected, or its corrected copy reloaded), the optimizer
    and schedule (`_Run`), the saved position restored, then the steps, each maybe followed by a
    validation and a checkpoint, and a last checkpoint where the run ended or stopped."""
    ctx = context or DistillContext()
    ctx.check(config)
    emit = (callback if ctx.is_main else None) or (lambda _m: None)

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    inputs = run_inputs(teacher, train) if checkpoint_dir is not None else None  # before any correction
    state = _saved_state(checkpoint_dir, ctx, config, inputs) if resume else None
    try:
        teacher, corrected = _teacher_for_run(
            teacher, train, config, state, checkpoint_dir, emit, ctx, should_stop
        )
    except CorrectionStopped as stop:
        done = state["step"] if state is not None else 0
        return DistillResult(steps_completed=done, stopped=True, correction_stopped_at=stop.step)
    run = _Run(student, teacher, train, val, config, ctx, checkpoint_dir, emit, inputs)
    if state is not None:
        run.restore(state)

    # A validation before any update: the curve starts at the pruned student's loss, the number a
    # distillation is judged against. Once per run: a resumed run has it already (step 0 in its record).
    if run.step == 0 and not any(v["step"] == 0 for v in run.validation):
        run.validate()
    student.train()
    stopped, last_saved = False, None
    for step in range(run.step, config.steps):
        if ctx.any(should_stop is not None and should_stop()):  # every rank stops at the same step
            stopped = True
            break
        done = run.train_step(step)
        if done == config.steps or (config.val_every and done % config.val_every == 0):
            run.validate()
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done != config.steps:
            last_saved = run.checkpoint(stopped=False, finished=False)
    last_saved = run.checkpoint(stopped=stopped, finished=run.step >= config.steps) or last_saved
    student.zero_grad(set_to_none=True)
    student.eval()
    return DistillResult(
        steps_completed=run.step,
        stopped=stopped,
        history=run.history,
        validation=run.validation,
        checkpoint=last_saved,
        teacher=corrected,
    )


def _saved_state(
    checkpoint_dir: str | Path | None, ctx: DistillContext, config: DistillConfig, inputs: dict
) -> dict | None:
    """The checkpoint's training state to resume from (None: there is none), made with this config,
    teacher and data."""
    state = read_training_state(checkpoint_dir, ctx)
    if state is not None:
        _check_resume(state["config"], config)
        check_inputs(state.get("inputs"), inputs)
    return state


def _teacher_for_run(
    teacher,
    train,
    config: DistillConfig,
    state: dict | None,
    checkpoint_dir,
    emit,
    ctx: DistillContext,
    should_stop: Callable[[], bool] | None = None,
):
    """(the teacher the run distils from, the corrected copy or None).

    With teacher correction the run uses a corrected copy: reloaded from the checkpoint on a resume,
    else trained now (on N ranks too) and saved beside the checkpoint (by the main rank: every rank
    holds the same whole weights)."""
    corrected = None
    if teacher is not None and config.mode == "kd" and config.teacher_correction_steps:
        corrected = copy.deepcopy(teacher)  # never change the caller's teacher
        if not (state is not None and load_teacher_into(checkpoint_dir, corrected)):
            # A stream is consumed as it is read: the correction reads its own copy from the start.
            correction_data = train.restarted() if is_token_stream(train) else train
            correct_teacher(corrected, correction_data, config, emit, context=ctx, should_stop=should_stop)
            if checkpoint_dir is not None and ctx.is_main:
                save_teacher(checkpoint_dir, corrected)
        teacher = corrected
    if teacher is not None:
        teacher.eval()
    return teacher, corrected


class _Run:
    """One run's moving parts: the (sharded) loss module, optimizer and schedule, where the run is
    (`step`, tokens, time, metrics so far) and the step, validation and checkpoint of `_distill`."""

    def __init__(
        self,
        student,
        teacher,
        train,
        val,
        config: DistillConfig,
        ctx: DistillContext,
        checkpoint_dir,
        emit,
        inputs: dict | None = None,
    ):
        self.student, self.teacher, self.train, self.val = student, teacher, train, val
        self.inputs = inputs  # `run_inputs`, kept in each checkpoint
        self.config, self.ctx, self.checkpoint_dir, self.emit = config, ctx, checkpoint_dir, emit
        self.device = ctx.device if ctx.distributed else next(student.parameters()).device
        self.weights = config.loss_weights
        self.use_teacher = config.mode == "kd" and teacher is not None
        # FSDP2-shards the student under torchrun (and places the teacher)
        self.module = ctx.prepare(student, teacher, config, seq_len=train.seq_len)
        self.params = [p for p in student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda_for(peak=config.lr, minimum=config.min_lr, warmup=config.warmup_steps, total=config.steps),
        )
        self.step, self.tokens, self.elapsed = 0, 0, 0.0
        self.history: list[dict] = []
        self.validation: list[dict] = []

    def restore(self, state: dict) -> None:
        """Weights, optimizer, schedule, data position and metrics as the checkpoint left them."""
        restore_training_state(self.checkpoint_dir, self.ctx, state, self.student, self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        stream = state.get("data_position", {}).get("stream")
        _restore_stream(self.train, self.ctx.localize_stream_position(stream))
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.history, self.validation = list(state["history"]), list(state["validation"])

    def train_step(self, step: int) -> int:
        """Optimizer step `step` (0-based) over grad_accum micro-batches; returns the steps done."""
        ctx, config = self.ctx, self.config
        began = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "kd_loss": 0.0, "ce_loss": 0.0, "intermediate_loss": 0.0}
        step_tokens = 0
        for micro in range(config.grad_accum):
            index = step * config.grad_accum + micro
            ids = ctx.local_batch(self.train, index, config.batch_size, config.seed).to(self.device)
            ctx.set_gradient_sync(self.module, micro == config.grad_accum - 1)
            with _autocast(self.device, config):
                total, kd, ce, inter = self.module(ids, self.weights, config, use_teacher=self.use_teacher)
            (total / config.grad_accum).backward()
            for key, value in zip(sums, (total, kd, ce, inter)):
                sums[key] += float(value.detach()) / config.grad_accum
            step_tokens += ids.numel() * ctx.world_size
        sums = dict(zip(sums, ctx.mean(list(sums.values()))))
        # On FSDP2's sharded gradients this is the norm of the full gradient (DTensor reductions).
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, config.clip_grad or float("inf"))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - began
        self.step = step + 1
        self.tokens += step_tokens
        self.elapsed += seconds
        metrics = {
            "phase": "train",
            "step": self.step,
            "tokens": self.tokens,
            **sums,
            "lr": lr,
            "grad_norm": ctx.scalar(grad_norm),
            "tokens_per_s": step_tokens / max(seconds, 1e-9),
            "elapsed": self.elapsed,
        }
        if ctx.distributed and self._logged(self.step):  # every rank's own figures, live (rank 0 emits)
            local_rate = step_tokens / ctx.world_size / max(seconds, 1e-9)
            metrics["world_size"] = ctx.world_size
            metrics["ranks"] = ctx.rank_figures(local_rate, seconds)
        self.history.append(metrics)
        self.emit(metrics)
        return self.step

    def _logged(self, step: int) -> bool:
        """Steps whose metrics carry every rank's figures: the first, every log_every-th, the last."""
        return step == 1 or step % self.config.log_every == 0 or step == self.config.steps

    def validate(self) -> None:
        metrics = validate(
            self.student, self.teacher, self.val, self.config, module=self.module, context=self.ctx
        )
        # tokens / elapsed as the train record of the same step has them (the step-0 point has none).
        metrics.update(step=self.step, tokens=self.tokens, elapsed=self.elapsed, phase="validation")
        self.validation.append(metrics)
        self.emit(metrics)

    def checkpoint(self, *, stopped: bool, finished: bool) -> Path | None:
        """Save where the run is (None without a checkpoint_dir)."""
        if self.checkpoint_dir is None:
            return None
        config = self.config
        meta = {
            "step": self.step,
            "tokens": self.tokens,
            "elapsed": self.elapsed,
            "stopped": stopped,
            "finished": finished,
            "scheduler": self.scheduler.state_dict(),
            "config": config.model_dump(mode="json"),
            "inputs": self.inputs,
            # Data position: the next batch is train.batch(step * grad_accum, batch_size, seed);
            # a TokenStream also needs where it is in the files (its state_dict).
            "data_position": {
                "next_batch": self.step * config.grad_accum,
                "seed": config.seed,
                "stream": self.ctx.stream_position(self.train),
            },
            "history": self.history,
            "validation": self.validation,
        }
        return save_training_state(self.checkpoint_dir, self.ctx, meta, self.student, self.optimizer)
