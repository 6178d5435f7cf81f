"""Deleting a teacher and a dataset registered by mistake on the Teachers & data page, in a real Chromium:
Delete asks first (cancelling changes nothing), a confirmed delete removes the row here and on the server,
and a refused one (409: a teacher with a student, a dataset an importance run was computed on) shows the
server's message and keeps the row. Rows are inserted straight into the shared app's database (no worker)
and the ones left are deleted at the end."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import delete

from backend.db import session_scope
from backend.models import Dataset, ImportanceRun, Job, Plan, Student, Teacher
from tests.tiny_models import tiny_spec
from tests.ui.conftest import shot

pytestmark = pytest.mark.ui


@pytest.fixture
def registered(live_app):
    """A mistaken teacher and dataset nothing uses; a teacher with a student; a dataset with a run."""
    url, tag = live_app.env["PRUNESCOPE_DATABASE_URL"], uuid.uuid4().hex[:6]
    with session_scope(url) as s:
        wrong = Teacher(
            name=f"wrong-{tag}", source=f"org/wrong-{tag}", status="ready", spec=tiny_spec().summary()
        )
        used = Teacher(
            name=f"used-{tag}", source=f"org/used-{tag}", status="ready", spec=tiny_spec().summary()
        )
        typo, corpus = (
            Dataset(name=f"typo-{tag}", source="demo"),
            Dataset(name=f"corpus-{tag}", source="demo"),
        )
        s.add_all([wrong, used, typo, corpus])
        s.flush()
        plan = Plan(teacher_id=used.id, name="p", plan={"drop_layers": [3]}, messages=[])
        run = ImportanceRun(teacher_id=used.id, dataset_id=corpus.id, params={})
        s.add_all([plan, run])
        s.flush()
        student = Student(name="s", plan_id=plan.id, teacher_id=used.id, status="ready")
        s.add(student)
        s.flush()
        ids = {
            "wrong": wrong.id,
            "used": used.id,
            "typo": typo.id,
            "corpus": corpus.id,
            "student": student.id,
        }
        rows = {"plan": plan.id, "run": run.id}
    yield ids
    with session_scope(url) as s:
        s.execute(delete(Student).where(Student.id == ids["student"]))
        s.execute(delete(Plan).where(Plan.id == rows["plan"]))
        s.execute(delete(ImportanceRun).where(ImportanceRun.id == rows["run"]))
        s.execute(delete(Teacher).where(Teacher.id.in_([ids["wrong"], ids["used"]])))
        s.execute(delete(Dataset).where(Dataset.id.in_([ids["typo"], ids["corpus"]])))


def test_delete_teacher_and_dataset_from_the_page(page, live_app, registered):
    ids, api = registered, live_app.api
    page.goto(f"{live_app.url}/#/?teacher={ids['used']}")
    wrong_row = page.locator(f"[data-testid=teacher-list] tr[data-teacher-id='{ids['wrong']}']")
    wrong_row.wait_for()

    # Cancelled at the confirm: nothing is deleted.
    questions = []

    def answer(accept):
        def handle(dialog):
            questions.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()

        return handle

    page.once("dialog", answer(False))
    wrong_row.locator("[data-testid=teacher-delete]").click()
    assert questions and f'teacher #{ids["wrong"]} "wrong-' in questions[-1]
    assert api.get(f"/teachers/{ids['wrong']}").status_code == 200
    assert wrong_row.count() == 1

    # Confirmed: gone from the list and from the server; the selected teacher stays selected.
    page.once("dialog", answer(True))
    wrong_row.locator("[data-testid=teacher-delete]").click()
    wrong_row.wait_for(state="detached")
    assert api.get(f"/teachers/{ids['wrong']}").status_code == 404
    assert page.locator(f"tr.selected[data-teacher-id='{ids['used']}']").count() == 1

    # Refused: the teacher has a student; the server's message is shown, the row stays.
    used_row = page.locator(f"[data-testid=teacher-list] tr[data-teacher-id='{ids['used']}']")
    page.once("dialog", answer(True))
    used_row.locator("[data-testid=teacher-delete]").click()
    error = page.locator("[data-testid=teacher-delete-error]")
    expected = f"teacher {ids['used']} has student {ids['student']}: delete it first"
    page.wait_for_function(
        "([el, text]) => el.textContent.includes(text)", arg=[error.element_handle(), expected]
    )
    assert used_row.count() == 1 and api.get(f"/teachers/{ids['used']}").status_code == 200

    # Datasets: the unused one goes; the one an importance run was computed on is refused, named.
    datasets = page.locator("[data-testid=dataset-list]")
    typo_row = datasets.locator(f"tr[data-dataset-id='{ids['typo']}']")
    page.once("dialog", answer(True))
    typo_row.locator("[data-testid=dataset-delete]").click()
    typo_row.wait_for(state="detached")
    assert api.get(f"/datasets/{ids['typo']}").status_code == 404
    corpus_row = datasets.locator(f"tr[data-dataset-id='{ids['corpus']}']")
    page.once("dialog", answer(True))
    corpus_row.locator("[data-testid=dataset-delete]").click()
    error = page.locator("[data-testid=dataset-delete-error]")
    page.wait_for_function(
        "([el, text]) => el.textContent.includes(text)", arg=[error.element_handle(), "was computed on it"]
    )
    assert f"dataset {ids['corpus']} is in use" in error.inner_text()
    assert corpus_row.count() == 1 and api.get(f"/datasets/{ids['corpus']}").status_code == 200
    shot(page, "delete-registrations")


def test_delete_an_importance_run_from_the_teachers_page(page, live_app):
    """The Runs table sends a run's job to "delete that [run] instead", and the run had no Delete: now
    its row has one. A failed run goes; one a plan was filled from is refused with the server's reason."""
    url, tag, api = live_app.env["PRUNESCOPE_DATABASE_URL"], uuid.uuid4().hex[:6], live_app.api
    with session_scope(url) as s:
        teacher = Teacher(
            name=f"runs-{tag}", source=f"org/runs-{tag}", status="ready", spec=tiny_spec().summary()
        )
        data = Dataset(name=f"d-{tag}", source="demo")
        s.add_all([teacher, data])
        s.flush()
        runs = {}
        for status in ("failed", "succeeded"):
            run = ImportanceRun(
                teacher_id=teacher.id, dataset_id=data.id, params={"samples": 8, "seq_len": 32}
            )
            s.add(run)
            s.flush()
            job = Job(
                kind="importance", params={}, status=status, teacher_id=teacher.id, importance_run_id=run.id
            )
            s.add(job)
            s.flush()
            run.job_id, runs[status] = job.id, run.id
        s.add(
            Plan(
                teacher_id=teacher.id,
                importance_run_id=runs["succeeded"],
                name="filled",
                plan={},
                messages=[],
            )
        )
        tid, data_id = teacher.id, data.id
    page.goto(f"{live_app.url}/#/?teacher={tid}")
    table = page.locator("[data-testid=importance-runs]")
    failed = table.locator(f"tr[data-run-id='{runs['failed']}']")
    failed.wait_for()
    page.once("dialog", lambda d: d.accept())
    failed.locator("[data-testid=run-delete]").click()
    failed.wait_for(state="detached")
    assert api.get(f"/importance-runs/{runs['failed']}").status_code == 404

    used = table.locator(f"tr[data-run-id='{runs['succeeded']}']")
    page.once("dialog", lambda d: d.accept())
    used.locator("[data-testid=run-delete]").click()
    error = page.locator("[data-testid=run-delete-error]")
    page.wait_for_function("el => el.textContent.length > 0", arg=error.element_handle())
    assert "plan" in error.inner_text() and used.count() == 1
    assert api.get(f"/importance-runs/{runs['succeeded']}").status_code == 200
    assert api.delete(f"/teachers/{tid}").status_code == 204  # with its run, plan and jobs
    assert api.delete(f"/datasets/{data_id}").status_code == 204


