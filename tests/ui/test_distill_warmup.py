"""Audit 11 and 16: a distillation all within its LR warm-up is warned, live, in the bake-off form and the
depth-vs-width study's settings, in the words of the API's workflow `warnings`
(worker/engine/distill_length.warmup_warning, held equal in node); the bake-off form sends its LR and
warm-up; a bake-off the server refuses creates nothing (no plan of its picks is left behind). Real
Chromium against the live app. Screenshots: test-artifacts/bakeoff-warmup-warning.png,
study-warmup-warning.png, bakeoff-refused.png, bakeoff-page-warning.png."""

from __future__ import annotations

import json

import pytest

from tests.ui.conftest import shot
from tests.ui.dashboard_js import run_dashboard_js
from worker.engine.distill_length import warmup_warning

pytestmark = pytest.mark.ui
WIZARD = "[data-testid=wizard]"
FORM = "[data-testid=bakeoff-form]"


def test_the_warning_is_the_apis_word_for_word(tmp_path):
    cases = [
        {"steps": 20, "warmup": 20},
        {"steps": 21, "warmup": 20},
        {"tokens": 16000, "batch_size": 8, "seq_len": 1000, "warmup": 20},
        {"tokens": 1_000_000, "batch_size": 8, "seq_len": 128, "warmup": 20},
        {"steps": 1, "warmup": 0},
    ]
    driver = f"""
    import {{ warmupWarning }} from "./js/distillmath.js";
    console.log(JSON.stringify({json.dumps(cases)}.map(warmupWarning)));
    """
    expected = [warmup_warning(c) for c in cases]
    assert run_dashboard_js(tmp_path, driver) == expected
    assert [bool(w) for w in expected] == [True, False, True, False, False]
    assert expected[2].startswith("The run's 2 steps are all LR warm-up (20 steps)")


def fresh_candidates(live_app, search, n: int) -> list[str]:
    """`n` candidates of the shared search that no test saved as plans yet (their plan names are free)."""
    names = {p["name"] for p in live_app.api.get("/plans").json()}
    job = search["job"]["id"]
    free = [
        c["id"] for c in search["data"]["candidates"] if f"search {job} #{c['rank']}: {c['id']}" not in names
    ]
    assert len(free) >= n, free
    return free[:n]


def counts(live_app) -> tuple[int, int]:
    return len(live_app.api.get("/plans").json()), len(live_app.api.get("/workflows").json())


def test_the_bakeoff_form_warns_of_warm_up_and_a_refused_bakeoff_creates_nothing(
    page, live_app, shared_search
):
    job = shared_search["job"]
    positions = live_app.api.get(f"/teachers/{job['teacher_id']}").json()["spec"]["max_positions"]
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"{live_app.url}/#/search/{job['id']}")
    page.wait_for_selector("[data-testid=pareto-plot][data-points]")
    for cid in fresh_candidates(live_app, shared_search, 2):
        page.check(f"tr[data-candidate='{cid}'] [data-testid=pick]")
    note = f"{FORM} [data-testid=warmup-warning]"
    assert (
        page.input_value(f"{FORM} [name=warmup]") == "20"
        and float(page.input_value(f"{FORM} [name=lr]")) == 1e-4
    )
    assert page.inner_text(note) == ""  # 256k tokens at 8 x 128: 250 steps
    page.fill(f"{FORM} [name=tokens]", "16k")  # typed: 16 steps, all warm-up
    assert page.inner_text(note).startswith("The run's 16 steps are all LR warm-up (20 steps)")
    page.fill(f"{FORM} [name=warmup]", "4")
    assert page.inner_text(note) == ""
    page.fill(f"{FORM} [name=warmup]", "20")
    page.locator(note).scroll_into_view_if_needed()
    shot(page, "bakeoff-warmup-warning")
    # Refused (a sequence over the teacher's positions): marked at seq, and nothing was created.
    before = counts(live_app)
    page.fill(f"{FORM} [name=seq_len]", str(positions + 1))
    page.click("[data-testid=start-bakeoff]")
    error = page.wait_for_selector(f"{FORM} .field-error[data-field=seq_len]")
    assert f"over the {positions} positions of teacher {job['teacher_id']}" in error.inner_text()
    shot(page, "bakeoff-refused")
    assert counts(live_app) == before
    assert "#/search/" in page.url


def test_the_bakeoff_sends_its_lr_and_warm_up_and_shows_the_api_s_warning(page, live_app, shared_search):
    posted: list[dict] = []

    def keep(route):
        posted.append(json.loads(route.request.post_data))
        route.fallback()

    job = shared_search["job"]
    page.set_viewport_size({"width": 1440, "height": 900})
    page.route("**/api/v1/workflows", keep)
    page.goto(f"{live_app.url}/#/search/{job['id']}")
    page.wait_for_selector("[data-testid=pareto-plot][data-points]")
    for cid in fresh_candidates(live_app, shared_search, 2):
        page.check(f"tr[data-candidate='{cid}'] [data-testid=pick]")
    for name, value in [
        ("tokens", "256"),
        ("batch_size", "2"),
        ("seq_len", "32"),
        ("lr", "0.001"),
        ("warmup", "8"),
    ]:
        page.fill(f"{FORM} [name={name}]", value)
    page.uncheck(f"{FORM} [name=benchmark]")
    page.click("[data-testid=start-bakeoff]")
    page.wait_for_url("**/#/bakeoff/*")
    (body,) = posted
    assert body["distill"]["lr"] == 0.001 and body["distill"]["min_lr"] == pytest.approx(1e-4)
    assert body["distill"]["warmup"] == 8
    assert all(set(c) == {"candidate_id"} for c in body["candidates"])  # the server saves their plans
    wf_id = int(page.url.rsplit("/", 1)[1])
    # 256 / (2 x 32) = 4 steps, all within 8 of warm-up: the page shows the API's warning.
    warned = page.wait_for_selector("[data-testid=bakeoff-warning]")
    assert warned.inner_text() == live_app.api.get(f"/workflows/{wf_id}").json()["warnings"][0]
    assert warned.inner_text().startswith("The run's 4 steps are all LR warm-up (8 steps)")
    shot(page, "bakeoff-page-warning")
    live_app.api.post(f"/workflows/{wf_id}/cancel")


def test_the_study_settings_warn_of_warm_up_while_typing(page, live_app, shared_run):
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"{live_app.url}/#/compare?teacher={shared_run['teacher']['id']}")
    page.wait_for_selector(f"{WIZARD} [name=warmup]", state="attached")
    page.evaluate(f"document.querySelector('{WIZARD} details').open = true")
    note = f"{WIZARD} [data-testid=warmup-warning]"
    page.select_option(f"{WIZARD} [name=budget_kind]", "steps")
    page.fill(f"{WIZARD} [name=budget]", "40")
    page.fill(f"{WIZARD} [name=warmup]", "20")
    assert page.inner_text(note) == ""
    page.fill(f"{WIZARD} [name=budget]", "6")  # the audit's study: 6 steps, warm-up 20
    assert page.inner_text(note).startswith("The run's 6 steps are all LR warm-up (20 steps)")
    page.locator(note).scroll_into_view_if_needed()
    shot(page, "study-warmup-warning")
