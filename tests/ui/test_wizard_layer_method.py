"""How the depth-vs-width wizard (frontend/js/views/compare.js `depthLayerMethod`, run in node) picks the
depth plan's layer_method from an importance run's layer scores: a run with only the angular scan must
get `angular` (the old fallback, `drop`, has no scores to rank and the plan cannot be filled)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.ui.dashboard_js import run_dashboard_js
from worker.engine.plan import ImportanceScores, PlanTargets, PrunePlan, fill_plan
from worker.engine.spec import ArchSpec

DRIVER = """
import { depthLayerMethod } from "./js/views/compare.js";
const cases = %s;
process.stdout.write(JSON.stringify(cases.map(([layers, k]) => depthLayerMethod(layers, k))));
"""

L = 4
K = 2  # layers dropped


def layers_response(*scans: str) -> dict:
    """GET /importance-runs/{id}/layers of a run with these scans (block size K)."""
    scores = [0.5] * L
    return {
        "block_importance": scores if "bi" in scans else None,
        "drop_loss": scores if "drop" in scans else None,
        "block_loss": {str(K): scores[: L - K + 1]} if "block" in scans else {},
        "block_angular": {str(K): scores[: L - K + 1]} if "angular" in scans else {},
        "base_loss": 3.0,
    }


def js_methods(tmp_path: Path, cases: list[tuple[dict, int]]) -> list[str]:
    return run_dashboard_js(tmp_path, DRIVER % json.dumps(cases))


def test_depth_layer_method_follows_the_runs_scans(tmp_path):
    cases = [
        (("angular",), K, "angular"),
        (("bi", "drop", "block", "angular"), K, "block"),
        (("bi", "drop", "block"), K + 1, "bi"),  # blocks of another length: lowest Block Importance
        (("drop", "angular"), K, "drop"),
        (("bi",), K, "bi"),
    ]
    got = js_methods(tmp_path, [(layers_response(*scans), k) for scans, k, _ in cases])
    assert got == [expected for *_, expected in cases]


@pytest.mark.parametrize("method, fills", [("angular", True), ("drop", False)])
def test_an_angular_only_run_fills_the_depth_plan_with_the_chosen_method(tmp_path, method, fills):
    """The wizard's choice for an angular-only run fills a plan; the old fallback could not."""
    (chosen,) = js_methods(tmp_path, [(layers_response("angular"), K)])
    assert chosen == "angular"
    spec = ArchSpec(
        family="llama",
        model_type="llama",
        num_layers=L,
        hidden_size=32,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=64,
        vocab_size=128,
        tie_word_embeddings=False,
    )
    angular = np.array([0.9, 0.1, 0.8])  # the block of layers 1-2 changes the representation least
    scores = ImportanceScores(
        heads=np.ones((L, 4)),
        neurons=np.ones((L, 64)),
        hidden=np.ones(32),
        layers={f"block_angular_k{K}": angular},
    )
    plan = PrunePlan(targets=PlanTargets(num_layers=L - K, layer_method=method))
    if fills:
        assert fill_plan(plan, spec, scores).drop_layers == [1, 2]
    else:
        with pytest.raises(ValueError, match="layer_method needs"):
            fill_plan(plan, spec, scores)
