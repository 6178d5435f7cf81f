"""Run management and the evaluation protocol in a real Chromium against the live app (API + real worker):
the runs table filters, searches, renames, tags, deletes (not a queued run), shows durations and
hyperparameters, overlays any runs' curves and exports them; the distillation form remembers its last
settings; perplexities say their protocol and mark the ones not comparable; the preview's teacher
perplexity is the teacher's evaluation on its protocol."""

from __future__ import annotations

import csv
import io

import pytest

from tests.platform.helpers import make_dataset, start_distill
from tests.ui.conftest import shot

pytestmark = pytest.mark.ui


# The teacher's evaluation protocol: 4 documents of the demo test split (the default, 64, is ~6,500 windows
# per perplexity; these tests compare protocols and the numbers the jobs stored, not the perplexities).
PROTOCOL = {"max_documents": 4}


def make_student_of_a_small_protocol(app) -> dict:
    """make_student (tests/platform/helpers.py), its teacher registered with PROTOCOL."""
    api = app.api
    body = {"name": "tiny", "source": str(app.teacher_dir), "eval_protocol": PROTOCOL}
    teacher = api.post("/teachers", json=body).json()
    assert app.wait_job(teacher["job_id"])["status"] == "succeeded"
    plan = {"drop_layers": [3], "remove_neurons": {str(i): list(range(8)) for i in range(4)}}
    created = api.post("/plans", json={"teacher_id": teacher["id"], "name": "quick", "plan": plan})
    assert created.status_code == 201, created.text
    student = api.post("/students", json={"plan_id": created.json()["id"], "name": "s"}).json()
    assert app.wait_job(student["job_id"])["status"] == "succeeded"
    return api.get(f"/students/{student['id']}").json()


@pytest.fixture(scope="module")
def runs(live_app):
    """A student, two distillations of it (lr 1e-3, 5e-4), its evaluation on 2 documents (another protocol
    than the teacher's 4: it queues the teacher's on it) and one on another window."""
    student = make_student_of_a_small_protocol(live_app)
    data = make_dataset(live_app)["id"]
    fast = start_distill(live_app, student["id"], dataset_id=data, steps=4, lr=1e-3, min_lr=1e-5, val_every=2)
    slow = start_distill(live_app, student["id"], dataset_id=data, steps=4, lr=5e-4, min_lr=1e-5, val_every=2)
    post = lambda params: live_app.api.post(  # noqa: E731
        "/jobs", json={"kind": "evaluate", "student_id": student["id"], "params": params}
    ).json()
    same, other = post({"max_documents": 2}), post({"max_documents": 2, "seq_len": 64})
    for job in (fast, slow, same, other):
        done = live_app.wait_job(job["id"])
        assert done["status"] == "succeeded", done
    teacher_evals = live_app.api.get(
        "/jobs", params={"kind": "evaluate", "teacher_id": student["teacher_id"]}
    ).json()
    teacher_evals = [j for j in teacher_evals if j["student_id"] is None]
    for job in teacher_evals:
        assert live_app.wait_job(job["id"])["status"] == "succeeded"
    return {
        "student": student,
        "fast": fast,
        "slow": slow,
        "same": same,
        "other": other,
        "teacher": teacher_evals,
    }


def row(job_id: int) -> str:
    return f"[data-testid=runs-table] tr[data-job-id='{job_id}']"


