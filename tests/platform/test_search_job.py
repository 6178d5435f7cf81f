"""Architecture search as a job (issue 12), through the real API server, Redis and a real Celery worker:
teacher -> importance run -> POST /searches -> every candidate back from the API, each a valid plan of
the teacher within the budget, ranked by loss; progress says candidates scored (and per minute once that means something); a
candidate saved as a plan once; bad input is a 4xx naming the field with nothing queued."""

from __future__ import annotations

import pytest

from tests.conftest import SEARCH_SETTINGS
from tests.platform.helpers import read_sse
from worker.engine.plan import PrunePlan, plan_stats, validate_plan
from worker.engine.search.rate import MIN_CANDIDATES, MIN_SECONDS, candidates_per_minute, no_rate_reason
from worker.engine.spec import ArchSpec

SETTINGS = SEARCH_SETTINGS


@pytest.fixture(scope="module")
def live_app(shared_live_app):
    return shared_live_app


@pytest.fixture(scope="module")
def run(shared_search):
    """The shared search's teacher and importance run (tests/conftest.py `shared_search`)."""
    return {"teacher": shared_search["teacher"], "run_id": shared_search["run_id"]}


@pytest.fixture(scope="module")
def search(shared_search):
    """The finished search job: made once per session, shared with tests/ui/test_search_ui.py."""
    return shared_search["job"]


def spec_of(teacher: dict) -> ArchSpec:
    fields = set(ArchSpec.model_fields) - {"layers"}
    return ArchSpec(**{k: v for k, v in teacher["spec"].items() if k in fields})


def test_every_candidate_comes_back_valid_within_budget_and_ranked(live_app, run, search):
    data = live_app.api.get(f"/searches/{search['id']}/candidates").json()
    cands = data["candidates"]
    assert len(cands) == search["result"]["candidates"] >= 2
    assert search["result"]["top"] == [c["id"] for c in cands[:3]]
    spec = spec_of(run["teacher"])
    teacher_params = plan_stats(PrunePlan(), spec)["params_total"]
    limit = data["budgets"]["params=80%"]["limit"]  # by budget text (SEARCH_SETTINGS)
    assert limit == pytest.approx(0.8 * teacher_params)
    assert data["reference"]["params"] == teacher_params
    assert [c["rank"] for c in cands] == list(range(1, len(cands) + 1))
    assert [c["loss"] for c in cands] == sorted(c["loss"] for c in cands)
    assert {c["cut"] for c in cands} <= {"depth", "width", "mixed"}
    assert "plan" not in cands[0] or cands[0]["plan"] is None  # the list leaves plans out
    for c in cands:
        got = live_app.api.get(f"/searches/{search['id']}/candidates/{c['id']}")
        assert got.status_code == 200, got.text
        full = got.json()
        plan = PrunePlan.model_validate(full["plan"])
        assert not [m for m in validate_plan(plan, spec) if m.level == "error"], c["id"]
        params = plan_stats(plan, spec)["params_total"]
        assert params == c["costs"]["params"] <= limit * (1 + SETTINGS.get("tolerance", 0.02))
        kept_layers = spec.num_layers - len(plan.drop_layers)
        assert c["axes"]["num_layers"] == kept_layers
        depth = kept_layers < spec.num_layers
        width = bool(plan.remove_heads or plan.remove_kv_groups or plan.remove_neurons or plan.remove_hidden)
        assert (
            c["cut"]
            == {(True, False): "depth", (False, True): "width", (True, True): "mixed"}[(depth, width)]
        )


def test_candidates_carry_flops_kv_cache_and_their_distance_from_the_best(live_app, run, search):
    """What the CLI's search.json has, the API has too (audit 14): KV cache and non-embedding parameters,
    FLOPs and KV cache as costs (axes), the basis of each figure; and each rank's loss against #1 with its
    paired standard error (audit 4)."""
    data = live_app.api.get(f"/searches/{search['id']}/candidates").json()
    spec = spec_of(run["teacher"])
    assert data["basis"] == {
        "memory_dtype": spec.dtype,
        "kv_cache_dtype": spec.dtype,
        "loss_dtype": SETTINGS.get("dtype", "float32"),
        "latency_dtype": SETTINGS.get("dtype", "float32"),
        "flops_context": spec.flops_context(),
    }
    assert data["reference"]["flops"] == spec.flops_per_token(spec.flops_context())
    cands = data["candidates"]
    for c in cands:
        full = live_app.api.get(f"/searches/{search['id']}/candidates/{c['id']}").json()
        stats = plan_stats(PrunePlan.model_validate(full["plan"]), spec)
        assert c["params_non_embedding"] == stats["params_non_embedding"]
        assert c["flops_per_token"] == c["costs"]["flops"] == stats["flops_per_token"]
        assert c["kv_cache_bytes_per_token"] == c["costs"]["kv_cache"] > 0
        assert c["loss_diff_vs_best"] == pytest.approx(c["loss"] - cands[0]["loss"], abs=1e-6)
        if c["rank"] == 1:
            assert c["loss_diff_se"] == 0 and c["within_noise_of_best"] is None
        else:
            assert c["loss_diff_se"] > 0
            assert c["within_noise_of_best"] == (abs(c["loss_diff_vs_best"]) < 2 * c["loss_diff_se"])


