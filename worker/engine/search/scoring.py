"""Held-out LM loss of many candidates, with every shared computation done once.

Candidates are scored on the really cut model (not a masked one): it is smaller, hence faster, and
exact for hidden-size cuts too (masking only previews those; see worker/engine/masking.py). Reuse:
- one cut model per width setting (heads, MLP, hidden): every depth variant of it shares its weights;
  a dropped layer is then simply not run, which is what the cut model without that layer computes
  (the same weights, each kept layer called with its own recorded mask and position arguments, as the
  importance run's depth scans do: worker/engine/importance/layer_scan.py);
- hidden states are kept along a trie of kept-layer sequences: the candidates of a width setting are
  visited in sorted order of their kept layers, so each resumes from the deepest layer input it shares
  with the one before (e.g. every candidate dropping only layers >= 5 starts at layer 5's input,
  recorded by the full-depth pass).
`layer_forwards` counts the decoder-layer evaluations made, `naive_layer_forwards` what running every
candidate in full would cost.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from worker.engine.adapters import adapter_for
from worker.engine.chunked_head import output_head
from worker.engine.importance.hooks import LayerCall
from worker.engine.importance.layer_scan import token_losses
from worker.engine.plan import PrunePlan
from worker.engine.surgery import apply_plan


class _Stop(Exception):
    """Raised at the final norm: the recording pass needs no logits."""


def _passthrough(*args, **kwargs):
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def _record(model: nn.Module, batch: dict, run_layers: int) -> tuple[list[LayerCall], torch.Tensor]:
    """Every decoder layer's call (its arguments) and the final norm's input, for one batch.

    Only the first `run_layers` layers are run; the later ones pass their input through (their
    recorded arguments, e.g. per-layer masks, are still right; their recorded inputs are not used)."""
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    calls: list[LayerCall] = []
    final: list[torch.Tensor] = []

    def on_layer(_module, args, kwargs):
        calls.append(LayerCall(args, kwargs))

    def on_final_norm(_module, args):
        final.append(args[0])
        raise _Stop

    handles = [layer.register_forward_pre_hook(on_layer, with_kwargs=True) for layer in layers]
    handles.append(adapter.final_norm(model).register_forward_pre_hook(on_final_norm))
    skipped = list(layers)[run_layers:]
    for layer in skipped:
        layer.forward = _passthrough  # an instance attribute shadows the class forward
    try:
        model.base_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        )
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
        for layer in skipped:
            del layer.forward
    return calls, final[0]


def cut_copy(teacher: nn.Module, plan: PrunePlan) -> nn.Module:
    """The teacher cut to `plan`, the teacher left as it is. Modules and buffers are copied, parameters
    are not: the cut replaces every parameter it slices with a new one, and those it leaves whole stay
    shared with the teacher (nothing writes to them: scoring runs without gradients). Buffers are
    copied because the cut may rewrite one in place (Gemma's embedding scale after a hidden cut)."""
    memo = {id(p): p for p in teacher.parameters()}
    return apply_plan(copy.deepcopy(teacher, memo), plan)


@dataclass
class WindowLosses:
    """Summed token NLL and target tokens of each held-out window (sample), the same windows in the same
    order for every candidate: their sums give the loss, their pairs the noise of a difference (noise.py)."""

    nll: list[float]
    tokens: list[float]

    @property
    def total(self) -> tuple[float, float]:
        """(summed NLL, tokens) over every window."""
        return float(sum(self.nll)), float(sum(self.tokens))


class WidthGroupScorer:
    """Scores candidates that share one width plan (all layers kept, widths cut) on a list of batches."""

    def __init__(self, teacher: nn.Module, width_plan: PrunePlan):
        self.model = cut_copy(teacher, width_plan) if not width_plan.is_empty() else teacher
        adapter = adapter_for(self.model)
        self.layers = adapter.layers(self.model)
        self.final_norm = adapter.final_norm(self.model)
        self.head = output_head(self.model)
        self.layer_forwards = 0
        self.naive_layer_forwards = 0

    @torch.inference_mode()
    def losses(self, kept: list[tuple[int, ...]], batches: list[dict]) -> list[WindowLosses]:
        """The per-window losses of each kept-layer sequence, over all batches (windows in batch order)."""
        order = sorted(range(len(kept)), key=lambda i: kept[i])
        sums = [WindowLosses([], []) for _ in kept]
        L = len(self.layers)
        device = next(self.model.parameters()).device
        # The recording pass runs the longest teacher prefix (layers 0..k-1, none dropped) any candidate keeps.
        prefix = max(_shared_prefix(tuple(range(L)), sequence) for sequence in kept)
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            calls, final_input = _record(self.model, batch, prefix)
            self.layer_forwards += prefix
            # path[j] = (layer, its output) along the current kept sequence: the teacher's prefix.
            path = [(j, calls[j + 1].hidden if j + 1 < L else final_input) for j in range(prefix)]
            for i in order:
                sequence = kept[i]
                shared = _shared_prefix(tuple(j for j, _ in path), sequence)
                del path[shared:]
                hidden = path[-1][1] if path else calls[0].hidden
                for j in sequence[shared:]:
                    hidden = calls[j].run(self.layers[j], hidden)
                    path.append((j, hidden))
                    self.layer_forwards += 1
                self.naive_layer_forwards += len(sequence)
                nll, tokens = token_losses(
                    self.final_norm(hidden), self.head, batch["input_ids"], batch["attention_mask"]
                )
                sums[i].nll.extend(nll.tolist())
                sums[i].tokens.extend(tokens.tolist())
        return sums


def _shared_prefix(a: tuple, b: tuple) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@torch.no_grad()
def plan_loss(teacher: nn.Module, plan: PrunePlan, batches: list[dict]) -> float:
    """Mean held-out token NLL of the teacher really cut to `plan`, in one plain forward per batch
    (the reference the search's shared-prefix scoring is tested against)."""
    model = apply_plan(copy.deepcopy(teacher), plan)
    head = output_head(model)
    total, count = 0.0, 0.0
    device = next(model.parameters()).device
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = model.base_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        )[0]
        nll, tokens = token_losses(hidden, head, batch["input_ids"], batch["attention_mask"])
        total += float(nll.sum())
        count += float(tokens.sum())
    return total / max(count, 1.0)
