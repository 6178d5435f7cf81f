"""A model without its weights, filled one module at a time from its safetensors checkpoint.

`empty_model` builds the model from its config with every parameter on the "meta" device (shapes and
dtypes, no memory) but real buffers: the rotary embedding's `inv_freq` and other non-persistent
buffers are not in the checkpoint and are computed by the module's own constructor, exactly as
`from_pretrained` would (accelerate's `init_empty_weights(include_buffers=False)`). `ModuleLoader`
then reads one module's parameters from the checkpoint onto the device in the model's dtype
(`load`) and turns them back into meta tensors when done (`release`), so a pass over the model holds
one decoder layer at a time. Tied weights stay tied: a parameter shared by two modules is read once
and put in both.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from worker.engine.adapters import adapter_for_model_type
from worker.engine.checkpoint_reader import CheckpointReader, MissingTensor
from worker.engine.dtypes import SAFETENSORS_DTYPES, config_dtype, dtype_name, torch_dtype

META = torch.device("meta")
# The safetensors dtypes a model loads in when neither the caller nor the config names one.
AUTO_DTYPE_CODES = ("F32", "BF16", "F16")
# Called with (the parameter's name in the model, its loaded tensor) for every parameter loaded.
OnLoad = Callable[[str, torch.Tensor], None]


def checkpoint_dtype(reader: CheckpointReader, config, dtype) -> torch.dtype:
    """The dtype `load_model` (from_pretrained's "auto") loads in: the asked one, else the config's,
    else the checkpoint's first floating tensor's."""
    if dtype is not None:
        return torch_dtype(dtype)
    stated = config_dtype(config)
    if stated is not None and stated != "auto":
        return torch_dtype(dtype_name(stated))
    for name in reader.names():
        if reader.dtype_name(name) in AUTO_DTYPE_CODES:
            return SAFETENSORS_DTYPES[reader.dtype_name(name)]
    return torch.float32


def empty_model(
    path: str | os.PathLike, reader: CheckpointReader, *, dtype=None, attn_implementation: str | None = None
) -> nn.Module:
    """The checkpoint's model in eval mode, parameters on "meta", buffers real (module docstring)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from worker.engine.loading import LAYERS_FILE, _skip_weight_init, resize_to_layers_file

    path = Path(path)
    config = AutoConfig.from_pretrained(str(path))
    adapter_for_model_type(getattr(config, "model_type", None))  # unsupported: a clear error
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with init_empty_weights(include_buffers=False), _skip_weight_init():
        model = AutoModelForCausalLM.from_config(
            config, dtype=checkpoint_dtype(reader, config, dtype), **kwargs
        )
        if (path / LAYERS_FILE).is_file():
            resize_to_layers_file(model, path, config)
    model.tie_weights()  # from_config leaves tying to from_pretrained's loading; the config decides
    return model.eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters once loaded (tied weights once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def move_buffers(model: nn.Module, device: torch.device) -> None:
    """Put every (real) buffer on `device`; parameters stay where they are (module.to would refuse
    to copy out of "meta")."""
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.device != device:
                module._buffers[name] = buffer.to(device)


class ModuleLoader:
    """Loads modules of an `empty_model` from its checkpoint onto `device`, and empties them again."""

    def __init__(
        self,
        model: nn.Module,
        reader: CheckpointReader,
        device: torch.device | str,
        on_load: OnLoad | None = None,
    ):
        self.reader, self.device, self.on_load = reader, torch.device(device), on_load
        self._names = {id(m): name for name, m in model.named_modules(remove_duplicate=False)}
        # A tied parameter's meta object -> its loaded Parameter, so the second owner reuses it.
        self._loaded: dict[int, nn.Parameter] = {}
        # Each meta parameter's name (a tied one's first), with the parameter itself: held, so that
        # its id is never reused by a new object. `release` adds the meta parameters it makes, so
        # a module released and loaded again (a later pass) reads the same names.
        self._param_names: dict[int, tuple[str, nn.Parameter]] = {
            id(p): (name, p) for name, p in model.named_parameters()
        }
        self._loaded_names: dict[int, str] = {}  # id of a loaded Parameter -> its name
        # Mixture of experts: fused expert tensors are assembled from the hub's per-expert layout.
        from worker.engine.adapters import adapter_for_model_type
        from worker.engine.expert_layout import FusedExpertReader

        adapter = adapter_for_model_type(model.config.model_type)
        self._experts = FusedExpertReader(reader, adapter) if adapter.moe else None

    def _source_name(self, name: str) -> str:
        """The checkpoint's name for a model tensor (base-model checkpoints omit the first prefix)."""
        if name in self.reader:
            return name
        short = name.partition(".")[2]
        if short in self.reader:
            return short
        router = self._experts.router_name(name) if self._experts is not None else None
        if router is not None:  # the MoE module may have another name on disk (Mixtral)
            return router
        raise MissingTensor(f"{self.reader.path}: the checkpoint has no tensor {name}")

    def _read(self, name: str) -> torch.Tensor:
        if self._experts is not None and self._experts.covers(name):
            return self._experts.read(name)
        return self.reader.read(self._source_name(name))

    def load(self, module: nn.Module) -> None:
        prefix = self._names[id(module)]
        for owner_name, owner in module.named_modules(prefix=prefix):
            for leaf, param in list(owner._parameters.items()):
                if param is None or not param.is_meta:
                    continue
                loaded = self._loaded.get(id(param))
                if loaded is None:
                    entry = self._param_names.get(id(param))
                    name = entry[0] if entry is not None else f"{owner_name}.{leaf}"
                    tensor = self._read(name).to(self.device, param.dtype)
                    if tuple(tensor.shape) != tuple(param.shape):
                        from worker.engine.loading import weights_mismatch

                        raise weights_mismatch(self.reader.path, name, tensor.shape, param.shape)
                    loaded = nn.Parameter(tensor, requires_grad=False)
                    self._loaded[id(param)] = loaded
                    self._loaded_names[id(loaded)] = name
                    if self.on_load is not None:
                        self.on_load(name, tensor)
                owner._parameters[leaf] = loaded

    def release(self, module: nn.Module) -> None:
        """Back to meta tensors (the device memory is freed once nothing else holds them)."""
        for owner in module.modules():
            for leaf, param in list(owner._parameters.items()):
                if param is None or param.is_meta:
                    continue
                for key in [k for k, v in self._loaded.items() if v is param]:
                    del self._loaded[key]
                meta = nn.Parameter(torch.empty_like(param, device=META), requires_grad=False)
                name = self._loaded_names.pop(id(param), None)
                if name is not None:
                    self._param_names[id(meta)] = (name, meta)
                owner._parameters[leaf] = meta


__all__ = ["ModuleLoader", "checkpoint_dtype", "empty_model", "move_buffers", "weight_bytes"]
