"""Float32 running sums of per-token scores, updated on the device without per-sample storage.

See `stats.py` for the four sums kept per unit and half. One `RunningSums` holds one axis as rows x
units (heads: layers x H, neurons: layers x F, hidden: norms x D, block importance: layers x 1).

Cost matters here (target: the hooked pass within 1.15x of a plain forward), so per batch:
- each hook reduces its activation over the sequence straight into two [B, U] float32 buffers
  (sum of |x| and L2 of x over the real tokens), `abs_and_l2_sums`: on CUDA with
  `torch.linalg.vector_norm(..., dtype=float32, out=...)`, which fuses the bf16 -> float32 cast into
  the reduction, so no float32 copy of the activation is ever made and each large activation is read
  twice, never written; on CPU, where that kernel is slow over the sequence dimension, with sums of
  cache-sized float32 slices of |x| (4-10x faster, and closer to a float64 reference);
- padding: right padding (what `calibration_batches` makes) is handled by re-reducing only the padded
  samples over their real prefix (host-side lengths, no device sync, no masked copy); any other
  padding pattern falls back to multiplying by the mask;
- at the end of the batch all rows are folded into the running sums at once.
"""

from __future__ import annotations

import torch

from worker.engine.importance.stats import NUM_SUMS

F32 = torch.float32
# float32 elements per temporary of the CPU reductions (1 MiB: stays in cache).
CPU_CHUNK_ELEMENTS = 1 << 18


