"""Audit 11: the distillation settings warn, live, when validate-every is more than the run's steps (its
curve would get only its start and end); the steps of a token budget are the worker's
(worker/distill_ranks.total_steps, held equal in node). Real Chromium on the study wizard's settings (the
distill form's own fields, runs.distillFields)."""

from __future__ import annotations

import json

import pytest

from tests.ui.conftest import shot
from tests.ui.dashboard_js import run_dashboard_js
from worker.distill_ranks import total_steps

pytestmark = pytest.mark.ui
WIZARD = "[data-testid=wizard]"
NOTE = f"{WIZARD} [data-testid=val-every-warning]"


def test_total_steps_are_the_workers(tmp_path):
    cases = [
        {"steps": 7, "batch_size": 2, "seq_len": 32},
        {"tokens": 1000, "batch_size": 2, "seq_len": 32},
        {"tokens": 64, "batch_size": 2, "seq_len": 32},
        {"tokens": 1, "batch_size": 8, "seq_len": 128},
    ]
    driver = f"""
    import {{ totalSteps }} from "./js/distillmath.js";
    console.log(JSON.stringify({json.dumps(cases)}.map(totalSteps)));
    """
    assert run_dashboard_js(tmp_path, driver) == [total_steps(c) for c in cases] == [7, 16, 1, 1]


def test_validate_every_above_the_steps_is_warned_while_typing(page, live_app, shared_run):
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"{live_app.url}/#/compare?teacher={shared_run['teacher']['id']}")
    page.wait_for_selector(f"{WIZARD} [name=val_every]", state="attached")
    page.evaluate(f"document.querySelector('{WIZARD} details').open = true")
    page.select_option(f"{WIZARD} [name=budget_kind]", "steps")
    page.fill(f"{WIZARD} [name=budget]", "40")
    page.fill(f"{WIZARD} [name=val_every]", "10")
    assert page.inner_text(NOTE) == ""
    page.fill(f"{WIZARD} [name=val_every]", "50")  # typed: no submit, no blur
    assert "more than the run's 40 steps" in page.inner_text(NOTE) and "step 0" in page.inner_text(NOTE)
    page.locator(NOTE).scroll_into_view_if_needed()
    shot(page, "distill-val-every-warning")
    # A token budget counts its steps as the worker does: ceil(1000 / (2 x 32)) = 16.
    page.select_option(f"{WIZARD} [name=budget_kind]", "tokens")
    page.fill(f"{WIZARD} [name=budget]", "1000")
    page.fill(f"{WIZARD} [name=batch_size]", "2")
    page.fill(f"{WIZARD} [name=seq_len]", "32")
    page.fill(f"{WIZARD} [name=val_every]", "20")
    assert "the run's 16 steps" in page.inner_text(NOTE)
    page.fill(f"{WIZARD} [name=val_every]", "16")
    assert page.inner_text(NOTE) == ""
