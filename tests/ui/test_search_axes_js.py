"""The search view's cost axes (frontend/js/searchmath.js COST_AXES, run in node) are the API's: every
cost a candidate carries (backend/search_results.costs) has an axis, so a search under a prefill or
throughput budget can be drawn against it (before, only params / memory / latency had one), and the
axis where more is better is the budget kind that is a floor (worker/engine/search/budgets.MINIMUM), whose
Pareto front runs along the high end."""

from __future__ import annotations

import json
import random
from pathlib import Path

from backend.search_results import costs
from tests.ui.dashboard_js import run_dashboard_js
from worker.engine.search.budgets import MINIMUM


def front_ids(points: list[dict], more: bool) -> list[int]:
    """The Pareto front by hand: no other point has at most the loss and at least (more) / at most the cost."""
    key = (lambda p: -p["x"]) if more else (lambda p: p["x"])
    ordered = sorted(range(len(points)), key=lambda i: (key(points[i]), points[i]["y"]))
    front, best = [], float("inf")
    for i in ordered:
        if points[i]["y"] < best:
            front.append(i)
            best = points[i]["y"]
    return front


def test_every_cost_the_api_sends_has_an_axis_and_throughput_is_better_higher(tmp_path: Path):
    rng = random.Random(3)
    points = [{"x": rng.choice([800, 1000, 1200, 1500, 2000]), "y": rng.uniform(2, 5)} for _ in range(40)]
    driver = (
        'import { COST_AXES, paretoFront } from "./js/searchmath.js";\n'
        f"const points = {json.dumps(points)};\n"
        "process.stdout.write(JSON.stringify({\n"
        "  keys: Object.keys(COST_AXES),\n"
        "  minimum: Object.keys(COST_AXES).filter((k) => COST_AXES[k].minimum),\n"
        "  shown: Object.fromEntries(Object.entries(COST_AXES).map(([k, a]) => [k, [a.name, a.unit, a.format(a.scale * 1.5)]])),\n"
        "  lower: paretoFront(points),\n"
        "  higher: paretoFront(points, (p) => p.x, (p) => p.y, true),\n"
        "}));\n"
    )
    out = run_dashboard_js(tmp_path, driver)
    assert out["keys"] == list(costs({}))
    assert out["minimum"] == [k for k in costs({}) if k in MINIMUM] == ["throughput"]
    assert out["shown"]["prefill"] == ["prefill", "prefill ms", "1.5 ms"]
    assert out["shown"]["throughput"] == ["throughput", "tok/s", "1.50 tok/s"]
    assert out["shown"]["memory"] == ["memory", "MiB", "1.5 MiB"]
    # FLOPs and KV cache: every candidate has them, budget or not (audit 14), so each is an axis too.
    assert out["shown"]["flops"] == ["FLOPs", "MFLOP/tok", "1.50 MFLOP"]
    assert out["shown"]["kv_cache"] == ["KV cache", "KV KiB/tok", "1.5 KiB"]
    assert costs({"flops_per_token": 7, "kv_cache_bytes_per_token": 3})["flops"] == 7
    assert out["lower"] == front_ids(points, more=False)
    assert out["higher"] == front_ids(points, more=True) != out["lower"]
    assert points[out["higher"][0]]["x"] == 2000  # the front starts at the highest throughput
