"""A workflow's cut is checked for memory as POST /students checks one (backend.memcheck.check_prune):
POST /workflows refuses (409 at the candidate, nothing written) a candidate whose cut fits no live
worker, and a cut step that comes to fit none later (workers come and go) fails its branch at the
cut with the planner's reason, leaving no prune job and no student behind. The registry entries are
fake (tests/platform/test_memory_check.py's), the teacher an 8B-shaped row (no weights needed)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from backend import lifecycle
from backend.db import session_scope
from backend.models import Job, Plan, Student, Teacher, WorkflowStep
from backend.schemas import DistillParams, EvaluateParams
from backend.workflows.advance import advance
from tests.conftest import settings_from
from tests.platform.helpers import error_text
from tests.platform.test_memory_check import GiB, with_memory
from tests.platform.test_routing import counts, fake_worker, forget_worker
from tests.real_shapes import llama_3_1_8b

# An 8B float32 teacher cut with out_of_core=auto needs about 3.9 GiB (one tensor at a time, out of
# core): a worker with 1 GiB free fits no cut, one with 20 GiB free fits it.
SMALL, LARGE = 1 * GiB, 20 * GiB
PLAN = {"drop_layers": list(range(8, 32))}


def cpu_worker(api_env, free: int) -> dict:
    return with_memory(fake_worker(api_env, "cpu", ["cpu", "default"]), api_env, "cpu", 64 * GiB, free)


@pytest.fixture
def api_env(api_env) -> dict[str, str]:
    """No sweep in this module's app: its tests advance by hand, and a sweep between their opening a
    workflow and their advance took the cut step first (CI, PostgreSQL: the advance found nothing to do)."""
    return {**api_env, "PRUNESCOPE_WORKFLOW_SWEEP_S": "0"}


@pytest.fixture
def teacher_id(api_env) -> int:
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher = Teacher(name="t", source="org/model", status="ready", spec=llama_3_1_8b().summary())
        s.add(teacher)
        s.flush()
        return teacher.id


def open_bakeoff(api_env, teacher_id: int) -> int:
    """A one-candidate bake-off on the CPU as rows (as if POST /workflows made it while a worker that
    fits was live), its cut step not made yet: the test's advance meets the registry it sets up."""
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        plan = Plan(teacher_id=teacher_id, name="depth", plan=PLAN, messages=[])
        s.add(plan)
        s.flush()
        params = {
            "definition": "bakeoff",
            "teacher_id": teacher_id,
            "candidates": [{"name": "depth", "plan_id": plan.id, "plan_version": plan.version}],
            "distill": {"steps": 1},
            "evaluate": {},
            "benchmark": None,
            "device": "cpu",
        }
        return lifecycle.open_workflow(s, params, teacher_id=teacher_id).id


def advance_once(api_env, workflow_id: int) -> list[int]:
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        return [j.id for j in advance(s, settings_from(api_env), workflow_id)]


def children(url: str, workflow_id: int) -> list[Job]:
    with session_scope(url) as s:
        return list(s.scalars(select(Job).where(Job.parent_id == workflow_id)))


def students(url: str) -> list[Student]:
    with session_scope(url) as s:
        return list(s.scalars(select(Student)))


def test_a_cut_that_fits_no_worker_fails_its_branch_at_the_cut_and_leaves_nothing(
    client, api_env, teacher_id
):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    workflow_id = open_bakeoff(api_env, teacher_id)
    small = cpu_worker(api_env, SMALL)
    assert advance_once(api_env, workflow_id) == []
    assert children(url, workflow_id) == [] and students(url) == []  # no prune job, no student
    with session_scope(url) as s:
        rows = list(s.scalars(select(WorkflowStep).where(WorkflowStep.workflow_id == workflow_id)))
        assert [(r.step, r.job_id) for r in rows] == [("cut", None)]
        assert "this prune job needs" in rows[0].error and "'cpu' queue" in rows[0].error, rows[0].error
    wf = client.get(f"/api/v1/workflows/{workflow_id}").json()
    assert wf["status"] == "failed", wf
    (branch,) = wf["branches"]
    assert branch["status"] == "failed" and branch["step"] == "cut" and branch["student_id"] is None
    assert "depth, step cut: could not queue the prune job: this prune job needs" in wf["error"], wf["error"]
    assert "more than any live worker on the 'cpu' queue" in wf["error"], wf["error"]

    # A worker that fits comes: the retry cuts the branch's student (a new try of the step).
    forget_worker(api_env, small)
    big = cpu_worker(api_env, LARGE)
    r = client.post(f"/api/v1/workflows/{workflow_id}/retry")
    assert r.status_code == 202, r.text
    (cut,) = children(url, workflow_id)
    (student,) = students(url)
    assert cut.kind == "prune" and cut.student_id == student.id and student.job_id == cut.id
    assert student.status == "pending" and cut.status == "queued"
    forget_worker(api_env, big)


