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

Bounded stores, several passes. The tiers together hold `capacity()` stores (the disk too is bounded:
the spill directory's free space less a reserve, or the budget's `disk_bytes`). When the scans need
more, `plan_passes` splits the cuts into passes over the checkpoint: the first pass is the one above
with the cuts that open last; each later pass runs an unhooked stream from the embeddings to its
last cut's first layer (then drops it) and its own cuts' branches to the end, reading the layers it
needs again (`execution.passes` and `layer_loads` in the manifest say how many). Each cut's loss is
computed exactly as in one pass, so the scores are the same. When not even the first pass fits (the
stream, the angular inputs and one cut), the pass is refused before any weight is read
(`ActivationBudgetError`, saying how much it needs and what to change).

Peak device memory: embeddings (the LM head too at the end) + one layer + one batch's working
tensors + the stores the device budget admits.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
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
from worker.engine.memplan import format_bytes, logit_budget

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


class ActivationBudgetError(ValueError):
    """Not even one pass's activation stores fit the device, RAM and disk budgets."""


Cut = tuple[int, int]  # (k, first removed layer): a loss scan's cut of layers [first, first + k)


def plan_passes(
    num_layers: int, loss_scans: list[int], angular_stores: int, capacity: int | None
) -> list[list[Cut]] | None:
    """The loss scans' cuts split into passes over the checkpoint so that no pass opens more stores
    than `capacity` (None: no limit); None when even one pass cannot fit.

    The first pass holds the main stream (hooked: the scores), the `angular_stores` inputs of the
    angular distance and as many cuts as fit; each later pass a stream (which stops at its last cut's
    first layer) and `capacity - 1` cuts. A cut's branch stays open to the end of its pass, so the
    first pass takes the cuts that open last, the later passes the earlier ones, whose streams end
    sooner. memplan.streamed_passes counts the same passes.
    """
    cuts = sorted(((k, i) for k in loss_scans for i in range(num_layers - k + 1)), key=lambda c: -c[1])
    if capacity is None or capacity >= 1 + angular_stores + len(cuts):
        return [cuts]
    first_room, later_room = capacity - 1 - angular_stores, capacity - 1
    if first_room < 0 or later_room < 1:
        return None
    rest = cuts[first_room:]
    return [cuts[:first_room]] + [rest[j : j + later_room] for j in range(0, len(rest), later_room)]


def pass_layers(cuts: list[Cut], num_layers: int, first: bool) -> set[int]:
    """The layers a pass loads: all for the first; for a later one, those its stream goes through
    (before its last cut's first layer) and those its branches go through (from its earliest branch
    end on)."""
    if first:
        return set(range(num_layers))
    last_open = max(i for _, i in cuts)
    resume = min(k + i for k, i in cuts)
    return {j for j in range(num_layers) if j < last_open or j >= resume}


def _budget_message(stores: ActivationStores, num_layers: int, loss_scans: list[int], angular: int) -> str:
    from worker.engine.importance.activation_store import spill_root

    need = max(1 + angular, 2 if loss_scans else 1)  # plan_passes' first pass, or a later one
    cuts = sum(num_layers - k + 1 for k in loss_scans)
    budget = stores.budget
    host = budget.host_bytes if stores.device.type == "cuda" else 0
    parts = ([f"with the {angular} angular-distance inputs"] if angular else []) + (
        ["with one loss-scan cut"] if loss_scans else []
    )
    what = "the main stream" + (" " + " or ".join(parts) if parts else "")
    return (
        f"streamed importance needs room for at least {need} activation stores of "
        f"{format_bytes(stores.store_bytes)} at once ({what}; {1 + angular + cuts} to run every scan in one "
        f"pass), {format_bytes(need * stores.store_bytes)}, but the budgets hold {stores.capacity()}: "
        f"{format_bytes(budget.device_bytes)} on {stores.device}, {format_bytes(host)} of pinned RAM and "
        f"{format_bytes(stores.disk_bytes)} of disk under {spill_root(budget.spill_dir)}. A store holds every "
        "calibration sample's hidden states: use fewer samples or a shorter sequence length, drop the "
        "angular scan or use a smaller block size, or set spill_dir to a disk with more free space (or raise "
        "the spill limit: spill_limit_gb, PRUNESCOPE_SPILL_LIMIT_GB, --spill-limit-gb)"
    )


