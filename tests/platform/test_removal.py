"""DELETE /students/{id} and /plans/{id}: everything a student owns goes (jobs, events, metrics,
results, artifact rows, weights, checkpoints), nothing of anyone else; refused while jobs are unfinished
or while a student still uses the plan."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from backend.db import session_scope
from backend.models import (
    Artifact,
    BenchmarkResult,
    Dataset,
    Event,
    ImportanceRun,
    Job,
    MetricPoint,
    Plan,
    Student,
    Teacher,
)
from tests.platform.helpers import error_text
from tests.tiny_models import tiny_spec

TABLES = (Plan, Student, Job, Event, MetricPoint, BenchmarkResult, Artifact)


def counts(url: str) -> dict:
    with session_scope(url) as s:
        return {m.__name__: s.scalar(select(func.count()).select_from(m)) for m in TABLES}


def make_student(url: str, artifacts: Path, teacher_id: int, name: str) -> dict:
    """A plan and a ready student as the worker leaves them: prune + distill jobs with their rows/files."""
    with session_scope(url) as s:
        plan = Plan(teacher_id=teacher_id, name=name, plan={"drop_layers": [3]}, stats=None, messages=[])
        s.add(plan)
        s.flush()
        student = Student(name=name, plan_id=plan.id, teacher_id=teacher_id, status="ready")
        s.add(student)
        s.flush()
        student.path = f"students/{student.id}/model"
        jobs = {}
        for kind in ("prune", "distill", "evaluate"):
            job = Job(kind=kind, params={}, status="succeeded", teacher_id=teacher_id, student_id=student.id)
            job.plan_id = plan.id if kind == "prune" else None
            s.add(job)
            s.flush()
            jobs[kind] = job.id
            s.add(Event(job_id=job.id, teacher_id=teacher_id, type="status", data={}))
        student.job_id = jobs["prune"]
        distill = jobs["distill"]
        s.add(MetricPoint(job_id=distill, name="kd_loss", step=1, value=1.0))
        s.add(Artifact(job_id=jobs["prune"], kind="student", key=student.path))
        s.add(Artifact(job_id=distill, kind="distilled", key=f"jobs/{distill}/model"))
        s.add(BenchmarkResult(job_id=jobs["evaluate"], kind="evaluate", student_id=student.id, result={}))
        ids = {"plan": plan.id, "student": student.id, "jobs": jobs}
    dirs = [artifacts / f"students/{ids['student']}/model", artifacts / f"jobs/{distill}/model"]
    dirs.append(artifacts / f"checkpoints/job-{distill}")
    for d in dirs:
        d.mkdir(parents=True)
        (d / "weights.bin").write_bytes(b"x")
    return {**ids, "dirs": dirs}


@pytest.fixture
def two_students(api_env):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    with session_scope(url) as s:
        teacher = Teacher(name="t", source="org/model", status="ready", spec=tiny_spec().summary())
        s.add(teacher)
        s.flush()
        tid = teacher.id
    artifacts = Path(api_env["PRUNESCOPE_ARTIFACTS"])
    return url, make_student(url, artifacts, tid, "doomed"), make_student(url, artifacts, tid, "kept")


def test_delete_student_then_plan(client, two_students):
    url, doomed, kept = two_students
    api = "/api/v1"

    # Its plan cannot go first: a student is built from it.
    r = client.delete(f"{api}/plans/{doomed['plan']}")
    assert r.status_code == 409 and f"student(s) {doomed['student']}" in error_text(r)

    # A queued job blocks the delete (a worker would write into rows that are gone); nothing changes.
    with session_scope(url) as s:
        s.get(Job, doomed["jobs"]["distill"]).status = "queued"
    before = counts(url)
    r = client.delete(f"{api}/students/{doomed['student']}")
    assert r.status_code == 409 and f"distill job {doomed['jobs']['distill']} (queued)" in error_text(r)
    assert counts(url) == before and all(d.exists() for d in doomed["dirs"])

    with session_scope(url) as s:
        s.get(Job, doomed["jobs"]["distill"]).status = "cancelled"
    assert client.delete(f"{api}/students/{doomed['student']}").status_code == 204
    assert client.get(f"{api}/students/{doomed['student']}").status_code == 404
    after = counts(url)
    removed = {k: before[k] - after[k] for k in before}
    # 3 jobs, each with one event; one metric point, one result, two artifact rows; the plan stays.
    assert removed == {
        "Plan": 0,
        "Student": 1,
        "Job": 3,
        "Event": 3,
        "MetricPoint": 1,
        "BenchmarkResult": 1,
        "Artifact": 2,
    }
    assert not any(d.exists() for d in doomed["dirs"])
    assert not any(d.parent.exists() for d in doomed["dirs"][:2])  # no empty students/<id>/, jobs/<id>/
    assert all(d.exists() for d in kept["dirs"])
    assert client.get(f"{api}/students/{kept['student']}").json()["status"] == "ready"

    assert client.delete(f"{api}/plans/{doomed['plan']}").status_code == 204
    assert client.get(f"{api}/plans/{doomed['plan']}").status_code == 404
    assert client.delete(f"{api}/plans/{doomed['plan']}").status_code == 404
    assert client.delete(f"{api}/students/{doomed['student']}").status_code == 404
    assert counts(url) == {**after, "Plan": after["Plan"] - 1}
    assert client.get(f"{api}/plans/{kept['plan']}").status_code == 200


def test_delete_a_finished_job(client, two_students):
    url, doomed, kept = two_students
    api = "/api/v1"
    jobs = doomed["jobs"]
    with session_scope(url) as s:
        teacher = s.scalars(select(Teacher)).first()
        dataset = Dataset(name="d", source="demo")
        s.add(dataset)
        s.flush()
        inspect = Job(kind="inspect", params={}, status="succeeded", teacher_id=teacher.id)
        importance = Job(kind="importance", params={}, status="succeeded", teacher_id=teacher.id)
        s.add_all([inspect, importance])
        s.flush()
        teacher.job_id = inspect.id
        run = ImportanceRun(teacher_id=teacher.id, dataset_id=dataset.id, params={}, job_id=importance.id)
        s.add(run)
        s.flush()
        owners = {inspect.id: f"teacher {teacher.id}", importance.id: f"importance run {run.id}"}
        s.get(Job, jobs["distill"]).status = "running"
    owners[jobs["prune"]] = f"student {doomed['student']}"
    before = counts(url)

    assert client.delete(f"{api}/jobs/999999").status_code == 404
    r = client.delete(f"{api}/jobs/{jobs['distill']}")
    assert r.status_code == 409 and "is running; cancel it first" in error_text(r)
    # A job whose output is still in use (the student's weights, the teacher's spec, the run's scores).
    for job_id, owner in owners.items():
        r = client.delete(f"{api}/jobs/{job_id}")
        assert r.status_code == 409 and owner in error_text(r), (owner, r.status_code, r.text)
    assert counts(url) == before and all(d.exists() for d in doomed["dirs"])

    with session_scope(url) as s:
        s.get(Job, jobs["distill"]).status = "cancelled"
    assert client.delete(f"{api}/jobs/{jobs['distill']}").status_code == 204
    assert client.get(f"{api}/jobs/{jobs['distill']}").status_code == 404
    after = counts(url)
    removed = {k: before[k] - after[k] for k in before}
    assert removed == {**dict.fromkeys(before, 0), "Job": 1, "Event": 1, "MetricPoint": 1, "Artifact": 1}
    model, distilled, checkpoints = doomed["dirs"]
    assert model.exists() and not distilled.exists() and not checkpoints.exists()
    assert not distilled.parent.exists()  # no empty jobs/<id>/

    assert client.delete(f"{api}/jobs/{jobs['evaluate']}").status_code == 204  # its result row goes too
    assert counts(url) == {
        **after,
        "Job": after["Job"] - 1,
        "Event": after["Event"] - 1,
        "BenchmarkResult": after["BenchmarkResult"] - 1,
    }
    assert client.delete(f"{api}/jobs/{jobs['evaluate']}").status_code == 404
    assert client.get(f"{api}/students/{doomed['student']}").json()["status"] == "ready"
    assert all(d.exists() for d in kept["dirs"])
    assert client.get(f"{api}/jobs/{kept['jobs']['distill']}").status_code == 200


def make_run(url: str, artifacts: Path, teacher_id: int) -> dict:
    """A finished importance run as the worker leaves it: its job, an event, the scores' artifact row
    and files."""
    with session_scope(url) as s:
        dataset = Dataset(name="d", source="demo")
        s.add(dataset)
        s.flush()
        run = ImportanceRun(teacher_id=teacher_id, dataset_id=dataset.id, params={})
        s.add(run)
        s.flush()
        job = Job(
            kind="importance", params={}, status="succeeded", teacher_id=teacher_id, importance_run_id=run.id
        )
        s.add(job)
        s.flush()
        run.job_id, run.artifact = job.id, f"importance/{run.id}"
        s.add(Event(job_id=job.id, teacher_id=teacher_id, type="status", data={}))
        s.add(Artifact(job_id=job.id, kind="importance", key=run.artifact))
        ids = {"run": run.id, "job": job.id, "teacher": teacher_id}
    scores = artifacts / f"importance/{ids['run']}"
    scores.mkdir(parents=True)
    (scores / "scores.npz").write_bytes(b"x")
    return {**ids, "scores": scores}


def test_delete_an_importance_run(client, two_students, api_env):
    """DELETE /importance-runs/{id}: refused while a plan was filled from it, another job reads it or its
    own job is unfinished (nothing changes); then the run, its job and its score files go, nothing else.
    Before, DELETE /jobs of its job said "delete that [run] instead", and runs had no DELETE."""
    url, doomed, kept = two_students
    api = "/api/v1"
    run = make_run(
        url,
        Path(api_env["PRUNESCOPE_ARTIFACTS"]),
        client.get(f"{api}/plans/{kept['plan']}").json()["teacher_id"],
    )
    r = client.delete(f"{api}/jobs/{run['job']}")
    assert r.status_code == 409 and f"importance run {run['run']}" in error_text(r)

    with session_scope(url) as s:  # a plan filled from it, and a search that reads it
        s.get(Plan, kept["plan"]).importance_run_id = run["run"]
        search = Job(
            kind="search",
            params={},
            status="succeeded",
            teacher_id=run["teacher"],
            importance_run_id=run["run"],
        )
        s.add(search)
        s.flush()
        search_id = search.id
    before = counts(url)
    r = client.delete(f"{api}/importance-runs/{run['run']}")
    assert r.status_code == 409 and f"filled plan {kept['plan']}: delete it first" in error_text(r), r.text
    with session_scope(url) as s:
        s.get(Plan, kept["plan"]).importance_run_id = None
    r = client.delete(f"{api}/importance-runs/{run['run']}")
    assert r.status_code == 409 and f"read by job {search_id}: delete it first" in error_text(r), r.text
    assert client.delete(f"{api}/jobs/{search_id}").status_code == 204
    with session_scope(url) as s:
        s.get(Job, run["job"]).status = "running"
    r = client.delete(f"{api}/importance-runs/{run['run']}")
    assert r.status_code == 409 and f"importance job {run['job']} (running)" in error_text(r), r.text
    assert counts(url) == {**before, "Job": before["Job"] - 1, "Event": before["Event"]}
    assert run["scores"].exists()

    with session_scope(url) as s:
        s.get(Job, run["job"]).status = "succeeded"
    assert client.delete(f"{api}/importance-runs/{run['run']}").status_code == 204
    assert client.get(f"{api}/importance-runs/{run['run']}").status_code == 404
    assert client.get(f"{api}/jobs/{run['job']}").status_code == 404
    assert not run["scores"].exists() and not run["scores"].parent.exists()
    after = counts(url)
    assert {k: before[k] - after[k] for k in before} == {
        **{k: 0 for k in before},
        "Job": 2,
        "Event": 1,
        "Artifact": 1,
    }
    assert all(d.exists() for d in kept["dirs"] + doomed["dirs"])
    assert client.delete(f"{api}/importance-runs/{run['run']}").status_code == 404
