"""Gromov et al.'s block angular distance in the dashboard (real Chromium, live API + Celery worker): the
importance form starts the scan, the layer chart draws it beside the block-loss bars with an explaining
hover, and filling layers by it marks exactly the block `fill_plan` drops."""

from __future__ import annotations

import numpy as np
import pytest

from tests.ui.conftest import shot
from worker.engine.importance.result import ImportanceResult
from worker.engine.importance.stats import SQ_L2, SQ_MEAN, SUM_L2, SUM_MEAN
from worker.engine.plan import PlanTargets, PrunePlan, fill_plan
from worker.engine.spec import ArchSpec

pytestmark = pytest.mark.ui

MARKED = "#ff4fa3"  # explorer.js: bars of dropped layers / blocks
NAME = "angular distance, k=2 (Gromov)"


def spec_of(teacher: dict) -> ArchSpec:
    fields = set(ArchSpec.model_fields) - {"layers"}
    return ArchSpec(**{k: v for k, v in teacher["spec"].items() if k in fields})


def make_angular_block_the_closest(artifact, block: int) -> ImportanceResult:
    """Scale one block's angular sums by 0.01 (its squares by 1e-4): it then has the smallest distance
    under every aggregation. Used so that the angular and block-loss methods pick different blocks."""
    res = ImportanceResult.load(artifact)
    sums = res.arrays["block_angular_k2"].astype(np.float64)  # [2 halves, 4 sums, blocks, 1]
    sums[:, [SUM_MEAN, SUM_L2], block] *= 0.01
    sums[:, [SQ_MEAN, SQ_L2], block] *= 1e-4
    res.arrays["block_angular_k2"] = sums.astype(np.float32)
    res.save(artifact)
    return ImportanceResult.load(artifact)


def plot_traces(page) -> list[dict]:
    return page.evaluate(
        "(document.querySelector('[data-testid=layers-plot]').data || []).map((t) => ({type: t.type, "
        "name: t.name, y: Array.from(t.y), yaxis: t.yaxis || 'y', color: t.marker && t.marker.color}))"
    )


def test_angular_scan_is_started_drawn_and_fills_the_closest_block(page, live_app):
    api = live_app.api
    teacher = live_app.tiny_teacher_and_demo("tiny")

    # ---- the start-importance form offers the scan (opt-in) ----
    page.goto(f"{live_app.url}/#/?teacher={teacher['id']}")
    form = "[data-testid=importance-form]"
    box = page.locator(f"{form} [name=scan_angular]")
    box.wait_for()
    assert not box.is_checked()
    assert "Gromov" in page.locator(f"{form} label:has([name=scan_angular])").get_attribute("title")
    page.fill(f"{form} [name=samples]", "8")
    page.fill(f"{form} [name=seq_len]", "32")
    page.fill(f"{form} [name=batch_size]", "4")
    page.uncheck(f"{form} [name=scan_drop]")
    box.check()
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector("[data-testid=importance-runs] tr[data-run-id]")
    (run,) = api.get("/importance-runs", params={"teacher_id": teacher["id"]}).json()
    assert run["params"]["scans"] == ["bi", "block", "angular"] and run["params"]["block_size"] == 2
    assert live_app.wait_job(run["job_id"])["status"] == "succeeded"
    rid = run["id"]

    # Make the angular method disagree with the block-loss one, so the marks below tell them apart.
    artifact = live_app.data_dir / "artifacts" / "importance" / str(rid)
    block_loss = ImportanceResult.load(artifact).scores().layers["block_loss_k2"]
    target = (int(np.argmin(block_loss)) + 1) % len(block_loss)
    scores = make_angular_block_the_closest(artifact, target).scores()
    spec = spec_of(teacher)
    expected = fill_plan(PrunePlan(targets=PlanTargets(num_layers=2, layer_method="angular")), spec, scores)
    by_loss = fill_plan(PrunePlan(targets=PlanTargets(num_layers=2, layer_method="block")), spec, scores)
    assert expected.drop_layers == [target, target + 1] != by_loss.drop_layers

    # ---- the layer chart: the angular series beside the block-loss bars ----
    page.goto(f"{live_app.url}/#/explore/{rid}")
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    page.evaluate("localStorage.clear()")
    page.wait_for_function("(document.querySelector('[data-testid=layers-plot]').data || []).length === 2")
    payload = api.get(f"/importance-runs/{rid}/layers").json()
    bars, line = plot_traces(page)
    assert bars["type"] == "bar" and bars["y"] == payload["block_loss"]["2"]
    assert (line["type"], line["name"], line["yaxis"]) == ("scatter", NAME, "y2")
    assert line["y"] == payload["block_angular"]["2"] and int(np.argmin(line["y"])) == target
    plot = "[data-testid=layers-plot]"
    page.wait_for_selector(f"{plot} .scatterlayer .js-line")
    assert page.locator(f"{plot} .scatterlayer .points path").count() == len(block_loss)
    assert NAME in page.locator(f"{plot} .legend").text_content()
    page.evaluate(
        f"Plotly.Fx.hover(document.querySelector('{plot}'), [{{curveNumber: 1, pointNumber: {target}}}])"
    )
    hover = page.locator(f"{plot} .hoverlayer .hovertext")
    hover.wait_for()
    assert "lower = the block changes the representation less" in hover.text_content()
    page.locator(".badge", has_text="angular k=2").first.wait_for()  # its split-half rank stability

    # ---- the planner: fill layers by the angular distance ----
    select = "[data-testid=fill-form] [name=layer_method]"
    assert "angular" in page.locator(f"{select} option").all_inner_texts()[-1]
    page.fill("[data-testid=fill-form] [name=num_layers]", "2")
    page.select_option(select, "angular")
    page.click("[data-testid=fill]")
    page.wait_for_function("document.querySelector('[data-testid=shape]').innerText.includes('2L')")
    draft = page.evaluate(f"JSON.parse(localStorage.getItem('prunescope.draft.run{rid}'))")
    assert draft["drop_layers"] == expected.drop_layers
    # The chart marks exactly that block: its bar (and only it) turns magenta.
    page.wait_for_function(
        f"document.querySelector('{plot}').data[0].marker.color.filter((c) => c === '{MARKED}').length === 1"
    )
    assert [i for i, c in enumerate(plot_traces(page)[0]["color"]) if c == MARKED] == [target]
    shot(page, "explorer-angular")


def test_the_study_wizard_names_the_block_size_of_an_angular_only_run(page, live_app):
    api = live_app.api
    # The tiny teacher this module registered (the app is shared: other modules' teachers are there too).
    teacher = next(
        t
        for t in api.get("/teachers").json()
        if t["status"] == "ready" and t["source"] == str(live_app.teacher_dir) and t["name"] == "tiny"
    )
    dataset = api.get("/datasets").json()[0]
    body = {"teacher_id": teacher["id"], "dataset_id": dataset["id"], "samples": 4, "seq_len": 16}
    r = api.post("/importance-runs", json={**body, "batch_size": 4, "scans": ["angular"], "block_size": 3})
    assert r.status_code == 201, r.text
    assert live_app.wait_job(r.json()["job_id"])["status"] == "succeeded"
    page.goto(f"{live_app.url}/#/compare")
    option = page.locator(
        f"[data-testid=wizard] select[name=importance_run_id] option[value='{r.json()['id']}']"
    )
    option.wait_for(state="attached")
    assert option.get_attribute("title") == "4 × 16 tokens, scans: angular (block k=3)"
