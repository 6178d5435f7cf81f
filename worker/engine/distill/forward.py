"""Running a causal LM up to its final hidden states (the LM head is applied by the chunked loss)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from worker.engine.adapters import adapter_for


def lm_head(model: nn.Module) -> nn.Linear:
    """The output projection, checked to be a plain Linear with no post-processing of logits."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{type(model).__name__}: the LM head is not an nn.Linear; chunked KD cannot use it")
    config = model.config
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(config, attr, None) not in (None, 1, 1.0):
            raise ValueError(f"{type(model).__name__}: logits are post-processed ({attr}); not supported")
    return head


@contextmanager
def capture_layer_outputs(model: nn.Module, enabled: bool):
    """Yield a list that fills with each decoder layer's output hidden state during a forward."""
    states: list[torch.Tensor] = []
    if not enabled:
        yield states
        return

    def hook(_module, _inputs, output):
        states.append(output[0] if isinstance(output, tuple) else output)

    handles = [layer.register_forward_hook(hook) for layer in adapter_for(model).layers(model)]
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()


def final_hidden(
    model: nn.Module, input_ids: torch.Tensor, *, layer_states: bool = False, attention_mask=None
):
    """(final normed hidden states [B, S, D], per-layer outputs or [])."""
    with capture_layer_outputs(model, layer_states) as states:
        out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out[0], list(states)
