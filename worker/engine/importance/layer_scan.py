"""Depth scans: LM loss with one layer, or a block of k consecutive layers, removed.

No prefix is ever recomputed. The importance pass keeps every layer's input and call arguments for
the current batch (`LayerCall`, recorded by the hooks), so removing layers [i, i + k) means: take
layer i's cached input, run only layers i + k .. L - 1 (each with its own recorded mask / position
embeddings), then the final norm and LM head. Per batch that costs sum_i (L - k - i) layer forwards
over the L - k + 1 cuts, i.e. (L - k)(L - k + 1) / 2, against L * (L - k + 1) for running every cut
model in full (the "naive" count: one full pass of L layers per cut).

Memory: the cache holds L x batch x seq x hidden activations (model dtype) for ONE batch at a time.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from worker.engine.adapters import Adapter
from worker.engine.importance.hooks import LayerCall


def scan_layer_count(num_layers: int, k: int) -> int:
    """Layer forwards one batch's scan of all blocks of k layers costs with prefix reuse."""
    return (num_layers - k) * (num_layers - k + 1) // 2


def naive_layer_count(num_layers: int, k: int) -> int:
    """The same scan without reuse: one full L-layer pass per cut."""
    return num_layers * (num_layers - k + 1)


def token_losses(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Next-token cross-entropy per sample, summed over real target tokens (float32), and the counts.

    A target counts when both it and the token predicting it are real (not padding).
    """
    logits = logits[:, :-1].to(torch.float32)
    targets = input_ids[:, 1:]
    valid = (attention_mask[:, 1:] * attention_mask[:, :-1]).to(torch.float32)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    ce = ce.view(targets.shape) * valid
    return ce.sum(dim=1), valid.sum(dim=1)  # [B], [B]


class LayerScanner:
    def __init__(self, model: nn.Module, adapter: Adapter):
        self.layers = adapter.layers(model)
        self.final_norm = adapter.final_norm(model)
        self.lm_head = adapter.lm_head(model)
        self.layer_forwards = 0  # every decoder-layer evaluation the scans made

    def cut_loss(self, calls: list[LayerCall], start: int, k: int, input_ids, attention_mask):
        """Per-sample loss sums of the model without layers [start, start + k)."""
        hidden = calls[start].hidden
        for j in range(start + k, len(self.layers)):
            hidden = calls[j].run(self.layers[j], hidden)
            self.layer_forwards += 1
        logits = self.lm_head(self.final_norm(hidden))
        return token_losses(logits, input_ids, attention_mask)[0]

    def scan(self, calls: list[LayerCall], k: int, input_ids, attention_mask) -> torch.Tensor:
        """Loss sums [cuts, B] for every block of k consecutive layers."""
        cuts = len(self.layers) - k + 1
        return torch.stack([self.cut_loss(calls, i, k, input_ids, attention_mask) for i in range(cuts)])
