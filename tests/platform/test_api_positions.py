"""A job's seq_len against the teacher's positions, which the spec its inspect job stored knows
(worker.engine.spec.spec_max_positions: the engine's CLI checks read the same limit from the config)."""

from __future__ import annotations

from sqlalchemy import select

from backend.db import session_scope
from backend.models import Dataset, Job, Plan, Teacher
from tests.platform.helpers import student_rows
from tests.platform.test_api import counts
from tests.tiny_models import tiny_spec


def test_an_importance_run_longer_than_the_teacher_is_refused(client, api_env):
    """seq_len past the teacher's positions was queued; the worker then scored positions the teacher never
    saw. A spec stored before it knew the limit has nothing to check."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    with session_scope(url) as s:
        teacher = Teacher(name="t", source="org/model", status="ready", spec=tiny_spec().summary())
        dataset = Dataset(name="d", source="demo")
        s.add_all([teacher, dataset])
        s.flush()
        body = {"teacher_id": teacher.id, "dataset_id": dataset.id, "seq_len": 129}  # 128 positions
    before = counts(url)
    r = client.post("/api/v1/importance-runs", json=body)
    assert r.status_code == 422, r.text
    (entry,) = r.json()["detail"]
    assert entry["loc"] == ["body", "seq_len"] and entry["nearby"] == [128], entry
    assert entry["msg"] == f"129 is over the 128 positions of teacher {body['teacher_id']}; at most 128"
    assert counts(url) == before
    assert client.post("/api/v1/importance-runs", json={**body, "seq_len": 128}).status_code == 201
    with session_scope(url) as s:  # a summary stored before `max_positions` existed
        teacher = s.get(Teacher, body["teacher_id"])
        teacher.spec = {k: v for k, v in teacher.spec.items() if k != "max_positions"}
    assert client.post("/api/v1/importance-runs", json=body).status_code == 201


def test_a_distillation_or_evaluation_longer_than_its_model_is_refused(client, api_env):
    """A distillation's seq_len against the student's positions, an evaluation's windows against the
    measured model's (the student's, or the teacher's measured itself)."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    with session_scope(url) as s:
        teacher, students = student_rows(s, [("s", "ready")])
        students["s"].spec = tiny_spec().summary()  # 128 positions, as the teacher's
        dataset = Dataset(name="d", source="demo")
        s.add(dataset)
        s.flush()
        ids = {"teacher": teacher.id, "student": students["s"].id, "dataset": dataset.id}
    jobs = {
        f"student {ids['student']}": [
            {"kind": "distill", "student_id": ids["student"], "params": {"dataset_id": ids["dataset"]}},
            {"kind": "evaluate", "student_id": ids["student"], "params": {"max_documents": 2}},
        ],
        f"teacher {ids['teacher']}": [{"kind": "evaluate", "teacher_id": ids["teacher"], "params": {}}],
    }
    before = counts(url)
    for model, bodies in jobs.items():
        for body in bodies:
            r = client.post("/api/v1/jobs", json={**body, "params": {**body["params"], "seq_len": 129}})
            assert r.status_code == 422, r.text
            (entry,) = r.json()["detail"]
            assert entry["loc"] == ["body", "params", "seq_len"] and entry["nearby"] == [128], entry
            assert entry["msg"] == f"129 is over the 128 positions of {model}; at most 128"
            fits = client.post(
                "/api/v1/jobs?validate_only=true", json={**body, "params": {**body["params"], "seq_len": 128}}
            )
            assert fits.status_code == 200, fits.text
    assert counts(url) == before


def test_a_students_evaluation_stands_when_its_teacher_cannot_be_measured_on_it(client, api_env):
    """A student's first evaluation also queues its teacher's on that protocol; windows longer than the
    teacher's positions leave the teacher's number missing, and the student's job (sent already) stands."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    with session_scope(url) as s:
        teacher, students = student_rows(s, [("s", "ready")])  # the student's spec is unknown here
        ids = teacher.id, students["s"].id
    body = {"kind": "evaluate", "student_id": ids[1], "params": {"seq_len": 256, "stride": 128}}
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    with session_scope(url) as s:
        kinds = [(j.kind, j.student_id) for j in s.scalars(select(Job))]
    assert kinds == [("evaluate", ids[1])]  # no teacher evaluation on 256-token windows (128 positions)


def test_a_preview_longer_than_the_teacher_is_refused(client, api_env):
    """A what-if preview scores the teacher and the masked teacher on sequences of its seq_len."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    with session_scope(url) as s:
        teacher, _ = student_rows(s, [])  # a tiny teacher (128 positions) and its plan
        plan_id = s.scalars(select(Plan.id).where(Plan.teacher_id == teacher.id)).one()
    before = counts(url)
    r = client.post(f"/api/v1/plans/{plan_id}/preview", json={"samples": 2, "seq_len": 129})
    assert r.status_code == 422, r.text
    (entry,) = r.json()["detail"]
    assert entry["loc"] == ["body", "seq_len"] and entry["nearby"] == [128], entry
    assert counts(url) == before
    assert (
        client.post(f"/api/v1/plans/{plan_id}/preview", json={"samples": 2, "seq_len": 128}).status_code
        == 202
    )
