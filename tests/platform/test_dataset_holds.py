"""Creating a job that names a dataset in its parameters and deleting that dataset exclude each other
(backend/dataset_holds.py): the interleavings that used to leave a job naming a deleted dataset end in a
404 at the job's `dataset_id` or a 409 on the delete naming the job, on SQLite and PostgreSQL. So do
pointing a teacher's evaluation protocol at a dataset (POST /teachers, PATCH /teachers/{id}) and deleting
it: a protocol naming a deleted dataset would break every later evaluation of the teacher."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import event, func, select

from backend import lifecycle, unregister
from backend.api import teachers
from backend.db import engine_for, session_factory, session_scope
from backend.dispatch import choose_queue
from backend.models import Dataset, Job, Plan, Teacher
from tests.platform.helpers import student_rows
from worker.engine.eval_protocol import EvalProtocol

API = "/api/v1"


@pytest.fixture
def rows(api_env) -> dict:
    """A ready teacher, its explicit plan, and a dataset nothing names yet."""
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher, _ = student_rows(s, [])
        dataset = Dataset(name="d", source="demo")
        s.add(dataset)
        s.flush()
        plan_id = s.scalar(select(Plan.id).where(Plan.teacher_id == teacher.id))
        return {"teacher": teacher.id, "plan": plan_id, "dataset": dataset.id}


def jobs_naming(url: str, dataset_id: int) -> list[int]:
    with session_scope(url) as s:
        return [j.id for j in s.scalars(select(Job)) if (j.params or {}).get("dataset_id") == dataset_id]


def dataset_exists(url: str, dataset_id: int) -> bool:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).where(Dataset.id == dataset_id)) == 1


def test_a_dataset_deleted_after_the_jobs_check_refuses_the_job(client, api_env, rows, monkeypatch):
    """The preview checked its dataset; a delete then found no job naming it and committed; the job must
    not be saved naming it (it was: 202, a job whose dataset was gone)."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]

    def delete_then_route(settings, kind, params):
        with session_scope(url) as s:
            unregister.delete_dataset(s, s.get(Dataset, rows["dataset"]))
        return choose_queue(settings, kind, params)

    monkeypatch.setattr("backend.api.plans.choose_queue", delete_then_route)
    r = client.post(f"{API}/plans/{rows['plan']}/preview", json={"dataset_id": rows["dataset"]})
    assert r.status_code == 404, r.text
    [entry] = r.json()["detail"]
    assert entry["loc"] == ["body", "dataset_id"], entry
    assert entry["msg"] == f"Dataset {rows['dataset']} not found (deleted meanwhile)"
    assert not dataset_exists(url, rows["dataset"]) and jobs_naming(url, rows["dataset"]) == []


WRITES = ("INSERT", "UPDATE", "DELETE")


def _writing(statement: str) -> bool:
    """A statement that writes or locks rows: a request issuing one has passed its checks."""
    text = statement.lstrip().upper()
    return text.startswith(WRITES) or " FOR UPDATE" in text or " FOR SHARE" in text


def _meeting(url: str, first, request):
    """`first(session)` written, not yet committed, when `request()` comes (in a thread, which then waits
    on it); commits once the request has passed its checks and reached its first write or row lock (the
    app's engine, in this process, is `engine_for(url)`: a fixed pause lost the race on a loaded machine,
    the request then checking after the commit); returns (what `first` returned, the request's answer)."""
    session = session_factory(url)()
    answers: list = []
    reached = threading.Event()

    def note(_conn, _cursor, statement, *_args):  # the app's threads only run statements meanwhile
        if _writing(statement):
            reached.set()

    try:
        written = first(session)
        thread = threading.Thread(target=lambda: answers.append(request()))
        event.listen(engine_for(url), "before_cursor_execute", note)
        try:
            thread.start()
            assert reached.wait(30), "the request reached no write"
            time.sleep(0.3)  # it now waits for this transaction (a row lock, or SQLite's write lock)
        finally:
            event.remove(engine_for(url), "before_cursor_execute", note)
        session.commit()
    finally:
        session.close()
    thread.join(60)
    [answer] = answers
    return written, answer


