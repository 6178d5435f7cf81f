"""The depth-vs-width study's targets (frontend/js/studymath.js, run in node) are sizes the server's fill
accepts: the JS alignment rules are worker/engine/plan/shape.py's (hidden_alignment, expert_alignment) on every
tiny family, MoE and real shape, and each width target fills and validates on the server with the
parameter count the wizard shows, within its budget. Before, the wizard rounded the hidden size to a
multiple of the head count on every family: a GPT-2 (head_dim rule) or MoE (grouped_mm rule) study was
refused when it was started."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.real_shapes import llama_3_1_8b, qwen3_30b_a3b
from tests.tiny_models import FAMILIES, MOE_FAMILIES, tiny_model
from tests.ui.dashboard_js import run_dashboard_js
from worker.engine.adapters import arch_spec
from worker.engine.plan import (
    ImportanceScores,
    PlanTargets,
    PrunePlan,
    expert_alignment,
    fill_plan,
    hidden_alignment,
    plan_stats,
    validate_plan,
)
from worker.engine.spec import ArchSpec

DRIVER = """
import * as sm from "./js/studymath.js";
const cases = JSON.parse(await new Promise((resolve) => {
  let data = ""; process.stdin.on("data", (c) => (data += c)); process.stdin.on("end", () => resolve(data));
}));
const out = cases.map(({ spec, budgets }) => ({
  hidden: sm.hiddenAlignment(spec),
  expert: sm.expertAlignment(spec),
  width: budgets.map((b) => sm.widthTarget(spec, b)),
  depth: budgets.map((b) => sm.depthTarget(spec, b)),
  params: budgets.map((b) => { const w = sm.widthTarget(spec, b); return w && sm.targetParams(spec, w); }),
}));
process.stdout.write(JSON.stringify(out));
"""
SHARES = (0.5, 0.7, 0.9)


def scores_for(spec: ArchSpec) -> ImportanceScores:
    rng = np.random.default_rng(0)
    shapes = spec.layer_shapes()
    L, E = spec.num_layers, max(s.num_experts for s in shapes)
    F = max(s.intermediate_size for s in shapes)
    return ImportanceScores(
        heads=rng.random((L, max(s.num_heads for s in shapes))),
        neurons=np.zeros((L, 0)) if E else rng.random((L, F)),
        hidden=rng.random(spec.hidden_size),
        **({"experts": rng.random((L, E)), "expert_neurons": rng.random((L, E, F))} if E else {}),
    )


def test_study_targets_are_sizes_the_server_fills(tmp_path: Path):
    specs = {name: arch_spec(tiny_model(name)) for name in FAMILIES + MOE_FAMILIES}
    specs["llama-3.1-8b"] = llama_3_1_8b()
    specs["qwen3-30b-a3b bf16"] = qwen3_30b_a3b()
    cases = [
        {"spec": s.summary(), "budgets": [int(s.param_count()["total"] * share) for share in SHARES]}
        for s in specs.values()
    ]
    out = run_dashboard_js(tmp_path, DRIVER, stdin=json.dumps(cases))
    assert {o["hidden"] for o, s in zip(out, specs.values()) if s.family == "gpt2"} == {
        specs["gpt2"].head_dim
    }
    for (name, spec), got, case in zip(specs.items(), out, cases):
        assert (got["hidden"], got["expert"]) == (hidden_alignment(spec), expert_alignment(spec)), name
        for budget, width, depth, params in zip(case["budgets"], got["width"], got["depth"], got["params"]):
            assert width is not None and depth is not None, (name, budget)
            assert width["hidden_size"] % hidden_alignment(spec) == 0, (name, width)
            if spec.num_layers <= 8:  # the tiny models: the server fills the target (scores by shape)
                plan = fill_plan(PrunePlan(targets=PlanTargets(**width)), spec, scores_for(spec))
                assert not [m for m in validate_plan(plan, spec) if m.level == "error"], (name, width)
                stats = plan_stats(plan, spec)
                assert stats["params_total"] == params <= budget, (name, width)
            kept = PrunePlan(drop_layers=list(range(depth["num_layers"], spec.num_layers)))
            assert plan_stats(kept, spec)["params_total"] <= budget, (name, depth)