def test_delete_a_student_from_the_runs_page(page, live_app):
    """A student made by mistake had no Delete in the dashboard (the teacher's Delete says "delete its
    students first"): its panel has one now; the student goes from the list and the server."""
    url, tag, api = live_app.env["PRUNESCOPE_DATABASE_URL"], uuid.uuid4().hex[:6], live_app.api
    with session_scope(url) as s:
        teacher = Teacher(
            name=f"st-{tag}", source=f"org/st-{tag}", status="ready", spec=tiny_spec().summary()
        )
        s.add(teacher)
        s.flush()
        plan = Plan(teacher_id=teacher.id, name="p", plan={"drop_layers": [3]}, messages=[])
        s.add(plan)
        s.flush()
        student = Student(name=f"oops-{tag}", plan_id=plan.id, teacher_id=teacher.id, status="failed")
        s.add(student)
        s.flush()
        tid, sid = teacher.id, student.id
    page.goto(f"{live_app.url}/#/runs?student={sid}")
    page.locator("[data-testid=student-detail] [data-testid=student-delete]").wait_for()
    questions = []
    page.once("dialog", lambda d: (questions.append(d.message), d.accept()))
    page.click("[data-testid=student-delete]")
    page.locator(f"tr[data-student-id='{sid}']").wait_for(state="detached")
    assert questions and f'student #{sid} "oops-{tag}"' in questions[0]
    assert api.get(f"/students/{sid}").status_code == 404
    assert api.delete(f"/teachers/{tid}").status_code == 204  # now it has no student left
