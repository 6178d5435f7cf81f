"""The defaults of a distillation run: one set for the engine (`distill.config.DistillConfig`), the API
(`backend.schemas.DistillParams`, and the dashboard's form through it) and `prunescope distill`'s flags.

Torch-free, and outside the `distill` package on purpose: importing that package loads the training
loop (torch), and the backend must not. `seq_len` is the data's (the engine's config has no sequence
length: its data arrives as blocks).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DistillDefaults:
    steps: int = 200
    batch_size: int = 8
    grad_accum: int = 1
    seq_len: int = 128
    lr: float = 1e-4  # peak (Minitron practice: 1e-4, min 1e-5)
    min_lr: float = 1e-5
    warmup_steps: int = 20
    temperature: float = 1.0
    kd_weight: float = 1.0
    ce_weight: float = 0.0  # Minitron practice: 0
    intermediate_weight: float = 0.0
    teacher_correction_steps: int = 0
    val_every: int = 50
    val_batches: int = 8
    checkpoint_every: int = 50
    seed: int = 0
    gradient_checkpointing: bool = False
    weights_dtype: str = "float32"
    teacher_placement: str = "auto"


DEFAULTS = DistillDefaults()
