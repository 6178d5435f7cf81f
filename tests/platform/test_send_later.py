"""worker.tasks.send_later: a run-job message for later carries `not_before` instead of a Celery countdown
(a worker holding a countdown message raises its prefetch and could hold one more message it cannot start:
a gang's member message once sat in its own leader's socket until the gang timed out). A worker that takes
it early waits at most LATER_POLL_S, then sends it back unchanged."""

from __future__ import annotations

import time

import pytest


@pytest.fixture
def sent(monkeypatch) -> list[dict]:
    from worker import tasks

    published: list[dict] = []
    monkeypatch.setattr(tasks.run_job, "apply_async", lambda **message: published.append(message))
    return published


def test_send_later_publishes_no_countdown(sent):
    from worker.tasks import send_later

    began = time.time()
    send_later([7, 1, 0, 2, 3], "cpu", after_s=6.0)
    (message,) = sent
    assert message["args"] == [7, 1, 0, 2, 3] and message["queue"] == "cpu"
    assert "countdown" not in message and "eta" not in message
    assert began + 6.0 <= message["kwargs"]["not_before"] <= time.time() + 6.0


def test_a_message_taken_early_waits_a_little_then_goes_back(sent):
    from worker.tasks import LATER_POLL_S, _too_early

    assert _too_early([7, 1], time.time() - 1) is False and sent == []  # due: runs at once
    began = time.monotonic()
    assert _too_early([7, 1], time.time() + 0.3) is False  # due within the wait: runs after it
    assert 0.25 <= time.monotonic() - began < LATER_POLL_S and sent == []
    due = time.time() + 30
    began = time.monotonic()
    assert _too_early([7, 1, 0, 2, 3], due) is True  # still early after the wait: sent back unchanged
    assert LATER_POLL_S - 0.05 <= time.monotonic() - began < LATER_POLL_S + 1
    (message,) = sent
    assert message["args"] == [7, 1, 0, 2, 3] and message["kwargs"] == {"not_before": due}


def test_no_code_sends_a_countdown_or_eta_message():
    """Every delayed run-job message goes through send_later (see the module doc for why)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    found = [
        f"{path.relative_to(root)}:{n}"
        for folder in ("backend", "worker")
        for path in sorted((root / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\b(countdown|eta)=[^=]", line)  # a keyword argument (ruff writes no spaces)
    ]
    assert found == [], found
