"""The search view in a real Chromium against the live app (API subprocess + real Celery worker): a search
of the tiny teacher runs through the worker; the Pareto scatter shows every candidate, coloured by how it
cuts, with the front drawn where Python puts it; the parallel-coordinates chart spans the architecture
axes and the loss; clicking a point opens that candidate as a plan in the planner; picking K rows posts a
bake-off of exactly those candidates. Screenshot: test-artifacts/search.png."""

from __future__ import annotations

import json

import pytest

from tests.ui.conftest import shot
from worker.engine.plan import PrunePlan

pytestmark = pytest.mark.ui


@pytest.fixture(scope="module")
def search(shared_search):
    """The session's search of the tiny teacher (tests/conftest.py `shared_search`, on the shared app that
    is this module's `live_app` too): {"job", "data"}."""
    return shared_search


def pareto_ids(cands: list[dict], axis: str = "params") -> list[str]:
    """The lower-left front, computed independently of the dashboard's JS."""
    pts = sorted(cands, key=lambda c: (c["costs"][axis], c["loss"]))
    front, best = [], float("inf")
    for c in pts:
        if c["loss"] < best:
            front.append(c["id"])
            best = c["loss"]
    return front


def open_search(page, live_app, search):
    page.goto(f"{live_app.url}/#/search/{search['job']['id']}")
    page.wait_for_selector("[data-testid=pareto-plot][data-points]")
    page.wait_for_selector("[data-testid=parcoords-plot][data-dimensions]")


def test_pareto_scatter_shows_every_candidate_and_the_front(page, live_app, search):
    open_search(page, live_app, search)
    cands = search["data"]["candidates"]
    plot = page.locator("[data-testid=pareto-plot]")
    assert int(plot.get_attribute("data-points")) == len(cands)
    assert plot.get_attribute("data-front").split(",") == pareto_ids(cands)
    traces = page.evaluate(
        "Array.from(document.querySelector('[data-testid=pareto-plot]').data,"
        " t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y), ids: Array.from(t.customdata || [])}))"
    )
    by_id = {c["id"]: c for c in cands}
    plotted = [
        i for t in traces if t["name"] not in ("Pareto front", "bake-off", "teacher") for i in t["ids"]
    ]
    assert sorted(plotted) == sorted(by_id)  # each candidate once, in the trace of its cut
    for t in traces:
        if t["name"] in ("Pareto front", "bake-off", "teacher"):
            continue
        kinds = {by_id[i]["cut"] for i in t["ids"]}
        assert len(kinds) == 1, (t["name"], kinds)
        assert t["x"] == [by_id[i]["costs"]["params"] for i in t["ids"]]
        assert t["y"] == pytest.approx([by_id[i]["loss"] for i in t["ids"]])
    front = next(t for t in traces if t["name"] == "Pareto front")
    assert front["ids"] == pareto_ids(cands)
    # The budget line sits at the params limit; the teacher is the star to the right of it.
    teacher = next(t for t in traces if t["name"] == "teacher")
    (limit,) = [b["limit"] for b in search["data"]["budgets"].values() if b["kind"] == "params"]
    assert teacher["x"] == [search["data"]["reference"]["params"]] > [limit]
    dims = page.locator("[data-testid=parcoords-plot]").get_attribute("data-dimensions").split(",")
    assert "layers" in dims and dims[-1] == "loss" and "M params" in dims
    # Perplexity on y: the same points, exp(loss).
    page.click("[data-testid=y-axis] button[data-value=ppl]")
    page.wait_for_function(
        "document.querySelector('[data-testid=pareto-plot]').layout.yaxis.title.text.startsWith('perplexity')"
    )
    shot(page, "search")


def test_flops_is_a_cost_axis_and_the_table_says_which_ranks_are_within_noise_of_the_first(
    page, live_app, search
):
    """Audit 14: FLOPs/token (every candidate has it, budget or not) can go on x, titled with its context;
    audit 4: each row's loss against #1 with its paired standard error, "≈ #1" where |diff| < 2 SE."""
    open_search(page, live_app, search)
    data = search["data"]
    page.click("[data-testid=x-axis] button[data-value=flops]")
    page.wait_for_function(
        "document.querySelector('[data-testid=pareto-plot]').layout.xaxis.title.text.startsWith('forward FLOPs')"
    )
    title = page.evaluate("document.querySelector('[data-testid=pareto-plot]').layout.xaxis.title.text")
    assert f"at {data['basis']['flops_context']} tokens of context" in title
    x = page.evaluate(
        "Array.from(document.querySelector('[data-testid=pareto-plot]').data).filter(t => t.name === 'Pareto front')[0].customdata"
    )
    assert x == pareto_ids(data["candidates"], "flops")
    rows = page.locator("[data-testid=candidate-table] tbody tr")
    by_id = {c["id"]: c for c in data["candidates"]}
    noisy = 0
    for i in range(rows.count()):
        row = rows.nth(i)
        c = by_id[row.get_attribute("data-candidate")]
        cell = row.locator("[data-testid=versus-best]").inner_text()
        if c["rank"] == 1:
            assert cell.strip() == "#1"
            continue
        assert f"{abs(c['loss_diff_vs_best']):.4f} ± {c['loss_diff_se']:.4f}" in cell
        assert row.locator("[data-testid=within-noise]").count() == int(bool(c["within_noise_of_best"]))
        noisy += bool(c["within_noise_of_best"])
    assert noisy == sum(bool(c["within_noise_of_best"]) for c in data["candidates"][: rows.count()])
    shot(page, "search-flops-noise")


