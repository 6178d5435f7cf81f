"""Field errors in the dashboard come from the structured error body ({detail: [{loc, msg, type, nearby}]},
backend/api/errors.py), not from parsing sentences: each shows under the input its `loc` names, with the
nearby valid values below it (real Chromium, live API)."""

from __future__ import annotations

import pytest

from tests.ui.conftest import shot

pytestmark = pytest.mark.ui
FORM = "[data-testid=teacher-form]"


def test_field_errors_show_under_their_field_with_nearby_values(page, live_app):
    teachers_before = live_app.api.get("/teachers").json()  # the app is shared with other modules
    page.goto(f"{live_app.url}/#/")
    page.wait_for_selector(FORM)

    # trust_remote_code is off on this server: a 403 whose entry names body.trust_remote_code, nearby [false].
    page.fill(f"{FORM} [name=name]", "remote")
    page.fill(f"{FORM} [name=source]", "org/model")
    page.check(f"{FORM} [name=trust_remote_code]")
    page.click(f"{FORM} button[type=submit]")
    note = page.locator(f"{FORM} .field-error[data-field=trust_remote_code]")
    note.wait_for()
    assert "disabled on this server" in note.inner_text()
    assert note.locator(".field-nearby").inner_text() == "nearby valid: false"
    # Right under that input (nothing in between), and no other input is marked.
    box, below = page.locator(f"{FORM} [name=trust_remote_code]").bounding_box(), note.bounding_box()
    assert 0 <= below["y"] - (box["y"] + box["height"]) < 24 and abs(below["x"] - box["x"]) < 12, (box, below)
    assert page.locator(f"{FORM} .invalid").count() == 1
    shot(page, "field-error-nearby")

    # Fixed, then another field at fault: the old note goes, the new one is under `source`.
    page.uncheck(f"{FORM} [name=trust_remote_code]")
    page.fill(f"{FORM} [name=source]", "/definitely/not/here")
    page.click(f"{FORM} button[type=submit]")
    page.locator(f"{FORM} .field-error[data-field=source]").wait_for()
    assert page.locator(f"{FORM} .field-error").count() == 1
    assert page.locator(f"{FORM} .field-error .field-nearby").count() == 0  # nothing to suggest
    assert live_app.api.get("/teachers").json() == teachers_before  # nothing registered
