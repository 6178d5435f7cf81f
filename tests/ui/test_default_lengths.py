"""Audit 24: the register-teacher form starts empty (examples as placeholders, not values); a default
sequence length / context shown for a teacher is at most its positions (the tiny teacher has 256: no
"@2048"); the preview on the teacher's protocol says the documents it reads (the demo test split holds
16, not the protocol's "first 64"). Real Chromium, live API; the positions rule in node against
worker.engine.spec.spec_max_positions."""

from __future__ import annotations

import json

import pytest

from tests.ui.conftest import shot
from tests.ui.dashboard_js import run_dashboard_js
from worker.demo import corpus_manifest
from worker.engine.spec import spec_max_positions

pytestmark = pytest.mark.ui


def test_max_positions_are_the_engines(tmp_path):
    specs = [{"max_positions": 512, "position_embeddings": 1024}, {"position_embeddings": 1024}, {}]
    driver = f"""
    import {{ fitPositions, maxPositions }} from "./js/costmodel.js";
    const specs = {json.dumps(specs)};
    console.log(JSON.stringify({{ max: specs.map(maxPositions), fit: specs.map((s) => fitPositions(s, 2048)) }}));
    """
    out = run_dashboard_js(tmp_path, driver)
    assert out["max"] == [spec_max_positions(s) for s in specs] == [512, 1024, 0]
    assert out["fit"] == [512, 1024, 2048]


@pytest.fixture(scope="module")
def default_protocol_run(live_app):
    """A ready tiny teacher on the default protocol (the demo test split's first 64 documents) and a
    small finished importance run of it."""
    api = live_app.api
    teacher = api.post("/teachers", json={"name": "lengths", "source": str(live_app.teacher_dir)}).json()
    assert live_app.wait_job(teacher["job_id"])["status"] == "succeeded"
    dataset = next(d for d in api.get("/datasets").json() if d["source"] == "demo")
    body = {
        "teacher_id": teacher["id"],
        "dataset_id": dataset["id"],
        "samples": 2,
        "seq_len": 16,
        "batch_size": 2,
    }
    run = api.post("/importance-runs", json=body).json()
    assert live_app.wait_job(run["job_id"])["status"] == "succeeded"
    return api.get(f"/teachers/{teacher['id']}").json(), run["id"]


def test_defaults_fit_the_teacher_and_its_data(page, live_app, shared_run, default_protocol_run):
    teacher, run_id = default_protocol_run
    assert teacher["spec"]["max_positions"] == 256 and teacher["eval_protocol"]["max_documents"] == 64
    page.set_viewport_size({"width": 1440, "height": 900})

    # The register form: nothing typed for the user.
    page.goto(f"{live_app.url}/#/?teacher={teacher['id']}")
    form = "[data-testid=teacher-form]"
    page.wait_for_selector(form)
    assert page.input_value(f"{form} [name=name]") == "" and page.input_value(f"{form} [name=source]") == ""
    assert page.get_attribute(f"{form} [name=source]", "placeholder")
    page.wait_for_selector("text=FLOPs / token @256")
    assert "@2048" not in page.inner_text("#view")
    # The teacher's protocol note names the documents it reads (its id, for matching, is unchanged).
    note = "[data-testid=teacher-protocol]"
    page.wait_for_function(f"document.querySelector('{note}').textContent.includes(' 16 docs ')")
    assert page.get_attribute(note, "data-protocol-id") == teacher["eval_protocol"]["id"]
    shot(page, "teacher-defaults")

    # The planner: FLOPs at the teacher's 256 positions; the protocol's documents as the split has them.
    page.goto(f"{live_app.url}/#/explore/{run_id}")
    page.wait_for_selector("[data-testid=first-paint]:not(:empty)")
    assert "@256 ctx" in page.inner_text("[data-testid=flops]")
    test_docs = corpus_manifest()["splits"]["test"]["documents"]
    assert test_docs == 16
    option = "[data-testid=preview-on-protocol]"
    page.wait_for_function(f"document.querySelector('{option}').textContent.includes('({test_docs} docs)')")
    shot(page, "planner-defaults")

    # The search form's memory / latency context.
    page.goto(f"{live_app.url}/#/search?run={run_id}")
    page.wait_for_selector("[data-testid=search-form]")
    assert page.input_value("[data-testid=search-form] [name=at_context]") == "256"
