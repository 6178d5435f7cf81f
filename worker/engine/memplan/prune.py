"""Peak bytes of a prune job (`prune_memory`), in memory or out of core, from the tensors it reads and
cuts (`tensor_numels`, `tensor_dims`, `gathered_rows_numel`, `saved_expert_copies_numel`)."""

from __future__ import annotations

import math

from worker.engine.memplan.peak import job_peak
from worker.engine.memplan.units import FUSED_FAMILIES, dtype_bytes
from worker.engine.spec import ArchSpec


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
    return job_peak(parts, mode=mode, largest_tensor=largest, **extra)


def saved_expert_copies_numel(spec: ArchSpec) -> int:
    """Elements `save_pretrained` copies when it writes a mixture of experts in the checkpoint's
    per-expert format: transformers (>= 5) reverts its load-time conversion on the whole state dict
    before writing, and the revert of the fused gate_up_proj [E, 2 F, D] (a `Chunk` along dim 1) makes
    contiguous gate and up copies of every layer's tensor at once; down_proj only splits along dim 0
    (views). Qwen2 / 3-MoE and Mixtral alike (transformers' conversion_mapping). Measured: the bench's
    Qwen3-MoE in-memory prune peaks there, with all three copies alive (0.89 without this term)."""
    gates = 2 if spec.mlp_gated else 1
    return sum(s.num_experts * gates * s.intermediate_size * spec.hidden_size for s in spec.layer_shapes())
