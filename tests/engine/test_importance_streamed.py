"""Layer-streamed importance equals the in-memory pass: every family, scan and aggregation, every
activation tier, sharded checkpoints; one decoder layer on the device at a time."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tests.engine.test_importance_scores import padded_batches
from tests.tiny_models import FAMILIES, tiny_model
from worker.engine.importance import compute_importance
from worker.engine.importance.activation_store import StoreBudget
from worker.engine.importance.stats import BATCH_REDUCTIONS, SEQ_REDUCTIONS
from worker.engine.importance.streamed import compute_importance_streamed
from worker.engine.layer_loader import ModuleLoader
from worker.engine.loading import load_model

ALL_SCANS = ("bi", "drop", "block", "angular")
RTOL = 1e-6


def batches():
    # Uneven lengths: right padding inside batches and a short last batch.
    return padded_batches([11, 7, 9, 12, 5], batch_size=2, seq_len=12)[1]


def saved(tmp_path_factory, family: str, **save_kwargs):
    path = tmp_path_factory.mktemp(family)
    tiny_model(family).save_pretrained(path, **save_kwargs)
    return path


def assert_same_result(streamed, in_memory):
    assert streamed.arrays.keys() == in_memory.arrays.keys()
    for name, expected in in_memory.arrays.items():
        np.testing.assert_allclose(streamed.arrays[name], expected, rtol=RTOL, atol=0, err_msg=name)
    for batch, seq in itertools.product(BATCH_REDUCTIONS, SEQ_REDUCTIONS):
        a, b = streamed.scores(batch, seq), in_memory.scores(batch, seq)
        for axis in ("heads", "neurons", "hidden"):
            np.testing.assert_allclose(getattr(a, axis), getattr(b, axis), rtol=RTOL, atol=0)
        assert a.layers.keys() == b.layers.keys()
        for method in b.layers:
            np.testing.assert_allclose(a.layers[method], b.layers[method], rtol=RTOL, atol=0)
    assert streamed.manifest["weights_sha256"] == in_memory.manifest["weights_sha256"]
    assert streamed.manifest["evaluations"] == in_memory.manifest["evaluations"]


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_equals_in_memory_for_every_scan_and_aggregation(family, tmp_path_factory):
    path = saved(tmp_path_factory, family)
    model, _ = load_model(path)
    in_memory = compute_importance(model, batches(), scans=ALL_SCANS, block_size=2)
    streamed = compute_importance_streamed(path, batches(), scans=ALL_SCANS, block_size=2, reason="test")
    assert_same_result(streamed, in_memory)
    assert in_memory.manifest["execution"]["mode"] == "in_memory"
    execution = streamed.manifest["execution"]
    assert (execution["mode"], execution["reason"], execution["layer_loads"]) == ("streamed", "test", 4)
    assert streamed.manifest["device"] == "cpu"


@pytest.mark.parametrize(("scans", "block_size"), [(ALL_SCANS, 1), (("drop", "angular"), 3), (("bi",), 2)])
def test_streamed_equals_in_memory_for_other_block_sizes_and_scan_sets(scans, block_size, tmp_path_factory):
    path = saved(tmp_path_factory, "qwen3")
    model, _ = load_model(path)
    in_memory = compute_importance(model, batches(), scans=scans, block_size=block_size)
    streamed = compute_importance_streamed(path, batches(), scans=scans, block_size=block_size)
    assert_same_result(streamed, in_memory)


@pytest.mark.parametrize("family", ["llama_tied", "gpt2"])
def test_disk_tier_gives_the_same_scores_and_leaves_no_file(family, tmp_path_factory, tmp_path):
    """A zero device budget spills every store to memory-mapped files (forced: RAM is plentiful here)."""
    path = saved(tmp_path_factory, family)
    model, _ = load_model(path)
    in_memory = compute_importance(model, batches(), scans=ALL_SCANS, block_size=2)
    spill = tmp_path / "spill"
    spill.mkdir()
    seen = []
    original = torch.from_file

    def from_file(filename, *args, **kwargs):
        seen.append(filename)
        return original(filename, *args, **kwargs)

    budget = StoreBudget(device_bytes=0, host_bytes=0, spill_dir=str(spill))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "from_file", from_file)
        streamed = compute_importance_streamed(path, batches(), scans=ALL_SCANS, block_size=2, budget=budget)
    assert_same_result(streamed, in_memory)
    stores = streamed.manifest["execution"]["activations"]["stores"]
    # main stream + 2 angular inputs + 4 drop cuts + 3 block cuts, all on disk
    assert stores == {"disk": 1 + 2 + 4 + 3}
    assert len(seen) == 10 * 3 and all(f.startswith(str(spill)) for f in seen)  # 3 batches per store
    assert list(spill.iterdir()) == []  # the temporary directory is removed


def test_a_partial_device_budget_splits_the_stores_between_tiers(tmp_path_factory):
    path = saved(tmp_path_factory, "llama")
    model, _ = load_model(path)
    in_memory = compute_importance(model, batches(), scans=ALL_SCANS, block_size=2)
    store_bytes = 5 * 12 * 32 * 4  # samples x seq x hidden x float32
    budget = StoreBudget(device_bytes=3 * store_bytes, host_bytes=0)
    streamed = compute_importance_streamed(path, batches(), scans=ALL_SCANS, block_size=2, budget=budget)
    assert_same_result(streamed, in_memory)
    activations = streamed.manifest["execution"]["activations"]
    assert activations["store_bytes"] == store_bytes
    assert activations["stores"] == {"device": 3, "disk": 7}


def test_sharded_checkpoint_streams_the_same(tmp_path_factory):
    path = saved(tmp_path_factory, "mistral", max_shard_size="20KB")
    assert (path / "model.safetensors.index.json").is_file()
    model, _ = load_model(path)
    in_memory = compute_importance(model, batches(), block_size=2)
    streamed = compute_importance_streamed(path, batches(), block_size=2)
    assert_same_result(streamed, in_memory)


def test_one_decoder_layer_is_loaded_at_a_time_and_each_once(tmp_path_factory):
    path = saved(tmp_path_factory, "llama")
    loads: list[int] = []
    loaded_layers_at_load: list[int] = []
    original = ModuleLoader.load

    def load(self, module):
        layers = module_layers[0]
        if any(module is layer for layer in layers):
            loads.append(next(i for i, layer in enumerate(layers) if layer is module))
            loaded_layers_at_load.append(sum(not next(layer.parameters()).is_meta for layer in layers))
        original(self, module)

    module_layers = []
    original_init = ModuleLoader.__init__

    def init(self, model, *args, **kwargs):
        module_layers.append(model.model.layers)
        original_init(self, model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ModuleLoader, "load", load)
        mp.setattr(ModuleLoader, "__init__", init)
        result = compute_importance_streamed(path, batches(), scans=ALL_SCANS, block_size=2)
    assert loads == [0, 1, 2, 3]  # every layer read once, in order
    assert loaded_layers_at_load == [0, 0, 0, 0]  # the previous layer was emptied before the next one
    assert all(next(layer.parameters()).is_meta for layer in module_layers[0])  # and the last one too
    # per batch, as in memory: drop 3 + 2 + 1 + 0, block (k = 2) 2 + 1 + 0; 3 batches
    assert result.manifest["evaluations"]["layer_forwards_scans"] == (6 + 3) * 3


def test_progress_adds_up_to_the_samples(tmp_path_factory):
    path = saved(tmp_path_factory, "gpt2")
    seen = []
    compute_importance_streamed(path, batches(), scans=("bi",), progress=seen.append)
    # 5 samples x (4 layers + the final norm) = 25 sample-stages, reported as whole samples
    assert all(isinstance(n, int) and n > 0 for n in seen) and sum(seen) == 5 and len(seen) > 2


def test_bad_sources_and_inputs_are_clear_errors(tmp_path, tmp_path_factory):
    with pytest.raises(FileNotFoundError, match="local model directory"):
        compute_importance_streamed("org/some-hub-id", batches())
    with pytest.raises(FileNotFoundError, match="local model directory"):
        compute_importance_streamed(tmp_path, batches())
    path = saved(tmp_path_factory, "llama")
    with pytest.raises(ValueError, match="no calibration samples"):
        compute_importance_streamed(path, [])
    with pytest.raises(ValueError, match="unknown scan"):
        compute_importance_streamed(path, batches(), scans=("bogus",))


def test_measured_budget_spills_to_the_spill_dir_when_memory_is_short(
    tmp_path_factory, tmp_path, monkeypatch
):
    """Default budget: from the free memory; with none left every store goes to files under spill_dir."""
    from worker.engine.importance import activation_store

    path = saved(tmp_path_factory, "qwen2")
    model, _ = load_model(path)
    in_memory = compute_importance(model, batches(), scans=("bi", "drop"))
    monkeypatch.setattr(activation_store, "free_device_bytes", lambda device: 0)
    files = []
    original = torch.from_file
    monkeypatch.setattr(torch, "from_file", lambda f, *a, **k: files.append(f) or original(f, *a, **k))
    streamed = compute_importance_streamed(path, batches(), scans=("bi", "drop"), spill_dir=tmp_path)
    assert_same_result(streamed, in_memory)
    activations = streamed.manifest["execution"]["activations"]
    assert activations["stores"] == {"disk": 1 + 4} and activations["budget_bytes"]["device"] == 0
    assert files and all(f.startswith(str(tmp_path)) for f in files) and list(tmp_path.iterdir()) == []


STORE_BYTES = 5 * 12 * 32 * 4  # one store of the tiny models: samples x seq x hidden x float32


@pytest.mark.parametrize(
    ("family", "scans", "budget", "passes", "peak"),
    [
        # 3 stores on the device, no disk: the stream and the 2 angular inputs fill the first pass,
        # then the 7 cuts go 2 per pass
        ("llama", ALL_SCANS, dict(device_bytes=3 * STORE_BYTES, disk_bytes=0), 5, {"device": 3}),
        # 2 on the device + 2 on disk: 1 cut in the first pass, then 3 per pass
        (
            "gpt2",
            ALL_SCANS,
            dict(device_bytes=2 * STORE_BYTES, disk_bytes=2 * STORE_BYTES + 1),
            3,
            {"device": 2, "disk": 2},
        ),
        # drop alone, 2 stores: one cut per pass
        ("qwen3", ("bi", "drop"), dict(device_bytes=0, disk_bytes=2 * STORE_BYTES), 4, {"disk": 2}),
    ],
)
def test_capped_stores_run_the_scans_in_several_passes_with_the_same_scores(
    family, scans, budget, passes, peak, tmp_path_factory, tmp_path
):
    """A store budget too small for every cut at once: the cuts are split over passes over the
    checkpoint, no more stores are ever open than the budgets hold, and the scores are the same."""
    path = saved(tmp_path_factory, family)
    model, _ = load_model(path)
    in_memory = compute_importance(model, batches(), scans=scans, block_size=2)
    budget = StoreBudget(host_bytes=0, spill_dir=str(tmp_path), **budget)
    seen = []
    streamed = compute_importance_streamed(
        path, batches(), scans=scans, block_size=2, budget=budget, progress=seen.append
    )
    assert_same_result(streamed, in_memory)
    assert sum(seen) == 5 and len(seen) > 2  # the samples, spread over the passes
    execution = streamed.manifest["execution"]
    assert execution["passes"] == passes
    assert execution["layer_loads"] > 4  # the later passes read layers again
    activations = execution["activations"]
    assert activations["capacity"] == sum(peak.values())
    assert {tier: n // STORE_BYTES for tier, n in activations["peak_bytes"].items()} == peak
    assert list(tmp_path.iterdir()) == []
    # The memory planner counts the same passes and stores.
    from worker.engine import memplan
    from worker.engine.adapters import arch_spec

    plan = memplan.importance_memory(
        arch_spec(model),
        batch_size=2,
        seq_len=12,
        streamed=True,
        samples=5,
        scans=scans,
        block_size=2,
        device_budget=budget.device_bytes,
        disk_budget=budget.disk_bytes,
    )
    assert plan["settings"]["passes"] == passes
    assert {tier: n for tier, n in plan["settings"]["stores"].items() if n} == peak


def test_plan_passes_puts_the_latest_cuts_first_and_bounds_every_pass():
    from worker.engine.importance.streamed import pass_layers, plan_passes

    assert plan_passes(4, [1, 2], 2, None) == [[(1, 3), (1, 2), (2, 2), (1, 1), (2, 1), (1, 0), (2, 0)]]
    assert plan_passes(4, [1, 2], 2, 10) == plan_passes(4, [1, 2], 2, None)
    assert plan_passes(4, [1, 2], 2, 4) == [[(1, 3)], [(1, 2), (2, 2), (1, 1)], [(2, 1), (1, 0), (2, 0)]]
    assert plan_passes(4, [1], 0, 2) == [[(1, 3)], [(1, 2)], [(1, 1)], [(1, 0)]]
    assert plan_passes(4, [], 2, 3) == [[]]  # Block Importance and the angular distance only
    assert plan_passes(4, [1], 2, 3) == [[], [(1, 3), (1, 2)], [(1, 1), (1, 0)]]  # no room for a cut at first
    assert plan_passes(4, [1], 2, 2) is None and plan_passes(4, [1], 0, 1) is None
    from worker.engine import memplan  # the planner's count of the same passes

    for layers, scans, capacity in itertools.product(
        (4, 9), (("drop",), ("drop", "block", "angular"), ("bi", "block")), (None, 1, 2, 3, 4, 5, 7, 30)
    ):
        ks, angular = memplan.loss_scan_sizes(scans, 3), 3 if "angular" in scans else 0
        planned = plan_passes(layers, ks, angular, capacity)
        expected = None if planned is None else len(planned)
        assert memplan.streamed_passes(layers, scans, 3, capacity) == expected, (layers, scans, capacity)
        if planned is not None:  # every cut once, no pass over the capacity
            assert sorted(c for p in planned for c in p) == sorted(
                (k, i) for k in ks for i in range(layers - k + 1)
            )
            assert capacity is None or all(
                1 + len(p) + (angular if j == 0 else 0) <= capacity for j, p in enumerate(planned)
            )
    # a later pass: its stream up to its last cut's first layer, its branches from their first end on
    assert pass_layers([(2, 3)], 8, first=False) == {0, 1, 2, 5, 6, 7}
    assert pass_layers([(1, 0), (1, 1)], 4, first=False) == {0, 1, 2, 3}
    assert pass_layers([], 3, first=True) == {0, 1, 2}


def test_stores_that_fit_no_budget_are_refused_before_any_weight_is_read(
    tmp_path_factory, tmp_path, monkeypatch
):
    """The measured budget: no free memory and a disk with room for 2 stores beyond its reserve.
    With the angular distance (2 inputs) the first pass needs 3: refused, saying how much and what to
    change, before anything is loaded; drop alone runs, one cut per pass."""
    from worker.engine.importance import activation_store
    from worker.engine.importance.streamed import ActivationBudgetError

    path = saved(tmp_path_factory, "llama")
    monkeypatch.setattr(activation_store, "free_device_bytes", lambda device: 0)
    free = activation_store.DISK_RESERVE_BYTES + 2 * STORE_BYTES + 100
    monkeypatch.setattr(activation_store, "free_disk_bytes", lambda spill_dir: free)
    loads = []
    original = ModuleLoader.load
    monkeypatch.setattr(
        ModuleLoader, "load", lambda self, module: loads.append(module) or original(self, module)
    )
    with pytest.raises(ActivationBudgetError) as error:
        compute_importance_streamed(path, batches(), scans=ALL_SCANS, block_size=2, spill_dir=tmp_path)
    message = str(error.value)
    assert (
        "at least 3 activation stores of 7.5 KiB" in message  # 7680 bytes, in binary units
        and "10 to run every scan in one pass" in message
    )
    assert "the budgets hold 2" in message and f"disk under {tmp_path}" in message
    assert "fewer samples or a shorter sequence length" in message
    assert loads == [] and list(tmp_path.iterdir()) == []
    streamed = compute_importance_streamed(path, batches(), scans=("bi", "drop"), spill_dir=tmp_path)
    assert streamed.manifest["execution"]["passes"] == 4  # the stream and one of the 4 cuts each
    assert streamed.manifest["execution"]["activations"]["budget_bytes"]["disk"] == 2 * STORE_BYTES + 100


def test_a_spill_limit_beyond_the_free_disk_is_capped_there(tmp_path_factory, tmp_path, monkeypatch, caplog):
    """A spill limit (the job's spill_limit_gb, PRUNESCOPE_SPILL_LIMIT_GB) larger than the spill disk's free
    space less its 2 GiB reserve would fill the disk mid-run: the disk tier is capped at that free space
    (room for 2 stores: drop alone in 4 passes, as without a limit), the log says so and the manifest
    names which limit held; a limit under the free space still holds."""
    from worker.engine.importance import activation_store

    path = saved(tmp_path_factory, "llama")
    monkeypatch.setattr(activation_store, "free_device_bytes", lambda device: 0)
    free = activation_store.DISK_RESERVE_BYTES + 2 * STORE_BYTES + 100
    monkeypatch.setattr(activation_store, "free_disk_bytes", lambda spill_dir: free)
    with caplog.at_level("WARNING", logger=activation_store.__name__):
        big = compute_importance_streamed(
            path, batches(), scans=("bi", "drop"), spill_dir=tmp_path, disk_bytes=100 * STORE_BYTES
        )
    stores = big.manifest["execution"]["activations"]
    assert stores["budget_bytes"]["disk"] == 2 * STORE_BYTES + 100, stores
    assert stores["disk_limit"] == "free space (capped the spill limit)"
    assert big.manifest["execution"]["passes"] == 4  # not 1, as 100 stores of disk would give
    assert any("the disk tier is capped at" in r.getMessage() for r in caplog.records), caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger=activation_store.__name__):
        small = compute_importance_streamed(
            path, batches(), scans=("bi", "drop"), spill_dir=tmp_path, disk_bytes=2 * STORE_BYTES
        )
    stores = small.manifest["execution"]["activations"]
    assert stores["budget_bytes"]["disk"] == 2 * STORE_BYTES and stores["disk_limit"] == "spill limit"
    assert not caplog.records
    unset = compute_importance_streamed(path, batches(), scans=("bi", "drop"), spill_dir=tmp_path)
    assert unset.manifest["execution"]["activations"]["disk_limit"] == "free space"
