"""The job page re-sends a stuck queued job (POST /jobs/{id}/resend) in a real Chromium: the broker lost
the job's message, the button publishes it again for the same attempt."""

from __future__ import annotations

import time

import pytest

from backend.broker import held_attempts, redis_client
from tests.conftest import start_live_app, stop_live_app

pytestmark = pytest.mark.ui


@pytest.fixture(scope="module")
def idle_app(tmp_path_factory, redis_url):
    """API only: no worker takes the job, so it stays queued."""
    app = start_live_app(tmp_path_factory.mktemp("resend-ui"), redis_url, with_worker=False)
    yield app
    stop_live_app(app)


def test_a_stuck_queued_job_is_re_sent_from_its_page(page, idle_app):
    r = redis_client(idle_app.env["PRUNESCOPE_BROKER_URL"])
    prefix = idle_app.env["PRUNESCOPE_REDIS_PREFIX"]
    job_id = idle_app.api.post("/teachers", json={"name": "t", "source": str(idle_app.teacher_dir)}).json()[
        "job_id"
    ]
    r.delete(prefix + "default")  # the broker lost the message
    assert held_attempts(r, prefix, ["default"]) == set()

    page.goto(f"{idle_app.url}/#/job/{job_id}")
    page.locator("[data-testid=resend]").click()
    deadline = time.monotonic() + 10
    while held_attempts(r, prefix, ["default"]) != {(job_id, 1)}:
        assert time.monotonic() < deadline, "the message was not re-sent"
        time.sleep(0.1)
    # The API publishes, then commits its log line: the message can be seen a moment before the line.
    while not (logs := [e["msg"] for e in idle_app.api.get(f"/jobs/{job_id}/logs").json()]):
        assert time.monotonic() < deadline, "the re-send was not logged"
        time.sleep(0.1)
    assert logs == ["message re-sent by the user"]
    assert idle_app.api.get(f"/jobs/{job_id}").json()["attempts"] == 1

    idle_app.api.post(f"/jobs/{job_id}/cancel")  # only a queued job offers it
    page.reload()
    page.locator("[data-testid=resume]").wait_for()
    assert page.locator("[data-testid=resend]").count() == 0
