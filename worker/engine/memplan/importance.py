"""Peak bytes of the importance pass (`importance_memory`), in memory or streamed layer by layer, with
its streamed pass's activation stores, their tiers and passes, and the run's settings for it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.engine.memplan.activations import forward_working_bytes, nll_chunk_buffers
from worker.engine.memplan.peak import job_peak, layer_weight_bytes
from worker.engine.memplan.units import NUM_SUMS, auto_chunk_tokens, dtype_bytes
from worker.engine.spec import ArchSpec, LayerShape

DEFAULT_SCANS = ("bi", "drop", "block")  # worker/engine/importance/result.py's


def loss_scan_sizes(scans, block_size: int) -> list[int]:
    """k of each loss scan (importance/compute.py's rule: drop is k = 1, block is k = block_size)."""
    return list(
        dict.fromkeys(((1,) if "drop" in scans else ()) + ((block_size,) if "block" in scans else ()))
    )


def streamed_store_count(num_layers: int, scans=DEFAULT_SCANS, block_size: int = 2) -> int:
    """Activation stores a layer-streamed pass has open by its last layer (importance/streamed.py):
    the main stream, k angular inputs, and one store per open cut of each loss scan (L - k + 1)."""
    angular = block_size if "angular" in scans else 0
    return 1 + angular + sum(num_layers - k + 1 for k in loss_scan_sizes(scans, block_size))


def spill_limit_bytes(gb: float | None) -> int | None:
    """The disk tier's limit in bytes from a `spill_limit_gb` setting (None: unset, the spill
    directory's free space counts, which only the worker knows)."""
    return None if gb is None else int(gb * 1e9)


def store_capacity(
    store_bytes: int,
    device_budget: int | None,
    host_budget: int = 0,
    cuda: bool = False,
    disk_budget: int | None = None,
) -> int | None:
    """Stores the tiers hold at once, each whole in one tier (importance/activation_store.py's
    `ActivationStores.capacity`); None: no limit (no device or no disk budget given)."""
    if device_budget is None or disk_budget is None or store_bytes <= 0:
        return None
    return sum(max(0, b) // store_bytes for b in (device_budget, host_budget if cuda else 0, disk_budget))


def streamed_passes(
    num_layers: int, scans=DEFAULT_SCANS, block_size: int = 2, capacity: int | None = None
) -> int | None:
    """Passes over the checkpoint a layer-streamed pass makes when its tiers hold `capacity` stores
    (importance/streamed.py's `plan_passes`): 1 when every store fits; else the first pass holds the
    stream, the angular inputs and what room is left for cuts, each later one a stream and
    `capacity - 1` cuts. None: not even the first pass fits (the job is refused)."""
    angular = block_size if "angular" in scans else 0
    cuts = sum(num_layers - k + 1 for k in loss_scan_sizes(scans, block_size))
    if capacity is None or capacity >= 1 + angular + cuts:
        return 1
    first, later = capacity - 1 - angular, capacity - 1
    if first < 0 or later < 1:
        return None
    return 1 + -(-(cuts - first) // later)


def store_placement(
    count: int, store_bytes: int, device_budget: int | None, host_budget: int = 0, cuda: bool = False
) -> dict[str, int]:
    """Stores per tier under importance/activation_store.py's rule: each new store goes whole to the
    first tier with room (device, then pinned host on CUDA, then disk). No store is released before
    the last one opens, so the tiers fill in order. `device_budget` None: no limit."""
    if device_budget is None or store_bytes <= 0:
        return {"device": count, "host": 0, "disk": 0}
    on_device = min(count, max(0, device_budget) // store_bytes)
    on_host = min(count - on_device, max(0, host_budget) // store_bytes) if cuda else 0
    return {"device": on_device, "host": on_host, "disk": count - on_device - on_host}


def _importance_mlp_units(shape: LayerShape) -> int:
    """Scored MLP units of a layer (importance/hooks.py): its neurons, or per expert the three expert
    axes and its FFN channels (a mixture-of-experts layer has no neuron axis)."""
    if shape.num_experts:
        return shape.num_experts * (3 + shape.intermediate_size)
    return shape.intermediate_size


def streamed_layer_copies(device: str) -> int:
    """Decoder layers' weights a streamed importance pass holds on `device` at once (importance_memory)."""
    return 1 if device.startswith("cuda") else 2


def importance_memory(
    spec: ArchSpec,
    *,
    batch_size: int,
    seq_len: int,
    loss_scans: bool = True,
    weights_dtype: str | None = None,
    streamed: bool = False,
    device: str = "cpu",
    samples: int | None = None,
    scans=None,
    block_size: int = 2,
    device_budget: int | None = None,
    host_budget: int = 0,
    padded: bool = False,
    disk_budget: int | None = None,
) -> dict:
    """Peak bytes of the hooked importance pass (inference mode: nothing saved for backward).

    In memory: the weights, one layer's forward temporaries, the float32 running sums and the per-head
    norm buffer; with a loss scan also each layer's cached input and the chunked head's logits.
    Streamed: the embeddings and head, then two phases that never overlap (`working` is the larger,
    `settings["phases"]` both): the layer loop (one layer's weights and the next's, one batch's
    forward temporaries, router buffers) and the head at the end (the chunked NLL's logit buffers;
    every layer is released by then), plus the activation stores (every sample's hidden states, `samples` x
    `seq_len` x hidden each; `streamed_store_count` of them) that the device budget admits
    (`store_placement`; `device_budget` None keeps them all on the device). `total` is the device's
    peak; `host_total` the pinned RAM of the stores that spill to the host tier, `disk` the rest.
    `scans` (default: drop + block + bi, or bi alone when not `loss_scans`) picks the stores.
    With a `disk_budget` too, the tiers hold `store_capacity` stores: when the scans need more they run
    in `settings["passes"]` passes over the checkpoint, each opening at most that many (None: not
    even one pass fits).
    `padded`: the calibration batches have padding (short windows), so attention gets a mask
    (`attention_bytes`).
    """
    if scans is None:
        scans = DEFAULT_SCANS if loss_scans else ("bi",)
    else:
        loss_scans = bool(loss_scan_sizes(scans, block_size))
    w = dtype_bytes(weights_dtype or spec.dtype)
    act = w
    n = batch_size * seq_len
    d, v = spec.hidden_size, spec.vocab_size
    shapes = spec.layer_shapes()
    L = spec.num_layers
    if streamed:
        weights = spec.embedding_params() * w
    else:
        weights = spec.param_count()["total"] * w
    units = sum(s.num_heads + _importance_mlp_units(s) + 1 for s in shapes) + (2 * L + 1) * d
    sums = 2 * NUM_SUMS * units * 4 + 2 * batch_size * units * 4  # running sums + per-batch [B, U] rows
    head_norms = n * L * max(s.num_heads for s in shapes) * 4
    working = n * 2 * d * act + forward_working_bytes(spec, batch_size, seq_len, act, device, padded)
    parts = {"weights": weights, "running_sums": sums, "head_norms": head_norms, "activations": working}
    experts = max(s.num_experts for s in shapes)
    if experts:  # the hooks' float32 [tokens, E] probabilities, routed flags and contributions
        parts["router_buffers"] = 3 * n * experts * 4
    if loss_scans:
        if not streamed:  # the in-memory scans re-run each layer from its cached input
            parts["layer_inputs"] = n * L * d * act
        parts["logits"] = nll_chunk_buffers(spec) * min(auto_chunk_tokens(v, device), n) * v * 4
    extra = {}
    host = disk = 0
    # Measured (bench): the peak is the larger phase's, not the layer's plus the head's. The streamed
    # layer loop holds two layers' weights on CPU (measured) but one on CUDA: the loader reads each tensor
    # into host memory and copies it to the device, and releases a layer before loading the next (the
    # 2026-11-29 H200 logs: 8B planned 1.18x, 70B slice 1.37x of the measured peak with two counted).
    layer_phase = (
        streamed_layer_copies(device) * layer_weight_bytes(spec, w) if streamed else 0
    ) + parts.pop("activations")
    layer_phase += parts.pop("router_buffers", 0)
    head_phase = parts.pop("logits", 0)
    parts["working"] = max(layer_phase, head_phase)
    extra["phases"] = {"layer": layer_phase, "head": head_phase}
    if streamed:
        store_bytes = (samples or batch_size) * seq_len * d * act
        count = streamed_store_count(L, scans, block_size)
        cuda = device.startswith("cuda")
        capacity = store_capacity(store_bytes, device_budget, host_budget, cuda, disk_budget)
        passes = streamed_passes(L, scans, block_size, capacity)
        if passes is not None and passes > 1:
            count = capacity  # each pass opens at most what the tiers hold
        tiers = store_placement(count, store_bytes, device_budget, host_budget, cuda)
        parts["stores"] = tiers["device"] * store_bytes
        host, disk = tiers["host"] * store_bytes, tiers["disk"] * store_bytes
        extra.update(store_bytes=store_bytes, stores=tiers, passes=passes)
    out = job_peak(
        parts,
        batch_size=batch_size,
        seq_len=seq_len,
        streamed=streamed,
        device=device,
        loss_scans=loss_scans,
        **extra,
    )
    return {**out, "host_total": host, "disk": disk}


def importance_options(params: Mapping[str, Any], device: str) -> dict:
    """`importance_memory`'s settings from an importance run's params (the API's, or the CLI's flags
    under the same names) on a "cpu" or "cuda" device."""
    return dict(
        batch_size=params["batch_size"],
        seq_len=params["seq_len"],
        scans=tuple(params.get("scans", ())),
        block_size=params.get("block_size", 2),
        samples=params.get("samples"),
        device=device,
        # Document calibration right-pads short windows (attention gets a mask); a stream packs blocks.
        padded=not params.get("stream"),
    )


def importance_streams(need_in_memory: int, capacity: int | None) -> bool:
    """Whether an `offload` "auto" importance run streams the teacher layer by layer: when the in-memory
    pass's peak (`importance_memory(..., streamed=False)`, at the run's own batch and scans) exceeds the
    device memory it may use (`usable_bytes`; None: unknown, so in memory). The one rule: the worker
    decides by it (importance.offload), the API's check and the dashboard predict by it."""
    return capacity is not None and need_in_memory > capacity
