"""The job forms' live memory lines know the server's limits (GET /config `limits`, backend/limits.py): a
batch size or seq_len typed over one is said to be over this server's limit, by its variable, instead of
a fit computed (and a smaller setting suggested) for a job the API refuses (outside UI audit 11); so are a
job's tokens over PRUNESCOPE_MAX_JOB_TOKENS. The app here runs with PRUNESCOPE_MAX_BATCH_SIZE=16 and
PRUNESCOPE_MAX_JOB_TOKENS=10^6; seq_len keeps the default limit (131072)."""

from __future__ import annotations

import pytest

from tests.conftest import start_live_app, stop_live_app
from tests.platform.helpers import make_student

pytestmark = pytest.mark.ui

BATCH_LIMIT = 16
TOKENS_LIMIT = 10**6
OVER_BATCH = f"batch_size 64 is over this server's limit of {BATCH_LIMIT} (PRUNESCOPE_MAX_BATCH_SIZE)"
OVER_SEQ = "seq_len 200000 is over this server's limit of 131072 (PRUNESCOPE_MAX_SEQ_LEN)"


@pytest.fixture(scope="module")
def small_batch_app(tmp_path_factory, redis_url):
    """API + worker with a batch-size limit of 16 and 10^6 tokens per job (the shared app keeps the defaults)."""
    app = start_live_app(
        tmp_path_factory.mktemp("limits-ui"),
        redis_url,
        PRUNESCOPE_MAX_BATCH_SIZE=str(BATCH_LIMIT),
        PRUNESCOPE_MAX_JOB_TOKENS=str(TOKENS_LIMIT),
    )
    yield app
    stop_live_app(app)


def wait_text(page, selector: str, text: str) -> None:
    page.wait_for_function(
        "([s, t]) => document.querySelector(s)?.textContent.includes(t)", arg=[selector, text]
    )


def assert_over(page, line: str, form: str, want: str) -> None:
    """`line` says `want` alone (no need, no fit, no suggestion) and is marked as a refusal."""
    page.fill(f"{form} input[name=batch_size]", "64")
    wait_text(page, line, want)
    text = page.inner_text(line)
    assert "needs" not in text and "would fit" not in text, text
    assert "error-msg" in (page.get_attribute(line, "class") or "")


def test_a_batch_over_the_limit_is_said_in_every_memory_line(page, small_batch_app):
    app = small_batch_app
    student = make_student(app)
    teacher_id = student["teacher_id"]

    # Distillation form: the limit replaces the estimate; at the limit the estimate is back.
    form = "[data-testid=distill-form]"
    line = f"{form} [data-testid=memory-estimate]"
    page.goto(f"{app.url}/#/runs?student={student['id']}")
    wait_text(page, line, "needs")
    assert_over(page, line, form, OVER_BATCH)
    page.fill(f"{form} input[name=batch_size]", str(BATCH_LIMIT))
    wait_text(page, line, "needs")
    page.fill(f"{form} input[name=seq_len]", "200000")
    wait_text(page, line, OVER_SEQ)
    # The API says the same of that batch (the line's words are its 422's).
    r = app.api.post(
        "/jobs?validate_only=true",
        json={"kind": "distill", "student_id": student["id"], "params": {"batch_size": 64}},
    )
    assert r.status_code == 422 and OVER_BATCH.removeprefix("batch_size ") in r.text, r.text

    # Importance form on the teachers page.
    form = "[data-testid=importance-form]"
    line = f"{form} [data-testid=memory-estimate]"
    page.goto(f"{app.url}/#/?teacher={teacher_id}")
    wait_text(page, line, "needs")
    assert_over(page, line, form, OVER_BATCH)

    # The depth-vs-width study's line (its distillation settings fold away).
    page.goto(f"{app.url}/#/compare?teacher={teacher_id}")
    wizard = "[data-testid=wizard]"
    line = f"{wizard} [data-testid=study-memory]"
    wait_text(page, line, "needs")
    page.click(f"{wizard} details > summary")
    assert_over(page, line, wizard, OVER_BATCH)


def refusal(app, kind: str, **ids_and_params) -> str:
    """The API's 422 message for a job it would refuse (validate_only: nothing is queued)."""
    r = app.api.post("/jobs?validate_only=true", json={"kind": kind, **ids_and_params})
    assert r.status_code == 422, r.text
    return r.json()["detail"][0]["msg"]


def test_a_job_over_the_tokens_limit_is_said_as_the_api_says_it(page, small_batch_app):
    app = small_batch_app
    student = make_student(app)
    form = "[data-testid=distill-form]"
    line = f"{form} [data-testid=memory-estimate]"
    page.goto(f"{app.url}/#/runs?student={student['id']}")
    wait_text(page, line, "needs")

    # 1000 steps x 8 x 128 = 1.02e6 tokens: the line is the API's 422, word for word, and a refusal.
    page.fill(f"{form} input[name=budget]", "1000")
    api_says = refusal(
        app, "distill", student_id=student["id"], params={"steps": 1000, "batch_size": 8, "seq_len": 128}
    )
    assert "steps can be at most 976" in api_says, api_says
    wait_text(page, line, api_says)
    assert "needs" not in page.inner_text(line)
    assert "error-msg" in (page.get_attribute(line, "class") or "")

    # A budget in tokens is the one factor.
    page.select_option(f"{form} select[name=budget_kind]", "tokens")
    page.fill(f"{form} input[name=budget]", "2000000")
    api_says = refusal(app, "distill", student_id=student["id"], params={"tokens": 2_000_000})
    wait_text(page, line, api_says)
    assert api_says.startswith("tokens 2000000 = 2e+06 tokens"), api_says
    page.fill(f"{form} input[name=budget]", str(TOKENS_LIMIT))  # at the limit: the estimate is back
    wait_text(page, line, "needs")

    # The importance form counts samples x seq_len.
    form = "[data-testid=importance-form]"
    line = f"{form} [data-testid=memory-estimate]"
    page.goto(f"{app.url}/#/?teacher={student['teacher_id']}")
    wait_text(page, line, "needs")
    page.fill(f"{form} input[name=samples]", "4096")
    page.fill(f"{form} input[name=seq_len]", "512")
    wait_text(page, line, "samples 4096 x seq_len 512 = 2.1e+06 tokens is over this server's limit of 1e+06")
    assert "samples can be at most 1953" in page.inner_text(line)
