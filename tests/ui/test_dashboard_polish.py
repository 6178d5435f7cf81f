"""Outside UI audit "the dashboard used all day" (items 9, 16, 18-23b), in a real Chromium on the shared
app: every search figure says what it was measured on and the teacher's beside it is on the same sample;
a student's evaluation or benchmark measures the weights picked in the UI; a cut of depth and width has
one name; importance runs name their calibration data; no rate from a fraction of a second; a quiet
tolerance band; toasts in the top bar, never over a control."""

from __future__ import annotations

import re
import time

import pytest

from tests.platform.helpers import make_student
from tests.ui.conftest import shot

pytestmark = pytest.mark.ui


def box(page, selector: str) -> dict:
    return page.locator(selector).first.bounding_box()


def overlaps(a: dict, b: dict) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


def test_search_figures_say_what_they_were_measured_on(page, live_app, shared_search):
    data, teacher = shared_search["data"], shared_search["teacher"]
    protocol = data["protocol"]
    settings = shared_search["job"]["params"]["settings"]
    # The API says what the search's losses are on: its own sample of the held-out split.
    assert protocol["kind"] == "sample"
    assert (protocol["samples"], protocol["context"]) == (settings["eval_samples"], settings["eval_seq_len"])
    assert protocol["id"] != teacher["eval_protocol"]["id"]
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"{live_app.url}/#/search/{shared_search['job']['id']}")
    page.wait_for_selector("[data-testid=pareto-plot][data-points]")
    page.wait_for_selector("[data-testid=parcoords-plot][data-dimensions]")
    note = lambda testid: page.locator(f"[data-testid={testid}]")  # noqa: E731
    # Above the chart: the search's sample, and the teacher's evaluation protocol it is not.
    assert note("search-protocol-note").get_attribute("data-protocol-id") == protocol["id"]
    assert note("teacher-protocol-note").get_attribute("data-protocol-id") == teacher["eval_protocol"]["id"]
    # The teacher's loss beside the best candidate's is the search's own (same sample), and says so.
    best = note("search-best")
    assert f"teacher {float(best.locator('.delta').inner_text().split()[1]):.4g}" == (
        f"teacher {data['reference']['loss']:.4g}"
    )
    assert best.locator("[data-testid=best-protocol]").get_attribute("data-protocol-id") == protocol["id"]
    # The table's loss and ppl columns, and a hovered candidate's figures, too.
    assert note("table-protocol-note").get_attribute("data-protocol-id") == protocol["id"]
    page.evaluate(
        "(() => { const p = document.querySelector('[data-testid=pareto-plot]');"
        " p.emit('plotly_hover', { points: [{ customdata: p.data[0].customdata[0] }] }); })()"
    )
    assert note("detail-protocol").get_attribute("data-protocol-id") == protocol["id"]
    # A search of the tiny teacher takes a fraction of a second: no rate from that.
    assert shared_search["job"]["result"]["candidates_per_minute"] is None
    assert note("search-rate").locator(".value").inner_text() == "—"
    # One name per cut: the engine's "mixed" reads "depth + width" in the table as in the legend.
    cuts = {c["cut"] for c in data["candidates"]}
    assert "mixed" in cuts
    column = page.locator("tr[data-candidate] td:nth-child(3)").all_inner_texts()
    assert not any(re.search(r"\bmixed\b", t) for t in column)
    assert any("depth + width" in t for t in column)
    legend = page.eval_on_selector("[data-testid=pareto-plot]", "p => p.data.map((t) => t.name)")
    assert "depth + width" in legend
    # The tolerance band is a reference region: a faint neutral wash, not a red one.
    fill = page.eval_on_selector(
        "[data-testid=pareto-plot]",
        "p => p._fullLayout.shapes.find((s) => s.name === 'tolerance').fillcolor",
    )
    r, g, b, a = (float(x) for x in re.findall(r"[\d.]+", fill))
    assert a <= 0.08 and max(r, g, b) - min(r, g, b) <= 40, fill
    shot(page, "polish-search-protocol")


