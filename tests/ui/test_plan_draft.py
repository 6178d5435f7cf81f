"""Audit 15: the unsaved edits of an opened saved plan survive leaving the page and reloading (kept in this
browser, plandraft.js), marked "unsaved changes" with a revert to the saved plan; saving or reverting drops
them (real Chromium, live API, the shared tiny teacher's importance run)."""

from __future__ import annotations

import pytest

from tests.ui.conftest import shot

pytestmark = pytest.mark.ui
UNSAVED = "[data-testid=unsaved]"


def params(page) -> int:
    return int(page.get_attribute("[data-testid=params-total]", "data-value"))


def open_plan(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")


def test_saved_plan_edits_survive_navigation_and_reload_and_can_be_reverted(page, live_app, shared_run):
    api, run_id, teacher = live_app.api, shared_run["run_id"], shared_run["teacher"]
    body = {
        "teacher_id": teacher["id"],
        "importance_run_id": run_id,
        "name": "draft-audit",
        "plan": {"drop_layers": [1]},
    }
    saved = api.post("/plans", json=body).json()
    url = f"{live_app.url}/#/explore/{run_id}?plan={saved['id']}"
    open_plan(page, url)
    assert params(page) == saved["stats"]["params_total"]
    assert page.locator(UNSAVED).is_hidden()

    # Edit it: fill the MLP to a target (the plan's targets and marks change).
    page.fill("[data-testid=fill-form] [name=intermediate_size]", "32")
    page.click("[data-testid=fill]")
    page.locator(UNSAVED).wait_for()
    edited = params(page)
    assert edited != saved["stats"]["params_total"]
    assert "draft-audit" in page.inner_text(UNSAVED) and "v1" in page.inner_text(UNSAVED)

    # Away to another page and back: the edits are there, still marked unsaved.
    page.click("[data-nav=runs]")
    page.wait_for_function("location.hash.startsWith('#/runs')")
    page.go_back()
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    assert params(page) == edited
    assert page.locator(UNSAVED).is_visible()
    # And a reload.
    open_plan(page, url)
    page.reload()
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    assert params(page) == edited
    page.locator(UNSAVED).wait_for()
    page.set_viewport_size({"width": 1440, "height": 900})
    shot(page, "plan-unsaved-changes")
    assert api.get(f"/plans/{saved['id']}").json()["version"] == 1  # nothing saved behind the user's back

    # Revert: the saved plan again, the note and the kept draft gone (a reload shows the saved plan).
    page.click("[data-testid=revert-plan]")
    page.wait_for_function(
        f"document.querySelector('[data-testid=params-total]').dataset.value == '{saved['stats']['params_total']}'"
    )
    assert page.locator(UNSAVED).is_hidden()
    assert page.evaluate(f"localStorage.getItem('prunescope.draft.plan{saved['id']}')") is None
    page.reload()
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    assert params(page) == saved["stats"]["params_total"]

    # Edited again and saved: version 2 holds the edits, nothing is marked unsaved after a reload.
    page.fill("[data-testid=fill-form] [name=intermediate_size]", "32")
    page.click("[data-testid=fill]")
    page.locator(UNSAVED).wait_for()
    page.click("[data-testid=save-plan]")
    page.wait_for_function(f"document.querySelector('{UNSAVED}').hidden")
    assert api.get(f"/plans/{saved['id']}").json()["stats"]["params_total"] == edited
    page.reload()
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    assert params(page) == edited and page.locator(UNSAVED).is_hidden()
