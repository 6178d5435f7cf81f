"""The sorted neuron map's order comes from the exact scores, with `fill_plan`'s tie-breaking: its last n
positions are exactly the neurons `targets.intermediate_size = F - n` removes, even where the payload's
4-digit values tie (the dashboard marks through this order instead of re-ranking the rounded values)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from backend import heatmaps
from tests.tiny_models import tiny_spec
from worker.engine.importance.result import ImportanceResult
from worker.engine.plan import PlanTargets, PrunePlan, fill_plan

SPEC = tiny_spec()


@pytest.fixture
def near_ties(tmp_path):
    """An artifact whose neuron scores are 5.5546 x (1 + k * 1e-6): near-ties and exact ties (equal k)."""
    L, H, F, D = SPEC.num_layers, SPEC.num_heads, SPEC.intermediate_size, SPEC.hidden_size
    rng = np.random.default_rng(0)
    k = rng.integers(0, F // 2, size=(L, F))
    score = 5.5546 * (1 + 1e-6 * k)
    neurons = np.zeros((2, 4, L, F))
    neurons[0, 1] = neurons[0, 3] = score**2  # batch L2 = sqrt(sum of squares), seq mean and L2 alike
    neurons[0, 0] = neurons[0, 2] = score
    arrays = {
        "heads": rng.random((2, 4, L, H)),
        "neurons": neurons,
        "hidden": rng.random((2, 4, 2 * L + 1, D)),
        "samples": np.array([1.0, 0.0]),
    }
    path = tmp_path / "run"
    ImportanceResult({name: a.astype(np.float32) for name, a in arrays.items()}).save(path)
    return path


def decode(payload: dict) -> list[list[int]]:
    """The packed rows of /neuron-order back to index lists (base64 of little-endian uint16/uint32)."""
    dtype = {"uint16": "<u2", "uint32": "<u4"}[payload["dtype"]]
    return [np.frombuffer(base64.b64decode(row), dtype=dtype).tolist() for row in payload["order"]]


def test_indices_pack_into_the_smallest_type_that_holds_them():
    rng = np.random.default_rng(1)
    for width, dtype in ((16, "uint16"), (1 << 16, "uint16"), ((1 << 16) + 1, "uint32")):
        order = np.stack([rng.permutation(width) for _ in range(2)])
        got, rows = heatmaps.encode_indices(order)
        assert got == dtype and len(base64.b64decode(rows[0])) == width * (2 if dtype == "uint16" else 4)
        assert decode({"dtype": got, "order": rows}) == order.tolist()


def test_sorted_order_ends_with_what_fill_plan_removes(near_ties):
    exact = heatmaps.scores(near_ties, "l2", "mean").neurons
    F = exact.shape[1]
    assert len(np.unique(exact[0])) < F  # exact ties
    natural = heatmaps.neurons(
        near_ties, "l2", "mean", bins=F, order="natural", layer_start=0, layer_end=None, start=0, end=None
    )
    assert {v for row in natural["z"] for v in row} == {5.555}  # all equal at the payload's precision

    order = heatmaps.neuron_order(near_ties, "l2", "mean")
    assert (order["layers"], order["width"]) == (SPEC.num_layers, F)
    assert (order["dtype"], order["encoding"]) == ("uint16", "base64")
    order["order"] = decode(order)
    for layer, perm in enumerate(order["order"]):
        assert sorted(perm) == list(range(F))
        assert all(np.diff(exact[layer][perm]) <= 0)  # most important first
    for cut in (1, 7, 24, 47):
        plan = fill_plan(
            PrunePlan(targets=PlanTargets(intermediate_size=F - cut)),
            SPEC,
            heatmaps.scores(near_ties, "l2", "mean"),
        )
        for layer, perm in enumerate(order["order"]):
            assert sorted(perm[F - cut :]) == plan.remove_neurons[layer], (layer, cut)

    # The sorted map's values are the scores in that same order (its x axis is the rank position).
    sorted_map = heatmaps.neurons(
        near_ties, "l2", "mean", bins=F, order="sorted", layer_start=0, layer_end=None, start=0, end=None
    )
    expected = [heatmaps.compact(exact[layer][perm]) for layer, perm in enumerate(order["order"])]
    assert sorted_map["z"] == expected
