"""The dashboard counts plans in JS (frontend/js/costmodel.js) so a click updates the summary without a
round trip; these tests run that JS in node and require the exact numbers of worker/engine/spec.py and
worker/engine/plan/shape.py for every tiny family, a Llama-3.1-8B-shaped spec and a range of plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.real_shapes import llama_3_1_8b, qwen3_30b_a3b
from tests.tiny_models import FAMILIES, MOE_FAMILIES, tiny_model
from tests.ui.dashboard_js import run_dashboard_js
from worker.engine.adapters import arch_spec
from worker.engine.plan import PrunePlan, plan_stats
from worker.engine.spec import ArchSpec, LayerShape

DRIVER = """
import * as cm from "./js/costmodel.js";
const cases = JSON.parse(await new Promise((resolve) => {
  let data = ""; process.stdin.on("data", (c) => (data += c)); process.stdin.on("end", () => resolve(data));
}));
const out = cases.map(({ spec, hidden, layers, plan }) => {
  if (plan) return cm.planStats(spec, plan);
  const shapes = layers || cm.layerShapes(spec);
  const h = hidden ?? spec.hidden_size;
  return {
    params: cm.paramCount(spec, h, shapes),
    flops: cm.flopsPerToken(spec, 2048, h, shapes),
    kv: cm.kvCacheBytesPerToken(spec, shapes),
  };
});
process.stdout.write(JSON.stringify(out));
"""


def run_js(tmp_path: Path, cases: list[dict]) -> list[dict]:
    return run_dashboard_js(tmp_path, DRIVER, stdin=json.dumps(cases))


def llama8b() -> ArchSpec:
    return llama_3_1_8b(dtype="bfloat16")


def specs() -> dict[str, ArchSpec]:
    out = {name: arch_spec(tiny_model(name)) for name in FAMILIES + MOE_FAMILIES}
    out["qwen3_30b_a3b"] = qwen3_30b_a3b(dtype="bfloat16")
    out["llama8b"] = llama8b()
    return out


@pytest.fixture(scope="module")
def all_specs() -> dict[str, ArchSpec]:
    return specs()


def test_counts_match_python_for_every_family_and_shape(tmp_path, all_specs):
    cases, expected = [], []
    for spec in all_specs.values():
        summary = spec.summary()
        # The teacher's own shape, then a smaller non-uniform one with a narrower hidden size.
        shapes = spec.layer_shapes()
        narrow = [
            LayerShape(
                num_heads=max(1, s.num_heads // 2) if i % 2 else s.num_heads,
                num_kv_heads=max(1, s.num_kv_heads // 2) if i % 2 else s.num_kv_heads,
                intermediate_size=s.intermediate_size - 3 * i,
                num_experts=max(0, s.num_experts - i),
            )
            for i, s in enumerate(shapes[:-1])
        ]
        hidden = spec.hidden_size - 8
        for layers, d in ((None, None), (narrow, hidden)):
            cases.append(
                {
                    "spec": summary,
                    "hidden": d,
                    "layers": None if layers is None else [s.model_dump() for s in layers],
                }
            )
            expected.append(
                {
                    "params": spec.param_count(hidden=d, layers=layers),
                    "flops": spec.flops_per_token(2048, hidden=d, layers=layers),
                    "kv": spec.kv_cache_bytes_per_token(layers=layers),
                }
            )
    got = run_js(tmp_path, cases)
    assert got == expected
    # The 8B numbers are beyond 2^32: the JS must still be exact (doubles hold integers to 2^53).
    assert got[-2]["params"]["total"] == 8_030_261_248
    # Qwen3-30B-A3B's published 30.5B total / 3.3B active parameters (exact at the real config).
    assert got[-4]["params"]["total"] == 30_532_122_624 and got[-4]["params"]["active"] == 3_353_032_704


def plans_for(spec: ArchSpec) -> list[PrunePlan]:
    per_group = spec.num_heads // spec.num_kv_heads
    last = spec.num_layers - 1
    if spec.num_experts:
        E, F = spec.num_experts, spec.intermediate_size
        channels = {e: list(range(e % 3, F, 3))[:4] for e in range(E)}
        return [
            PrunePlan(),
            PrunePlan(remove_experts={0: [0, 2], last: list(range(E - spec.experts_per_token))}),
            PrunePlan(remove_expert_neurons={1: channels}, drop_layers=[0]),
            PrunePlan(
                remove_experts={1: [1]},
                remove_expert_neurons={1: {e: c for e, c in channels.items() if e != 1}},
                remove_heads={2: [g * per_group for g in range(spec.num_kv_heads)]},
                remove_hidden=list(range(0, spec.hidden_size, 8)),
            ),
        ]
    return [
        PrunePlan(),
        PrunePlan(drop_layers=[0, last]),
        # The same number of query heads from every KV group of layer 1 (a valid GQA cut).
        PrunePlan(remove_heads={1: [g * per_group for g in range(spec.num_kv_heads)]}),
        PrunePlan(remove_kv_groups={0: [spec.num_kv_heads - 1]}, remove_neurons={2: list(range(0, 20, 2))}),
        PrunePlan(
            drop_layers=[last],
            remove_neurons={i: list(range(5)) for i in range(last)},
            remove_hidden=list(range(0, spec.hidden_size, 4)),
        ),
    ]


def test_plan_summary_matches_plan_stats(tmp_path, all_specs):
    cases, expected = [], []
    for spec in all_specs.values():
        for plan in plans_for(spec):
            cases.append({"spec": spec.summary(), "plan": json.loads(plan.model_dump_json())})
            expected.append(plan_stats(plan, spec))
    got = run_js(tmp_path, cases)
    for js, py in zip(got, expected, strict=True):
        for key in (
            "params_total",
            "params_non_embedding",
            "params_embedding",
            "flops_per_token",
            "flops_context",
            "kv_cache_bytes_per_token",
            "teacher_params_total",
            "params_active",
            "teacher_params_active",
            "teacher_flops_per_token",
            "teacher_kv_cache_bytes_per_token",
            "uniform",
        ):
            assert js[key] == py[key], key
        assert js["num_layers"] == py["spec"]["num_layers"]
        assert js["hidden_size"] == py["spec"]["hidden_size"]
        assert js["layers"] == py["spec"]["layers"]
        assert round(100 * js["fraction_of_teacher"], 2) == py["percent_of_teacher_total"]
