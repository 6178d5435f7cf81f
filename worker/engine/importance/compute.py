"""`compute_importance`: one hooked inference pass over the calibration batches (plus the layer scans).

Per batch: run the model up to its final norm once under `torch.inference_mode()` with the importance
hooks on (width axes, Block Importance and the block angular distance land in float32 running sums);
if a loss scan is asked for,
the same pass keeps each layer's input, the final hidden states give the base loss (LM head applied in
token chunks, `chunked_head.py`), and the scans re-run only the layers after each cut from the cached
inputs (`layer_scan.py`). Then the batch's cache is dropped. Without a loss scan no logits are computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from worker.engine.adapters import adapter_for
from worker.engine.chunked_head import final_hidden_states
from worker.engine.distributed import DistributedContext
from worker.engine.importance.accumulators import BatchContext
from worker.engine.importance.hooks import ImportanceHooks
from worker.engine.importance.layer_scan import (
    LayerScanner,
    naive_layer_count,
    scan_layer_count,
    token_losses,
)
from worker.engine.importance.provenance import run_manifest, weights_sha256
from worker.engine.importance.result import DEFAULT_SCANS, SCANS, ImportanceResult

Progress = Callable[[int], None]  # called after each batch with its number of samples


def check_scans(scans: Iterable[str], block_size: int, num_layers: int) -> tuple[str, ...]:
    scans = tuple(dict.fromkeys(scans))
    unknown = [s for s in scans if s not in SCANS]
    if unknown:
        raise ValueError(f"unknown scan {unknown[0]!r}; choose from {', '.join(SCANS)}")
    if ("block" in scans or "angular" in scans) and not 1 <= block_size < num_layers:
        raise ValueError(
            f"block size must be between 1 and {num_layers - 1} (the model has {num_layers} layers)"
        )
    return scans


def loss_scan_sizes(scans: tuple[str, ...], block_size: int) -> list[int]:
    """k of every loss scan asked for, each once (a block of 1 is the drop scan, run once)."""
    return list(
        dict.fromkeys(((1,) if "drop" in scans else ()) + ((block_size,) if "block" in scans else ()))
    )


def new_loss_sums(loss_scans: list[int], num_layers: int, device: torch.device) -> dict:
    """float32 loss sums per half: the base loss, the target-token counts, one row per cut and k."""
    loss = {"base": torch.zeros(2, device=device), "tokens": torch.zeros(2, device=device)}
    for k in loss_scans:
        loss[k] = torch.zeros(2, num_layers - k + 1, device=device)
    return loss


IN_MEMORY = {"mode": "in_memory", "reason": "the model was given loaded"}


def compute_importance(
    model: nn.Module,
    batches: Iterable[dict],
    *,
    scans: Iterable[str] = DEFAULT_SCANS,
    block_size: int = 2,
    progress: Progress | None = None,
    metadata: dict | None = None,
    hash_weights: bool = True,
    execution: dict | None = None,
    context: DistributedContext | None = None,
) -> ImportanceResult:
    """Importance of heads, neurons, hidden channels and layers of `model` (see the package docstring).

    `batches`: dicts with `input_ids` and `attention_mask` (LongTensor [B, S], 0 = padding, ignored).
    `scans`: "bi" (Block Importance), "drop" (single-layer drop loss), "block" (k-layer block loss),
    "angular" (angular distance across each k-layer block, Gromov et al.; no extra layer forwards).
    `metadata` is merged into the manifest (model source, data source, seed...). `hash_weights=False`
    skips the manifest's SHA-256 of the weights (a one-off cost: it reads every weight once on the host).
    `execution` is the manifest's record of how the pass ran and why (default: in memory).
    `context` (`DistributedContext.from_environment()` under torchrun): data-parallel, every rank holds
    the whole model and runs batches rank, rank + W, ... of the same `batches` (their samples keep
    their global numbers, hence their halves); the running sums and loss sums are then summed over the
    ranks, so every rank returns the result one process would (float32 sums, in another order).
    """
    dp = context or DistributedContext()
    adapter = adapter_for(model)
    spec = adapter.spec(model)
    scans = check_scans(scans, block_size, spec.num_layers)
    run = _HookedPass(model, adapter, scans, block_size)
    tally = _Tally()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), run.hooks:
            for index, batch in enumerate(batches):
                mine = index % dp.world_size == dp.rank  # another rank's batch only takes its place
                if mine:
                    run.batch(batch, first_sample=tally.samples)
                tally.add(batch["input_ids"])
                if mine and progress is not None:
                    progress(batch["input_ids"].shape[0])
    finally:
        model.train(was_training)
    dp.all_reduce_sum_([axis.sums for axis in run.hooks.axes] + list(run.loss.values()))
    scan_forwards = int(round(dp.sum([run.scanner.layer_forwards])[0]))
    if tally.samples == 0:
        raise ValueError("no calibration samples: the batches were empty")
    return build_result(
        model,
        spec,
        scans=scans,
        block_size=block_size,
        hooks=run.hooks,
        angular=run.hooks.angular,
        loss=run.loss,
        counts=(tally.samples, tally.batches, tally.seq_len),
        scan_forwards=scan_forwards,
        metadata=metadata if dp.world_size == 1 else {**(metadata or {}), "world_size": dp.world_size},
        weights_hash=weights_sha256(model) if hash_weights else None,
        execution=execution or IN_MEMORY,
    )


@dataclass
class _Tally:
    """What the manifest counts: samples (which also number them, hence their halves), batches and the
    longest sequence. Every rank counts every batch, its own and the others'."""

    samples: int = 0
    batches: int = 0
    seq_len: int = 0

    def add(self, input_ids: torch.Tensor) -> None:
        self.samples += input_ids.shape[0]
        self.batches += 1
        self.seq_len = max(self.seq_len, input_ids.shape[1])