def test_importance_runs_name_their_calibration_data(page, live_app, shared_run):
    run = live_app.api.get(f"/importance-runs/{shared_run['run_id']}").json()
    dataset = live_app.api.get(f"/datasets/{run['dataset_id']}").json()
    # The job row names it too (the runs table reads a job's params).
    assert live_app.api.get(f"/jobs/{run['job_id']}").json()["params"]["dataset_id"] == dataset["id"]
    # A delete of the dataset is refused naming the run once, not its job again.
    refused = live_app.api.delete(f"/datasets/{dataset['id']}")
    assert refused.status_code == 409 and re.search(rf"importance runs? [\d, ]*\b{run['id']}\b", refused.text)
    assert f"{run['job_id']} (importance" not in refused.text, refused.text
    page.goto(f"{live_app.url}/#/?teacher={shared_run['teacher']['id']}")
    cell = page.locator(f"[data-testid=importance-runs] tr[data-run-id='{run['id']}'] [data-testid=run-data]")
    assert cell.inner_text().splitlines()[0] == dataset["name"]
    page.goto(f"{live_app.url}/#/runs")
    page.fill("[data-testid=runs-search]", f"#{run['job_id']}")
    row = page.locator(f"[data-testid=runs-table] tbody tr[data-job-id='{run['job_id']}']")
    row.wait_for()
    heads = page.locator("[data-testid=runs-table] thead th").all_inner_texts()
    data_cell = row.locator("td").nth([h.strip().lower() for h in heads].index("data"))
    assert data_cell.inner_text() == dataset["name"]


def test_evaluate_measures_the_weights_picked_and_its_toast_covers_no_control(page, live_app):
    student = make_student(live_app)
    distill = live_app.api.post(
        "/jobs",
        json={
            "kind": "distill",
            "student_id": student["id"],
            "params": {"steps": 2, "batch_size": 2, "seq_len": 32},
        },
    )
    assert distill.status_code == 201, distill.text
    distill_id = distill.json()["id"]
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"{live_app.url}/#/runs?student={student['id']}")
    choice = page.locator("[data-testid=measure-weights]")
    choice.wait_for()
    options = choice.locator("option").all()
    assert [o.get_attribute("value") for o in options] == ["latest", "pruned", f"distill:{distill_id}"]

    def queued(kind: str, before: set[int]) -> dict:
        """The job the click queued (the previous toast may still show: wait for the new job)."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            jobs = live_app.api.get("/jobs", params={"kind": kind, "student_id": student["id"]}).json()
            new = [j for j in jobs if j["id"] not in before]
            if new:
                return max(new, key=lambda j: j["id"])
            time.sleep(0.1)
        raise AssertionError(f"no {kind} job queued")

    for value, testid, kind, expected in (
        ("pruned", "evaluate-student", "evaluate", {"weights": "pruned", "distill_job_id": None}),
        (f"distill:{distill_id}", "evaluate-student", "evaluate", {"distill_job_id": distill_id}),
        ("pruned", "benchmark-student", "benchmark", {"weights": "pruned", "distill_job_id": None}),
    ):
        before = {j["id"] for j in live_app.api.get("/jobs", params={"student_id": student["id"]}).json()}
        choice.select_option(value)
        page.click(f"[data-testid={testid}]")
        job = queued(kind, before)
        assert {k: job["params"].get(k) for k in expected} == expected, job["params"]
        toast = page.locator("[data-testid=toast]", has_text=f"#{job['id']} ")
        toast.wait_for()
        # In the top bar, clear of every control of the page.
        bar = box(page, "header.topbar")
        where = toast.bounding_box()
        assert bar["y"] <= where["y"] and where["y"] + where["height"] <= bar["y"] + bar["height"], (
            where,
            bar,
        )
        controls = page.eval_on_selector_all(
            "main button, main input, main select, main a, header nav a",
            """els => els.map((e) => e.getBoundingClientRect()).filter((r) => r.width > 0 && r.height > 0)
                .map((r) => ({ x: r.x, y: r.y, width: r.width, height: r.height }))""",
        )
        hit = [c for c in controls if overlaps(where, c)]
        assert not hit, (where, hit)
        shot(page, f"polish-toast-{kind}")
