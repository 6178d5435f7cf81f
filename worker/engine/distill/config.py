"""Settings of one distillation (or CE-only baseline) run."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from worker.engine.distill_defaults import DEFAULTS as D  # shared with the API and the CLI


class DistillConfig(BaseModel):
    # inf passes gt=0 (NaN does not) and trains a model of NaNs to the end: refuse both.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    mode: Literal["kd", "ce"] = "kd"  # "ce": baseline trained on labels only, no teacher
    steps: int = Field(D.steps, ge=1)
    batch_size: int = Field(D.batch_size, ge=1)
    grad_accum: int = Field(D.grad_accum, ge=1)
    lr: float = Field(D.lr, gt=0)  # peak
    min_lr: float = Field(D.min_lr, ge=0)
    warmup_steps: int = Field(D.warmup_steps, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = Field(1.0, gt=0)  # None: no clipping (the norm is still reported)
    temperature: float = Field(D.temperature, gt=0)
    kd_weight: float = Field(D.kd_weight, ge=0)
    ce_weight: float = Field(D.ce_weight, ge=0)
    intermediate_weight: float = Field(D.intermediate_weight, ge=0)  # cosine loss on mapped hidden states
    layer_map: list[int] | None = None  # student layer j -> teacher layer; default identity
    hidden_channels: list[int] | None = None  # teacher channels kept by the student, if hidden was cut
    # Tokens per LM-head chunk; None: as many as fit CHUNK_LOGITS logits (see chunked_head.auto_chunk_tokens).
    chunk_tokens: int | None = Field(None, ge=1)
    seed: int = Field(D.seed, ge=0)  # numpy's generators refuse a negative seed
    val_every: int = Field(D.val_every, ge=0)  # 0: only at step 0 and the end
    val_batches: int = Field(D.val_batches, ge=1)
    checkpoint_every: int = Field(D.checkpoint_every, ge=0)  # 0: only at the end / on stop
    teacher_correction_steps: int = Field(D.teacher_correction_steps, ge=0)
    teacher_correction_lr_factor: float = Field(0.2, gt=0)  # x teacher peak LR (paper 2: 1/5)
    teacher_peak_lr: float | None = Field(None, gt=0)  # the teacher's own peak; default: lr
    bf16: bool = True  # autocast to bf16 on CUDA only; CPU runs in the weights' dtype
    # Memory options, applied by distill() through distill.memory.memory_options (worker/engine/memplan/
    # sizes them): recompute each student layer's activations
    # in backward instead of keeping them; hold student and teacher weights in bfloat16 (pure-bf16
    # training: AdamW's moments follow the weights' dtype, no float32 master copy; the loss stays float32).
    gradient_checkpointing: bool = D.gradient_checkpointing
    weights_dtype: Literal["float32", "bfloat16"] = D.weights_dtype
    # Under torchrun: shard the teacher like the student (forward only) or keep a whole copy per rank;
    # "auto" replicates when a copy fits easily (distill.distributed.DistillContext.teacher_placement).
    teacher_placement: Literal["auto", "replicate", "shard"] = D.teacher_placement
    # Under torchrun, every rank's tokens/s, peak memory and step time are gathered into the step's
    # metrics ("ranks") on steps 1, every log_every-th and the last (one small all_gather each time).
    log_every: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self):
        if self.min_lr > self.lr:
            raise ValueError("min_lr must not exceed lr")
        if (
            self.mode == "kd"
            and self.kd_weight == 0
            and self.ce_weight == 0
            and self.intermediate_weight == 0
        ):
            raise ValueError("kd_weight, ce_weight and intermediate_weight are all 0: nothing to train on")
        if self.mode == "ce" and self.intermediate_weight:
            raise ValueError("intermediate_weight needs a teacher; mode 'ce' has none")
        return self

    @property
    def loss_weights(self):
        from worker.engine.distill.losses import LossWeights

        if self.mode == "ce":
            return LossWeights(kd=0.0, ce=1.0, temperature=1.0)
        return LossWeights(kd=self.kd_weight, ce=self.ce_weight, temperature=self.temperature)

    # Fields that must match for a resume to continue the same run exactly.
    RESUME_FIELDS: ClassVar[tuple[str, ...]] = (
        "mode",
        "batch_size",
        "grad_accum",
        "lr",
        "min_lr",
        "warmup_steps",
        "seed",
        "temperature",
        "kd_weight",
        "ce_weight",
        "intermediate_weight",
        "teacher_correction_steps",
    )
