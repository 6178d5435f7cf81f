"""The importance form outlives the Teachers view's refreshes: a run started elsewhere (here through the
API) redraws the runs table on its status events, and what the user was typing stays in the same form
(before, every refresh rebuilt the form: typed values, the memory line and a field's error vanished
every 4 s while anything ran). Real Chromium on the shared app and its real worker."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.ui
IMP = "[data-testid=importance-form]"
RUNS = "[data-testid=importance-runs] tbody tr"


def test_typed_values_survive_a_run_started_elsewhere(page, live_app):
    teacher = live_app.tiny_teacher_and_demo("kept-form")
    dataset = live_app.api.get("/datasets").json()[-1]
    page.goto(f"{live_app.url}/#/teachers?teacher={teacher['id']}")
    page.wait_for_selector(f"{IMP} [name=samples]")
    page.evaluate(f"document.querySelector('{IMP}').dataset.typedHere = 'yes'")
    page.fill(f"{IMP} [name=samples]", "37")
    page.fill(f"{IMP} [name=spill_limit_gb]", "12.5")
    before = page.locator(RUNS).count()

    body = {"teacher_id": teacher["id"], "dataset_id": dataset["id"], "samples": 8, "seq_len": 32}
    run = live_app.api.post("/importance-runs", json={**body, "batch_size": 4, "scans": []}).json()
    assert live_app.wait_job(run["job_id"])["status"] == "succeeded"
    # The table redraws with the run, finished: the form is the one the user typed in.
    row = f"[data-testid=importance-runs] tr[data-run-id='{run['id']}']"
    page.wait_for_function(f"document.querySelector(\"{row}\")?.textContent.includes('succeeded')")
    assert page.locator(RUNS).count() == before + 1
    assert page.get_attribute(IMP, "data-typed-here") == "yes"
    assert page.input_value(f"{IMP} [name=samples]") == "37"
    assert page.input_value(f"{IMP} [name=spill_limit_gb]") == "12.5"
