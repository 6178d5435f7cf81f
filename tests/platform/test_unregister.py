"""DELETE /teachers/{id} and /datasets/{id} (backend/unregister.py): a teacher goes with its importance
runs, plans and finished jobs (rows and the files Prunescope wrote), never its source folder nor anyone
else's rows; refused (nothing changed) while a student of it exists or a job of it is unfinished. A dataset
goes while nothing names it; refused, naming them, while an importance run, a teacher's protocol or a job
does. Both databases (the `client` fixture)."""

from __future__ import annotations

from pathlib import Path

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

API = "/api/v1"
TABLES = (Teacher, Dataset, ImportanceRun, Plan, Student, Job, Event, MetricPoint, BenchmarkResult, Artifact)


def counts(url: str) -> dict:
    with session_scope(url) as s:
        return {m.__name__: s.scalar(select(func.count()).select_from(m)) for m in TABLES}


def _file(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "weights.bin").write_bytes(b"x")
    return directory


def make_teacher(url: str, data: Path, name: str, dataset_id: int) -> dict:
    """A ready teacher from a user folder, as the worker leaves it after inspect, an importance run, a plan
    with a preview, an evaluation: jobs with events, metrics, results, artifact rows and files."""
    source = _file(data / "models" / name)  # the user's model: must survive the delete
    artifacts = data / "artifacts"
    with session_scope(url) as s:
        teacher = Teacher(name=name, source=str(source), status="ready", spec=tiny_spec().summary())
        s.add(teacher)
        s.flush()
        tid = teacher.id
        jobs = {}
        for kind in ("inspect", "importance", "preview", "evaluate"):
            job = Job(kind=kind, params={}, status="succeeded", teacher_id=tid)
            s.add(job)
            s.flush()
            jobs[kind] = job.id
            s.add(Event(job_id=job.id, teacher_id=tid, type="status", data={}))
        teacher.job_id = jobs["inspect"]
        run = ImportanceRun(teacher_id=tid, dataset_id=dataset_id, params={}, job_id=jobs["importance"])
        s.add(run)
        s.flush()
        run.artifact = f"importance/{run.id}"
        s.get(Job, jobs["importance"]).importance_run_id = run.id
        s.add(Artifact(job_id=jobs["importance"], kind="importance", key=run.artifact))
        plan = Plan(
            teacher_id=tid, importance_run_id=run.id, name=name, plan={"drop_layers": [3]}, messages=[]
        )
        s.add(plan)
        s.flush()
        s.get(Job, jobs["preview"]).plan_id = plan.id
        s.add(MetricPoint(job_id=jobs["preview"], name="ppl", step=1, value=1.0))
        s.add(BenchmarkResult(job_id=jobs["evaluate"], kind="evaluate", teacher_id=tid, result={}))
        ids = {"teacher": tid, "run": run.id, "plan": plan.id, "jobs": jobs}
    return {**ids, "source": source, "scores": _file(artifacts / f"importance/{ids['run']}")}


def _dataset(url: str, source: str) -> int:
    with session_scope(url) as s:
        dataset = Dataset(name="corpus", source=source)
        s.add(dataset)
        s.flush()
        return dataset.id


def _setup(api_env) -> tuple[str, Path, int, dict, dict]:
    url, data = api_env["PRUNESCOPE_DATABASE_URL"], Path(api_env["PRUNESCOPE_DATA_DIR"])
    dataset = _dataset(url, "demo")
    return (
        url,
        data,
        dataset,
        make_teacher(url, data, "doomed", dataset),
        make_teacher(url, data, "kept", dataset),
    )


