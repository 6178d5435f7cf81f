"""Audit 7: the depth-vs-width study form starts from the teacher the user is looking at (its page on
Teachers & data, its importance run in the explorer), not from the newest teacher. Real Chromium, live API:
two ready teachers, the shared one older."""

from __future__ import annotations

import pytest

from tests.ui.conftest import shot

pytestmark = pytest.mark.ui
TEACHER = "[data-testid=wizard] select[name=teacher_id]"


def study_teacher(page) -> int:
    page.click("[data-nav=compare]")
    page.wait_for_selector(f"{TEACHER} option", state="attached")
    return int(page.input_value(TEACHER))


def test_study_form_defaults_to_the_teacher_looked_at(page, live_app, shared_run):
    api, older = live_app.api, shared_run["teacher"]
    newer = api.post("/teachers", json={"name": "newer", "source": str(live_app.teacher_dir)}).json()
    assert live_app.wait_job(newer["job_id"])["status"] == "succeeded"
    ready = [t["id"] for t in api.get("/teachers").json() if t["status"] == "ready"]
    assert ready.index(newer["id"]) < ready.index(older["id"])  # listed first: the old default

    # Looking at the older teacher's page, then Compare: the study starts from it.
    page.goto(f"{live_app.url}/#/?teacher={older['id']}")
    page.wait_for_selector(f"[data-testid=teacher-list] tr.selected[data-teacher-id='{older['id']}']")
    assert study_teacher(page) == older["id"]
    page.set_viewport_size({"width": 1440, "height": 900})
    shot(page, "study-teacher-default")

    # Another teacher picked on Teachers & data: the study follows.
    page.click("[data-nav=teachers]")
    page.click(f"[data-testid=teacher-list] tr[data-teacher-id='{newer['id']}']")
    page.wait_for_selector(f"[data-testid=teacher-list] tr.selected[data-teacher-id='{newer['id']}']")
    assert study_teacher(page) == newer["id"]

    # Exploring an importance run of the older one: back to it.
    page.goto(f"{live_app.url}/#/explore/{shared_run['run_id']}")
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    assert study_teacher(page) == older["id"]
