""" "Use as teacher" in the Runs view (real Chromium, live API + Celery worker): a ready student becomes
a teacher, the page moves to it on the Teachers page, and its card names the student it came from."""

from __future__ import annotations

import pytest

from tests.platform.helpers import make_student
from tests.ui.conftest import shot

pytestmark = pytest.mark.ui


def test_use_as_teacher_opens_the_new_teacher_with_its_lineage(page, live_app):
    student = make_student(live_app)
    page.goto(f"{live_app.url}/#/runs?student={student['id']}")
    # Its jobs (the cut that made it) under named columns.
    heads = page.locator("[data-testid=student-jobs] thead th")
    heads.first.wait_for()
    assert heads.all_text_contents() == ["job", "kind", "model", "status", "progress", "created"]
    assert page.locator("[data-testid=student-jobs] tbody tr").count() >= 1
    page.click("[data-testid=student-detail] [data-testid=promote]")
    page.wait_for_url("**/#/teachers?teacher=*")
    teacher_id = int(page.url.rsplit("=", 1)[1])
    teacher = live_app.api.get(f"/teachers/{teacher_id}").json()
    assert teacher["parent_student_id"] == student["id"] and teacher["parent_distill_job_id"] is None
    assert (
        page.locator("[data-testid=lineage]").inner_text()
        == f"from student #{student['id']} (pruned weights)"
    )
    assert page.locator(f"tr.selected[data-teacher-id='{teacher_id}']").count() == 1
    # The inspect job finishes: the card shows the architecture, the lineage stays.
    page.wait_for_selector("[data-testid=arch-summary] dl.kv", timeout=120_000)
    assert "from student" in page.locator("[data-testid=arch-summary] [data-testid=lineage]").inner_text()
    # The teacher's long artifact path wraps inside the list instead of pushing the table out of it.
    fits = page.evaluate(
        "(() => { const list = document.querySelector('[data-testid=teacher-list]');"
        " return [list.querySelector('table').getBoundingClientRect().width, list.getBoundingClientRect().width]; })()"
    )
    assert fits[0] <= fits[1] + 0.5, fits
    shot(page, "promote-teacher")
