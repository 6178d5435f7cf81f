"""The search and bake-off pages say what the numbers are, in a real Chromium against the live app (outside
UI audit, defects 1-3): the Pareto chart shades the budget's tolerance up to the limit the engine applied
(winners past the bare budget are inside it); candidates of one size that drop different layers read
apart in the table, the best-candidate card and the bake-off picker; a bake-off started from a search
keeps each candidate's search rank, and its page shows it beside the as-cut rank, saying which order the
flips compare and whether the search's differed. Screenshots: test-artifacts/search-tolerance.png,
test-artifacts/bakeoff-search-rank.png."""

from __future__ import annotations

import json

import pytest

from tests.ui.conftest import shot
from worker.engine.search.settings import SearchSettings

pytestmark = pytest.mark.ui


SIZES = ("num_layers", "num_heads", "num_kv_heads", "intermediate_size", "hidden_size")


def shape(c: dict) -> tuple:
    """A candidate's sizes (what archLine said before it named the layers dropped)."""
    return tuple(c["axes"].get(k) for k in SIZES)


def open_search(page, live_app, search):
    page.goto(f"{live_app.url}/#/search/{search['job']['id']}")
    page.wait_for_selector("[data-testid=pareto-plot][data-points]")


def test_the_pareto_chart_shades_the_tolerance_the_engine_applied(page, live_app, shared_search):
    data, job = shared_search["data"], shared_search["job"]
    # The API sends the tolerance the search ran with (the engine's default here: the request gave none).
    applied = SearchSettings.model_validate(job["params"]["settings"]).tolerance
    assert data["tolerance"] == applied > 0
    (budget,) = [b["limit"] for b in data["budgets"].values() if b["kind"] == "params"]
    limit = budget * (1 + applied)
    open_search(page, live_app, shared_search)
    layout = page.evaluate("document.querySelector('[data-testid=pareto-plot]').layout")
    (band,) = [s for s in layout["shapes"] if s["type"] == "rect"]
    assert band["x0"] == budget and band["x1"] == pytest.approx(limit)
    assert any(a["text"] == f"+{applied * 100:g}% tolerance" for a in layout["annotations"])
    # Every candidate the engine kept lies left of the band's right edge, and the axis shows that edge.
    assert max(c["costs"]["params"] for c in data["candidates"]) <= limit
    assert layout["xaxis"]["range"][1] >= limit
    shot(page, "search-tolerance")


def test_candidates_that_drop_different_layers_read_apart(page, live_app, shared_search):
    cands = shared_search["data"]["candidates"]
    # The tiny search has candidates of one size that keep different layers: the case the audit met.
    alike = [c for c in cands if sum(shape(o) == shape(c) for o in cands) > 1 and c["axes"]["drop_layers"]]
    pairs = {tuple(c["axes"]["drop_layers"]) for c in alike}
    assert len(pairs) > 1, "no two candidates of one size drop different layers"
    open_search(page, live_app, shared_search)
    text = {c["id"]: page.inner_text(f"tr[data-candidate='{c['id']}'] td.mono") for c in cands}
    for c in cands:
        drops = c["axes"]["drop_layers"]
        assert (
            text[c["id"]].endswith(f"drops {','.join(map(str, sorted(drops)))}")
            if drops
            else "drops" not in text[c["id"]]
        )
    by_text = {}
    for c in cands:
        by_text.setdefault(text[c["id"]], set()).add((shape(c), tuple(sorted(c["axes"]["drop_layers"]))))
    assert all(len(v) == 1 for v in by_text.values()), by_text  # one line, one architecture
    best = cands[0]
    assert page.inner_text("[data-testid=search-best-arch] .delta") == text[best["id"]]
    page.click("[data-testid=pick-top]")
    picked = page.locator("[data-testid=picked] li")
    assert text[best["id"]] in picked.first.inner_text()


def saved_plans(live_app, search, ids):
    return [
        live_app.api.post(f"/searches/{search['job']['id']}/candidates/{cid}/plan").json()["id"]
        for cid in ids
    ]


def top_two_bakeoff(live_app, search) -> tuple[list[dict], list[int], dict]:
    """The search's top two candidates, their saved plans and a bake-off body started from the search."""
    job = search["job"]
    cands = search["data"]["candidates"][:2]
    plans = saved_plans(live_app, search, [c["id"] for c in cands])
    body = {
        "teacher_id": job["teacher_id"],
        "search_job_id": job["id"],
        "candidates": [{"candidate_id": c["id"], "plan_id": p} for c, p in zip(cands, plans)],
        "distill": {"steps": 2, "batch_size": 2, "seq_len": 32},
        "benchmark": None,
    }
    return cands, plans, body