def isolated_point(page) -> tuple[str, float, float]:
    """The candidate whose marker lies farthest from every other marker (hover picks it, not a
    neighbour), with its page coordinates from Plotly's own axis mapping."""
    return tuple(
        page.evaluate(
            """() => {
              const gd = document.querySelector('[data-testid=pareto-plot]');
              const skip = ['Pareto front', 'bake-off', 'teacher'];
              const box = gd.getBoundingClientRect(), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
              const pts = gd._fullData.filter(t => !skip.includes(t.name)).flatMap(t => t.customdata.map((id, i) =>
                [id, box.left + xa._offset + xa.l2p(t.x[i]), box.top + ya._offset + ya.l2p(t.y[i])]));
              const gap = (p) => Math.min(...pts.filter(q => q !== p).map(q => Math.hypot(p[1] - q[1], p[2] - q[2])));
              return pts.reduce((a, b) => (gap(b) > gap(a) ? b : a));
            }"""
        )
    )


def test_clicking_a_point_opens_it_in_the_planner(page, live_app, search):
    open_search(page, live_app, search)
    cid, x, y = isolated_point(page)
    target = next(c for c in search["data"]["candidates"] if c["id"] == cid)
    page.mouse.move(x, y)
    page.wait_for_function(
        f"document.querySelector('[data-testid=point-detail]').textContent.includes({json.dumps('#' + cid)})"
    )
    page.mouse.click(x, y)
    page.wait_for_url("**/#/explore/*plan=*")
    plan_id = int(page.url.rsplit("plan=", 1)[1].split("&")[0])
    saved = live_app.api.get(f"/plans/{plan_id}").json()
    full = live_app.api.get(f"/searches/{search['job']['id']}/candidates/{cid}").json()
    assert saved["name"].endswith(cid)
    assert PrunePlan.model_validate(saved["plan"]) == PrunePlan.model_validate(full["plan"])
    # The planner counts the opened plan's parameters itself (frontend/js/costmodel.js): the search's figure.
    page.wait_for_selector("[data-testid=params-total][data-value]")
    assert int(page.get_attribute("[data-testid=params-total]", "data-value")) == target["costs"]["params"]


def test_picking_k_candidates_posts_a_bakeoff_of_their_ids(page, live_app, search):
    posted: list[dict] = []

    def fake_workflow(route):
        posted.append(json.loads(route.request.post_data))
        route.fulfill(status=201, content_type="application/json", body=json.dumps({"id": 424242}))

    page.route("**/api/v1/workflows", fake_workflow)
    open_search(page, live_app, search)
    cands = search["data"]["candidates"]
    chosen = [cands[0]["id"], cands[1]["id"], cands[-1]["id"]]
    start = page.locator("[data-testid=start-bakeoff]")
    assert start.is_disabled()
    for cid in chosen:
        page.check(f"tr[data-candidate='{cid}'] [data-testid=pick]")
    page.wait_for_function(
        "document.querySelector('[data-testid=pareto-plot]').data.find(t => t.name === 'bake-off').x.length === 3"
    )
    assert page.locator("[data-testid=picked] li").count() == 3
    page.fill("[data-testid=bakeoff-form] [name=tokens]", "2k")
    page.fill("[data-testid=bakeoff-form] [name=batch_size]", "2")
    page.fill("[data-testid=bakeoff-form] [name=seq_len]", "32")
    start.click()
    page.wait_for_url("**/#/bakeoff/424242")
    (body,) = posted
    assert body["definition"] == "bakeoff" and body["teacher_id"] == search["job"]["teacher_id"]
    assert body["importance_run_id"] == search["job"]["importance_run_id"]
    assert body["search_job_id"] == search["job"]["id"]  # its page shows each candidate's search rank
    assert body["distill"]["tokens"] == 2000 and body["distill"]["batch_size"] == 2
    assert len(body["candidates"]) == 3
    # Each candidate goes by its search id alone: the server saves its plan in the workflow's transaction
    # (a refused bake-off leaves none: tests/ui/test_distill_warmup.py) and names it by its shape
    # (backend/workflows/naming.py).
    ordered = sorted(chosen, key=lambda i: [c["id"] for c in cands].index(i))
    assert body["candidates"] == [{"candidate_id": cid} for cid in ordered]