def test_delete_teacher_takes_what_it_owns(client, api_env):
    url, data, _, doomed, kept = _setup(api_env)
    before = counts(url)

    assert client.delete(f"{API}/teachers/{doomed['teacher']}").status_code == 204
    assert client.get(f"{API}/teachers/{doomed['teacher']}").status_code == 404
    assert client.get(f"{API}/plans/{doomed['plan']}").status_code == 404
    assert client.get(f"{API}/importance-runs/{doomed['run']}").status_code == 404
    for job_id in doomed["jobs"].values():
        assert client.get(f"{API}/jobs/{job_id}").status_code == 404
    after = counts(url)
    assert {k: before[k] - after[k] for k in before} == {
        **dict.fromkeys(before, 0),
        "Teacher": 1,
        "ImportanceRun": 1,
        "Plan": 1,
        "Job": 4,
        "Event": 4,
        "MetricPoint": 1,
        "BenchmarkResult": 1,
        "Artifact": 1,
    }
    assert not doomed["scores"].exists()
    assert doomed["source"].exists() and (doomed["source"] / "weights.bin").exists()  # the user's model stays
    assert kept["scores"].exists() and kept["source"].exists()
    assert client.get(f"{API}/teachers/{kept['teacher']}").json()["status"] == "ready"
    assert client.get(f"{API}/plans/{kept['plan']}").status_code == 200
    assert client.delete(f"{API}/teachers/{doomed['teacher']}").status_code == 404


def test_delete_teacher_refused_while_used(client, api_env):
    url, data, _, doomed, _ = _setup(api_env)
    with session_scope(url) as s:
        s.add(Student(name="s", plan_id=doomed["plan"], teacher_id=doomed["teacher"], status="ready"))
        s.add(Student(name="s2", plan_id=doomed["plan"], teacher_id=doomed["teacher"], status="failed"))
        s.flush()
        students = sorted(s.scalars(select(Student.id)))
    before = counts(url)
    r = client.delete(f"{API}/teachers/{doomed['teacher']}")
    assert r.status_code == 409
    assert f"teacher {doomed['teacher']} has students {students[0]}, {students[1]}: delete them first" in (
        error_text(r)
    )
    assert counts(url) == before and doomed["scores"].exists()

    with session_scope(url) as s:
        for student in s.scalars(select(Student)):
            s.delete(student)
        s.get(Job, doomed["jobs"]["importance"]).status = "running"
    before = counts(url)
    r = client.delete(f"{API}/teachers/{doomed['teacher']}")
    assert r.status_code == 409 and f"importance job {doomed['jobs']['importance']} (running)" in error_text(
        r
    )
    assert counts(url) == before and doomed["scores"].exists()

    # A preview queued on one of its plans blocks it too (the job row names the plan).
    with session_scope(url) as s:
        s.get(Job, doomed["jobs"]["importance"]).status = "cancelled"
        s.get(Job, doomed["jobs"]["preview"]).status = "queued"
    r = client.delete(f"{API}/teachers/{doomed['teacher']}")
    assert r.status_code == 409 and f"preview job {doomed['jobs']['preview']} (queued)" in error_text(r)
    assert counts(url) == before


def test_promoted_teacher_goes_without_its_students_weights(client, api_env):
    """A teacher promoted from a student loads the student's weights in place: deleting it leaves them
    (they are the student's), after which the student, refused before, can go."""
    url, data, _, parent, _ = _setup(api_env)
    weights = _file(data / "artifacts" / "students" / "1" / "model")
    with session_scope(url) as s:
        student = Student(name="s", plan_id=parent["plan"], teacher_id=parent["teacher"], status="ready")
        student.path = "students/1/model"
        s.add(student)
        s.flush()
        promoted = Teacher(name="p", source=str(weights), status="ready", parent_student_id=student.id)
        s.add(promoted)
        s.flush()
        sid, pid = student.id, promoted.id
    r = client.delete(f"{API}/students/{sid}")
    assert r.status_code == 409 and f"teacher {pid}" in error_text(r)

    assert client.delete(f"{API}/teachers/{pid}").status_code == 204
    assert (weights / "weights.bin").exists()
    assert client.delete(f"{API}/students/{sid}").status_code == 204


def test_delete_dataset(client, api_env):
    url, data, used, doomed, kept = _setup(api_env)
    corpus = data / "corpus.txt"
    corpus.write_text("some text\n")
    unused = _dataset(url, str(corpus))
    assert client.delete(f"{API}/datasets/{unused}").status_code == 204
    assert client.get(f"{API}/datasets/{unused}").status_code == 404
    assert corpus.read_text() == "some text\n"  # the user's data stays
    assert client.delete(f"{API}/datasets/{unused}").status_code == 404

    # Both teachers' importance runs were computed on `used`.
    before = counts(url)
    r = client.delete(f"{API}/datasets/{used}")
    assert r.status_code == 409
    assert f"importance runs {doomed['run']}, {kept['run']} (of teachers {doomed['teacher']}, " in error_text(
        r
    )
    assert counts(url) == before


