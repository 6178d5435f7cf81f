"""A symlink inside a teacher's folder that leads out of PRUNESCOPE_ALLOWED_ROOTS is never read: POST
/teachers refuses it (403 naming `source` and the file), and a worker refuses such a link put there later
(worker/job_io.py `check_teacher_files`, at every job's start, with the one roots rule of worker/engine/roots.py). A promoted
student's weights, read in place from the artifact store, are allowed there; a node of a job over several
nodes checks its own machine's copy of the folder (worker/node_member.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from backend.db import session_scope
from backend.models import Plan, Student, Teacher
from tests.conftest import settings_from
from worker.engine.roots import OutsideRoots
from worker.job_io import check_teacher_files


@pytest.fixture
def outside_config(tmp_path_factory):
    """A config.json outside the allowed roots (they are the parent of the test's data folder)."""
    secret = tmp_path_factory.mktemp("elsewhere") / "config.json"
    secret.write_text('{"model_type": "llama"}')
    return secret


def model_folder(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


def teacher_rows(url: str) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(Teacher))


def test_a_link_out_of_the_roots_is_refused_at_registration(client, api_env, tmp_path, outside_config):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").symlink_to(outside_config)
    r = client.post("/api/v1/teachers", json={"name": "t", "source": str(folder)})
    assert r.status_code == 403, r.text
    (entry,) = r.json()["detail"]
    assert entry["loc"] == ["body", "source"] and str(folder / "config.json") in entry["msg"], entry
    assert str(outside_config) in entry["msg"], entry
    assert teacher_rows(api_env["PRUNESCOPE_DATABASE_URL"]) == 0


def test_a_worker_refuses_a_link_added_after_registration(client, api_env, tmp_path, outside_config):
    """The job fails at its start naming the link; nothing read the folder's files."""
    folder = model_folder(tmp_path / "model")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "tokenizer.json").write_text("{}")
    (folder / "tokenizer.json").symlink_to(tmp_path / "shared" / "tokenizer.json")  # inside: fine
    r = client.post("/api/v1/teachers", json={"name": "t", "source": str(folder)})
    assert r.status_code == 201, r.text
    rt = SimpleNamespace(settings=settings_from(api_env), url=api_env["PRUNESCOPE_DATABASE_URL"])
    job = SimpleNamespace(teacher_id=r.json()["id"], student_id=None)
    check_teacher_files(rt, job)  # every file inside the roots
    (folder / "model.safetensors").symlink_to(outside_config)
    with pytest.raises(
        OutsideRoots, match=f"model file {folder / 'model.safetensors'} resolves to {outside_config}"
    ):
        check_teacher_files(rt, job)
    # A job of a student of that teacher reads it too.
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        plan = Plan(teacher_id=job.teacher_id, name="p", plan={"drop_layers": [1]}, messages=[])
        s.add(plan)
        s.flush()
        student = Student(name="s", teacher_id=job.teacher_id, plan_id=plan.id, status="ready")
        s.add(student)
        s.flush()
        student_id = student.id
    with pytest.raises(OutsideRoots, match="model.safetensors"):
        check_teacher_files(rt, SimpleNamespace(teacher_id=None, student_id=student_id))


def test_a_promoted_students_weights_are_read_from_the_artifact_store(client, api_env, tmp_path):
    """A promoted teacher's source is in the artifact store, which need not lie under the allowed roots."""
    weights = model_folder(tmp_path / "store" / "students" / "1" / "model")
    with session_scope(api_env["PRUNESCOPE_DATABASE_URL"]) as s:
        teacher = Teacher(name="p", source=str(weights), status="ready")
        s.add(teacher)
        s.flush()
        job = SimpleNamespace(teacher_id=teacher.id, student_id=None)
    roots = {**api_env, "PRUNESCOPE_ALLOWED_ROOTS": str(tmp_path / "data")}  # the store is not under it
    store = SimpleNamespace(
        url=api_env["PRUNESCOPE_DATABASE_URL"],
        settings=settings_from({**roots, "PRUNESCOPE_ARTIFACTS": str(tmp_path / "store")}),
    )
    check_teacher_files(store, job)
    elsewhere = SimpleNamespace(url=api_env["PRUNESCOPE_DATABASE_URL"], settings=settings_from(roots))
    with pytest.raises(OutsideRoots, match="model folder"):
        check_teacher_files(elsewhere, job)


def test_a_node_whose_copy_of_the_folder_links_out_stops_and_says_why(
    api_env, tmp_path, outside_config, monkeypatch
):
    """A job over several nodes: node 1 checks its own machine's copy of the teacher's folder once the
    gang opens. A link out of its roots stops it before its ranks start, with a note in the gang that node
    0 reports when its ranks give up waiting (worker.multi_rank), and a line in the job's log."""
    from backend.models import Event, Job
    from worker.gang import Gang
    from worker.node_member import execute_member

    for key, value in api_env.items():  # a member reads its settings from its worker's environment
        monkeypatch.setenv(key, value)
    folder = model_folder(tmp_path / "model")
    (folder / "model.safetensors").symlink_to(outside_config)
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    with session_scope(url) as s:
        teacher = Teacher(name="t", source=str(folder), status="ready")
        s.add(teacher)
        s.flush()
        job = Job(
            kind="evaluate",
            params={"nodes": 2},
            queue="cpu",
            status="running",
            attempts=1,
            teacher_id=teacher.id,
        )
        s.add(job)
        s.flush()
        job_id = job.id
    gang = Gang.of(settings_from(api_env), job_id, 1, 2)
    assert gang.open("127.0.0.1:29500")  # node 0 formed the gang and runs the job
    try:
        assert execute_member(job_id, 1, 1, 2, "cpu") == "failed"
        note = gang.stopped_note()
        assert note.startswith("node 1 (worker ") and f"model file {folder / 'model.safetensors'}" in note, (
            note
        )
        with session_scope(url) as s:
            logs = [
                e.data["msg"]
                for e in s.scalars(select(Event).where(Event.job_id == job_id, Event.type == "log"))
            ]
        assert any(line.startswith("[node 1] model file") for line in logs), logs
    finally:
        for key in gang.client.scan_iter(f"{gang.base}*"):
            gang.client.delete(key)