def test_a_bakeoff_keeps_the_search_ranks_and_refuses_ids_the_search_lacks(live_app, shared_search):
    api, job = live_app.api, shared_search["job"]
    cands, plans, body = top_two_bakeoff(live_app, shared_search)
    r = api.post("/workflows?validate_only=true", json=body)
    assert r.status_code == 200, r.text
    kept = r.json()["params"]["candidates"]
    assert [(k["search_rank"], k["search_loss"]) for k in kept] == [(c["rank"], c["loss"]) for c in cands]
    assert r.json()["params"]["search_job_id"] == job["id"]
    bad = {**body, "candidates": [*body["candidates"][:1], {"candidate_id": "L1-nope", "plan_id": plans[1]}]}
    r = api.post("/workflows?validate_only=true", json=bad)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == [
        "body",
        "candidates",
        1,
        "candidate_id",
    ], r.text
    inspect_job = shared_search["teacher"]["job_id"]  # a job, not a search
    r = api.post("/workflows?validate_only=true", json={**body, "search_job_id": inspect_job})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "search_job_id"], r.text


def fake_bakeoff(live_app, search, before_order: list[int], after_order: list[int]) -> dict:
    """A finished bake-off of the search's top two, as GET /workflows/{id} gives it (its params are the
    server's own, from a validate_only create): `before_order` / `after_order` give the as-cut and final
    rank of the search's #1 and #2 (a real bake-off takes minutes of distillation)."""
    job = search["job"]
    cands, plans, body = top_two_bakeoff(live_app, search)
    params = live_app.api.post("/workflows?validate_only=true", json=body).json()["params"]
    ranking = [
        {
            "name": k["name"],
            "candidate_id": k["candidate_id"],
            "student_id": None,
            "plan_id": k["plan_id"],
            "distill_job_id": None,
            "params_total": c["costs"]["params"],
            "before": {"loss": 4.0 + rb / 100},
            "after": {"loss": 3.0 + ra / 100},
            "rank_before": rb,
            "rank_after": ra,
            "flipped": rb != ra,
        }
        for k, c, rb, ra in zip(params["candidates"], cands, before_order, after_order)
    ]
    ranking.sort(key=lambda x: x["rank_after"])
    flips = [
        [a["name"], b["name"]]
        for a in ranking
        for b in ranking
        if a["rank_before"] > b["rank_before"] and a["rank_after"] < b["rank_after"]
    ]
    branches = [
        {"key": f"c{i}", "name": k["name"], "candidate_id": k["candidate_id"], "role": "candidate", "index": i,
         "plan_id": k["plan_id"], "student_id": None, "status": "succeeded", "step": None, "error": None, "steps": []}
        for i, k in enumerate(params["candidates"])
    ]  # fmt: skip
    return {
        "id": 987654, "definition": "bakeoff", "name": f"bake-off of search #{job['id']}", "status": "succeeded",
        "progress": 1.0, "message": "done", "error": None, "teacher_id": job["teacher_id"],
        "importance_run_id": job["importance_run_id"], "params": params, "created_at": None, "started_at": None,
        "finished_at": None, "branches": branches,
        "result": {"metric": "loss", "ranking": ranking, "flips": flips, "winner": ranking[0]["name"],
                   "winner_student_id": None, "winner_distill_job_id": None},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("before", "after", "order", "words"),
    [
        # The audit's case: the as-cut evaluation put the search's #2 first, and distillation kept that.
        (
            [2, 1],
            [2, 1],
            "differs",
            "No flips: distillation kept the as-cut order. The search ranked them in another order",
        ),
        (
            [1, 2],
            [1, 2],
            "same",
            "No flips: distillation kept the as-cut order. The search ranked them in the same order.",
        ),
        ([1, 2], [2, 1], "same", "1 pair swapped order between as cut and after distillation: "),
    ],
)
def test_the_bakeoff_page_shows_the_search_rank_beside_the_as_cut_rank(
    page, live_app, shared_search, before, after, order, words
):
    wf = fake_bakeoff(live_app, shared_search, before, after)
    page.route(
        f"**/api/v1/workflows/{wf['id']}",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(wf)),
    )
    page.goto(f"{live_app.url}/#/bakeoff/{wf['id']}")
    page.wait_for_selector("[data-testid=bakeoff-ranking] table")
    heads = page.locator("[data-testid=bakeoff-ranking] th").all_inner_texts()
    assert [t.lower() for t in heads[3:6]] == ["loss as cut", "rank as cut", "search rank"]
    link = page.locator("[data-testid=bakeoff-ranking] th a")
    assert link.get_attribute("href") == f"#/search/{shared_search['job']['id']}"
    for x in wf["result"]["ranking"]:
        rank = next(k["search_rank"] for k in wf["params"]["candidates"] if k["name"] == x["name"])
        cell = page.locator(
            f"[data-testid=bakeoff-ranking] tr[data-candidate='{x['name']}'] [data-testid=search-rank]"
        )
        assert cell.inner_text() == f"#{rank}"
    note = page.locator("[data-testid=flips-note]")
    assert note.get_attribute("data-search-order") == order
    assert note.inner_text().startswith(words), note.inner_text()
    assert "search's order" not in note.inner_text()
    if order == "differs":
        shot(page, "bakeoff-search-rank")
