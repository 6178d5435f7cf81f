"""Defects left over from the dashboard review, held fixed in a real Chromium: a running job says its
"step n/N" once (beside its progress and ETA); the runs table's data column names the demo corpus and
datasets by name; a bake-off names each candidate by its shape, its id kept under it; the explorer's,
the runs table's and the lists' rows are keyboard links (Tab, Enter) with a visible focus. Rows are
inserted straight into the shared app's database (no worker) and deleted at the end, except the
bake-off, which goes through the API and is cancelled."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import delete

from backend.db import session_scope
from backend.models import Dataset, Event, ImportanceRun, Job, Plan, Student, Teacher
from tests.platform.test_workflows import DEPTH, DISTILL, EVALUATE, WIDTH, ready_teacher
from tests.tiny_models import tiny_spec
from tests.ui.conftest import shot

pytestmark = pytest.mark.ui

SPEC = tiny_spec().summary()
STEP = "step 84/200"


@pytest.fixture(scope="module")
def rows(live_app):
    """A ready teacher; a running distillation (its worker's message "step 84/200") on the demo corpus;
    a finished one on a named dataset; a finished evaluation on the demo corpus's test split; a finished
    importance run."""
    url = live_app.env["PRUNESCOPE_DATABASE_URL"]
    now = datetime.now(UTC).replace(tzinfo=None)
    with session_scope(url) as s:
        teacher = Teacher(name="followup-t", source="org/followup-t", status="ready", spec=SPEC)
        data = Dataset(name="followup-papers", source="/nonexistent/followup.jsonl")
        s.add_all([teacher, data])
        s.flush()
        common = {"teacher_id": teacher.id}
        running = Job(
            kind="distill",
            status="running",
            progress=0.42,
            eta_s=95.0,
            message=STEP,
            params={"steps": 200, "lr": 1e-4, "batch_size": 8, "seq_len": 128, "dataset_id": None},
            started_at=now,
            heartbeat_at=now,  # the reaper leaves it alone for heartbeat_timeout_s (60 s)
            **common,
        )
        on_data = Job(
            kind="distill",
            status="succeeded",
            progress=1.0,
            message="done",
            params={"steps": 3, "dataset_id": data.id, "teacher_correction_steps": 0},
            **common,
        )
        evaluate = Job(
            kind="evaluate",
            status="succeeded",
            progress=1.0,
            params={"dataset_id": None, "split": "test", "max_documents": 3},
            **common,
        )
        imp_job = Job(kind="importance", status="succeeded", progress=1.0, params={}, **common)
        s.add_all([running, on_data, evaluate, imp_job])
        s.flush()
        run = ImportanceRun(
            teacher_id=teacher.id, dataset_id=data.id, params={"samples": 8, "seq_len": 32}, job_id=imp_job.id
        )
        s.add(run)
        s.flush()
        imp_job.importance_run_id = run.id
        # A student named as a bake-off names its candidates (a search's id), of the teacher's whole shape.
        plan = Plan(teacher_id=teacher.id, name="followup-plan", plan={}, messages=[])
        s.add(plan)
        s.flush()
        student = Student(
            name="#1 L4-none.H8-none.F48.D32", teacher_id=teacher.id, plan_id=plan.id, status="ready"
        )
        student.spec = SPEC
        other = Student(
            name="followup-other", teacher_id=teacher.id, plan_id=plan.id, status="ready", spec=SPEC
        )
        s.add_all([student, other])
        s.flush()
        ids = {
            "teacher": teacher.id,
            "dataset": data.id,
            "running": running.id,
            "on_data": on_data.id,
            "evaluate": evaluate.id,
            "imp_job": imp_job.id,
            "run": run.id,
            "plan": plan.id,
            "student": student.id,
            "other": other.id,
        }
    yield ids
    with session_scope(url) as s:
        jobs = [ids[k] for k in ("running", "on_data", "evaluate", "imp_job")]
        s.execute(delete(Event).where(Event.job_id.in_(jobs)))
        s.execute(delete(Job).where(Job.id.in_(jobs)))  # before the run: a job names it
        s.execute(delete(ImportanceRun).where(ImportanceRun.id == ids["run"]))
        s.execute(delete(Student).where(Student.id.in_([ids["student"], ids["other"]])))
        s.execute(delete(Plan).where(Plan.id == ids["plan"]))
        s.execute(delete(Dataset).where(Dataset.id == ids["dataset"]))
        s.execute(delete(Teacher).where(Teacher.id == ids["teacher"]))


def test_a_running_job_says_its_step_once_beside_its_progress(page, live_app, rows):
    page.goto(f"{live_app.url}/#/job/{rows['running']}")
    bar = page.wait_for_selector("[data-testid=job-progress] .progress + .hint")
    assert STEP in bar.inner_text() and "42%" in bar.inner_text(), bar.inner_text()
    page.wait_for_selector("[data-testid=job-log]")
    assert page.inner_text("main, body").count(STEP) == 1  # the params line repeated it
    params = page.inner_text("[data-testid=job-params]")
    assert params.startswith("200 steps on demo corpus · lr 0.0001"), params
    shot(page, "followup-job-running")


def test_a_finished_jobs_params_line_leaves_out_what_says_nothing(page, live_app, rows):
    page.goto(f"{live_app.url}/#/job/{rows['on_data']}")
    page.wait_for_selector("[data-testid=job-log]")
    # no "done" (its status badge says it) and no "teacher corr. 0"
    assert page.inner_text("[data-testid=job-params]") == "3 steps on followup-papers"


def test_the_data_column_names_the_demo_corpus_and_datasets(page, live_app, rows):
    page.goto(f"{live_app.url}/#/runs")
    cell = lambda job: f"[data-testid=runs-table] tr[data-job-id='{rows[job]}'] [data-hp=data]"  # noqa: E731
    page.wait_for_selector(cell("running"))
    assert page.inner_text(cell("running")) == "demo corpus"  # was "–"
    assert page.inner_text(cell("on_data")) == "followup-papers"  # was "dataset <id>"
    assert page.inner_text(cell("evaluate")) == "demo corpus · test · 3 docs"
    assert page.inner_text(cell("imp_job")) == "–"  # a kind whose params name no data
    # A student named by a search's id reads as its shape too.
    shape = f"[data-student-id='{rows['student']}'] [data-testid=student-shape]"
    assert page.inner_text(shape) == "4 layers · h 32 · ffn 48 · 8 heads"
    shot(page, "followup-runs-data")


def focus_by_tab(page, selector: str, limit: int = 80) -> None:
    """Press Tab until `selector` has the focus (fails after `limit` presses)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"document.activeElement?.matches({selector!r})"):
            return
    raise AssertionError(f"{selector} not reached with Tab in {limit} presses")


