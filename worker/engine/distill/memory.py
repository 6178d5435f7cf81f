"""The distillation's memory options applied to real models: bf16 weights and activation checkpointing.

`memory_options(student, teacher, config)` casts both models to `config.weights_dtype` (in place: the
loop trains the student in place anyway) and, with `config.gradient_checkpointing`, has the student
recompute each decoder layer's activations in backward from the layer's saved input (Hugging Face's
non-reentrant checkpointing: same loss and gradients, less memory). Checkpointing is switched off
again on exit so the saved student carries no training-only setting. `distill()` applies the options
itself; a caller that already wraps it (the CLI, the worker) nests harmlessly: an inner
`memory_options` leaves checkpointing to whoever switched it on.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from worker.engine.distill.config import DistillConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _checkpointing(model, enabled: bool) -> None:
    if enabled and not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
    # transformers >= 5.2x names it activation checkpointing; older 5.x only has the gradient_ alias.
    name = (
        "activation_checkpointing"
        if hasattr(model, "activation_checkpointing_enable")
        else "gradient_checkpointing"
    )
    if enabled:
        kwargs = {f"{name}_kwargs": {"use_reentrant": False}}
        getattr(model, f"{name}_enable")(**kwargs)
    else:
        getattr(model, f"{name}_disable")()


def _checkpointing_on(model) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


@contextmanager
def memory_options(student: torch.nn.Module, teacher: torch.nn.Module | None, config: DistillConfig):
    dtype = DTYPES[config.weights_dtype]
    for model in (student, teacher):
        if model is not None and next(model.parameters()).dtype != dtype:
            model.to(dtype)
    if not config.gradient_checkpointing or _checkpointing_on(student):
        yield
        return
    _checkpointing(student, True)
    try:
        yield
    finally:
        _checkpointing(student, False)
