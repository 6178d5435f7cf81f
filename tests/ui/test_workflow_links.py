"""A workflow's jobs in the dashboard: a child's job page names its workflow (a link to the bake-off
view), and the workflow's own job page opens that view."""

from __future__ import annotations

import pytest

from tests.platform.test_workflows import DEPTH, ready_teacher

pytestmark = pytest.mark.ui


def test_a_child_job_links_its_workflow_and_the_workflow_job_opens_its_view(page, live_app):
    teacher = ready_teacher(live_app)
    r = live_app.api.post(
        "/workflows",
        json={"teacher_id": teacher["id"], "candidates": [{"name": "d", "plan": DEPTH}], "benchmark": None},
    )
    assert r.status_code == 201, r.text
    wf = r.json()
    cut = wf["branches"][0]["steps"][0]["job_id"]
    assert live_app.api.get(f"/jobs/{cut}").json()["parent_id"] == wf["id"]
    page.goto(f"{live_app.url}/#/job/{cut}")
    page.wait_for_selector("[data-testid=job-workflow]")
    assert page.inner_text("[data-testid=job-workflow]") == f"workflow #{wf['id']}"
    page.click("[data-testid=job-workflow]")  # a locator: the header re-renders on live events
    page.wait_for_function(f"location.hash.startsWith('#/bakeoff/{wf['id']}')")
    page.goto(f"{live_app.url}/#/job/{wf['id']}")
    page.wait_for_function(f"location.hash.startsWith('#/bakeoff/{wf['id']}')")
    assert live_app.api.post(f"/workflows/{wf['id']}/cancel").status_code == 202


def test_an_address_no_page_answers_says_so_with_the_way_back(page, live_app):
    """#/nonsense showed the Teachers page as if the address were right (outside UI audit 26)."""
    page.goto(f"{live_app.url}/#/nonsense/3")
    box = page.locator("[data-testid=unknown-page]")
    box.wait_for()
    assert box.inner_text() == "No page at #/nonsense. Go to Teachers & data."
    assert page.locator("[data-testid=teacher-list]").count() == 0
    box.locator("a").click()
    page.wait_for_selector("[data-testid=teacher-list]")