def test_explorer_runs_open_from_the_keyboard_with_a_visible_focus(page, live_app, rows):
    page.goto(f"{live_app.url}/#/explore")
    link = f"tr[data-run-id='{rows['run']}'] a[data-testid=explore-run]"
    page.wait_for_selector(link)
    assert page.get_attribute(link, "href") == f"#/explore/{rows['run']}"
    # Which run is which: its calibration data and size (the list said only teacher, status and time).
    row = f"tr[data-run-id='{rows['run']}']"
    assert page.inner_text(f"{row} [data-testid=explore-calibration]") == "8 × 32 tokens of followup-papers"
    focus_by_tab(page, link)
    style = page.eval_on_selector(
        link, "el => [getComputedStyle(el).outlineStyle, getComputedStyle(el).outlineWidth]"
    )
    assert style[0] != "none" and style[1] != "0px", style
    # The row under the focused link is marked too (as under the mouse).
    row_bg = page.eval_on_selector(
        f"tr[data-run-id='{rows['run']}'] td:nth-child(2)", "el => getComputedStyle(el).backgroundColor"
    )
    assert row_bg not in ("rgba(0, 0, 0, 0)", "transparent"), row_bg
    shot(page, "followup-explorer-focus")
    page.keyboard.press("Enter")
    page.wait_for_function(f"location.hash === '#/explore/{rows['run']}'")


def test_a_run_of_the_runs_table_opens_from_the_keyboard(page, live_app, rows):
    page.goto(f"{live_app.url}/#/runs")
    link = f"tr[data-job-id='{rows['on_data']}'] a[data-testid=run-link]"
    page.wait_for_selector(link)
    page.focus(f"tr[data-job-id='{rows['on_data']}'] [data-testid=run-select]")  # the tick box just before it
    page.keyboard.press("Tab")
    assert page.evaluate(f"document.activeElement.matches({link!r})")
    page.keyboard.press("Enter")
    page.wait_for_function(f"location.hash === '#/job/{rows['on_data']}'")


