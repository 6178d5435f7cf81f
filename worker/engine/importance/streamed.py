"""`compute_importance_streamed`: the importance pass one decoder layer at a time, for models larger
than the device (the approach of GPTQ-style calibration and llm-compressor's sequential pipeline).

The model is built on "meta" (`layer_loader.py`). The embeddings are loaded and every calibration
batch's layer-0 input goes into an activation store (`activation_store.py`: device, pinned RAM or
disk). Then, for each layer: only its weights are read from the safetensors checkpoint onto the
device, every batch's hidden states go through it with the same hooks and float32 running sums as
the in-memory pass (`hooks.py`, each batch covering that one layer's rows), the outputs replace the
inputs in the store, and the layer is emptied again. Last, the final norm (hooked too) and the LM
head give the base loss. Every weight is read once; the scores equal the in-memory pass's.

Layer call arguments (causal mask, rotary position embeddings, position ids...) are the ones the
model's own forward builds: `record_layer_calls` calls the base model with each layer's forward
swapped for a recorder, so it runs the embeddings and whatever precedes the layers, and no layer;
the layers then run from these `LayerCall`s as the in-memory loss scans re-run them
(`layer_scan.py`). They are recorded again for each (layer, batch) rather than kept: that costs an
embedding lookup, far less than a layer, and no per-batch masks stay in memory.

Loss scans, streamed. Removing layers [i, i + k) means continuing from layer i's input: when the
stream reaches layer i it forks a branch store with that input; the branch skips layers i..i+k-1
and from layer i + k on goes through each layer while it is loaded, next to the main stream; at the
end the final norm and the head give its loss. The layer forwards are those of the in-memory scan,
(L - k)(L - k + 1) / 2 per batch and scan, with each layer still read once. The cost is memory: one
store (every batch's activations) per open cut, L - k + 1 per scan by the last layer, on top of the
main stream, spilled to pinned RAM and disk as the budgets say. The angular distance keeps the
inputs of the last k layers (k stores); Block Importance needs none.

Peak device memory: embeddings (the LM head too at the end) + one layer + one batch's working
tensors + the stores the device budget admits.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from worker.engine.adapters import adapter_for
from worker.engine.checkpoint_reader import CheckpointReader
from worker.engine.chunked_head import final_hidden_states, output_head
from worker.engine.importance.accumulators import BatchContext, RunningSums
from worker.engine.importance.activation_store import ActivationStore, ActivationStores, StoreBudget
from worker.engine.importance.compute import (
    Progress,
    add_base_loss,
    batch_on,
    build_result,
    check_scans,
    loss_scan_sizes,
    new_loss_sums,
)
from worker.engine.importance.hooks import ImportanceHooks, LayerCall, angular_distance_from_norms
from worker.engine.importance.layer_scan import token_losses
from worker.engine.importance.provenance import WeightsHasher
from worker.engine.importance.result import DEFAULT_SCANS, ImportanceResult
from worker.engine.layer_loader import ModuleLoader, empty_model, move_buffers
from worker.engine.memplan import logit_budget

F32 = torch.float32
WORKING_MARGIN_BYTES = 1 << 30  # allocator slack and the small per-batch buffers of the hooks


class _AllLayersRecorded(Exception):
    """Stops the base model's forward once the last layer's call is recorded."""


def record_layer_calls(
    model: nn.Module, layers: nn.ModuleList, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> list[LayerCall]:
    """Every decoder layer's call as the model's forward makes it, without running any layer.

    Each layer's forward is replaced by a recorder returning its input; the last one stops the
    forward. Only what precedes the layers (embeddings, rotary tables, masks) runs, so the layers
    may be on "meta". `calls[0].hidden` is the first layer's input.
    """
    calls: list[LayerCall | None] = [None] * len(layers)

    def recorder(i: int):
        def forward(*args, **kwargs):
            calls[i] = LayerCall(args, kwargs)
            if i == len(layers) - 1:
                raise _AllLayersRecorded
            return calls[i].hidden

        return forward

    for i, layer in enumerate(layers):
        layer.forward = recorder(i)
    try:
        final_hidden_states(model, input_ids, attention_mask)
    except _AllLayersRecorded:
        pass
    finally:
        for layer in layers:
            del layer.forward
    if any(call is None for call in calls):
        raise RuntimeError(f"{type(model).__name__}'s forward did not call every decoder layer")
    return calls


def checkpoint_dir(source: str | os.PathLike) -> Path:
    """The local directory of safetensors weights a streamed pass reads."""
    path = Path(source).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"streamed importance needs a local model directory with config.json; {source} is not one "
            "(download a hub model first, e.g. `hf download ID --local-dir DIR`)"
        )
    return path


def working_bytes(
    model: nn.Module, adapter, shapes: list[tuple[int, int, int]], dtype: torch.dtype, device: torch.device
) -> int:
    """What the pass keeps on the device besides the stores: embeddings, final norm and head, two
    layers (one loaded while the last one's memory is returned), a batch's layer temporaries in
    float32 and a chunk of logits. Approximate (attention scores of the eager kernel are not
    counted): the device budget takes it off the free memory."""
    parts = [adapter.embed(model), adapter.final_norm(model), adapter.lm_head(model)]
    if adapter.position_embed(model) is not None:
        parts.append(adapter.position_embed(model))
    fixed = {id(p): p.numel() * p.element_size() for m in parts for p in m.parameters()}
    layers = adapter.layers(model)  # a pruned model's layers may differ: budget for the largest
    layer = max(sum(p.numel() * p.element_size() for p in x.parameters()) for x in layers)
    tokens = max(b * s for b, s, _ in shapes)
    width = max(shapes[0][2], *(adapter.layer_intermediate_size(x) for x in layers))
    per_batch = 6 * tokens * width * 4  # float32 temporaries: layer activations, |x| slices, norms
    return sum(fixed.values()) + 2 * layer + per_batch + 4 * logit_budget(device.type) + WORKING_MARGIN_BYTES


def _block_angular(angular: RunningSums, start: int, block_in, block_out, ctx: BatchContext) -> None:
    """The angular distance of block `start` for one batch (what the hooks measure in memory)."""
    n_in = torch.linalg.vector_norm(block_in, dim=-1, dtype=F32)
    n_out = torch.linalg.vector_norm(block_out, dim=-1, dtype=F32)
    n_diff = torch.linalg.vector_norm(block_in - block_out, dim=-1, dtype=F32)
    angular.begin_batch(ctx, range(start, start + 1))
    angular.add_all_rows(angular_distance_from_norms(n_in, n_out, n_diff)[None, ..., None], ctx)
    angular.end_batch(ctx)


def compute_importance_streamed(
    source: str | os.PathLike,
    batches: Iterable[dict],
    *,
    dtype=None,
    device: str | torch.device = "cpu",
    scans: Iterable[str] = DEFAULT_SCANS,
    block_size: int = 2,
    progress: Progress | None = None,
    metadata: dict | None = None,
    hash_weights: bool = True,
    budget: StoreBudget | None = None,
    reason: str = "requested",
    attn_implementation: str | None = None,
    spill_dir: str | os.PathLike | None = None,
) -> ImportanceResult:
    """`compute_importance` of the checkpoint at `source`, one layer on the device at a time.

    Same arguments and result as `compute_importance` (its manifest says `execution.mode:
    "streamed"` with `reason`), plus the checkpoint's `dtype` / `device` as `load_model` takes them
    and the activation store `budget` (default: measured from the free memory, spilling to files
    under `spill_dir`, default the system temporary directory). `progress(n)` gets
    whole samples as the work advances (each batch is 1 / (L + 1) done after each layer); the
    calls add up to the number of samples.
    """
    path = checkpoint_dir(source)
    reader = CheckpointReader(path)
    model = empty_model(path, reader, dtype=dtype, attn_implementation=attn_implementation)
    device = torch.device(device)
    adapter = adapter_for(model)
    spec = adapter.spec(model)
    num_layers = spec.num_layers
    scans = check_scans(scans, block_size, num_layers)
    loss_scans = loss_scan_sizes(scans, block_size)
    batches = list(batches)  # every layer goes over all of them
    if not batches or sum(b["input_ids"].shape[0] for b in batches) == 0:
        raise ValueError("no calibration samples: the batches were empty")

    layers, final_norm, head = adapter.layers(model), adapter.final_norm(model), output_head(model)
    act_dtype = next(model.parameters()).dtype
    shapes = [(*b["input_ids"].shape, spec.hidden_size) for b in batches]
    if budget is None:
        reserve = working_bytes(model, adapter, shapes, act_dtype, torch.device(device))
        budget = StoreBudget.measure(device, reserve, str(spill_dir) if spill_dir else None)
    stores = ActivationStores(budget, device, ActivationStores.bytes_for(shapes, act_dtype))
    hasher = WeightsHasher(model) if hash_weights else None
    loader = ModuleLoader(model, reader, device, on_load=hasher.add if hasher else None)
    move_buffers(model, device)

    hooks = ImportanceHooks(model, adapter, block_importance="bi" in scans, record_calls=False, device=device)
    angular = RunningSums(num_layers - block_size + 1, 1, device) if "angular" in scans else None
    loss = new_loss_sums(loss_scans, num_layers, device)
    contexts, inputs, samples = [], [], 0
    for batch in batches:
        input_ids, attention_mask, ctx = batch_on(batch, device, samples)
        inputs.append((input_ids, attention_mask))
        contexts.append(ctx)
        samples += batch["input_ids"].shape[0]
    scan_forwards = 0
    work = {"done": 0, "reported": 0}  # sample-stages done, samples reported

    def advance(batch_size: int) -> None:
        """Report whole samples: each stage (L layers + the final norm) moves a batch 1 / (L + 1)."""
        work["done"] += batch_size
        target = work["done"] // (num_layers + 1)
        if progress is not None and target > work["reported"]:
            progress(target - work["reported"])
            work["reported"] = target

    def calls_of(b: int) -> list[LayerCall]:
        return record_layer_calls(model, layers, *inputs[b])

    try:
        with torch.inference_mode(), hooks:
            hooks.enabled = False  # on only while a layer (or the final norm) runs calibration data
            loader.load(adapter.embed(model))
            if adapter.position_embed(model) is not None:
                loader.load(adapter.position_embed(model))
            main = stores.new()
            for b in range(len(batches)):
                main[b] = calls_of(b)[0].hidden
            # Inputs of the last k layers (slot i % k holds layer i's), for the angular distance.
            recent = [stores.new() for _ in range(block_size)] if angular is not None else []
            branches: dict[tuple[int, int], ActivationStore] = {}  # (k, first removed layer) -> cut
            for i, layer in enumerate(layers):
                loader.load(layer)
                opening = [(k, i) for k in loss_scans if i <= num_layers - k]
                for key in opening:
                    branches[key] = stores.new()
                for b, ctx in enumerate(contexts):
                    calls = calls_of(b)
                    x_in = main[b]
                    for key in opening:
                        branches[key][b] = x_in
                    if angular is not None:
                        recent[i % block_size][b] = x_in
                    hooks.enabled = True
                    hooks.begin_batch(ctx, range(i, i + 1), final_norm=False)
                    x_out = calls[i].run(layer, x_in)
                    hooks.end_batch()
                    hooks.enabled = False
                    if angular is not None and i >= block_size - 1:
                        start = i - block_size + 1
                        _block_angular(angular, start, recent[start % block_size][b], x_out, ctx)
                    for (k, first), branch in branches.items():
                        if first + k <= i:
                            branch[b] = calls[i].run(layer, branch[b])
                            scan_forwards += 1
                    main[b] = x_out
                    del calls, x_in, x_out
                    advance(ctx.batch_size)
                loader.release(layer)
            for store in recent:
                stores.release(store)
            loader.load(final_norm)
            loader.load(adapter.lm_head(model))  # tied to the embeddings: already there
            for b, ctx in enumerate(contexts):
                input_ids, attention_mask = inputs[b]
                hooks.enabled = True
                hooks.begin_batch(ctx, range(num_layers, num_layers), final_norm=True)
                hidden = final_norm(main[b])
                hooks.end_batch()
                hooks.enabled = False
                if loss_scans:
                    add_base_loss(loss, hidden, head, input_ids, attention_mask, ctx)
                    for k in loss_scans:
                        cut_sums = torch.stack(
                            [
                                token_losses(final_norm(branches[k, i][b]), head, input_ids, attention_mask)[
                                    0
                                ]
                                for i in range(num_layers - k + 1)
                            ]
                        )  # [cuts, B]
                        loss[k].index_add_(0, ctx.halves, cut_sums.T)
                del hidden
                advance(ctx.batch_size)
    finally:
        stores.close()

    execution = {
        "mode": "streamed",
        "reason": reason,
        "layer_loads": num_layers,
        "activations": stores.summary(),
    }
    seq_len = max(s for _, s, _ in shapes)
    return build_result(
        model,
        spec,
        scans=scans,
        block_size=block_size,
        hooks=hooks,
        angular=angular,
        loss=loss,
        counts=(samples, len(batches), seq_len),
        scan_forwards=scan_forwards,
        metadata={"model": str(source), **(metadata or {})},
        weights_hash=hasher.hexdigest() if hasher else None,
        execution=execution,
        device=str(device),
    )


__all__ = ["compute_importance_streamed", "record_layer_calls", "working_bytes"]
