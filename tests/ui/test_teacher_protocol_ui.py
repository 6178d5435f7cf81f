"""A teacher's evaluation protocol changed on its page, in a real Chromium: a bad window is outlined with
its nearby values and changes nothing; a good one is saved (PATCH /teachers/{id}), the page shows it, and
an evaluation measured before keeps its protocol, so the runs table now marks it ≠. Rows are inserted
straight into the shared app's database (no worker) and deleted at the end."""

from __future__ import annotations

import pytest
from sqlalchemy import delete

from backend.db import session_scope
from backend.models import Event, Job, Teacher
from tests.tiny_models import tiny_spec
from worker.engine.eval_protocol import DEFAULT

pytestmark = pytest.mark.ui


@pytest.fixture(scope="module")
def measured(live_app):
    """A ready teacher on the default protocol and a finished evaluation of it on that protocol."""
    url = live_app.env["PRUNESCOPE_DATABASE_URL"]
    with session_scope(url) as s:
        teacher = Teacher(
            name="protocol-t", source="org/protocol-t", status="ready", spec=tiny_spec().summary()
        )
        s.add(teacher)
        s.flush()
        params = {"split": "test", "max_documents": 64, "seq_len": 128, "stride": 64}
        job = Job(
            kind="evaluate",
            status="succeeded",
            params=params,
            queue="default",
            teacher_id=teacher.id,
            result={"perplexity": {"perplexity": 12.5}, "protocol": DEFAULT.record()},
        )
        s.add(job)
        s.flush()
        ids = {"teacher": teacher.id, "job": job.id}
    yield ids
    with session_scope(url) as s:
        s.execute(delete(Event).where(Event.job_id == ids["job"]))
        s.execute(delete(Job).where(Job.id == ids["job"]))
        s.execute(delete(Teacher).where(Teacher.id == ids["teacher"]))


def test_the_protocol_is_changed_on_the_teacher_page_and_past_numbers_are_marked(page, live_app, measured):
    tid, jid = measured["teacher"], measured["job"]
    mismatch = f"[data-testid=runs-table] tr[data-job-id='{jid}'] [data-testid=protocol-mismatch]"
    page.goto(f"{live_app.url}/#/runs")
    page.wait_for_selector(f"[data-testid=runs-table] tr[data-job-id='{jid}']")
    assert page.query_selector(mismatch) is None  # measured on its teacher's protocol

    page.goto(f"{live_app.url}/#/teachers?teacher={tid}")
    note = page.wait_for_selector("[data-testid=teacher-protocol]")
    assert note.get_attribute("data-protocol-id") == DEFAULT.id
    page.click("[data-testid=protocol-edit]")
    form = "[data-testid=protocol-form]"
    page.wait_for_selector(f"{form}:not([hidden])")
    page.fill(f"{form} [name=context]", "64")
    page.fill(f"{form} [name=stride]", "64")
    page.click("[data-testid=protocol-save]")
    # The stride is outlined with the values that would fit; nothing was saved.
    error = page.wait_for_selector(f"{form} .field-error[data-field=stride]")
    assert "stride must be below context" in error.inner_text() and "32" in error.inner_text()
    assert live_app.api.get(f"/teachers/{tid}").json()["eval_protocol"]["id"] == DEFAULT.id

    page.fill(f"{form} [name=stride]", "32")
    page.select_option(f"{form} [name=split]", "validation")
    page.click("[data-testid=protocol-save]")
    page.wait_for_function(
        "document.querySelector('[data-testid=teacher-protocol]')?.dataset.protocolId.includes('ctx 64 / stride 32')"
    )
    saved = live_app.api.get(f"/teachers/{tid}").json()["eval_protocol"]
    assert (saved["split"], saved["context"], saved["stride"], saved["max_documents"]) == (
        "validation",
        64,
        32,
        64,
    )
    # The evaluation measured before keeps its protocol: the runs table marks it as not comparable.
    assert live_app.api.get(f"/jobs/{jid}").json()["protocol"]["id"] == DEFAULT.id
    page.goto(f"{live_app.url}/#/runs")
    mark = page.wait_for_selector(mismatch)
    assert mark.get_attribute("data-protocol-id") == DEFAULT.id
    assert saved["id"] in mark.get_attribute("title")