def test_bake_off_candidates_read_as_their_shape_with_their_id_kept(page, live_app):
    teacher = ready_teacher(live_app)
    # The names a search gives its candidates (rank and id): opaque on their own.
    names = {"#1 L3-drop.H8-none.F48.D32": DEPTH, "#2 L4-none.H8-none.F32.D32": WIDTH}
    body = {
        "name": "followup bake-off",
        "teacher_id": teacher["id"],
        "candidates": [{"name": name, "plan": plan} for name, plan in names.items()],
        "distill": DISTILL,
        "evaluate": EVALUATE,
        "benchmark": None,
    }
    r = live_app.api.post("/workflows", json=body)
    assert r.status_code == 201, r.text
    wf = r.json()["id"]
    try:
        page.goto(f"{live_app.url}/#/bakeoff/{wf}")
        page.wait_for_selector("[data-testid=candidate-label]")
        shown = {
            row.get_attribute("data-branch"): (
                row.query_selector("[data-testid=candidate-label]").inner_text(),
                row.query_selector("[data-testid=candidate-id]").inner_text(),
            )
            for row in page.query_selector_all("[data-testid=bakeoff-branches] tbody tr[data-branch]")
        }
        # The tiny teacher: 4 layers, hidden 32, MLP 48, 8 heads; DEPTH drops a layer, WIDTH 16 neurons.
        assert shown == {
            "#1 L3-drop.H8-none.F48.D32": (
                "3 layers · h 32 · ffn 48 · 8 heads",
                "#1 L3-drop.H8-none.F48.D32",
            ),
            "#2 L4-none.H8-none.F32.D32": (
                "4 layers · h 32 · ffn 32 · 8 heads",
                "#2 L4-none.H8-none.F32.D32",
            ),
        }, shown
        shot(page, "followup-bakeoff-labels")
    finally:
        live_app.api.post(f"/workflows/{wf}/cancel")


def test_a_search_s_bake_off_is_named_by_shape_on_the_server_its_id_under_it(page, live_app):
    """What the search page sends (candidate_id, no name): the server names each branch and student by
    its shape (shape_label, the same text the page draws), the search id under the label."""
    teacher = ready_teacher(live_app)
    ids = {"L3-drop.H8-none.F48.D32": DEPTH, "L4-none.H8-none.F32.D32": WIDTH}
    body = {
        "name": "followup server names",
        "teacher_id": teacher["id"],
        "candidates": [{"candidate_id": cid, "plan": plan} for cid, plan in ids.items()],
        "distill": DISTILL,
        "evaluate": EVALUATE,
        "benchmark": None,
    }
    r = live_app.api.post("/workflows", json=body)
    assert r.status_code == 201, r.text
    wf = r.json()
    labels = ["3 layers · h 32 · ffn 48 · 8 heads", "4 layers · h 32 · ffn 32 · 8 heads"]
    assert [b["name"] for b in wf["branches"]] == labels
    try:
        page.goto(f"{live_app.url}/#/bakeoff/{wf['id']}")
        page.wait_for_selector("[data-testid=candidate-label]")
        shown = {
            row.get_attribute("data-branch"): (
                row.query_selector("[data-testid=candidate-label]").inner_text(),
                row.query_selector("[data-testid=candidate-id]").inner_text(),
            )
            for row in page.query_selector_all("[data-testid=bakeoff-branches] tbody tr[data-branch]")
        }
        assert shown == {label: (label, cid) for label, cid in zip(labels, ids)}, shown
        shot(page, "followup-bakeoff-server-names")
    finally:
        live_app.api.post(f"/workflows/{wf['id']}/cancel")


def test_the_bake_off_list_names_the_winner_by_shape_with_its_search_id(page, live_app):
    teacher = ready_teacher(live_app)
    body = {
        "name": "followup finished",
        "teacher_id": teacher["id"],
        "candidates": [{"candidate_id": "L3-drop.H8-none.F48.D32", "plan": DEPTH}, {"plan": WIDTH}],
        "distill": DISTILL,
        "evaluate": EVALUATE,
        "benchmark": None,
    }
    r = live_app.api.post("/workflows", json=body)
    assert r.status_code == 201, r.text
    wf = r.json()
    live_app.api.post(f"/workflows/{wf['id']}/cancel")
    winner = wf["branches"][0]["name"]
    assert winner == "3 layers · h 32 · ffn 48 · 8 heads"
    with session_scope(live_app.env["PRUNESCOPE_DATABASE_URL"]) as s:  # as if it had run to its ranking
        row = s.get(Job, wf["id"])
        row.status, row.result = "succeeded", {"winner": winner, "ranking": [], "flips": []}
    page.goto(f"{live_app.url}/#/bakeoff")
    cell = page.locator(f"tr:has(a[href='#/bakeoff/{wf['id']}']) td:has([data-testid=winner-label])")
    cell.wait_for()
    assert cell.locator("[data-testid=winner-label]").inner_text() == winner
    assert cell.locator("div.faint.mono").inner_text() == "L3-drop.H8-none.F48.D32"  # not the name twice
    shot(page, "followup-bakeoff-list-winner")


