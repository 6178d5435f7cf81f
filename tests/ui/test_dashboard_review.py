"""Defects found by a review of the dashboard, held fixed in a real Chromium: the teacher's protocol form
starts closed and its Cancel closes it; a short distillation's curves tick whole steps and draw the
learning rate unsmoothed; an importance run's action links stay inside their panel at 1024 px. Rows are
inserted straight into the shared app's database (no worker) and deleted at the end."""

from __future__ import annotations

import pytest
from sqlalchemy import delete

from backend.db import session_scope
from backend.models import Dataset, Event, ImportanceRun, Job, MetricPoint, Teacher
from tests.platform.test_workflows import DEPTH, EVALUATE, ready_teacher
from tests.tiny_models import tiny_spec
from tests.ui.conftest import shot

pytestmark = pytest.mark.ui

# Three steps: Plotly's own ticks would fall on halves. The learning rate warms up then decays; smoothed
# (EMA 0.6) its peak would move from step 2 to step 3.
LR = [5e-5, 1e-4, 8e-5]
KD = [0.18, 0.15, 0.16]
SPEC = tiny_spec().summary()
PRUNE_RESULT = {"artifact": "students/0/model", "spec": SPEC, **{f"extra_{i}": i for i in range(20)}}


@pytest.fixture(scope="module")
def rows(live_app):
    """A ready teacher, a finished 3-step distillation of it with kd_loss and lr points, a finished
    importance run of it and a finished prune job with a long result."""
    url = live_app.env["PRUNESCOPE_DATABASE_URL"]
    with session_scope(url) as s:
        teacher = Teacher(name="review-t", source="org/review-t", status="ready", spec=SPEC)
        data = Dataset(name="review-data", source="/nonexistent/review.jsonl")
        s.add_all([teacher, data])
        s.flush()
        distill = Job(
            kind="distill", status="succeeded", progress=1.0, params={"steps": 3}, teacher_id=teacher.id
        )
        imp_job = Job(kind="importance", status="succeeded", progress=1.0, params={}, teacher_id=teacher.id)
        s.add_all([distill, imp_job])
        s.flush()
        for step, (lr, kd) in enumerate(zip(LR, KD, strict=True), start=1):
            for name, value in (("lr", lr), ("kd_loss", kd)):
                s.add(
                    MetricPoint(
                        job_id=distill.id, name=name, step=step, value=value, tokens=step * 256, t=float(step)
                    )
                )
        run = ImportanceRun(
            teacher_id=teacher.id,
            dataset_id=data.id,
            params={"samples": 64, "seq_len": 128, "scans": ["bi", "drop", "block"]},
            job_id=imp_job.id,
        )
        s.add(run)
        s.flush()
        imp_job.importance_run_id = run.id
        # A finished search whose result has no artifact: the list only reads its counts.
        search = Job(
            kind="search",
            status="succeeded",
            progress=1.0,
            params={"settings": {"budgets": ["params=60%"], "frontier_only": True}},
            result={"candidates": 4, "within_budget": 8},
            teacher_id=teacher.id,
            importance_run_id=run.id,
        )
        s.add(search)
        # A prune result: a uniform spec (its layers all alike) and more fields than the page lists.
        prune = Job(
            kind="prune",
            status="succeeded",
            progress=1.0,
            params={},
            teacher_id=teacher.id,
            result=PRUNE_RESULT,
        )
        s.add(prune)
        s.flush()
        ids = {
            "teacher": teacher.id,
            "dataset": data.id,
            "distill": distill.id,
            "imp_job": imp_job.id,
            "prune": prune.id,
            "search": search.id,
            "run": run.id,
        }
    yield ids
    with session_scope(url) as s:
        jobs = [ids["distill"], ids["imp_job"], ids["prune"], ids["search"]]
        s.execute(delete(MetricPoint).where(MetricPoint.job_id.in_(jobs)))
        s.execute(delete(Event).where(Event.job_id.in_(jobs)))
        s.execute(delete(Job).where(Job.id.in_(jobs)))  # before the run: a job names it
        s.execute(delete(ImportanceRun).where(ImportanceRun.id == ids["run"]))
        s.execute(delete(Dataset).where(Dataset.id == ids["dataset"]))
        s.execute(delete(Teacher).where(Teacher.id == ids["teacher"]))