def test_delete_dataset_refused_while_named(client, api_env):
    url, *_ = _setup(api_env)
    with session_scope(url) as s:
        teacher = s.scalars(select(Teacher)).first()
        tid = teacher.id
    other = _dataset(url, "demo")
    # A teacher's evaluation protocol measures on it.
    with session_scope(url) as s:
        s.get(Teacher, tid).eval_protocol = {"dataset_id": other, "split": "test"}
    before = counts(url)
    r = client.delete(f"{API}/datasets/{other}")
    assert r.status_code == 409 and f"the evaluation protocol of teacher {tid} measures on it" in error_text(
        r
    )
    assert counts(url) == before

    # PATCH back to the demo corpus; then jobs naming it (a finished distillation's parameters, a queued
    # evaluation's protocol) still keep it.
    r = client.patch(f"{API}/teachers/{tid}", json={"eval_protocol": {"dataset_id": None}})
    assert r.status_code == 200, r.text
    with session_scope(url) as s:
        plan = s.scalars(select(Plan)).first()
        student = Student(name="s", plan_id=plan.id, teacher_id=tid, status="ready")
        s.add(student)
        s.flush()
        distill = Job(kind="distill", params={"dataset_id": other}, status="succeeded", student_id=student.id)
        evaluate = Job(kind="evaluate", params={"protocol": {"dataset_id": other}}, status="queued")
        unrelated = Job(kind="evaluate", params={"protocol": {"dataset_id": other + 100}}, status="queued")
        s.add_all([distill, evaluate, unrelated])
        s.flush()
        sid, named = student.id, (distill.id, evaluate.id)
    before = counts(url)
    r = client.delete(f"{API}/datasets/{other}")
    assert r.status_code == 409
    assert (
        f"jobs {named[0]} (distill of student {sid}, succeeded), {named[1]} (evaluate, queued) use it"
        in error_text(r)
    )
    assert counts(url) == before

    with session_scope(url) as s:
        for job_id in named:
            s.delete(s.get(Job, job_id))
    assert client.delete(f"{API}/datasets/{other}").status_code == 204


def test_a_user_appearing_meanwhile_is_a_409_not_a_500(client, api_env, monkeypatch):
    """A run created between the checks and the delete (simulated: the check sees nothing) trips the
    foreign key; the answer is a 409 and nothing is deleted."""
    from backend import unregister

    url, _, used, doomed, _ = _setup(api_env)
    monkeypatch.setattr(unregister, "dataset_users", lambda db, dataset_id: [])
    before = counts(url)
    r = client.delete(f"{API}/datasets/{used}")
    assert r.status_code == 409 and f"dataset {used} was used meanwhile" in error_text(r)
    assert counts(url) == before


def test_a_job_appearing_meanwhile_keeps_the_teacher(client, api_env, monkeypatch):
    """A job of the teacher queued between the check and the delete (simulated: the check passes it)
    trips the foreign key: 409, nothing deleted, its files kept."""
    from backend import unregister

    url, _, _, doomed, _ = _setup(api_env)
    with session_scope(url) as s:
        s.add(Job(kind="evaluate", params={}, status="queued", teacher_id=doomed["teacher"]))
    monkeypatch.setattr(unregister, "refuse_if_active", lambda jobs, what: None)
    real_select = unregister.select

    def hide_queued(*what):  # the teacher's job list misses the queued job, as if made after it
        query = real_select(*what)
        return query.where(Job.status != "queued") if what[0] is Job else query

    monkeypatch.setattr(unregister, "select", hide_queued)
    before = counts(url)
    r = client.delete(f"{API}/teachers/{doomed['teacher']}")
    assert r.status_code == 409 and f"teacher {doomed['teacher']} was used meanwhile" in error_text(r)
    assert counts(url) == before and doomed["scores"].exists()