class _HookedPass:
    """One batch at a time: the hooked forward (running sums), then, if asked, the base loss and the
    loss scans from the layer inputs the hooks kept."""

    def __init__(self, model: nn.Module, adapter, scans: tuple[str, ...], block_size: int):
        self.model = model
        self.num_layers = adapter.spec(model).num_layers
        self.loss_scans = loss_scan_sizes(scans, block_size)
        self.device = next(model.parameters()).device
        self.scanner = LayerScanner(model, adapter)
        self.loss = new_loss_sums(self.loss_scans, self.num_layers, self.device)
        self.hooks = ImportanceHooks(
            model,
            adapter,
            block_importance="bi" in scans,
            record_calls=bool(self.loss_scans),
            angular_block=block_size if "angular" in scans else None,
        )

    def batch(self, batch: dict, first_sample: int) -> None:
        input_ids, attention_mask, ctx = batch_on(batch, self.device, first_sample)
        hidden = self._hooked_forward(input_ids, attention_mask, ctx)
        if self.loss_scans:
            add_base_loss(self.loss, hidden, self.scanner.head, input_ids, attention_mask, ctx)
        del hidden  # not alive during the scans nor during the next batch's forward
        if self.loss_scans:
            self._loss_scans(input_ids, attention_mask, ctx)

    def _hooked_forward(self, input_ids, attention_mask, ctx: BatchContext) -> torch.Tensor:
        self.hooks.begin_batch(ctx)
        self.hooks.enabled = True
        # Up to the final norm only: the LM head runs (chunked) when a loss is asked for.
        hidden = final_hidden_states(self.model, input_ids, attention_mask)
        self.hooks.end_batch()
        return hidden

    def _loss_scans(self, input_ids, attention_mask, ctx: BatchContext) -> None:
        self.hooks.enabled = False  # scans re-run layers; those activations are not calibration data
        for k in self.loss_scans:
            cut_sums = self.scanner.scan(self.hooks.calls, k, input_ids, attention_mask)  # [cuts, B]
            self.loss[k].index_add_(0, ctx.halves, cut_sums.T)
        self.hooks.calls = [None] * self.num_layers


