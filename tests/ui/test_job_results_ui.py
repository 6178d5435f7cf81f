"""Job statuses and results in a real Chromium against the live app (API + real worker): a cancelled
job reads as stopped, not as an error; evaluate and benchmark results are cards with units, numbers
equal to the stored result. The tests share one student (made once, module scope)."""

from __future__ import annotations

import pytest

from tests.platform.helpers import make_student

pytestmark = pytest.mark.ui


@pytest.fixture(scope="module")
def student(live_app):
    return make_student(live_app)


def badge_colour(page, selector: str) -> str:
    return page.eval_on_selector(selector, "el => getComputedStyle(el).color")


def failed_badge_colour(page) -> str:
    """The colour the dashboard gives a failed status, from its own badge widget."""
    return page.evaluate(
        """async () => {
          const { statusBadge } = await import(new URL("js/components/widgets.js", document.baseURI));
          const el = document.body.appendChild(statusBadge("failed"));
          const colour = getComputedStyle(el).color;
          el.remove();
          return colour;
        }"""
    )


def test_a_cancelled_job_is_neutral_not_error_red(page, live_app, student):
    live_app.worker.pause()  # hold the job in the queue so the cancel finds it queued
    try:
        body = {"kind": "benchmark", "student_id": student["id"], "params": {"repeats": 1, "seq_len": 8}}
        job = live_app.api.post("/jobs", json=body).json()
        assert live_app.api.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    finally:
        live_app.worker.pause(False)

    page.goto(f"{live_app.url}/#/job/{job['id']}")
    badge = "h1 ~ .badge[data-status=cancelled]"
    page.wait_for_selector(badge)
    failed = failed_badge_colour(page)
    err = page.evaluate("getComputedStyle(document.body).getPropertyValue('--err').trim()")
    assert failed == "rgb(255, 107, 107)" == _rgb(err)  # the probe itself sees the error red
    assert badge_colour(page, badge) != failed
    # The reason under the progress bar is a neutral note, not the red error box.
    reason = page.locator("[data-testid=job-error]")
    assert reason.inner_text() == "Stopped: cancelled by the user"
    assert "error-msg" not in reason.get_attribute("class")
    assert page.eval_on_selector("[data-testid=job-error]", "el => getComputedStyle(el).color") != failed

    page.goto(f"{live_app.url}/#/runs")
    row = f"tr[data-job-id='{job['id']}']"
    page.wait_for_selector(f"{row} .badge[data-status=cancelled]")
    assert badge_colour(page, f"{row} .badge") != failed
    assert page.eval_on_selector(f"{row} .field-note", "el => getComputedStyle(el).color") != failed
    assert page.locator(f"{row} .field-error").count() == 0


def _rgb(hex_colour: str) -> str:
    h = hex_colour.lstrip("#")
    return f"rgb({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)})"
