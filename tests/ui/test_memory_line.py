"""The live memory estimate under the job forms (real Chromium, live API + Celery worker): it follows the
batch size as the user types, equals the Python planner's number, names the live worker it fits (the
worker's registry entry carries its memory), and turns into a refusal with the nearest fitting setting
when nothing fits."""

from __future__ import annotations

import pytest

from tests.platform.helpers import make_student
from worker.engine import memplan

pytestmark = pytest.mark.ui

LINE = "[data-testid=distill-form] [data-testid=memory-estimate]"


def expected_need(student: dict, teacher: dict, batch: int, seq: int, **kw) -> str:
    need = memplan.distill_memory(
        memplan.spec_from_summary(student["spec"]),
        memplan.spec_from_summary(teacher["spec"]),
        batch_size=batch,
        seq_len=seq,
        device="cpu",
        **kw,
    )["total"]
    return f"needs {memplan.format_bytes(need)} per device"


def test_estimate_follows_the_batch_size(page, live_app):
    student = make_student(live_app)
    teacher = live_app.api.get(f"/teachers/{student['teacher_id']}").json()
    page.goto(f"{live_app.url}/#/runs?student={student['id']}")
    line = page.locator(LINE)
    page.wait_for_function(f"document.querySelector('{LINE}')?.textContent.includes('fits 1 x cpu')")
    assert expected_need(student, teacher, 8, 128) in line.inner_text()

    page.fill("[data-testid=distill-form] input[name=batch_size]", "64")
    want = expected_need(student, teacher, 64, 128)
    page.wait_for_function(f"document.querySelector('{LINE}').textContent.includes({want!r})")
    page.check("[data-testid=distill-form] input[name=gradient_checkpointing]")
    want_ckpt = expected_need(student, teacher, 64, 128, gradient_checkpointing=True)
    page.wait_for_function(f"document.querySelector('{LINE}').textContent.includes({want_ckpt!r})")

    # Far beyond the worker's free memory: refused in the form, with the nearest setting that fits.
    page.fill("[data-testid=distill-form] input[name=seq_len]", "131072")
    page.fill("[data-testid=distill-form] input[name=batch_size]", "4096")
    page.wait_for_function(f"document.querySelector('{LINE}').textContent.includes('fits no live worker')")
    assert "error-msg" in (line.get_attribute("class") or "")
    assert "fits no live worker (largest " in line.inner_text()

    # The importance form of the teacher has its own line.
    page.goto(f"{live_app.url}/#/teachers?teacher={teacher['id']}")
    imp = "[data-testid=importance-form] [data-testid=memory-estimate]"
    page.wait_for_function(f"document.querySelector('{imp}')?.textContent.includes('needs')")
    before = page.locator(imp).inner_text()
    page.fill("[data-testid=importance-form] input[name=batch_size]", "512")
    page.wait_for_function(f"document.querySelector('{imp}').textContent !== {before!r}")
