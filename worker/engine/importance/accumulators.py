"""Float32 running sums of per-token scores, updated on the device without per-sample storage.

See `stats.py` for the four sums kept per unit and half. One `RunningSums` holds one axis as rows x
units (heads: layers x H, neurons: layers x F, hidden: norms x D, block importance: layers x 1).

Per batch, each hook reduces its activation over the sequence straight away into two [B, U] float32
tensors (sum of |x| and L2 of x over the real tokens): `torch.linalg.vector_norm` with
`dtype=torch.float32` reads bf16/fp16 activations without a float32 copy on CUDA (the cast is fused
into the reduction), which keeps the hooked pass close to a plain forward. At the end of the batch all
rows are folded into the running sums at once.
"""

from __future__ import annotations

import torch

from worker.engine.importance.stats import NUM_SUMS


class BatchContext:
    """What every hook needs to know about the batch being run: its padding and sample halves."""

    def __init__(self, attention_mask: torch.Tensor, first_sample: int, has_padding: bool | None = None):
        self.mask = attention_mask
        self.lengths = attention_mask.sum(dim=1).to(torch.float32).clamp_min(1.0)  # [B] real tokens
        self.batch_size = attention_mask.shape[0]
        self.halves = (torch.arange(self.batch_size, device=attention_mask.device) + first_sample) % 2  # [B]
        # Callers pass has_padding from the host copy of the mask, so no device sync is needed here.
        self.has_padding = bool((attention_mask == 0).any()) if has_padding is None else has_padding
        self._token_masks: dict[torch.dtype, torch.Tensor] = {}

    def masked(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, S, U] with padded tokens zeroed, so they add nothing to any sum."""
        if not self.has_padding:
            return x
        mask = self._token_masks.get(x.dtype)
        if mask is None:
            mask = self._token_masks[x.dtype] = self.mask.to(x.dtype).unsqueeze(-1)
        return x * mask


def sequence_reductions(x: torch.Tensor, ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_t |x_t|, sqrt(sum_t x_t^2)) over each sample's real tokens: two float32 [B, U] tensors."""
    x = ctx.masked(x)
    seq_sum = torch.linalg.vector_norm(x, ord=1, dim=1, dtype=torch.float32)
    seq_l2 = torch.linalg.vector_norm(x, ord=2, dim=1, dtype=torch.float32)
    return seq_sum, seq_l2


class RunningSums:
    def __init__(self, rows: int, units: int, device: torch.device):
        self.rows, self.units = rows, units
        self.sums = torch.zeros((2, NUM_SUMS, rows, units), dtype=torch.float32, device=device)
        self._seq_sum = self._seq_l2 = None

    def begin_batch(self, ctx: BatchContext) -> None:
        shape = (self.rows, ctx.batch_size, self.units)
        self._seq_sum = torch.zeros(shape, dtype=torch.float32, device=self.sums.device)
        self._seq_l2 = torch.zeros(shape, dtype=torch.float32, device=self.sums.device)

    def add(self, row: int, values: torch.Tensor, ctx: BatchContext) -> None:
        """Per-token values [B, S, U] of one row (a layer or a norm); |values| is what gets summed."""
        seq_sum, seq_l2 = sequence_reductions(values, ctx)
        self._seq_sum[row].copy_(seq_sum)
        self._seq_l2[row].copy_(seq_l2)

    def end_batch(self, ctx: BatchContext) -> None:
        """Fold the batch's per-sample reductions of every row into the running sums of its halves."""
        seq_mean = self._seq_sum / ctx.lengths.view(1, -1, 1)
        seq_l2 = self._seq_l2
        # order = SUM_MEAN, SQ_MEAN, SUM_L2, SQ_L2 (stats.py); [4, rows, B, U] -> [B, 4, rows, U]
        per_sample = torch.stack((seq_mean, seq_mean * seq_mean, seq_l2, seq_l2 * seq_l2)).permute(2, 0, 1, 3)
        self.sums.index_add_(0, ctx.halves, per_sample)
        self._seq_sum = self._seq_l2 = None

    def numpy(self):
        return self.sums.cpu().numpy()