def test_the_protocol_form_starts_closed_and_cancel_closes_it(page, live_app, rows):
    page.goto(f"{live_app.url}/#/teachers?teacher={rows['teacher']}")
    page.wait_for_selector("[data-testid=protocol-edit]")
    form = page.locator("[data-testid=protocol-form]")
    assert not form.is_visible()  # a `form.stack` (flex) used to override its `hidden` attribute
    page.click("[data-testid=protocol-edit]")
    form.wait_for(state="visible")
    form.locator("button", has_text="Cancel").click()
    form.wait_for(state="hidden")


def plot_ticks(page, testid: str) -> list[str]:
    return page.eval_on_selector_all(
        f"[data-testid={testid}] .xtick text", "els => els.map((e) => e.textContent)"
    )


def test_a_short_distillation_ticks_whole_steps_and_draws_the_lr_unsmoothed(page, live_app, rows):
    page.goto(f"{live_app.url}/#/job/{rows['distill']}")  # default smoothing 0.6
    page.wait_for_function(
        "document.querySelector('[data-testid=plot-lr]')?.data?.length && document.querySelector('[data-testid=plot-kd_loss]')?.data?.length"
    )
    ticks = plot_ticks(page, "plot-kd_loss")
    assert ticks and all(t.isdigit() for t in ticks), ticks  # not "1.5", "2.5"
    assert set(ticks) >= {"1", "3"}, ticks
    lr = page.evaluate("document.querySelector('[data-testid=plot-lr]').data")
    assert len(lr) == 1  # no faint raw copy under it
    assert lr[0]["y"] == pytest.approx(LR)
    kd = page.evaluate("document.querySelector('[data-testid=plot-kd_loss]').data")
    assert kd[-1]["y"][1] != pytest.approx(KD[1])  # the loss is still smoothed
    shot(page, "review-short-distill")


def test_importance_run_links_stay_inside_their_panel_at_1024(page, live_app, rows):
    page.set_viewport_size({"width": 1024, "height": 900})
    page.goto(f"{live_app.url}/#/teachers?teacher={rows['teacher']}")
    row = page.wait_for_selector(f"[data-testid=importance-runs] tr[data-run-id='{rows['run']}'] a.btn")
    panel = page.locator("section.panel", has=page.locator("[data-testid=importance-runs]")).bounding_box()
    for link in page.query_selector_all(
        f"[data-testid=importance-runs] tr[data-run-id='{rows['run']}'] a.btn"
    ):
        box = link.bounding_box()
        assert box["x"] + box["width"] <= panel["x"] + panel["width"], (box, panel)
    assert row.is_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 1024


def test_a_job_without_a_student_shows_no_student_panel_and_an_importance_job_opens_its_explorer(
    page, live_app, rows
):
    page.goto(f"{live_app.url}/#/job/{rows['imp_job']}")
    link = page.wait_for_selector("[data-testid=job-explore]")
    assert link.get_attribute("href") == f"#/explore/{rows['run']}"
    page.wait_for_selector("[data-testid=job-log]")
    assert page.query_selector("[data-testid=student-benchmarks]") is None  # it only ever said "–"
    link.click()
    page.wait_for_function(f"location.hash === '#/explore/{rows['run']}'")


def test_a_long_result_lists_alike_layers_once_and_says_what_it_leaves_out(page, live_app, rows):
    page.goto(f"{live_app.url}/#/job/{rows['prune']}")
    page.wait_for_selector("[data-testid=job-result] dl.kv")
    keys = page.eval_on_selector_all("[data-testid=job-result] dt", "els => els.map((e) => e.textContent)")
    n = len(SPEC["layers"])
    assert f"spec.layers[0–{n - 1}].num_heads" in keys, keys
    assert not any(k.startswith("spec.layers[1]") for k in keys), keys
    # Every leaf: the spec's scalars, one layer's fields, the artifact and the extras; the page lists 40.
    total = sum(1 for k in SPEC if k != "layers") + len(SPEC["layers"][0]) + 1 + 20
    assert len(keys) == 40 + 1  # the 40 fields, then the "…" row
    assert page.inner_text("[data-testid=result-more]") == f"{total - 40} more fields not shown"


