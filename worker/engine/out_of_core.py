"""Out-of-core surgery: cut a safetensors checkpoint tensor by tensor, never holding the model.

The structure comes from models on the "meta" device (shapes, no memory): the teacher's, built from
its config (and its per-layer file for a non-uniform teacher), gives the `ArchSpec` the plan is
checked against; the same in-memory surgery (`apply_plan`) run on a meta copy gives the student's
config, per-layer widths and every tensor's name and shape. The weights are then streamed: for each
student tensor, the cut map (worker/engine/cut_map.py) names the teacher tensor and the indices to
keep, the reader copies only those rows out of the checkpoint, and the shard writer appends the
result to the current output shard. Peak memory is about one teacher tensor.

The output has the same files as `loading.save_model` (config.json, generation_config.json,
tokenizer, prunescope_layers.json when non-uniform, prunescope_manifest.json), sharded weights with
their index, all written to a temporary directory and renamed into place.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from worker.engine.adapters import Adapter, adapter_for_model_type
from worker.engine.checkpoint_reader import CheckpointReader, MissingTensor
from worker.engine.cut_map import TensorCut, cut_map
from worker.engine.dtypes import torch_dtype
from worker.engine.fingerprint import hash_tensor
from worker.engine.memplan import AUTO_OUT_OF_CORE_RAM_FRACTION, format_bytes
from worker.engine.plan import PrunePlan, check_plan
from worker.engine.shard_writer import DEFAULT_SHARD_BYTES, TensorEntry, write_sharded
from worker.engine.spec import ArchSpec

Progress = Callable[[int, int, str], None] | None  # (tensors written, of how many, the last one)
MODES = ("auto", "never", "always")


@dataclass(frozen=True)
class Pruned:
    path: Path  # the saved student
    spec: ArchSpec  # its architecture


@dataclass
class Checkpoint:
    """A local checkpoint's structure: its reader, config, family and the teacher on "meta"."""

    path: Path
    reader: CheckpointReader
    config: object
    adapter: Adapter
    model: nn.Module  # on "meta": names and shapes only
    dtype: torch.dtype

    @property
    def spec(self) -> ArchSpec:
        return self.adapter.spec(self.model)

    def source_name(self, name: str) -> str:
        """The checkpoint's name for a model tensor (base-model checkpoints omit the first prefix)."""
        if name in self.reader:
            return name
        short = name.partition(".")[2]
        if short in self.reader:
            return short
        router = self._experts().router_name(name) if self.adapter.moe else None
        if router is not None:  # MoE router: the MoE module may have another name on disk (Mixtral)
            return router
        raise MissingTensor(f"{self.path}: the checkpoint has no tensor {name}")

    def _experts(self):
        from worker.engine.expert_layout import FusedExpertReader

        if getattr(self, "_fused", None) is None:
            self._fused = FusedExpertReader(self.reader, self.adapter)
        return self._fused

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of a model tensor in the checkpoint (fused experts: assembled from per-expert tensors)."""
        if self.adapter.moe and self._experts().covers(name):
            return self._experts().shape(name)
        return self.reader.shape(self.source_name(name))

    def read(self, name: str, dims=None) -> torch.Tensor:
        """A model tensor, restricted to `dims` (per-dimension indices; None: all) as it is read."""
        if self.adapter.moe and self._experts().covers(name):
            return self._experts().read(name, dims or ())
        return self.reader.read(self.source_name(name), dims)

    def model_bytes(self) -> int:
        """Bytes of the model's weights once loaded (what in-memory surgery holds)."""
        from worker.engine.layer_loader import weight_bytes

        return weight_bytes(self.model)