def test_runs_table_search_filter_rename_tag_overlay_export_delete(page, live_app, runs):
    fast, slow = runs["fast"]["id"], runs["slow"]["id"]
    page.goto(f"{live_app.url}/#/runs")
    page.wait_for_selector(row(fast))
    # Hyperparameters as columns, duration from the job's start and end.
    assert page.inner_text(f"{row(fast)} [data-hp=lr]") == "0.001"
    assert page.inner_text(f"{row(slow)} [data-hp=lr]") == "0.0005"
    assert page.inner_text(f"{row(fast)} [data-hp=budget]") == "4"
    assert page.inner_text(f"{row(fast)} [data-testid=run-duration]") not in ("", "–")

    # Rename inline: Enter saves through PATCH /jobs/{id}.
    page.click(f"{row(fast)} [data-testid=run-rename]")
    page.fill("[data-testid=run-inline-input]", "kd fast")
    page.press("[data-testid=run-inline-input]", "Enter")
    page.wait_for_function(
        f"document.querySelector(\"{row(fast)} [data-testid=run-name]\")?.textContent === 'kd fast'"
    )
    assert live_app.api.get(f"/jobs/{fast}").json()["name"] == "kd fast"
    # Tag it, then filter by the tag and search by name.
    page.click(f"{row(fast)} [data-testid=run-add-tag]")
    page.fill("[data-testid=run-inline-input]", "sweep")
    page.press("[data-testid=run-inline-input]", "Enter")
    page.wait_for_selector(f"{row(fast)} [data-testid=run-tag]")
    assert live_app.api.get(f"/jobs/{fast}").json()["tags"] == ["sweep"]
    page.select_option("[data-testid=runs-tag]", "sweep")
    shown = page.eval_on_selector_all(
        "[data-testid=runs-table] tbody tr", "rs => rs.map(r => Number(r.dataset.jobId))"
    )
    assert shown == [fast]
    page.select_option("[data-testid=runs-tag]", "")
    page.fill("[data-testid=runs-search]", "kd fast")
    shown = page.eval_on_selector_all(
        "[data-testid=runs-table] tbody tr", "rs => rs.map(r => Number(r.dataset.jobId))"
    )
    assert shown == [fast]
    page.fill("[data-testid=runs-search]", "")
    page.select_option("[data-testid=runs-kind]", "evaluate")
    shown = page.eval_on_selector_all(
        "[data-testid=runs-table] tbody tr", "rs => rs.map(r => Number(r.dataset.jobId))"
    )
    # Exactly the app's evaluations (the app is shared with other modules: not only this module's).
    evaluations = {
        j["id"] for j in live_app.api.get("/jobs", params={"kind": "evaluate", "limit": 500}).json()
    }
    assert set(shown) == evaluations and len(shown) == len(evaluations)
    assert {runs["same"]["id"], runs["other"]["id"], *(j["id"] for j in runs["teacher"])} <= evaluations
    page.select_option("[data-testid=runs-kind]", "distill")

    # Overlay the curves of the two distillations (any runs, not one study's).
    page.check(f"{row(fast)} [data-testid=run-select]")
    page.check(f"{row(slow)} [data-testid=run-select]")
    page.wait_for_selector("[data-testid=overlay-plot][data-traces='2']")
    page.evaluate("window.scrollTo(0, 0)")
    names = page.evaluate("document.querySelector('[data-testid=overlay-plot]').data.map(t => t.name)")
    assert any("kd fast" in n for n in names) and any(f"#{slow}" in n for n in names)
    shot(page, "runs-table")

    # Export the selected runs: the CSV holds both runs' loss points, as stored.
    href = page.get_attribute("[data-testid=runs-export-csv]", "href")
    assert f"ids={fast},{slow}" in href or f"ids={slow},{fast}" in href
    table = list(csv.DictReader(io.StringIO(page.request.get(f"{live_app.url}{href}").text())))
    stored = live_app.api.get(f"/jobs/{fast}/metrics").json()["series"]["loss"]
    got = [float(r["value"]) for r in table if r["run_id"] == str(fast) and r["key"] == "loss"]
    assert got == [p["value"] for p in stored] and {r["run_id"] for r in table} == {str(fast), str(slow)}
    exported = page.request.get(
        f"{live_app.url}{page.get_attribute('[data-testid=runs-export-json]', 'href')}"
    ).json()
    assert sorted(r["id"] for r in exported["runs"]) == sorted([fast, slow])

    # Delete a finished run (confirmed): gone from the table and the API.
    page.once("dialog", lambda d: d.accept())
    page.click(f"{row(slow)} [data-testid=run-delete]")
    page.wait_for_selector(row(slow), state="detached")
    assert live_app.api.get(f"/jobs/{slow}").status_code == 404


def test_a_queued_run_cannot_be_deleted(page, live_app, runs):
    live_app.worker.pause_when_idle()
    try:
        body = {
            "kind": "benchmark",
            "student_id": runs["student"]["id"],
            "params": {"repeats": 1, "seq_len": 8},
        }
        job = live_app.api.post("/jobs", json=body).json()
        page.goto(f"{live_app.url}/#/runs")
        button = page.wait_for_selector(f"{row(job['id'])} [data-testid=run-delete]")
        assert button.is_disabled() and "cancel it first" in button.get_attribute("title")
        live_app.api.post(f"/jobs/{job['id']}/cancel")
    finally:
        live_app.worker.pause(False)