def batch_on(batch: dict, device: torch.device, first_sample: int):
    """A batch's input_ids and attention mask on `device` (all ones when it has none) and its
    BatchContext (its samples numbered from `first_sample`)."""
    host_mask = batch.get("attention_mask")
    if host_mask is None:
        host_mask = torch.ones_like(batch["input_ids"])
    input_ids = batch["input_ids"].to(device)
    attention_mask = host_mask.to(device)
    # The padding layout is read from the host copy, so hooks never wait on the device.
    return input_ids, attention_mask, BatchContext(attention_mask, first_sample, host_mask=host_mask)


def add_base_loss(
    loss: dict, hidden: torch.Tensor, head, input_ids, attention_mask, ctx: BatchContext
) -> None:
    """The uncut model's per-sample loss sums and target-token counts, into each sample's half."""
    per_sample, tokens = token_losses(hidden, head, input_ids, attention_mask)
    loss["base"].index_add_(0, ctx.halves, per_sample)
    loss["tokens"].index_add_(0, ctx.halves, tokens)


def build_result(
    model: nn.Module,
    spec,
    *,
    scans: tuple[str, ...],
    block_size: int,
    hooks: ImportanceHooks,
    angular,
    loss: dict,
    counts: tuple[int, int, int],
    scan_forwards: int,
    metadata: dict | None,
    weights_hash: str | None,
    execution: dict,
    **manifest_fields,
) -> ImportanceResult:
    """The arrays and manifest of a finished pass, in memory or streamed alike."""
    samples, batch_count, seq_len = counts
    num_layers = spec.num_layers
    arrays = {"samples": torch.tensor([(samples + 1) // 2, samples // 2], dtype=torch.float32).numpy()}
    arrays.update(heads=hooks.heads.numpy(), neurons=hooks.neurons.numpy(), hidden=hooks.hidden.numpy())
    if not hooks.uniform:  # layers of different widths: the sums are padded to the widest layer
        arrays["heads_valid"] = np.array(hooks.layer_heads, dtype=np.int64)
        arrays["neurons_valid"] = np.array(hooks.layer_neurons, dtype=np.int64)
    if hooks.moe:  # per expert and layer; expert_neurons [2, 4, L, E x F] (expert-major)
        arrays.update({name: axis.numpy() for name, axis in hooks.experts.items()})
        arrays["expert_neurons"] = hooks.expert_neurons.numpy()
    if "bi" in scans:
        arrays["block_importance"] = hooks.bi.numpy()
    if "angular" in scans:
        arrays[f"block_angular_k{block_size}"] = angular.numpy()
    if len(loss) > 2:
        arrays["loss_base"], arrays["loss_tokens"] = loss["base"].cpu().numpy(), loss["tokens"].cpu().numpy()
        if "drop" in scans:
            arrays["loss_drop"] = loss[1].cpu().numpy()
        if "block" in scans:
            arrays[f"loss_block_k{block_size}"] = loss[block_size].cpu().numpy()

    # With k == 1 the drop scan and the block scan are the same cuts, run once.
    named = {"drop": 1} if "drop" in scans else {}
    if "block" in scans:
        named[f"block_k{block_size}"] = block_size
    evaluations = {
        "batches": batch_count,
        "layer_forwards_importance_pass": num_layers * batch_count,
        "layer_forwards_scans": scan_forwards,
        "layer_forwards_scans_expected": sum(scan_layer_count(num_layers, k) for k in set(named.values()))
        * batch_count,
        "per_scan": {
            name: {
                "layer_forwards": scan_layer_count(num_layers, k) * batch_count,
                "naive_layer_forwards": naive_layer_count(num_layers, k) * batch_count,
            }
            for name, k in named.items()
        },
    }
    manifest = run_manifest(
        model,
        spec,
        scans=list(scans),
        block_size=block_size,
        samples=samples,
        seq_len=seq_len,
        evaluations=evaluations,
        metadata=metadata or {},
        hash_weights=False,
        weights_sha256=weights_hash,
        execution=execution,
        **manifest_fields,
    )
    return ImportanceResult(arrays=arrays, manifest=manifest)