def test_the_search_list_fits_at_1024_and_the_scored_count_says_of_how_many(page, live_app, rows):
    page.set_viewport_size({"width": 1024, "height": 900})
    page.goto(f"{live_app.url}/#/search")
    count = page.wait_for_selector(
        f"[data-testid=search-list] tr:has-text('#{rows['search']}') [data-testid=search-count]"
    )
    assert count.inner_text() == "4 candidates scored"
    table = page.locator("[data-testid=search-list]").bounding_box()
    panel = page.locator("section.panel", has=page.locator("[data-testid=search-list]")).bounding_box()
    assert table["x"] + table["width"] <= panel["x"] + panel["width"], (table, panel)
    # The card's line under "candidates scored" (the search page draws it from the job's result).
    lines = page.evaluate(
        """async () => {
          const { scoredLine } = await import(new URL("js/views/search.js", document.baseURI));
          const r = { candidates: 4, within_budget: 8 };
          return [scoredLine(r, { frontier_only: true }), scoredLine(r, { frontier_only: false }), scoredLine({ candidates: 3 }, {})];
        }"""
    )
    assert lines == ["of 8 within the budget (only its frontier scored)", "of 8 within the budget", ""]


def test_the_study_wizard_shows_the_latest_study_not_a_search_bake_off_and_steps_read_alike(page, live_app):
    teacher = ready_teacher(live_app)

    def workflow(name: str) -> int:
        body = {
            "name": name,
            "teacher_id": teacher["id"],
            "candidates": [{"name": "d", "plan": DEPTH}],
            "evaluate": EVALUATE,
            "benchmark": None,
        }
        r = live_app.api.post("/workflows", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    study = workflow("depth vs width at 50%")
    bakeoff = workflow("bake-off of search #0")  # newer, of the same teacher, not a study
    try:
        page.goto(f"{live_app.url}/#/compare")
        page.wait_for_selector("[data-testid=wizard-go]")
        page.select_option("[name=teacher_id]", str(teacher["id"]))
        shown = page.wait_for_selector("[data-testid=study]")
        assert shown.get_attribute("data-id") == str(study)
        # One name for the workflow (audit 18): the link says what the page it opens calls it.
        link = page.inner_text("[data-testid=study-link]")
        assert link == f"Bake-off #{study}"
        # Its page names the steps as the study panel does, not by their ids ("evaluate_pruned").
        page.goto(f"{live_app.url}/#/bakeoff/{study}")
        chip = page.wait_for_selector("[data-branch=d] [data-step=evaluate_pruned]")
        assert page.inner_text(".page-head h1") == link
        assert chip.inner_text().startswith("perplexity as cut"), chip.inner_text()
    finally:
        for wf in (study, bakeoff):
            live_app.api.post(f"/workflows/{wf}/cancel")


def test_a_legend_of_long_names_sits_above_the_curves_not_over_them(page, live_app):
    """baseLayout's legend (every curve chart): three long names wrap onto several rows in a narrow chart."""
    page.goto(f"{live_app.url}/#/runs")
    page.wait_for_function("!!window.Plotly")
    gap = page.evaluate(
        """async () => {
          const { baseLayout } = await import(new URL("js/plots.js", document.baseURI));
          const el = document.body.appendChild(document.createElement("div"));
          el.style.width = "420px";
          const name = (i) => `#${i} L7-drop+bi.H8-none.F576.D192 (job ${i})`;
          const traces = [1, 2, 3].map((i) => ({ x: [1, 2, 3], y: [130, 120 + i, 90], name: name(i), mode: "lines" }));
          await Plotly.newPlot(el, traces, baseLayout({ height: 320 }));
          const legend = el.querySelector(".legend").getBoundingClientRect();
          const plot = el.querySelector(".nsewdrag").getBoundingClientRect();
          const rows = new Set([...el.querySelectorAll(".legend .traces")].map((t) => Math.round(t.getBoundingClientRect().top))).size;
          el.remove();
          return { gap: plot.top - legend.bottom, rows };
        }"""
    )
    assert gap["rows"] > 1, gap  # the names did wrap: the case that covered the curves
    assert gap["gap"] >= 0, gap
