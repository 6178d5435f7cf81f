"""Peak bytes of each job: distillation (`distill_memory`, `teacher_correction_memory`), importance
(`importance_memory`, with its streamed pass's activation stores and passes), evaluation
(`evaluation_memory`) and pruning (`prune_memory`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from worker.engine.memplan.activations import (
    forward_working_bytes,
    layers_saved_bytes_per_token,
    nll_chunk_buffers,
    saved_bytes_per_token,
    transient_bytes_per_token,
)
from worker.engine.memplan.units import (
    FUSED_FAMILIES,
    LOSS_CHUNK_BUFFERS_CE,
    LOSS_CHUNK_BUFFERS_KD,
    NUM_SUMS,
    auto_chunk_tokens,
    dtype_bytes,
)
from worker.engine.spec import ArchSpec, LayerShape


def _layer_weight_bytes(spec: ArchSpec, weight: int) -> int:
    return max(spec.layer_params(s) for s in spec.layer_shapes()) * weight


def _result(parts: dict[str, int], **settings) -> dict:
    parts = {k: int(v) for k, v in parts.items()}
    return {"total": sum(parts.values()), "parts": parts, "settings": settings}


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
        gather = 2 * _layer_weight_bytes(widest_model, w)
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
    return _result(
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
    out = _result(parts, **{k: v for k, v in step["settings"].items() if k not in hidden})
    correction = out["total"]
    distillation = step["total"] + int(whole)
    out["settings"]["phases"] = {"correction": correction, "distillation": distillation}
    out["total"] = max(correction, distillation)
    return out


DEFAULT_SCANS = ("bi", "drop", "block")  # worker/engine/importance/result.py's


def loss_scan_sizes(scans, block_size: int) -> list[int]:
    """k of each loss scan (importance/compute.py's rule: drop is k = 1, block is k = block_size)."""
    return list(
        dict.fromkeys(((1,) if "drop" in scans else ()) + ((block_size,) if "block" in scans else ()))
    )


def streamed_store_count(num_layers: int, scans=DEFAULT_SCANS, block_size: int = 2) -> int:
    """Activation stores a layer-streamed pass has open by its last layer (importance/streamed.py):
    the main stream, k angular inputs, and one store per open cut of each loss scan (L - k + 1)."""
    angular = block_size if "angular" in scans else 0
    return 1 + angular + sum(num_layers - k + 1 for k in loss_scan_sizes(scans, block_size))


def spill_limit_bytes(gb: float | None) -> int | None:
    """The disk tier's limit in bytes from a `spill_limit_gb` setting (None: unset, the spill
    directory's free space counts, which only the worker knows)."""
    return None if gb is None else int(gb * 1e9)


def store_capacity(
    store_bytes: int,
    device_budget: int | None,
    host_budget: int = 0,
    cuda: bool = False,
    disk_budget: int | None = None,
) -> int | None:
    """Stores the tiers hold at once, each whole in one tier (importance/activation_store.py's
    `ActivationStores.capacity`); None: no limit (no device or no disk budget given)."""
    if device_budget is None or disk_budget is None or store_bytes <= 0:
        return None
    return sum(max(0, b) // store_bytes for b in (device_budget, host_budget if cuda else 0, disk_budget))


def streamed_passes(
    num_layers: int, scans=DEFAULT_SCANS, block_size: int = 2, capacity: int | None = None
) -> int | None:
    """Passes over the checkpoint a layer-streamed pass makes when its tiers hold `capacity` stores
    (importance/streamed.py's `plan_passes`): 1 when every store fits; else the first pass holds the
    stream, the angular inputs and what room is left for cuts, each later one a stream and
    `capacity - 1` cuts. None: not even the first pass fits (the job is refused)."""
    angular = block_size if "angular" in scans else 0
    cuts = sum(num_layers - k + 1 for k in loss_scan_sizes(scans, block_size))
    if capacity is None or capacity >= 1 + angular + cuts:
        return 1
    first, later = capacity - 1 - angular, capacity - 1
    if first < 0 or later < 1:
        return None
    return 1 + -(-(cuts - first) // later)


def store_placement(
    count: int, store_bytes: int, device_budget: int | None, host_budget: int = 0, cuda: bool = False
) -> dict[str, int]:
    """Stores per tier under importance/activation_store.py's rule: each new store goes whole to the
    first tier with room (device, then pinned host on CUDA, then disk). No store is released before
    the last one opens, so the tiers fill in order. `device_budget` None: no limit."""
    if device_budget is None or store_bytes <= 0:
        return {"device": count, "host": 0, "disk": 0}
    on_device = min(count, max(0, device_budget) // store_bytes)
    on_host = min(count - on_device, max(0, host_budget) // store_bytes) if cuda else 0
    return {"device": on_device, "host": on_host, "disk": count - on_device - on_host}


def _importance_mlp_units(shape: LayerShape) -> int:
    """Scored MLP units of a layer (importance/hooks.py): its neurons, or per expert the three expert
    axes and its FFN channels (a mixture-of-experts layer has no neuron axis)."""
    if shape.num_experts:
        return shape.num_experts * (3 + shape.intermediate_size)
    return shape.intermediate_size


def streamed_layer_copies(device: str) -> int:
    """Decoder layers' weights a streamed importance pass holds on `device` at once (importance_memory)."""
    return 1 if device.startswith("cuda") else 2


def importance_memory(
    spec: ArchSpec,
    *,
    batch_size: int,
    seq_len: int,
    loss_scans: bool = True,
    weights_dtype: str | None = None,
    streamed: bool = False,
    device: str = "cpu",
    samples: int | None = None,
    scans=None,
    block_size: int = 2,
    device_budget: int | None = None,
    host_budget: int = 0,
    padded: bool = False,
    disk_budget: int | None = None,
) -> dict:
    """Peak bytes of the hooked importance pass (inference mode: nothing saved for backward).

    In memory: the weights, one layer's forward temporaries, the float32 running sums and the per-head
    norm buffer; with a loss scan also each layer's cached input and the chunked head's logits.
    Streamed: the embeddings and head, then two phases that never overlap (`working` is the larger,
    `settings["phases"]` both): the layer loop (one layer's weights and the next's, one batch's
    forward temporaries, router buffers) and the head at the end (the chunked NLL's logit buffers;
    every layer is released by then), plus the activation stores (every sample's hidden states, `samples` x
    `seq_len` x hidden each; `streamed_store_count` of them) that the device budget admits
    (`store_placement`; `device_budget` None keeps them all on the device). `total` is the device's
    peak; `host_total` the pinned RAM of the stores that spill to the host tier, `disk` the rest.
    `scans` (default: drop + block + bi, or bi alone when not `loss_scans`) picks the stores.
    With a `disk_budget` too, the tiers hold `store_capacity` stores: when the scans need more they run
    in `settings["passes"]` passes over the checkpoint, each opening at most that many (None: not
    even one pass fits).
    `padded`: the calibration batches have padding (short windows), so attention gets a mask
    (`attention_bytes`).
    """
    if scans is None:
        scans = DEFAULT_SCANS if loss_scans else ("bi",)
    else:
        loss_scans = bool(loss_scan_sizes(scans, block_size))
    w = dtype_bytes(weights_dtype or spec.dtype)
    act = w
    n = batch_size * seq_len
    d, v = spec.hidden_size, spec.vocab_size
    shapes = spec.layer_shapes()
    L = spec.num_layers
    if streamed:
        weights = spec.embedding_params() * w
    else:
        weights = spec.param_count()["total"] * w
    units = sum(s.num_heads + _importance_mlp_units(s) + 1 for s in shapes) + (2 * L + 1) * d
    sums = 2 * NUM_SUMS * units * 4 + 2 * batch_size * units * 4  # running sums + per-batch [B, U] rows
    head_norms = n * L * max(s.num_heads for s in shapes) * 4
    working = n * 2 * d * act + forward_working_bytes(spec, batch_size, seq_len, act, device, padded)
    parts = {"weights": weights, "running_sums": sums, "head_norms": head_norms, "activations": working}
    experts = max(s.num_experts for s in shapes)
    if experts:  # the hooks' float32 [tokens, E] probabilities, routed flags and contributions
        parts["router_buffers"] = 3 * n * experts * 4
    if loss_scans:
        if not streamed:  # the in-memory scans re-run each layer from its cached input
            parts["layer_inputs"] = n * L * d * act
        parts["logits"] = nll_chunk_buffers(spec) * min(auto_chunk_tokens(v, device), n) * v * 4
    extra = {}
    host = disk = 0
    # Measured (bench): the peak is the larger phase's, not the layer's plus the head's. The streamed
    # layer loop holds two layers' weights on CPU (measured) but one on CUDA: the loader reads each tensor
    # into host memory and copies it to the device, and releases a layer before loading the next (the
    # 2026-11-29 H200 logs: 8B planned 1.18x, 70B slice 1.37x of the measured peak with two counted).
    layer_phase = (
        streamed_layer_copies(device) * _layer_weight_bytes(spec, w) if streamed else 0
    ) + parts.pop("activations")
    layer_phase += parts.pop("router_buffers", 0)
    head_phase = parts.pop("logits", 0)
    parts["working"] = max(layer_phase, head_phase)
    extra["phases"] = {"layer": layer_phase, "head": head_phase}
    if streamed:
        store_bytes = (samples or batch_size) * seq_len * d * act
        count = streamed_store_count(L, scans, block_size)
        cuda = device.startswith("cuda")
        capacity = store_capacity(store_bytes, device_budget, host_budget, cuda, disk_budget)
        passes = streamed_passes(L, scans, block_size, capacity)
        if passes is not None and passes > 1:
            count = capacity  # each pass opens at most what the tiers hold
        tiers = store_placement(count, store_bytes, device_budget, host_budget, cuda)
        parts["stores"] = tiers["device"] * store_bytes
        host, disk = tiers["host"] * store_bytes, tiers["disk"] * store_bytes
        extra.update(store_bytes=store_bytes, stores=tiers, passes=passes)
    out = _result(
        parts,
        batch_size=batch_size,
        seq_len=seq_len,
        streamed=streamed,
        device=device,
        loss_scans=loss_scans,
        **extra,
    )
    return {**out, "host_total": host, "disk": disk}


def importance_options(params: Mapping[str, Any], device: str) -> dict:
    """`importance_memory`'s settings from an importance run's params (the API's, or the CLI's flags
    under the same names) on a "cpu" or "cuda" device."""
    return dict(
        batch_size=params["batch_size"],
        seq_len=params["seq_len"],
        scans=tuple(params.get("scans", ())),
        block_size=params.get("block_size", 2),
        samples=params.get("samples"),
        device=device,
        # Document calibration right-pads short windows (attention gets a mask); a stream packs blocks.
        padded=not params.get("stream"),
    )


def importance_streams(need_in_memory: int, capacity: int | None) -> bool:
    """Whether an `offload` "auto" importance run streams the teacher layer by layer: when the in-memory
    pass's peak (`importance_memory(..., streamed=False)`, at the run's own batch and scans) exceeds the
    device memory it may use (`usable_bytes`; None: unknown, so in memory). The one rule: the worker
    decides by it (importance.offload), the API's check and the dashboard predict by it."""
    return capacity is not None and need_in_memory > capacity


def evaluation_memory(
    spec: ArchSpec,
    *,
    batch_size: int,
    seq_len: int,
    new_tokens: int = 0,
    weights_dtype: str | None = None,
    device: str = "cpu",
    padded: bool = False,
) -> dict:
    """Peak bytes of perplexity / lm-eval / the throughput benchmark: weights, a KV cache of
    `seq_len + new_tokens` positions (benchmark), and the larger of two phases that never overlap
    (`working`; `settings["phases"]` both): one layer's forward temporaries with its attention buffers,
    and one chunk of logits."""
    w = dtype_bytes(weights_dtype or spec.dtype)
    n = batch_size * seq_len
    v = spec.vocab_size
    layer_phase = n * 2 * spec.hidden_size * w + forward_working_bytes(
        spec, batch_size, seq_len, w, device, padded
    )
    head_phase = nll_chunk_buffers(spec) * min(auto_chunk_tokens(v, device), n) * v * 4
    parts = {
        "weights": spec.param_count()["total"] * w,
        "kv_cache": batch_size * (seq_len + new_tokens) * spec.kv_cache_bytes_per_token(bytes_per_value=w)
        if new_tokens
        else 0,
        "working": max(layer_phase, head_phase),
    }
    phases = {"layer": layer_phase, "head": head_phase}
    return _result(
        parts, batch_size=batch_size, seq_len=seq_len, new_tokens=new_tokens, device=device, phases=phases
    )


def tensor_numels(spec: ArchSpec) -> dict[str, int]:
    """Elements of the largest tensor of each kind, as the checkpoint holds it (the unit out-of-core
    surgery reads): the embeddings and an untied LM head [V, D]; per layer (the widest of each kind)
    q / k / v / o, or Phi-3's fused qkv [(H + 2 KV) hd, D]; gate / up / down, or Phi-3's fused gate_up
    [2 F, D]; a mixture of experts' fused expert tensors [E, 2 F, D] and [E, D, F] (transformers keeps
    them fused; the reader assembles them from per-expert tensors) and its router [E, D]."""
    return {k: rows * cols for k, (rows, cols) in tensor_dims(spec).items()}


def tensor_dims(spec: ArchSpec) -> dict[str, tuple[int, int]]:
    """[rows, the rest] of the largest tensor of each kind (`tensor_numels`): the reader reads rows."""
    d, hd, v = spec.hidden_size, spec.head_dim, spec.vocab_size
    fused = spec.family in FUSED_FAMILIES
    out = {"embed": (v + spec.position_embeddings, d)}
    if not spec.tie_word_embeddings:
        out["lm_head"] = (v, d)
    for s in spec.layer_shapes():
        h, g, f = s.num_heads * hd, s.num_kv_heads * hd, s.intermediate_size
        kinds = {"o": (d, h)}
        kinds.update({"qkv": (h + 2 * g, d)} if fused else {"q": (h, d), "kv": (g, d)})
        gates = 2 if spec.mlp_gated else 1
        if s.num_experts:
            e = s.num_experts
            kinds.update(
                {"experts_gate_up": (e, gates * f * d), "experts_down": (e, d * f), "router": (e, d)}
            )
            if spec.shared_expert_intermediate_size:
                kinds["shared_expert"] = (spec.shared_expert_intermediate_size, d)
        else:
            kinds.update({"gate_up": (gates * f, d)} if fused else {"up": (f, d), "down": (d, f)})
        for k, (rows, cols) in kinds.items():
            if rows * cols > math.prod(out.get(k, (0, 0))):
                out[k] = (rows, cols)
    return out


def gathered_rows_numel(teacher: ArchSpec, student: ArchSpec, kind: str) -> int:
    """The intermediate an out-of-core read of a scattered row cut holds (checkpoint_reader.read): rows
    kept in more than MAX_RUNS runs (importance-chosen neurons, heads, hidden channels: scattered as a
    rule) make it read the whole tensor, gather the kept rows into a new tensor [rows', cols] and then
    select the other dim into a third, the whole buffer still alive. Only when both dims are cut (one
    dim cut: the gather or the selection is the result); per-expert tensors are read one expert at a
    time (`prune_memory`). Contiguous kept rows are read alone (less than this upper bound)."""
    if kind.startswith("experts_"):
        return 0
    (t_rows, t_cols), (s_rows, s_cols) = tensor_dims(teacher)[kind], tensor_dims(student).get(kind, (0, 0))
    return s_rows * t_cols if 0 < s_rows < t_rows and s_cols < t_cols else 0


def prune_memory(
    teacher: ArchSpec,
    student: ArchSpec | None = None,
    *,
    mode: str = "in_memory",
    weights_dtype: str | None = None,
) -> dict:
    """Peak bytes of a prune job (worker/handlers/prune_job.py run_prune) in the mode it runs.

    `student`: the cut model's spec (None: the teacher's, an upper bound). The weights are in the
    checkpoint's dtype (`weights_dtype`, default the teacher's).

    - "in_memory" (prune_job._prune_in_memory -> surgery.apply_plan): the teacher is loaded whole
      (`teacher_weights`); `_cut_parameters` replaces each parameter by `cut.take(param)`, a new tensor.
      The replaced teacher tensors free nothing until the end: the loaded weights are views of the
      checkpoint's mapped files, each mapping alive while any of its tensors is. So the whole cut copy
      (`student_weights`) sits beside the whole teacher, and one more tensor is alive while a cut
      runs (the selection's result before the parameter swap drops its predecessor): the largest student
      tensor (`cut_tensor`; measured: without it the bench's prune cases land at 0.83-0.97);
      `save_pretrained` writes the contiguous cut tensors by pointer (safetensors >= 0.6), no copy,
      except a mixture of experts' fused gate_up tensors, which it copies, every layer's at once, to
      write them per expert (`save_copies`, `saved_expert_copies_numel`): the peak is the larger phase
      (`settings["phases"]`).
    - "out_of_core" (out_of_core.prune_checkpoint): both models live on "meta" (no memory); each output
      tensor is `CheckpointReader.read` into an owned buffer (the kept rows, or the whole tensor when the
      rows are scattered, fused like Phi-3's qkv / gate_up or cut along another dim: `read_tensor`, at
      most the teacher's tensor), then its other dims selected into a new tensor (`cut_tensor`, the
      student's tensor), then written to the open shard file (shard_writer._write_shard: no shard
      buffer). The peak is the kind of tensor (`tensor_numels`) with the largest read + cut. A mixture of
      experts' fused tensors come from per-expert checkpoint tensors (expert_layout.FusedExpertReader):
      each kept expert is read (one teacher expert at a time) and cut, and the parts are stacked into the
      cut tensor, so the read is the student's tensor + one teacher expert (measured: 1.28 when counted
      as the whole teacher tensor). Kept rows are taken to be scattered (as importance picks neurons,
      heads and hidden channels): read whole, and with the other dim cut too the gathered rows are held
      besides (`gathered_rows`, `gathered_rows_numel`; the bench's wide Llama: 0.55 without them, 1.00
      with). An upper bound: rows kept in at most MAX_RUNS runs are read alone (Phi-3 keeping the first
      half of its neurons: the estimate is 1.76x its measured peak).
    """
    w = dtype_bytes(weights_dtype or teacher.dtype)
    student = student or teacher
    t, s = tensor_numels(teacher), tensor_numels(student)
    extra = {}
    if mode == "in_memory":
        parts = {
            "teacher_weights": teacher.param_count()["total"] * w,
            "student_weights": student.param_count()["total"] * w,
        }
        largest = max(s, key=s.get)
        # Two phases that never overlap: the cut (one tensor in flight) and the save (the reverted
        # expert tensors, all at once); the larger one is the peak.
        phases = {"cut": s[largest] * w, "save": saved_expert_copies_numel(student) * w}
        parts["cut_tensor" if phases["cut"] >= phases["save"] else "save_copies"] = max(phases.values())
        extra["phases"] = phases
    elif mode == "out_of_core":
        experts = max([x.num_experts for x in teacher.layer_shapes()] + [1])

        def read(k: str) -> int:  # per-expert checkpoints: the kept experts, each cut, + one expert read
            return s.get(k, 0) + t[k] // experts if k.startswith("experts_") else t[k]

        def peak(k: str) -> int:
            return read(k) + gathered_rows_numel(teacher, student, k) + s.get(k, 0)

        largest = max(t, key=peak)
        parts = {"read_tensor": read(largest) * w, "cut_tensor": s.get(largest, 0) * w}
        gathered = gathered_rows_numel(teacher, student, largest)
        if gathered:
            parts["gathered_rows"] = gathered * w
    else:
        raise ValueError(f"unknown prune mode {mode!r}; use in_memory or out_of_core")
    return _result(parts, mode=mode, largest_tensor=largest, **extra)


def saved_expert_copies_numel(spec: ArchSpec) -> int:
    """Elements `save_pretrained` copies when it writes a mixture of experts in the checkpoint's
    per-expert format: transformers (>= 5) reverts its load-time conversion on the whole state dict
    before writing, and the revert of the fused gate_up_proj [E, 2 F, D] (a `Chunk` along dim 1) makes
    contiguous gate and up copies of every layer's tensor at once; down_proj only splits along dim 0
    (views). Qwen2 / 3-MoE and Mixtral alike (transformers' conversion_mapping). Measured: the bench's
    Qwen3-MoE in-memory prune peaks there, with all three copies alive (0.89 without this term)."""
    gates = 2 if spec.mlp_gated else 1
    return sum(s.num_experts * gates * s.intermediate_size * spec.hidden_size for s in spec.layer_shapes())