def test_progress_counts_candidates_scored_and_gives_no_rate_from_a_fraction_of_a_second(live_app, search):
    events = read_sse(f"{live_app.url}/api/v1/jobs/{search['id']}/events", timeout=30)
    messages = [e.data.get("message") or "" for e in events if e.type == "status"]
    scored = [m for m in messages if "candidates scored" in m]
    assert scored, messages
    # The tiny search scores its candidates in well under rate.MIN_SECONDS: a per-minute figure from
    # that would be noise (audit 21), so neither the progress nor the result has one.
    assert search["result"]["seconds"] < MIN_SECONDS
    assert not any(" per minute" in m for m in scored), scored
    assert search["result"]["candidates_per_minute"] is None


def test_a_rate_is_given_only_after_enough_candidates_over_enough_seconds():
    assert candidates_per_minute(MIN_CANDIDATES, MIN_SECONDS) == round(60.0 * MIN_CANDIDATES / MIN_SECONDS, 1)
    assert candidates_per_minute(MIN_CANDIDATES - 1, 60.0) is None  # too few candidates
    assert candidates_per_minute(1000, MIN_SECONDS / 10) is None  # too short a time
    assert candidates_per_minute(0, 0.0) is None
    # The "—" says its real reason: 9 candidates in 2 minutes is too few, not too quick (audit 18).
    assert no_rate_reason(MIN_CANDIDATES - 1, 120.0) == "too few candidates to rate: 9, fewer than 10"
    assert no_rate_reason(1000, MIN_SECONDS / 10) == "too quick to time: under 5 s of scoring"
    assert no_rate_reason(MIN_CANDIDATES, MIN_SECONDS) is None


def test_a_candidate_becomes_one_saved_plan(live_app, run, search):
    data = live_app.api.get(f"/searches/{search['id']}/candidates").json()
    # The best candidate not saved yet (the search is shared: the UI tests save some of its candidates).
    saved_names = [
        p["name"] for p in live_app.api.get("/plans", params={"teacher_id": run["teacher"]["id"]}).json()
    ]
    best = next(c for c in data["candidates"] if not any(n.endswith(f": {c['id']}") for n in saved_names))
    url = f"/searches/{search['id']}/candidates/{best['id']}/plan"
    first = live_app.api.post(url)
    assert first.status_code == 201, first.text
    again = live_app.api.post(url)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    saved = live_app.api.get(f"/plans/{first.json()['id']}").json()
    full = live_app.api.get(f"/searches/{search['id']}/candidates/{best['id']}").json()
    assert PrunePlan.model_validate(saved["plan"]) == PrunePlan.model_validate(full["plan"])
    assert (
        saved["importance_run_id"] == run["run_id"]
        and saved["stats"]["params_total"] == best["costs"]["params"]
    )


def test_bad_input_names_the_field_and_queues_nothing(live_app, run, search):
    api = live_app.api
    before = len(api.get("/searches").json())

    def detail(r):
        body = r.json()["detail"]
        return body if isinstance(body, list) else [{"loc": [], "msg": body}]

    r = api.post(
        "/searches", json={"importance_run_id": run["run_id"], "settings": {"budgets": ["params=lots"]}}
    )
    assert r.status_code == 422 and detail(r)[0]["loc"][:3] == ["body", "settings", "budgets"], r.text
    r = api.post("/searches", json={"importance_run_id": run["run_id"], "settings": {"budgets": []}})
    assert r.status_code == 422 and detail(r)[0]["loc"][:3] == ["body", "settings", "budgets"], r.text
    r = api.post(
        "/searches",
        json={"importance_run_id": run["run_id"], "settings": {"budgets": ["params=50%"], "data": "/etc"}},
    )
    assert r.status_code == 422 and detail(r)[0]["loc"] == ["body", "settings", "data"], r.text
    r = api.post("/searches", json={"importance_run_id": 99999, "settings": {"budgets": ["params=50%"]}})
    assert r.status_code == 404, r.text
    assert len(api.get("/searches").json()) == before
    # Candidates of a job that is not a search, and of an unknown candidate.
    teacher_job = run["teacher"]["job_id"]
    assert api.get(f"/searches/{teacher_job}/candidates").status_code == 422
    assert api.get(f"/searches/{search['id']}/candidates/L99-nope").status_code == 404
