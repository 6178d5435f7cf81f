"""Audit 14: at 1440 x 900 the planner's Save / Preview / Create student sat below the fold of the plan
panel's own scroll box. They are a footer stuck to the panel's foot: in sight (and clickable, nothing over
them) whether the panel is scrolled to its top or its bottom. Real Chromium, live API."""

from __future__ import annotations

import pytest

from tests.ui.conftest import ARTIFACTS

pytestmark = pytest.mark.ui
ACTIONS = ["save-plan", "preview-btn", "create-student"]


def actions_in_sight(page) -> dict[str, bool]:
    """Each action: inside the window and the planner's visible box, and the element at its centre."""
    return page.evaluate(
        """(ids) => {
          const panel = document.querySelector('[data-testid=planner]').getBoundingClientRect();
          return Object.fromEntries(ids.map((id) => {
            const el = document.querySelector(`[data-testid=${id}]`);
            const r = el.getBoundingClientRect();
            const x = r.left + r.width / 2, y = r.top + r.height / 2;
            const inside = r.top >= panel.top && r.bottom <= panel.bottom && r.bottom <= innerHeight && r.height > 0;
            return [id, inside && el.contains(document.elementFromPoint(x, y))];
          }));
        }""",
        ACTIONS,
    )


def test_plan_actions_stay_in_sight_at_1440x900(page, live_app, shared_run):
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"{live_app.url}/#/explore/{shared_run['run_id']}")
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    planner = page.locator("[data-testid=planner]")
    # The panel does scroll at this size (else there would be nothing to prove).
    assert page.evaluate("(el) => el.scrollHeight > el.clientHeight + 100", planner.element_handle())
    assert actions_in_sight(page) == dict.fromkeys(ACTIONS, True)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "plan-actions-top.png"))
    page.evaluate("(el) => { el.scrollTop = el.scrollHeight; }", planner.element_handle())
    assert actions_in_sight(page) == dict.fromkeys(ACTIONS, True)
    page.screenshot(path=str(ARTIFACTS / "plan-actions-bottom.png"))
    # Nothing of the panel is hidden for good under the footer: its last line is above it at the bottom.
    hint_bottom = page.locator("[data-testid=planner] .hint:has(kbd)").bounding_box()
    footer = page.locator("[data-testid=plan-actions]").bounding_box()
    assert hint_bottom["y"] + hint_bottom["height"] <= footer["y"] + 1