def unique_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters by name, a tied one under its first name only (as save_pretrained stores them)."""
    return dict(model.named_parameters())  # named_parameters skips repeated (tied) tensors


def open_checkpoint(source: str | os.PathLike, *, dtype=None) -> Checkpoint:
    """Read a local checkpoint's structure (config, tensor index) without reading any weight."""
    from worker.engine.layer_loader import checkpoint_dtype, empty_model

    path = Path(source).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"out-of-core surgery needs a local model directory; {source} has no config.json"
        )
    reader = CheckpointReader(path)
    model = empty_model(path, reader, dtype=dtype)  # parameters on "meta"
    config = model.config
    adapter = adapter_for_model_type(config.model_type)
    ckpt = Checkpoint(path, reader, config, adapter, model, checkpoint_dtype(reader, config, dtype))
    _check_sizes(ckpt)
    return ckpt


def _check_sizes(ckpt: Checkpoint) -> None:
    """Every tensor as large as the config (and a non-uniform model's layers file) makes it, from the
    headers alone: an edited layers file failed deep in the cut with a reshape error."""
    from worker.engine.loading import weights_mismatch

    for name, param in unique_parameters(ckpt.model).items():
        try:
            shape = ckpt.shape(name)
        except MissingTensor:  # named where it is read
            continue
        if math.prod(shape) != param.numel():
            raise weights_mismatch(ckpt.path, name, shape, param.shape)


def checkpoint_weights_sha256(ckpt: Checkpoint, dtype: torch.dtype | str | None = None) -> str:
    """`fingerprint.weights_sha256` of the model the checkpoint loads into (its `dtype` argument too),
    read tensor by tensor."""
    cast = torch_dtype(dtype)
    digest = hashlib.sha256()
    for name, param in unique_parameters(ckpt.model).items():
        tensor = ckpt.read(name).to(cast or param.dtype)  # as loaded (fp32-kept too)
        hash_tensor(digest, name, tensor.reshape(param.shape))
    return digest.hexdigest()


def _student_structure(ckpt: Checkpoint, plan: PrunePlan) -> nn.Module:
    """The student on "meta": the in-memory surgery applied to shapes (same config, same names)."""
    import copy

    from worker.engine.surgery import apply_plan

    return apply_plan(copy.deepcopy(ckpt.model), plan)


def _checked_cuts(
    ckpt: Checkpoint, plan: PrunePlan, student: nn.Module
) -> list[tuple[TensorEntry, TensorCut]]:
    """(output tensor, its cut) in the student's order; every shape checked against the student."""
    teacher_names = list(unique_parameters(ckpt.model))
    cuts = cut_map(ckpt.adapter, ckpt.spec, plan, teacher_names)
    wanted = unique_parameters(student)
    if set(cuts) != set(wanted):
        raise RuntimeError(
            f"cut map and surgery disagree on the tensors: only in the cut map {sorted(set(cuts) - set(wanted))}, "
            f"only in the student {sorted(set(wanted) - set(cuts))}"
        )
    out = []
    for name, param in wanted.items():
        cut = cuts[name]
        source_shape = ckpt.shape(cut.source)
        shape = cut.shape(source_shape)
        if shape != tuple(param.shape):
            raise RuntimeError(
                f"cannot cut {cut.source} {source_shape} out of core: the cut map gives {shape}, the "
                f"surgery {tuple(param.shape)} (a tensor this family's cut map does not describe)"
            )
        out.append((TensorEntry(name, param.dtype, shape), cut))
    return out