def test_a_delete_meeting_a_job_being_created_is_refused(client, api_env, rows):
    """A job is inserted, not yet committed, when the delete comes: the delete waits for it (PostgreSQL's
    row lock, SQLite's write lock) and then refuses, naming it (it went through: 204)."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    job, answer = _meeting(
        url,
        lambda session: lifecycle.create(
            session, "distill", {"dataset_id": rows["dataset"]}, queue="cpu", teacher_id=rows["teacher"]
        ),
        lambda: client.delete(f"{API}/datasets/{rows['dataset']}"),
    )
    assert answer.status_code == 409, answer.text
    assert f"job {job.id} (distill, queued) uses it" in answer.json()["detail"][0]["msg"]
    assert dataset_exists(url, rows["dataset"])


def test_a_job_meeting_a_delete_under_way_is_refused(client, api_env, rows):
    """The dataset's delete is written, not yet committed, when a job naming it is created: the job waits
    for it and then finds the dataset gone (it was saved naming the deleted dataset: 202)."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    body = {"dataset_id": rows["dataset"]}
    _, answer = _meeting(  # the request checks the dataset (still there for it), then waits to write its job
        url,
        lambda session: unregister.delete_dataset(session, session.get(Dataset, rows["dataset"])),
        lambda: client.post(f"{API}/plans/{rows['plan']}/preview", json=body),
    )
    assert answer.status_code == 404, answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", "dataset_id"]
    assert jobs_naming(url, rows["dataset"]) == []


def teachers_measuring_on(url: str, dataset_id: int) -> list[int]:
    with session_scope(url) as s:
        return [
            t.id
            for t in s.scalars(select(Teacher))
            if (t.eval_protocol or {}).get("dataset_id") == dataset_id
        ]


def protocol_request(client, rows: dict, how: str):
    """POST a new teacher, or PATCH the fixture's, with an evaluation protocol on the dataset."""
    protocol = {"dataset_id": rows["dataset"]}
    if how == "post":
        return client.post(
            f"{API}/teachers", json={"name": "t2", "source": "demo", "eval_protocol": protocol}
        )
    return client.patch(f"{API}/teachers/{rows['teacher']}", json={"eval_protocol": protocol})


def assert_refused_at_protocol(answer, url: str, dataset_id: int) -> None:
    assert answer.status_code == 404, answer.text
    [entry] = answer.json()["detail"]
    assert entry["loc"] == ["body", "eval_protocol", "dataset_id"], entry
    assert entry["msg"] == f"Dataset {dataset_id} not found (deleted meanwhile)"
    assert teachers_measuring_on(url, dataset_id) == []
    with session_scope(url) as s:  # a refused POST leaves no teacher, nor its inspect job, behind
        assert s.scalars(select(Teacher.name)).all() == ["t"]
        assert s.scalars(select(Job.id).where(Job.kind == "inspect")).all() == []


@pytest.mark.parametrize("how", ["post", "patch"])
def test_a_dataset_deleted_after_the_protocols_check_refuses_the_protocol(
    client, api_env, rows, monkeypatch, how
):
    """The teacher's request checked the protocol's dataset; a delete then found no protocol naming it
    and committed; the protocol must not be saved naming it (it was: 201 / 200)."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    checked = teachers.check_protocol_here

    def check_then_delete(protocol, settings, db):
        out = checked(protocol, settings, db)
        with session_scope(url) as s:
            unregister.delete_dataset(s, s.get(Dataset, rows["dataset"]))
        return out

    monkeypatch.setattr(teachers, "check_protocol_here", check_then_delete)
    answer = protocol_request(client, rows, how)
    assert_refused_at_protocol(answer, url, rows["dataset"])
    assert not dataset_exists(url, rows["dataset"])


def test_a_delete_meeting_a_protocol_being_written_is_refused(client, api_env, rows):
    """A teacher's protocol is changed to the dataset, not yet committed, when the delete comes: the delete
    waits for it and then refuses, naming the teacher (on PostgreSQL it went through: 204)."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    protocol = EvalProtocol(dataset_id=rows["dataset"]).model_dump()
    _, answer = _meeting(
        url,
        lambda session: teachers.write_protocol(session, session.get(Teacher, rows["teacher"]), protocol),
        lambda: client.delete(f"{API}/datasets/{rows['dataset']}"),
    )
    assert answer.status_code == 409, answer.text
    assert (
        f"the evaluation protocol of teacher {rows['teacher']} measures on it"
        in answer.json()["detail"][0]["msg"]
    )
    assert dataset_exists(url, rows["dataset"])


@pytest.mark.parametrize("how", ["post", "patch"])
def test_a_protocol_meeting_a_delete_under_way_is_refused(client, api_env, rows, how):
    """The dataset's delete is written, not yet committed, when a teacher's protocol is pointed at it: the
    request waits for it and then finds the dataset gone (it was saved naming the deleted dataset)."""
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    _, answer = _meeting(
        url,
        lambda session: unregister.delete_dataset(session, session.get(Dataset, rows["dataset"])),
        lambda: protocol_request(client, rows, how),
    )
    assert_refused_at_protocol(answer, url, rows["dataset"])