def test_the_distill_form_remembers_the_last_settings(page, live_app, runs):
    data = make_dataset(live_app)  # small and local: the demo corpus (the default) is 6 MB to tokenize
    page.goto(f"{live_app.url}/#/runs?student={runs['student']['id']}")
    form = "[data-testid=distill-form]"
    page.wait_for_selector(f"{form} [name=lr]")
    assert page.input_value(f"{form} [name=lr]") == "0.0001"  # the defaults, nothing remembered yet
    page.fill(f"{form} [name=budget]", "2")
    page.fill(f"{form} [name=lr]", "0.0007")
    page.fill(f"{form} [name=min_lr]", "0.00007")
    page.fill(f"{form} [name=seq_len]", "32")
    page.fill(f"{form} [name=batch_size]", "2")
    page.select_option(f"{form} [name=dataset_id]", str(data["id"]))
    page.click("[data-testid=queue-distill]")
    page.wait_for_url("**/#/job/*")
    job_id = int(page.url.rsplit("/", 1)[1])
    assert live_app.wait_job(job_id)["params"]["dataset_id"] == data["id"]
    page.goto(f"{live_app.url}/#/runs?student={runs['student']['id']}")
    page.wait_for_selector(f"{form} [name=lr]")
    values = {
        n: page.input_value(f"{form} [name={n}]") for n in ("budget", "lr", "min_lr", "seq_len", "batch_size")
    }
    assert values == {"budget": "2", "lr": "0.0007", "min_lr": "0.00007", "seq_len": "32", "batch_size": "2"}


def test_perplexities_name_their_protocol_and_mark_the_incomparable(page, live_app, runs):
    student = runs["student"]
    teacher = live_app.api.get(f"/teachers/{student['teacher_id']}").json()
    protocol = teacher["eval_protocol"]
    # The teacher was evaluated on its protocol without being asked (the student's evaluation needed it).
    (teacher_eval,) = [j for j in runs["teacher"] if j["protocol"]["id"] == runs["same"]["protocol"]["id"]]
    assert runs["same"]["protocol"]["id"] != protocol["id"]  # 2 documents: another protocol than 4

    # The teacher's page names its protocol, with the definition on hover.
    page.goto(f"{live_app.url}/#/?teacher={teacher['id']}")
    note = page.wait_for_selector("[data-testid=teacher-protocol]")
    assert note.inner_text() == protocol["id"] and note.get_attribute("title") == protocol["description"]

    # The preview measures the teacher on the teacher's protocol: the very number of its evaluation.
    preview = live_app.api.post(f"/plans/{student['plan_id']}/preview", json={}).json()
    preview = live_app.wait_job(preview["id"])
    assert preview["result"]["protocol"]["id"] == protocol["id"]
    default_eval = live_app.api.post(
        "/jobs", json={"kind": "evaluate", "teacher_id": teacher["id"], "params": {}}
    ).json()
    default_eval = live_app.wait_job(default_eval["id"])
    assert default_eval["result"]["protocol"]["id"] == protocol["id"]
    assert preview["result"]["ppl_teacher"] == pytest.approx(
        default_eval["result"]["perplexity"]["perplexity"], rel=1e-5
    )

    # Compare table: the header defines the protocol; the student's number (2 documents) is marked.
    page.goto(f"{live_app.url}/#/compare?teacher={teacher['id']}&students={student['id']}")
    page.wait_for_selector("[data-testid=bench-table]")
    header = page.get_attribute("[data-testid=bench-table] th:has-text('perplexity')", "title")
    assert protocol["description"] in header
    rows = page.locator("[data-testid=bench-table] tbody tr")
    assert rows.nth(0).locator("[data-testid=protocol-mismatch]").count() == 0  # the teacher, on its protocol
    mark = rows.nth(1).locator("[data-testid=protocol-mismatch]").first
    assert "Not comparable" in mark.get_attribute("title")
    assert rows.nth(1).locator("td.best").count() == 1  # params only: its perplexity is not a candidate
    assert "validation blocks" in page.inner_text("[data-testid=curves-protocol]")
    shot(page, "compare-protocol")

    # Runs table: each result carries its protocol; the other-window evaluation is marked.
    page.goto(f"{live_app.url}/#/runs")
    page.wait_for_selector(row(runs["other"]["id"]))
    assert page.locator(f"{row(runs['other']['id'])} [data-testid=protocol-mismatch]").count() == 1
    assert page.locator(f"{row(default_eval['id'])} [data-testid=protocol-mismatch]").count() == 0

    # A distillation's validation curve says what it is measured on, and that it is not the teacher's.
    page.goto(f"{live_app.url}/#/job/{runs['fast']['id']}")
    note = page.wait_for_selector("[data-testid=curve-protocol-val_ppl]")
    assert note.inner_text() == f"on {runs['fast']['protocol']['id']}" and "blocks" in note.get_attribute(
        "title"
    )
    page.wait_for_selector("[data-testid=curve-mismatch-val_ppl]")
    result_note = page.wait_for_selector("[data-testid=distill-protocol]")
    assert result_note.inner_text() == f"on {runs['fast']['protocol']['id']}"
    shot(page, "job-curve-protocol")

    # An evaluation's page names its protocol (definition on hover).
    page.goto(f"{live_app.url}/#/job/{default_eval['id']}")
    note = page.wait_for_selector("[data-testid=evaluate-protocol]")
    assert (
        note.inner_text() == f"on {protocol['id']}" and note.get_attribute("title") == protocol["description"]
    )