def prune_checkpoint(
    source: str | os.PathLike,
    plan: PrunePlan,
    out_dir: str | os.PathLike,
    manifest: dict,
    *,
    dtype=None,
    tokenizer=None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    progress: Progress = None,
    checkpoint: Checkpoint | None = None,
) -> Pruned:
    """Cut the checkpoint at `source` to the explicit `plan` and save the student at `out_dir`."""
    from transformers import GenerationConfig

    from worker.engine.loading import _load_tokenizer, student_dir, write_student_metadata

    say = progress or (lambda _done, _total, _name: None)
    ckpt = checkpoint or open_checkpoint(source, dtype=dtype)
    if plan.needs_filling():
        raise ValueError("the plan has targets: fill it from importance scores (fill_plan) first")
    check_plan(plan, ckpt.spec)
    student = _student_structure(ckpt, plan)
    entries = _checked_cuts(ckpt, plan, student)
    cut_of = {entry.name: cut for entry, cut in entries}
    done = 0

    def produce(entry: TensorEntry) -> torch.Tensor:
        nonlocal done
        cut = cut_of[entry.name]
        # dims, then the per-expert channel selection of fused expert tensors (identity elsewhere)
        tensor = cut.finish(ckpt.read(cut.source, cut.dims)).to(entry.dtype)
        done += 1
        say(done, len(entries), entry.name)
        return tensor

    if tokenizer is None:
        tokenizer = _load_tokenizer(str(ckpt.path), False)
    with student_dir(out_dir, overwrite) as tmp:
        write_sharded(tmp, [e for e, _ in entries], produce, max_shard_bytes)
        config = student.config
        config.architectures = [type(student).__name__]
        config.save_pretrained(tmp)
        if student.can_generate():
            try:
                generation = GenerationConfig.from_pretrained(str(ckpt.path))
            except OSError:  # no generation_config.json: the one from_pretrained derives
                generation = student.generation_config
            generation.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        spec = ckpt.adapter.spec(student)
        write_student_metadata(tmp, spec, manifest)
    return Pruned(Path(out_dir).expanduser().resolve(), spec)


def resolve_mode(
    source: str | os.PathLike, requested: str, threshold_gb: float | None = None, *, dtype=None
) -> tuple[Checkpoint | None, str]:
    """(the checkpoint to cut out of core, or None to cut in memory; why) for a requested mode."""
    ckpt = None
    if requested != "never":
        try:
            ckpt = open_checkpoint(source, dtype=dtype)
        except (OSError, ValueError) as exc:  # not a local safetensors checkpoint of a supported family
            if requested == "always":
                raise ValueError(f"cannot cut {source} out of core: {exc}") from exc
    threshold = None if threshold_gb is None else int(threshold_gb * 1e9)
    out_of_core, why = choose_mode(requested, ckpt.model_bytes() if ckpt else None, threshold)
    return (ckpt if out_of_core else None), why


def choose_mode(
    requested: str, model_bytes: int | None, threshold_bytes: int | None = None
) -> tuple[bool, str]:
    """(out of core?, why) for a requested mode "auto" | "never" | "always".

    auto goes out of core when the loaded model would exceed `threshold_bytes` (default: half the
    RAM available now); `model_bytes` None means the checkpoint cannot be cut out of core (not a
    local safetensors directory).
    """
    if requested not in MODES:
        raise ValueError(f"out_of_core must be one of {', '.join(MODES)}, got {requested!r}")
    if requested == "never":
        return False, "in memory (requested)"
    if model_bytes is None:
        if requested == "always":
            raise ValueError("out-of-core surgery needs a local directory of safetensors weights")
        return False, "in memory (not a local safetensors checkpoint)"
    if requested == "always":
        return True, "out of core (requested)"
    if threshold_bytes is None:
        import psutil

        threshold_bytes = int(psutil.virtual_memory().available * AUTO_OUT_OF_CORE_RAM_FRACTION)
        where = f"half the available RAM, {format_bytes(threshold_bytes)}"
    else:
        # Quoted as set (PRUNESCOPE_OUT_OF_CORE_THRESHOLD_GB is in GB), beside the binary figure.
        where = f"the threshold {threshold_bytes / 1e9:g} GB ({format_bytes(threshold_bytes)})"
    if model_bytes > threshold_bytes:
        return True, f"out of core (model {format_bytes(model_bytes)} > {where})"
    return False, f"in memory (model {format_bytes(model_bytes)} <= {where})"


__all__ = [
    "Checkpoint",
    "MODES",
    "Pruned",
    "checkpoint_weights_sha256",
    "choose_mode",
    "open_checkpoint",
    "prune_checkpoint",
    "resolve_mode",
]