def abs_and_l2_sums(x: torch.Tensor, dim: int, out_sum: torch.Tensor, out_l2: torch.Tensor) -> None:
    """out_sum = sum |x| and out_l2 = sqrt(sum x^2) over `dim`, accumulated in float32.

    CUDA: `vector_norm` with dtype=float32 fuses the cast into the reduction (no copy of x). CPU:
    torch's norm kernel reduces a dimension that is not the innermost several times slower than its
    sum kernel (one thread, [4, 256, 1408] float32: 5.3 ms for both norms vs 1.2 ms here; [8, 1024,
    2048]: 176 ms vs 15 ms), so |x| is taken in float32 slices along `dim` that fit in cache, summed,
    squared in place and summed again (same sums up to float32 rounding: max 2e-6 relative apart).
    """
    if x.device.type != "cpu":
        torch.linalg.vector_norm(x, ord=1, dim=dim, dtype=F32, out=out_sum)
        torch.linalg.vector_norm(x, ord=2, dim=dim, dtype=F32, out=out_l2)
        return
    n = x.shape[dim]
    if x.numel() == 0:  # an empty sequence, or an empty window of rows
        out_sum.zero_()
        out_l2.zero_()
        return
    step = max(1, CPU_CHUNK_ELEMENTS * n // x.numel())
    for start in range(0, n, step):
        part = x.narrow(dim, start, min(step, n - start))
        a = part.abs() if part.dtype == F32 else part.to(F32).abs_()
        if start == 0:
            torch.sum(a, dim=dim, out=out_sum)
            torch.sum(a.square_(), dim=dim, out=out_l2)
        else:
            out_sum += a.sum(dim=dim)
            out_l2 += a.square_().sum(dim=dim)
    out_l2.sqrt_()


class BatchContext:
    """What every hook needs to know about the batch being run: its padding and sample halves."""

    def __init__(
        self, attention_mask: torch.Tensor, first_sample: int, host_mask: torch.Tensor | None = None
    ):
        host = (host_mask if host_mask is not None else attention_mask).cpu()
        self.mask = attention_mask
        self.batch_size = attention_mask.shape[0]
        self.lengths = attention_mask.sum(dim=1).to(F32).clamp_min(1.0)  # [B] real tokens
        self.halves = (torch.arange(self.batch_size, device=attention_mask.device) + first_sample) % 2  # [B]
        lengths = host.sum(dim=1)
        self.has_padding = bool((lengths < host.shape[1]).any())
        # Right padding: every row is 1..1 0..0, so the real tokens of row b are x[b, :n_b].
        right = torch.arange(host.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        self.right_padded = bool((host.bool() == right).all())
        self.padded_rows = [(b, int(n)) for b, n in enumerate(lengths.tolist()) if n < host.shape[1]]
        self._token_masks: dict[tuple, torch.Tensor] = {}

    def masked(self, x: torch.Tensor, seq_dim: int = 1) -> torch.Tensor:
        """x with padded tokens zeroed (x's batch and sequence dims at seq_dim - 1 and seq_dim)."""
        if not self.has_padding:
            return x
        key = (x.dtype, seq_dim, x.dim())
        mask = self._token_masks.get(key)
        if mask is None:
            shape = [1] * x.dim()
            shape[seq_dim - 1], shape[seq_dim] = self.mask.shape
            mask = self._token_masks[key] = self.mask.to(x.dtype).view(shape)
        return x * mask

    def reduce_into(self, x: torch.Tensor, out_sum: torch.Tensor, out_l2: torch.Tensor) -> None:
        """out_sum[b] = sum_t |x[b, t]|, out_l2[b] = sqrt(sum_t x[b, t]^2) over real tokens; x [B, S, U]."""
        if self.has_padding and not self.right_padded:
            x = self.masked(x)
        abs_and_l2_sums(x, 1, out_sum, out_l2)
        if self.has_padding and self.right_padded:
            for b, n in self.padded_rows:  # only the few short samples are read again
                abs_and_l2_sums(x[b, :n], 0, out_sum[b], out_l2[b])


class RunningSums:
    """Running sums of `rows` x `units`. A batch may cover only a window of the rows (a layer-streamed
    pass runs one layer over every batch at a time): row numbers stay global, the per-batch buffers
    hold the window's rows only, and the other rows' sums are left as they are."""

    def __init__(self, rows: int, units: int, device: torch.device):
        self.rows, self.units = rows, units
        self.sums = torch.zeros((2, NUM_SUMS, rows, units), dtype=F32, device=device)
        self.seq_sum = self.seq_l2 = None
        self.window = range(rows)

    def begin_batch(self, ctx: BatchContext, rows: range | None = None) -> None:
        self.window = range(self.rows) if rows is None else rows
        shape = (len(self.window), ctx.batch_size, self.units)
        self.seq_sum = torch.zeros(shape, dtype=F32, device=self.sums.device)
        self.seq_l2 = torch.zeros(shape, dtype=F32, device=self.sums.device)

    def add(self, row: int, values: torch.Tensor, ctx: BatchContext) -> None:
        """Per-token values [B, S, U] of one row (a layer or a norm); |values| is what gets summed."""
        row -= self.window.start
        width = values.shape[-1]
        if width == self.units:
            ctx.reduce_into(values, self.seq_sum[row], self.seq_l2[row])
            return
        # A narrower layer of a non-uniform model: reduce into fresh buffers, fill the first columns.
        out_sum, out_l2 = (
            self.seq_sum.new_zeros(ctx.batch_size, width),
            self.seq_l2.new_zeros(ctx.batch_size, width),
        )
        ctx.reduce_into(values, out_sum, out_l2)
        self.seq_sum[row, :, :width] = out_sum
        self.seq_l2[row, :, :width] = out_l2

    def add_all_rows(self, values: torch.Tensor, ctx: BatchContext) -> None:
        """Small per-token values of every row of the window at once: [rows, B, S, U] (heads, block
        importance)."""
        abs_and_l2_sums(ctx.masked(values, seq_dim=2), 2, self.seq_sum, self.seq_l2)

    def end_batch(self, ctx: BatchContext) -> None:
        """Fold the batch's per-sample reductions of every row into the running sums of its halves."""
        seq_mean = self.seq_sum / ctx.lengths.view(1, -1, 1)
        seq_l2 = self.seq_l2
        # order = SUM_MEAN, SQ_MEAN, SUM_L2, SQ_L2 (stats.py); [4, rows, B, U] -> [B, 4, rows, U]
        per_sample = torch.stack((seq_mean, seq_mean * seq_mean, seq_l2, seq_l2 * seq_l2)).permute(2, 0, 1, 3)
        self.sums[:, :, self.window.start : self.window.stop].index_add_(0, ctx.halves, per_sample)
        self.seq_sum = self.seq_l2 = None

    def numpy(self):
        return self.sums.cpu().numpy()


class TokenSubsetSums(RunningSums):
    """Running sums of units that only some tokens reach (an expert's FFN channels: the tokens routed to
    that expert). Tokens not routed count as 0, like the absent contribution they make; per sample the
    sums run over the sample's real tokens, as for every other axis, so scores stay comparable across
    experts of one layer. Values arrive as the routed tokens' rows ([n, units of one expert]) with their
    sample indices, so nothing of size tokens x all units is ever made."""

    def add_tokens(self, row: int, units: slice, samples: torch.Tensor, values: torch.Tensor) -> None:
        """Add |values| and values^2 of tokens (already restricted to real tokens) to their samples."""
        row -= self.window.start
        values = values.to(F32)
        self.seq_sum[row][:, units].index_add_(0, samples, values.abs())
        self.seq_l2[row][:, units].index_add_(0, samples, values.square())

    def end_batch(self, ctx: BatchContext) -> None:
        self.seq_l2.sqrt_()  # held squared sums until here
        super().end_batch(ctx)
