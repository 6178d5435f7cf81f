"""A job's seq_len against the teacher's positions, which the spec its inspect job stored knows
(worker.engine.spec.spec_max_positions: the engine's CLI checks read the same limit from the config)."""

from __future__ import annotations

from backend.db import session_scope
from backend.models import Dataset, Teacher
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