def test_shape_labels_name_kv_groups_and_uneven_widths(page, live_app):
    page.goto(f"{live_app.url}/#/runs")
    labels = page.evaluate(
        """async () => {
          const { shapeLabel } = await import(new URL("js/searchmath.js", document.baseURI));
          const layer = (ffn, kv) => ({ num_heads: 8, num_kv_heads: kv, intermediate_size: ffn });
          const teacher = { num_layers: 2, hidden_size: 64, num_heads: 8, num_kv_heads: 4, layers: [layer(96, 4), layer(96, 4)] };
          const cut = { ...teacher, layers: [layer(64, 2), layer(96, 2)] };
          return [shapeLabel(teacher, teacher), shapeLabel(cut, teacher), shapeLabel(null)];
        }"""
    )
    assert labels == [
        "2 layers · h 64 · ffn 96 · 8 heads",
        "2 layers · h 64 · ffn 64–96 · 8 heads · 2 KV",
        None,
    ]


def test_students_and_teachers_are_picked_from_the_keyboard(page, live_app, rows):
    """The Runs students list and the Teachers list select a row with Enter (Tab reaches each row); the
    focus stays on it across the list's redraw."""
    page.goto(f"{live_app.url}/#/runs")
    rows_of = [f"tr[data-student-id='{rows[k]}']" for k in ("student", "other")]
    page.wait_for_selector(rows_of[1])
    first, second = sorted(rows_of, key=lambda sel: page.eval_on_selector(sel, "el => el.rowIndex"))
    for sel in (first, second):
        if sel == second:
            page.keyboard.press("Tab")  # from the first row to the next: each row is a stop
        else:
            page.focus(sel)
        assert page.evaluate(f"document.activeElement.matches({sel!r})")
        outline = page.eval_on_selector(sel, "el => getComputedStyle(el).outlineStyle")
        page.keyboard.press("Enter")
        page.wait_for_function(f"document.querySelector({sel!r}).classList.contains('selected')")
        assert page.evaluate(f"document.activeElement.matches({sel!r})")  # kept across the redraw
        assert page.get_attribute(sel, "aria-pressed") == "true"
        sid = sel.split("'")[1]
        assert f"student={sid}" in page.url
        page.wait_for_function(
            f"document.querySelector('[data-testid=student-detail] h2')?.textContent === document.querySelector({sel!r} + ' td').firstChild.textContent"
        )
    assert outline != "none"
    page.goto(f"{live_app.url}/#/teachers")
    row = f"tr[data-teacher-id='{rows['teacher']}']"
    page.wait_for_selector(row)
    page.focus(row)
    page.keyboard.press("Enter")
    page.wait_for_function(f"location.hash.includes('teacher={rows['teacher']}')")
    page.wait_for_function(f"document.querySelector({row!r})?.classList.contains('selected')")


def test_the_study_wizard_starts_on_the_pages_teacher(page, live_app, rows):
    """Compare at ?teacher=N: the depth-vs-width wizard's teacher is N, not the first ready teacher of the
    list (the newest), whose importance run the wizard then looked for in vain; and it follows a teacher
    ticked in the Models list."""
    url = live_app.env["PRUNESCOPE_DATABASE_URL"]
    with session_scope(url) as s:
        newer = Teacher(name="followup-newer", source="org/followup-newer", status="ready", spec=SPEC)
        s.add(newer)
        s.flush()
        newer_id = newer.id
    try:
        for teacher in (rows["teacher"], newer_id):
            page.goto(f"{live_app.url}/#/compare?teacher={teacher}")
            select = page.wait_for_selector("[data-testid=wizard] select[name=teacher_id]")
            assert int(select.input_value()) == teacher
        # Ticking another teacher in Models moves the study to it too (it kept the first one).
        page.click(f"[data-testid=pick-teacher-{rows['teacher']}]")
        page.wait_for_function(f"location.hash.includes('teacher={rows['teacher']}')")
        assert int(select.input_value()) == rows["teacher"]
    finally:
        with session_scope(url) as s:
            s.execute(delete(Teacher).where(Teacher.id == newer_id))
