"""Depth scans: LM loss with one layer, or a block of k consecutive layers, removed.

No prefix is ever recomputed. The importance pass keeps every layer's input and call arguments for
the current batch (`LayerCall`, recorded by the hooks), so removing layers [i, i + k) means: take
layer i's cached input, run only layers i + k .. L - 1 (each with its own recorded mask / position
embeddings), then the final norm and the (chunked) LM head. Per batch that costs sum_i (L - k - i) layer forwards
over the L - k + 1 cuts, i.e. (L - k)(L - k + 1) / 2, against L * (L - k + 1) for running every cut
model in full (the "naive" count: one full pass of L layers per cut).

Memory: the cache holds L x batch x seq x hidden activations (model dtype) for ONE batch at a time.
"""

from __future__ import annotations

import torch
from torch import nn

from worker.engine.adapters import Adapter
from worker.engine.chunked_head import IGNORE_INDEX, next_token_targets, output_head, token_nll
from worker.engine.importance.hooks import LayerCall


def scan_layer_count(num_layers: int, k: int) -> int:
    """Layer forwards one batch's scan of all blocks of k layers costs with prefix reuse."""
    return (num_layers - k) * (num_layers - k + 1) // 2


def naive_layer_count(num_layers: int, k: int) -> int:
    """The same scan without reuse: one full L-layer pass per cut."""
    return num_layers * (num_layers - k + 1)


def token_losses(
    hidden: torch.Tensor, head: nn.Linear, input_ids: torch.Tensor, attention_mask: torch.Tensor
):
    """Next-token cross-entropy per sample, summed over real target tokens (float32), and the counts.

    `hidden`: final normed hidden states [B, S, D]; the LM head is applied in token chunks (no full
    logits). A target counts when both it and the token predicting it are real (not padding).
    """
    targets = next_token_targets(input_ids, attention_mask)
    nll = token_nll(hidden, head, targets)
    return nll.sum(dim=1), (targets != IGNORE_INDEX).sum(dim=1).to(torch.float32)  # [B], [B]


class LayerScanner:
    def __init__(self, model: nn.Module, adapter: Adapter):
        self.layers = adapter.layers(model)
        self.final_norm = adapter.final_norm(model)
        self.head = output_head(model)
        self.layer_forwards = 0  # every decoder-layer evaluation the scans made

    def cut_loss(self, calls: list[LayerCall], start: int, k: int, input_ids, attention_mask):
        """Per-sample loss sums of the model without layers [start, start + k)."""
        hidden = calls[start].hidden
        for j in range(start + k, len(self.layers)):
            hidden = calls[j].run(self.layers[j], hidden)
            self.layer_forwards += 1
        return token_losses(self.final_norm(hidden), self.head, input_ids, attention_mask)[0]

    def scan(self, calls: list[LayerCall], k: int, input_ids, attention_mask) -> torch.Tensor:
        """Loss sums [cuts, B] for every block of k consecutive layers."""
        cuts = len(self.layers) - k + 1
        return torch.stack([self.cut_loss(calls, i, k, input_ids, attention_mask) for i in range(cuts)])
