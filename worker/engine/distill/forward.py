"""Running a causal LM up to its final hidden states (the LM head is applied by the chunked loss)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from worker.engine.adapters import adapter_for
from worker.engine.chunked_head import final_hidden_states, output_head

# The output projection (a plain Linear) with the logit post-processing of the family (soft-cap, scaling).
lm_head = output_head


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
        hidden = final_hidden_states(model, input_ids, attention_mask)
    return hidden, list(states)