def _block_angular(angular: RunningSums, start: int, block_in, block_out, ctx: BatchContext) -> None:
    """The angular distance of block `start` for one batch (what the hooks measure in memory)."""
    n_in = torch.linalg.vector_norm(block_in, dim=-1, dtype=F32)
    n_out = torch.linalg.vector_norm(block_out, dim=-1, dtype=F32)
    n_diff = torch.linalg.vector_norm(block_in - block_out, dim=-1, dtype=F32)
    angular.begin_batch(ctx, range(start, start + 1))
    angular.add_all_rows(angular_distance_from_norms(n_in, n_out, n_diff)[None, ..., None], ctx)
    angular.end_batch(ctx)


def _nonempty(batches: Iterable[dict]) -> list[dict]:
    """The batches as a list, refused when they hold no sample."""
    batches = list(batches)  # every layer goes over all of them
    if not batches or sum(b["input_ids"].shape[0] for b in batches) == 0:
        raise ValueError("no calibration samples: the batches were empty")
    return batches


def _stores_and_passes(
    model: nn.Module,
    adapter,
    shapes: list[tuple[int, int, int]],
    device: torch.device,
    num_layers: int,
    loss_scans: list[int],
    angular_stores: int,
    *,
    budget: StoreBudget | None,
    spill_dir: str | os.PathLike | None,
    disk_bytes: int | None,
) -> tuple[ActivationStores, list[list[Cut]]]:
    """The activation stores the budgets admit and the passes they need, refused before any weight
    is read when not even the first pass fits (module docstring)."""
    act_dtype = next(model.parameters()).dtype
    if budget is None:
        reserve = working_bytes(model, adapter, shapes, act_dtype, device)
        budget = StoreBudget.measure(device, reserve, str(spill_dir) if spill_dir else None, disk_bytes)
    stores = ActivationStores(budget, device, ActivationStores.bytes_for(shapes, act_dtype))
    passes = plan_passes(num_layers, loss_scans, angular_stores, stores.capacity())
    if passes is None:
        raise ActivationBudgetError(_budget_message(stores, num_layers, loss_scans, angular_stores))
    return stores, passes


@dataclass
class _PassStores:
    """The stores one pass has open: the main stream (None once a later pass's stream is done), the
    inputs of the last k layers for the angular distance (slot i % k holds layer i's) and one branch
    per open cut (k, first removed layer)."""

    main: ActivationStore | None
    recent: list[ActivationStore] = field(default_factory=list)
    branches: dict[Cut, ActivationStore] = field(default_factory=dict)