def test_a_cut_that_fits_is_created_with_its_student(client, api_env, teacher_id):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    workflow_id = open_bakeoff(api_env, teacher_id)
    big = cpu_worker(api_env, LARGE)
    (job_id,) = advance_once(api_env, workflow_id)
    (cut,) = children(url, workflow_id)
    (student,) = students(url)
    assert cut.id == job_id and cut.kind == "prune" and cut.status == "queued"
    assert cut.params["out_of_core"] == "auto" and cut.params["device"] == "cpu"
    assert cut.student_id == student.id and student.job_id == cut.id and student.name == "depth"
    wf = client.get(f"/api/v1/workflows/{workflow_id}").json()
    assert wf["status"] == "running" and wf["branches"][0]["student_id"] == student.id, wf
    forget_worker(api_env, big)


def test_create_refuses_a_candidate_whose_cut_fits_no_worker_and_writes_nothing(client, api_env, teacher_id):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    small = cpu_worker(api_env, SMALL)
    body = {
        "teacher_id": teacher_id,
        "candidates": [{"name": "depth", "plan": PLAN}, {"name": "shallow", "plan": {"drop_layers": [0]}}],
        "benchmark": None,
        "device": "cpu",
    }
    before = counts(url)
    for suffix in ("?validate_only=true", ""):
        r = client.post("/api/v1/workflows" + suffix, json=body)
        assert r.status_code == 409, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "candidates", 0], r.text
        detail = error_text(r)
        assert "candidate 'depth': this prune job needs" in detail and "'cpu' queue" in detail, detail
        assert counts(url) == before  # no workflow, no plan, no job, no student
    forget_worker(api_env, small)
    big = cpu_worker(api_env, LARGE)
    r = client.post("/api/v1/workflows", json=body)
    assert r.status_code == 201, r.text
    wf = r.json()
    assert [b["steps"][0]["status"] for b in wf["branches"]] == ["queued", "queued"], wf
    assert len(students(url)) == 2
    forget_worker(api_env, big)


def finish_step(url: str, job_id: int, student_spec: dict | None = None) -> None:
    """Mark a child succeeded as its worker would (the cut also gives its student a spec)."""
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        job.status = "succeeded"
        if student_spec is not None:
            s.get(Student, job.student_id).spec = student_spec


def test_later_steps_are_checked_as_post_jobs_checks_them(client, api_env, teacher_id):
    """The evaluation and the distillation after the cut meet memcheck.check_job with the cut's student:
    one that fits no worker fails its branch at that step with the planner's reason, creating no job."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    workflow_id = open_bakeoff(api_env, teacher_id)
    with session_scope(url) as s:  # the settings as POST /workflows validates them
        wf = s.get(Job, workflow_id)
        wf.params = {
            **wf.params,
            "distill": DistillParams(steps=1).model_dump(),
            "evaluate": EvaluateParams().model_dump(),
        }
    big = cpu_worker(api_env, LARGE)
    (cut_id,) = advance_once(api_env, workflow_id)
    # The 8-layer student of an 8B teacher: ~10.6 GiB to evaluate, ~72 GiB to distil (fp32, CPU).
    finish_step(url, cut_id, llama_3_1_8b(num_layers=8).summary())
    forget_worker(api_env, big)
    small = cpu_worker(api_env, SMALL)
    assert advance_once(api_env, workflow_id) == []
    wf = client.get(f"/api/v1/workflows/{workflow_id}").json()
    assert wf["status"] == "failed" and wf["branches"][0]["step"] == "evaluate_pruned", wf
    assert "step evaluate_pruned: could not queue the evaluate job: this evaluation needs" in wf["error"]
    assert [j.kind for j in children(url, workflow_id)] == ["prune"]

    forget_worker(api_env, small)
    big = cpu_worker(api_env, LARGE)
    assert client.post(f"/api/v1/workflows/{workflow_id}/retry").status_code == 202
    (evaluate,) = [j for j in children(url, workflow_id) if j.kind == "evaluate"]
    finish_step(url, evaluate.id)
    assert advance_once(api_env, workflow_id) == []  # 20 GiB evaluates the student but cannot distil it
    wf = client.get(f"/api/v1/workflows/{workflow_id}").json()
    assert wf["status"] == "failed" and wf["branches"][0]["step"] == "distill", wf
    assert "step distill: could not queue the distill job: this distillation needs" in wf["error"], wf[
        "error"
    ]
    assert sorted(j.kind for j in children(url, workflow_id)) == ["evaluate", "prune"]
    forget_worker(api_env, big)
