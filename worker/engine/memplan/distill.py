"""Peak bytes per device of a distillation step (`distill_memory`) and of one with teacher correction
(`teacher_correction_memory`)."""

from __future__ import annotations

import math

from worker.engine.memplan.activations import (
    forward_working_bytes,
    layers_saved_bytes_per_token,
    saved_bytes_per_token,
    transient_bytes_per_token,
)
from worker.engine.memplan.peak import job_peak, layer_weight_bytes
from worker.engine.memplan.units import (
    LOSS_CHUNK_BUFFERS_CE,
    LOSS_CHUNK_BUFFERS_KD,
    auto_chunk_tokens,
    dtype_bytes,
)
from worker.engine.spec import ArchSpec


def distill_memory(
    student: ArchSpec,
    teacher: ArchSpec | None,
    *,
    batch_size: int,
    seq_len: int,
    weights_dtype: str = "float32",
    gradient_checkpointing: bool = False,
    device: str = "cpu",
    autocast_bf16: bool = True,
    chunk_tokens: int | None = None,
    num_gpus: int = 1,
) -> dict:
    """Peak bytes per device of one distillation step (teacher None: the CE-only baseline).

    Peak = max(end of forward, end of backward + optimizer step); see memplan/__init__.py's docstring.
    `num_gpus` > 1 is the sharded (FSDP-style) layout the planner already sizes: parameters, gradients
    and optimizer states divided by N plus one layer's all-gathered weights, and the batch split over
    the devices.
    """
    if num_gpus < 1:
        raise ValueError("num_gpus must be >= 1")
    cuda = device.startswith("cuda")
    w = dtype_bytes(weights_dtype)
    # Activations: bf16 under CUDA autocast, else the weights' dtype.
    act = 2 if (cuda and autocast_bf16) or w == 2 else 4
    n = math.ceil(batch_size / num_gpus) * seq_len
    p_s = student.param_count()["total"]
    weights = p_s * w / num_gpus
    grads = p_s * w / num_gpus
    optimizer = 2 * p_s * w / num_gpus  # AdamW exp_avg, exp_avg_sq in the parameters' dtype
    teacher_bytes = 0 if teacher is None else teacher.param_count()["total"] * w / num_gpus
    # Sharded: each device gathers one layer's full weights at a time (and prefetches the next).
    gather = 0
    if num_gpus > 1:
        widest_model = max(
            [student] + ([teacher] if teacher is not None else []), key=lambda m: m.hidden_size
        )
        gather = 2 * layer_weight_bytes(widest_model, w)
    # CUDA autocast caches a bf16 copy of each float32 weight that needs a gradient, for the step.
    autocast_cache = p_s * 2 / num_gpus if cuda and autocast_bf16 and w == 4 else 0

    saved = n * saved_bytes_per_token(student, act, gradient_checkpointing, seq_len)
    recompute = n * max(layers_saved_bytes_per_token(student, act, seq_len)) if gradient_checkpointing else 0
    d, v = student.hidden_size, student.vocab_size
    chunk = min(chunk_tokens or auto_chunk_tokens(v, device), n)
    # The loss holds d loss / d hidden [N, D] and a float32 head gradient [V, D] until backward;
    # while it runs, the flattened hidden states of both models and one chunk's logit buffers.
    loss_kept = n * d * act + v * d * 4
    t_hidden = 0 if teacher is None else n * teacher.hidden_size * 4
    buffers = LOSS_CHUNK_BUFFERS_CE if teacher is None else LOSS_CHUNK_BUFFERS_KD
    loss_transient = 2 * n * d * act + t_hidden + buffers * chunk * v * 4
    teacher_forward = 0
    if teacher is not None:  # the teacher runs after the student's forward, without saving anything
        teacher_forward = n * teacher.hidden_size * 4 + forward_working_bytes(
            teacher, n // seq_len, seq_len, act, device
        )
    forward_peak = saved + loss_kept + max(loss_transient, teacher_forward)
    # Backward: the saved activations free layer by layer as gradients fill in; its peak is the start
    # (all saved, plus the recomputed layer and one layer's backward temporaries).
    backward_peak = saved + recompute + loss_kept + n * transient_bytes_per_token(student, act, backward=True)
    activations = max(forward_peak, backward_peak)
    # The optimizer step: all gradients alive; CUDA's foreach AdamW allocates one state-sized temporary.
    step_extra = grads + (optimizer / 2 if cuda else 0)
    # The head's gradient (in the weights' dtype) exists from the start of backward.
    peak_dynamic = max(activations + v * d * w, step_extra)
    parts = {
        "weights": weights,
        "optimizer": optimizer,
        "teacher": teacher_bytes,
        "gather_buffer": gather,
        "autocast_cache": autocast_cache,
        "activations_and_grads": peak_dynamic,
    }
    return job_peak(
        parts,
        batch_size=batch_size,
        seq_len=seq_len,
        weights_dtype=weights_dtype,
        gradient_checkpointing=gradient_checkpointing,
        device="cuda" if cuda else "cpu",
        num_gpus=num_gpus,
        tokens_per_device=n,
        activations_saved=saved,
    )


def teacher_correction_memory(
    student: ArchSpec,
    teacher: ArchSpec,
    *,
    batch_size: int,
    seq_len: int,
    weights_dtype: str = "float32",
    gradient_checkpointing: bool = False,
    device: str = "cpu",
    autocast_bf16: bool = True,
    chunk_tokens: int | None = None,
    num_gpus: int = 1,
) -> dict:
    """Peak bytes per device of a distillation with teacher correction (`teacher_correction_steps` > 0,
    distill/loop.py `correct_teacher`), over its two phases (`settings["phases"]`; `total` is the larger).

    Correction: the teacher trained on CE like a baseline student (`distill_memory(teacher, None)`: in
    one process the corrected copy itself; on N ranks a sharded copy, 1/N of its weights, gradients and
    AdamW states and one layer gathered), beside what each device already holds whole: the run's teacher
    as loaded, on N ranks the corrected copy that then takes the gathered weights, and the student's
    weights (sharded only when its training starts). `parts` are this phase's.
    Distillation: the step `distill_memory` sizes with the corrected teacher, plus the loaded teacher,
    which stays whole on each device beside it."""
    options = dict(
        batch_size=batch_size,
        seq_len=seq_len,
        weights_dtype=weights_dtype,
        gradient_checkpointing=gradient_checkpointing,
        device=device,
        autocast_bf16=autocast_bf16,
        chunk_tokens=chunk_tokens,
        num_gpus=num_gpus,
    )
    w = dtype_bytes(weights_dtype)
    whole = teacher.param_count()["total"] * w
    parts = {
        "teacher": whole,
        "corrected_teacher": whole if num_gpus > 1 else 0,  # one process: the copy being trained
        "student_weights": student.param_count()["total"] * w,
        "correction_step": distill_memory(teacher, None, **options)["total"],
    }
    step = distill_memory(student, teacher, **options)
    hidden = ("tokens_per_device", "activations_saved")  # the distillation step's own
    out = job_peak(parts, **{k: v for k, v in step["settings"].items() if k not in hidden})
    correction = out["total"]
    distillation = step["total"] + int(whole)
    out["settings"]["phases"] = {"correction": correction, "distillation": distillation}
    out["total"] = max(correction, distillation)
    return out