class StreamedPasses:
    """The passes of one streamed importance run over the checkpoint (module docstring) and what they
    share: the layer loader, the activation stores, the hooks and float32 sums the scores come from,
    the calibration batches on the device, and the counts the progress and the manifest report."""

    def __init__(
        self,
        model: nn.Module,
        adapter,
        spec,
        reader: CheckpointReader,
        stores: ActivationStores,
        batches: list[dict],
        *,
        scans: tuple[str, ...],
        block_size: int,
        device: torch.device,
        progress: Progress | None,
        hash_weights: bool,
    ):
        self.model, self.adapter, self.stores = model, adapter, stores
        self.num_layers = spec.num_layers
        self.block_size = block_size
        self.loss_scans = loss_scan_sizes(scans, block_size)
        self.layers = adapter.layers(model)
        self.final_norm, self.head = adapter.final_norm(model), output_head(model)
        self.hasher = WeightsHasher(model) if hash_weights else None
        self.loader = ModuleLoader(model, reader, device, on_load=self.hasher.add if self.hasher else None)
        move_buffers(model, device)
        self.hooks = ImportanceHooks(
            model, adapter, block_importance="bi" in scans, record_calls=False, device=device
        )
        angular = "angular" in scans
        self.angular = RunningSums(self.num_layers - block_size + 1, 1, device) if angular else None
        self.loss = new_loss_sums(self.loss_scans, self.num_layers, device)
        self.contexts, self.inputs, self.samples = [], [], 0
        for batch in batches:
            input_ids, attention_mask, ctx = batch_on(batch, device, self.samples)
            self.inputs.append((input_ids, attention_mask))
            self.contexts.append(ctx)
            self.samples += batch["input_ids"].shape[0]
        self.progress = progress
        self.stages = 1  # set by `run`
        self.samples_staged = self.reported = 0
        self.scan_forwards = self.layer_loads = 0

    def run(self, passes: list[list[Cut]]) -> None:
        """Every pass, the first one hooked; the stores are closed at the end, or on an error."""
        layer_sets = [pass_layers(cuts, self.num_layers, first=p == 0) for p, cuts in enumerate(passes)]
        # Progress: each batch goes through every loaded layer and the head of every pass.
        self.stages = sum(len(needed) + 1 for needed in layer_sets)
        try:
            with torch.inference_mode(), self.hooks:
                self.hooks.enabled = False  # on only while a layer (or the final norm) runs calibration data
                self.loader.load(self.adapter.embed(self.model))
                if self.adapter.position_embed(self.model) is not None:
                    self.loader.load(self.adapter.position_embed(self.model))
                for p, (cuts, needed) in enumerate(zip(passes, layer_sets, strict=True)):
                    self.run_pass(cuts, needed, hooked=p == 0)
                    self.loader.on_load = None  # the weights hash is of the first pass's reads
        finally:
            self.stores.close()

    def run_pass(self, cuts: list[Cut], needed: set[int], hooked: bool) -> None:
        """One pass over the layers: the main stream (hooked: the scores, the angular distance and the
        base loss), and the branch of each cut (k, first removed layer) in `cuts` (module docstring)."""
        open_stores = _PassStores(main=self.stores.new())
        for b in range(len(self.contexts)):
            open_stores.main[b] = self._calls_of(b)[0].hidden
        if hooked and self.angular is not None:
            open_stores.recent = [self.stores.new() for _ in range(self.block_size)]
        last_open = max((first for _, first in cuts), default=-1)
        for i, layer in enumerate(self.layers):
            self._advance_layer(i, layer, cuts, needed, hooked, open_stores, last_open)
        for store in open_stores.recent:
            self.stores.release(store)
        self._finish_pass(cuts, hooked, open_stores)
        for store in [open_stores.main, *open_stores.branches.values()]:
            if store is not None:
                self.stores.release(store)

    def _advance_layer(
        self,
        i: int,
        layer: nn.Module,
        cuts: list[Cut],
        needed: set[int],
        hooked: bool,
        open_stores: _PassStores,
        last_open: int,
    ) -> None:
        """Layer i over every batch: the cuts that start at it open (with its input), the main stream
        (while the pass needs it) and the open branches go through it; it is loaded only for this."""
        opening = [(k, first) for k, first in cuts if first == i]
        running = [key for key in open_stores.branches if sum(key) <= i]
        main_runs = hooked or i < last_open
        loads = i in needed  # a later pass skips the layers between its stream's end and its branches'
        if not loads and not opening:
            return
        if loads:
            self.loader.load(layer)
            self.layer_loads += 1
        for key in opening:
            open_stores.branches[key] = self.stores.new()
        main, recent, branches = open_stores.main, open_stores.recent, open_stores.branches
        for b, ctx in enumerate(self.contexts):
            calls = self._calls_of(b) if loads else None
            x_in = main[b] if hooked or opening or main_runs else None
            for key in opening:
                branches[key][b] = x_in
            if self.angular is not None and hooked:
                recent[i % self.block_size][b] = x_in
            if main_runs:
                main[b] = self._main_forward(i, layer, calls[i], x_in, b, ctx, hooked, recent)
            for key in running:
                branches[key][b] = calls[i].run(layer, branches[key][b])
                self.scan_forwards += 1
            del calls, x_in
            if loads:
                self._advance(ctx.batch_size)
        if loads:
            self.loader.release(layer)
        if not hooked and i == last_open:  # every branch of this pass is open: the stream is done
            self.stores.release(main)
            open_stores.main = None

    def _main_forward(
        self,
        i: int,
        layer: nn.Module,
        call: LayerCall,
        x_in: torch.Tensor,
        b: int,
        ctx: BatchContext,
        hooked: bool,
        recent: list[ActivationStore],
    ) -> torch.Tensor:
        """Layer i's output for the main stream's batch b; hooked, the hooks score this one layer's rows
        and the block ending at it gets its angular distance."""
        self.hooks.enabled = hooked
        if hooked:
            self.hooks.begin_batch(ctx, range(i, i + 1), final_norm=False)
        x_out = call.run(layer, x_in)
        if hooked:
            self.hooks.end_batch()
        self.hooks.enabled = False
        if self.angular is not None and hooked and i >= self.block_size - 1:
            start = i - self.block_size + 1
            _block_angular(self.angular, start, recent[start % self.block_size][b], x_out, ctx)
        return x_out

    def _finish_pass(self, cuts: list[Cut], hooked: bool, open_stores: _PassStores) -> None:
        """The final norm and the head: the base loss (hooked: the final norm's scores too) and each
        cut's loss from its branch."""
        self.loader.load(self.final_norm)  # both stay loaded for the later passes
        self.loader.load(self.adapter.lm_head(self.model))  # tied to the embeddings: already there
        main, branches, loss = open_stores.main, open_stores.branches, self.loss
        for b, ctx in enumerate(self.contexts):
            input_ids, attention_mask = self.inputs[b]
            if hooked:
                self.hooks.enabled = True
                self.hooks.begin_batch(ctx, range(self.num_layers, self.num_layers), final_norm=True)
                hidden = self.final_norm(main[b])
                self.hooks.end_batch()
                self.hooks.enabled = False
                if self.loss_scans:
                    add_base_loss(loss, hidden, self.head, input_ids, attention_mask, ctx)
                del hidden
            for k, first in cuts:
                branch_out = self.final_norm(branches[k, first][b])
                per_sample = token_losses(branch_out, self.head, input_ids, attention_mask)[0]
                loss[k][:, first].index_add_(0, ctx.halves, per_sample)
            self._advance(ctx.batch_size)

    def _calls_of(self, b: int) -> list[LayerCall]:
        return record_layer_calls(self.model, self.layers, *self.inputs[b])

    def _advance(self, batch_size: int) -> None:
        """Report whole samples: each stage (a loaded layer or a pass's head) moves a batch 1 / stages."""
        self.samples_staged += batch_size
        target = self.samples_staged // self.stages
        if self.progress is not None and target > self.reported:
            self.progress(target - self.reported)
            self.reported = target


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
    disk_bytes: int | None = None,
) -> ImportanceResult:
    """`compute_importance` of the checkpoint at `source`, one layer on the device at a time.

    Same arguments and result as `compute_importance` (its manifest says `execution.mode:
    "streamed"` with `reason`), plus the checkpoint's `dtype` / `device` as `load_model` takes them
    and the activation store `budget` (default: measured from the free memory, spilling to files
    under `spill_dir`, default the system temporary directory, at most `disk_bytes` of them: default
    its free space less a reserve). `progress(n)` gets
    whole samples as the work advances (each batch is 1 / (L + 1) done after each layer); the
    calls add up to the number of samples.
    """
    path = checkpoint_dir(source)
    reader = CheckpointReader(path)
    model = empty_model(path, reader, dtype=dtype, attn_implementation=attn_implementation)
    device = torch.device(device)
    adapter = adapter_for(model)
    spec = adapter.spec(model)
    scans = check_scans(scans, block_size, spec.num_layers)
    batches = _nonempty(batches)
    shapes = [(*b["input_ids"].shape, spec.hidden_size) for b in batches]
    angular_stores = block_size if "angular" in scans else 0
    loss_scans = loss_scan_sizes(scans, block_size)
    stores, passes = _stores_and_passes(
        model,
        adapter,
        shapes,
        device,
        spec.num_layers,
        loss_scans,
        angular_stores,
        budget=budget,
        spill_dir=spill_dir,
        disk_bytes=disk_bytes,
    )
    run = StreamedPasses(
        model,
        adapter,
        spec,
        reader,
        stores,
        batches,
        scans=scans,
        block_size=block_size,
        device=device,
        progress=progress,
        hash_weights=hash_weights,
    )
    run.run(passes)

    execution = {
        "mode": "streamed",
        "reason": reason,
        "layer_loads": run.layer_loads,
        "passes": len(passes),  # over the checkpoint: more than 1 when the stores are capped
        "activations": stores.summary(),
    }
    seq_len = max(s for _, s, _ in shapes)
    return build_result(
        model,
        spec,
        scans=scans,
        block_size=block_size,
        hooks=run.hooks,
        angular=run.angular,
        loss=run.loss,
        counts=(run.samples, len(batches), seq_len),
        scan_forwards=run.scan_forwards,
        metadata={"model": str(source), **(metadata or {})},
        weights_hash=run.hasher.hexdigest() if run.hasher else None,
        execution=execution,
        device=str(device),
    )


__all__ = [
    "ActivationBudgetError",
    "compute_importance_streamed",
    "pass_layers",
    "plan_passes",
    "record_layer_calls",
    "working_bytes",
]
