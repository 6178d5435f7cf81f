"""Audit 12: a refused form says each problem once, in words, under the input it names (the API's 422
`detail[].loc`), never again as "body.targets.hidden_size: ..." in the form's box: the planner's fill, the
teacher registration and the search form (whose three budget inputs are one list in the request). Real
Chromium against the live API; plus the shared helper's words for a path no input shows (node)."""

from __future__ import annotations

import pytest

from tests.ui.conftest import shot
from tests.ui.dashboard_js import run_dashboard_js

pytestmark = pytest.mark.ui


def only_note(page, form: str, field: str) -> str:
    """The one field note of `form`, under `field`, while the form's own box says nothing."""
    note = page.locator(f"{form} .field-error[data-field={field}]")
    note.wait_for()
    assert page.locator(f"{form} .field-error").count() == 1
    assert page.locator(f"{form} .invalid").count() == 1
    assert "invalid" in page.get_attribute(f"{form} [name={field}]", "class")
    boxes = page.locator(f"{form} .error-msg").all_inner_texts()
    assert all(not text.strip() for text in boxes), boxes  # not said a second time
    return note.inner_text()


def test_planner_fill_error_is_said_once_at_its_field(page, live_app, shared_run):
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"{live_app.url}/#/explore/{shared_run['run_id']}")
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    form = "[data-testid=fill-form]"
    page.fill(f"{form} [name=heads_per_layer]", "3")
    page.click("[data-testid=fill]")
    text = only_note(page, form, "heads_per_layer")
    assert "multiple of the 4 KV groups" in text
    assert text.count("nearby valid") == 1, text  # the message names them: no second line of them
    assert "targets." not in page.inner_text("[data-testid=planner]")
    page.locator(f"{form} [name=heads_per_layer]").scroll_into_view_if_needed()
    shot(page, "planner-fill-error-once")

    # Saving under a name the teacher's plans already have: the 409 is said under the name field.
    body = {"teacher_id": shared_run["teacher"]["id"], "name": "taken-by-audit-12", "plan": {}}
    assert live_app.api.post("/plans", json=body).status_code == 201
    page.fill("[data-testid=plan-name]", "taken-by-audit-12")
    page.click("[data-testid=save-plan]")
    assert "already has a plan named" in only_note(page, "[data-testid=plan-actions]", "name")


def test_register_error_is_said_once_at_its_field(page, live_app):
    form = "[data-testid=teacher-form]"
    page.goto(f"{live_app.url}/#/")
    page.wait_for_selector(form)
    page.fill(f"{form} [name=name]", "ghost")
    page.fill(f"{form} [name=source]", "/definitely/not/here")
    page.click(f"{form} button[type=submit]")
    text = only_note(page, form, "source")
    assert "body." not in text and "source:" not in text


def test_search_budget_error_marks_the_budget_it_names(page, live_app, shared_run):
    form = "[data-testid=search-form]"
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"{live_app.url}/#/search?run={shared_run['run_id']}")
    page.wait_for_selector(form)
    searches_before = live_app.api.get("/searches").json()
    page.fill(f"{form} [name=budget_params]", "")
    page.fill(f"{form} [name=budget_latency]", "fast")
    page.click(f"{form} button[type=submit]")
    text = only_note(page, form, "budget_latency")
    assert "latency=fast" in text and "settings" not in text
    assert live_app.api.get("/searches").json() == searches_before  # nothing started
    shot(page, "search-budget-error")
    # No budget at all: the 422 names the list; the parameters budget is marked.
    page.fill(f"{form} [name=budget_latency]", "")
    page.click(f"{form} button[type=submit]")
    assert "at least 1" in only_note(page, form, "budget_params")


def test_a_path_no_input_shows_is_said_in_words(tmp_path):
    driver = """
    import { ApiError, fieldWords, problems } from "./js/api.js";
    const err = new ApiError(422, [{ loc: ["body", "plan", "targets", "hidden_size"], msg: "Value error, 5 is odd", nearby: [8] }]);
    console.log(JSON.stringify({ message: err.message, words: fieldWords(["eval_protocol", "max_documents"]),
      problems: problems(err), plain: problems(new Error("down")), local: problems({ fields: { tokens: "a count" } }) }));
    """
    out = run_dashboard_js(tmp_path, driver)
    assert out["message"] == "Plan › targets › hidden size: 5 is odd"
    assert out["words"] == "Eval protocol › max documents"
    assert out["problems"] == [{"path": ["plan", "targets", "hidden_size"], "msg": "5 is odd", "nearby": [8]}]
    assert out["plain"] == [{"path": [], "msg": "down", "nearby": []}]
    assert out["local"] == [{"path": ["tokens"], "msg": "a count", "nearby": []}]
