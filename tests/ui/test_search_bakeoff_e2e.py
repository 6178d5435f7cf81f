"""End to end (issue 12) in a real Chromium against the live app (API subprocess + real Celery worker):
start a search from the browser's form at a tiny budget, pick the top K=3 candidates on its page, start
their bake-off, and watch it to the end on the bake-off page: one live curve per candidate, every branch's
steps linking to its child jobs, the ranking before and after distillation with each flip marked as the
numbers say; promoting the winner queues its full distillation from the bake-off's weights. Screenshots: test-artifacts/search-e2e.png, test-artifacts/bakeoff.png."""

from __future__ import annotations

import pytest

from tests.ui.conftest import shot
from worker.engine.spec import shape_label

pytestmark = [pytest.mark.ui, pytest.mark.slow, pytest.mark.timeout(900)]


def test_search_then_bakeoff_of_the_top_three(page, live_app, shared_run):
    api = live_app.api
    # The session's tiny teacher (a small evaluation protocol: the bake-off evaluates each candidate before
    # and after distillation) and its importance run (tests/conftest.py `shared_run`, on this app).
    teacher, run_id = shared_run["teacher"], shared_run["run_id"]

    # The Teachers page links the run to a new search; the form starts it.
    page.goto(f"{live_app.url}/#/teachers?teacher={teacher['id']}")
    page.click(f"[data-testid=importance-runs] tr[data-run-id='{run_id}'] [data-testid=search-run]")
    page.wait_for_selector("[data-testid=search-form]")
    form = "[data-testid=search-form]"
    page.fill(f"{form} [name=budget_params]", "80%")
    for name, value in (("mlp_step", "8"), ("hidden_step", "8"), ("max_depth_cut", "50")):
        page.fill(f"{form} [name={name}]", value)
    page.fill(f"{form} [name=eval_samples]", "4")
    page.fill(f"{form} [name=eval_seq_len]", "32")
    page.fill(f"{form} [name=top_k]", "3")
    page.uncheck(f"{form} [name=frontier_only]")  # the tiny teacher's frontier at 80% holds one candidate
    page.click("[data-testid=start-search]")
    page.wait_for_url("**/#/search/*")
    search_id = int(page.url.rsplit("/", 1)[1].split("?")[0])
    job = api.get(f"/jobs/{search_id}").json()
    assert job["kind"] == "search" and job["params"]["settings"]["budgets"] == ["params=80%"]
    assert job["params"]["settings"]["mlp_step"] == 8 and job["params"]["settings"]["max_depth_cut"] == 0.5
    page.wait_for_selector("[data-testid=pareto-plot][data-points]", timeout=300_000)
    top = api.get(f"/searches/{search_id}/candidates").json()["candidates"][:3]
    assert len(top) == 3
    shot(page, "search-e2e")

    page.click("[data-testid=pick-top]")
    assert page.locator("[data-testid=picked] li").count() == 3
    bake = "[data-testid=bakeoff-form]"
    page.fill(f"{bake} [name=tokens]", "128")
    page.fill(f"{bake} [name=batch_size]", "2")
    page.fill(f"{bake} [name=seq_len]", "32")
    page.fill(f"{bake} [name=val_every]", "1")
    page.uncheck(f"{bake} [name=benchmark]")
    page.click("[data-testid=start-bakeoff]")
    page.wait_for_url("**/#/bakeoff/*")
    wf_id = int(page.url.rsplit("/", 1)[1].split("?")[0])
    wf = api.get(f"/workflows/{wf_id}").json()
    # Named by their shape on the server (the search's id kept beside), unique within the bake-off.
    assert [b["candidate_id"] for b in wf["branches"]] == [c["id"] for c in top]
    teacher_spec = api.get(f"/teachers/{teacher['id']}").json()["spec"]
    for b in wf["branches"]:
        plan = api.get(f"/plans/{b['plan_id']}").json()
        assert b["name"].startswith(shape_label(plan["stats"]["spec"], teacher_spec)), b
        student = api.get(f"/students/{b['student_id']}").json()
        assert student["name"] == b["name"]
    assert len({b["name"] for b in wf["branches"]}) == 3
    assert wf["params"]["distill"]["tokens"] == 128 and wf["params"]["benchmark"] is None

    # Curves and a partial ranking stream in while it runs; at the end the whole ranking table.
    page.wait_for_selector("[data-testid=bakeoff-ranking] table[data-partial=false]", timeout=600_000)
    wf = api.get(f"/workflows/{wf_id}").json()
    assert wf["status"] == "succeeded", wf
    page.wait_for_function(
        "document.querySelector('[data-testid=bakeoff-plot-loss]').dataset.traces === '3'", timeout=60_000
    )
    ranking = wf["result"]["ranking"]
    rows = page.locator("[data-testid=bakeoff-ranking] tbody tr")
    assert rows.count() == 3
    # Every column inside its panel: the shape labels wrap (the loss after and the move were cut off).
    page.set_viewport_size({"width": 1440, "height": 900})
    overflow = page.evaluate(
        "() => { const s = document.querySelector('[data-testid=bakeoff-ranking] .table-scroll');"
        " return s.scrollWidth - s.clientWidth; }"
    )
    assert overflow <= 1, overflow
    for i, row in enumerate(ranking):
        tr = rows.nth(i)
        assert tr.get_attribute("data-candidate") == row["name"]
        flipped = row["rank_before"] != row["rank_after"]
        assert tr.get_attribute("data-flipped") == str(flipped).lower()
        assert (tr.locator("[data-testid=flip]").count() == 1) == flipped
    # Each rank_before is the order of the losses before distillation, rank_after of those after.
    by_before = sorted(ranking, key=lambda x: x["before"]["loss"])
    assert [x["rank_before"] for x in by_before] == [1, 2, 3]
    assert [x["rank_after"] for x in ranking] == [1, 2, 3]
    # Every branch's step badges link to its child jobs.
    for branch in wf["branches"]:
        for s in branch["steps"]:
            link = page.locator(f"[data-branch='{branch['name']}'] a[data-step='{s['name']}']")
            assert link.get_attribute("href") == f"#/job/{s['job_id']}"
    shot(page, "bakeoff")

    # Promote the winner: a full distillation of its student from the weights its bake-off run saved.
    result = wf["result"]
    page.fill("[data-testid=bakeoff-ranking] [name=tokens]", "64")
    page.click("[data-testid=promote-winner]")
    page.wait_for_url("**/#/job/*")
    promoted = api.get(f"/jobs/{int(page.url.rsplit('/', 1)[1].split('?')[0])}").json()
    assert promoted["kind"] == "distill" and promoted["student_id"] == result["winner_student_id"]
    assert promoted["params"]["init_distill_job_id"] == result["winner_distill_job_id"]
    assert promoted["params"]["tokens"] == 64 and promoted["params"]["seq_len"] == 32
    assert live_app.wait_job(promoted["id"])["status"] == "succeeded"
