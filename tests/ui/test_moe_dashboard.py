"""Mixture of experts in the dashboard (real Chromium, live API + Celery worker): a tiny Qwen3-MoE teacher
is inspected and scored by the worker, the explorer draws layers x experts (routed share by default) in
place of the MLP-neuron map, a click and a box mark experts, and the planner shows active and total
parameters equal to plan_stats of the same plan; filling experts per layer marks the least routed."""

from __future__ import annotations

import pytest

from tests.tiny_models import HEAD_DIM, MOE
from tests.ui.conftest import shot
from tests.ui.test_angular_dashboard import spec_of
from worker.engine.importance.result import ImportanceResult
from worker.engine.plan import PlanTargets, PrunePlan, fill_plan, plan_stats

pytestmark = pytest.mark.ui
E = 6


def save_tiny_moe(out_dir):
    """A 4-layer Qwen3-MoE (6 experts, top-2) with the demo tokenizer's vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3MoeConfig

    from worker.demo import demo_tokenizer_path

    tokenizer = AutoTokenizer.from_pretrained(str(demo_tokenizer_path()))
    torch.manual_seed(0)
    config = Qwen3MoeConfig(
        **{
            **MOE,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 256,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        num_experts=E,
        moe_intermediate_size=12,
    )
    assert config.head_dim == HEAD_DIM
    AutoModelForCausalLM.from_config(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def value(page, testid: str) -> int:
    return int(page.get_attribute(f"[data-testid={testid}]", "data-value"))


def expert_cell(page, layer: int, expert: int, row_height: int = 18):
    box = page.locator("[data-testid=experts-map]").bounding_box()
    return box["x"] + (expert + 0.5) * box["width"] / E, box["y"] + (layer + 0.5) * row_height


def test_experts_heatmap_marks_experts_and_the_summary_counts_active_parameters(page, live_app):
    api = live_app.api
    source = save_tiny_moe(live_app.teacher_dir.parent / "tiny-moe")
    teacher = api.post("/teachers", json={"name": "moe", "source": str(source)}).json()
    assert live_app.wait_job(teacher["job_id"])["status"] == "succeeded"
    teacher = api.get(f"/teachers/{teacher['id']}").json()
    assert (teacher["spec"]["num_experts"], teacher["spec"]["experts_per_token"]) == (E, 2)
    dataset = api.post("/datasets", json={"name": "demo-moe", "source": "demo"}).json()
    run = api.post(
        "/importance-runs",
        json={
            "teacher_id": teacher["id"],
            "dataset_id": dataset["id"],
            "samples": 8,
            "seq_len": 32,
            "scans": ["bi"],
        },
    ).json()
    assert live_app.wait_job(run["job_id"])["status"] == "succeeded"
    rid = run["id"]
    spec = spec_of(teacher)

    page.goto(f"{live_app.url}/#/explore/{rid}")
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    page.evaluate("localStorage.clear()")
    # The heads map and the toolbar's rank-stability badges above hold their size before their data
    # arrive: the experts map does not move when they do (a jump of the map under the mouse would mark
    # the wrong layer). The badges arriving last, on a loaded machine, moved it 30 px.
    held = []
    for scores in ("heads", "stability"):
        page.route(f"**/importance-runs/*/{scores}*", lambda route: held.append(route))
    page.reload()
    while len(held) < 2:
        page.wait_for_timeout(50)
    page.wait_for_function("document.querySelector('[data-testid=experts-map]')?.style.width")  # drawn
    before = page.locator("[data-testid=experts-map]").bounding_box()["y"]
    for route in held:
        route.continue_()
        page.wait_for_timeout(300)
    page.unroute("**/importance-runs/*/heads*")
    page.unroute("**/importance-runs/*/stability*")
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    page.wait_for_selector("[data-testid=stability-heads]")
    assert page.locator("[data-testid=experts-map]").bounding_box()["y"] == before
    assert page.locator("[data-testid=neurons-panel]").count() == 0
    assert value(page, "params-total") == spec.param_count()["total"]
    assert value(page, "params-active") == spec.param_count()["active"]

    # A click marks one expert; a box marks experts 0-2 of layers 1 and 2.
    page.mouse.click(*expert_cell(page, 0, 4))
    x0, y0 = expert_cell(page, 1, 0)
    x1, y1 = expert_cell(page, 2, 2)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=6)
    page.mouse.up()
    draft = page.evaluate(f"JSON.parse(localStorage.getItem('prunescope.draft.run{rid}'))")
    plan = PrunePlan(remove_experts={0: [4], 1: [0, 1, 2], 2: [0, 1, 2]})
    assert draft["remove_experts"] == {"0": [4], "1": [0, 1, 2], "2": [0, 1, 2]}
    stats = plan_stats(plan, spec)
    assert value(page, "params-total") == stats["params_total"]
    assert value(page, "params-active") == stats["params_active"] < stats["teacher_params_active"]
    assert "experts 3–6/6" in page.inner_text("[data-testid=shape]")
    page.wait_for_function("document.querySelector('[data-testid=plan-messages]').dataset.state === 'done'")
    # Valid (>= top-k experts everywhere); layers now differ in expert count: our loader's format.
    assert page.locator("[data-testid=plan-messages] li.error").count() == 0
    assert "not loadable by vanilla" in page.inner_text("[data-testid=plan-messages]")
    # Fewer experts than top-k in a layer: the server's error names the field and the valid range.
    page.mouse.click(*expert_cell(page, 1, 3))
    page.mouse.click(*expert_cell(page, 1, 4))
    page.wait_for_function("document.querySelector('[data-testid=plan-messages]').dataset.state === 'done'")
    messages = page.inner_text("[data-testid=plan-messages]")
    # The server's error replaces the local one ("keeps 2 experts, fewer than top-k=2"): said once.
    assert "layer 1 would keep 1 of 6 experts, fewer than the 2 every token is routed to" in messages
    assert "remove at most 4" in messages and "top-k=2" not in messages, messages
    page.click("[data-testid=undo]")
    page.click("[data-testid=undo]")
    shot(page, "explorer-experts")

    # Fill: 3 experts per layer, ranked by routed share, marks exactly fill_plan's experts.
    page.click("[data-testid=undo]")
    page.click("[data-testid=undo]")
    page.fill("[data-testid=fill-form] [name=experts_per_layer]", "3")
    page.select_option("[data-testid=fill-form] [name=expert_metric]", "routed")
    page.click("[data-testid=fill]")
    page.wait_for_function("document.querySelector('[data-testid=shape]').innerText.includes('experts 3/6')")
    artifact = live_app.data_dir / "artifacts" / "importance" / str(rid)
    scores = ImportanceResult.load(artifact).scores(expert_metric="routed")
    expected = fill_plan(PrunePlan(targets=PlanTargets(experts_per_layer=3)), spec, scores)
    draft = page.evaluate(f"JSON.parse(localStorage.getItem('prunescope.draft.run{rid}'))")
    assert draft["remove_experts"] == {str(k): v for k, v in expected.remove_experts.items()}
