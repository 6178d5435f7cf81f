"""The runs table searches and filters on the server (GET /runs) in a real Chromium: a run older than the
newest 500 jobs (550 newer ones inserted straight into the app's database, no worker) is found by its name
and its tag, the filter menus offer the tags of every job, the count is over every match, and the pages
walk back through older runs. The inserted rows are deleted at the end (the app is shared)."""

from __future__ import annotations

import pytest
from sqlalchemy import delete

from backend.db import session_scope
from backend.models import Event, Job

pytestmark = pytest.mark.ui

NEWER = 550


@pytest.fixture(scope="module")
def old_run(live_app):
    url = live_app.env["PRUNESCOPE_DATABASE_URL"]
    with session_scope(url) as s:
        needle = Job(
            kind="benchmark",
            status="succeeded",
            params={},
            queue="default",
            name="needle-old-run",
            tags=["needle-tag"],
        )
        s.add(needle)
        s.flush()
        filler = [Job(kind="evaluate", status="failed", params={}, queue="default") for _ in range(NEWER)]
        s.add_all(filler)
        s.flush()
        ids = [needle.id, *(j.id for j in filler)]
    yield {"id": ids[0], "ids": ids}
    with session_scope(url) as s:
        s.execute(delete(Event).where(Event.job_id.in_(ids)))
        s.execute(delete(Job).where(Job.id.in_(ids)))


def shown(page) -> list[int]:
    return page.eval_on_selector_all(
        "[data-testid=runs-table] tbody tr", "rs => rs.map(r => Number(r.dataset.jobId))"
    )


def settled(page) -> None:
    """The server's page is on screen (not the instant filter of the runs already loaded)."""
    page.wait_for_selector("[data-testid=runs-rows]:not([data-loading])")


def test_a_run_older_than_the_newest_500_is_found_filtered_and_paged(page, live_app, old_run):
    needle = old_run["id"]
    assert needle not in [j["id"] for j in live_app.api.get("/jobs", params={"limit": 500}).json()]
    page.goto(f"{live_app.url}/#/runs")
    page.wait_for_selector("[data-testid=runs-table] tbody tr")
    settled(page)
    first = shown(page)
    assert len(first) == 100 and needle not in first and first == sorted(first, reverse=True)
    total = live_app.api.get("/runs", params={"limit": 1}).json()["total"]
    assert total >= NEWER + 1
    assert page.inner_text("[data-testid=runs-count]").startswith(f"1–100 of {total} runs")

    # Search by name: the server finds it although the page never loaded it.
    page.fill("[data-testid=runs-search]", "needle-old")
    page.wait_for_selector(f"[data-testid=runs-table] tr[data-job-id='{needle}']")
    settled(page)
    assert shown(page) == [needle]
    assert page.inner_text("[data-testid=runs-count]").startswith("1–1 of 1 matching runs")
    page.fill("[data-testid=runs-search]", "")
    settled(page)

    # Its tag is in the menu (the values of every job) and filters it.
    options = page.eval_on_selector_all("[data-testid=runs-tag] option", "os => os.map(o => o.value)")
    assert "needle-tag" in options
    page.select_option("[data-testid=runs-tag]", "needle-tag")
    page.wait_for_selector(f"[data-testid=runs-table] tr[data-job-id='{needle}']")
    settled(page)
    assert shown(page) == [needle]
    page.select_option("[data-testid=runs-tag]", "")

    # Kind and status over every job, a page at a time: the next page holds the next older 100.
    page.select_option("[data-testid=runs-kind]", "evaluate")
    page.select_option("[data-testid=runs-status]", "failed")
    settled(page)
    failed = live_app.api.get("/runs", params={"kind": "evaluate", "status": "failed", "limit": 1}).json()
    assert failed["total"] >= NEWER
    assert page.inner_text("[data-testid=runs-count]").startswith(f"1–100 of {failed['total']} matching")
    top = shown(page)
    page.click("[data-testid=runs-next]")
    page.wait_for_function(
        "document.querySelector('[data-testid=runs-count]').textContent.startsWith('101–200')"
    )
    settled(page)
    older = shown(page)
    assert len(older) == 100 and max(older) < min(top)
    expected = live_app.api.get(
        "/runs", params={"kind": "evaluate", "status": "failed", "offset": 100}
    ).json()
    assert older == [j["id"] for j in expected["runs"]]
    page.click("[data-testid=runs-prev]")
    page.wait_for_function(
        "document.querySelector('[data-testid=runs-count]').textContent.startsWith('1–100')"
    )
    settled(page)
    assert shown(page) == top
