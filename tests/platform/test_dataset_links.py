"""A symlink inside a dataset folder that leads out of PRUNESCOPE_ALLOWED_ROOTS is never read: POST
/datasets refuses it (403 naming `source` and the file), and a worker refuses it if it appears later
(worker/job_io.py `job_dataset`, with the engine's one roots rule, worker/engine/streaming.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from backend.db import session_scope
from backend.models import Dataset
from tests.conftest import settings_from
from worker.engine.roots import OutsideRoots
from worker.job_io import job_dataset


@pytest.fixture
def outside_file(tmp_path_factory):
    """A text file outside the allowed roots (they are the test's tmp_path)."""
    secret = tmp_path_factory.mktemp("elsewhere") / "secret.txt"
    secret.write_text("another user's words")
    return secret


def dataset_rows(url: str) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(Dataset))


def corpus(folder):
    folder.mkdir()
    (folder / "a.txt").write_text("a dataset holds text")
    return folder


def test_a_link_out_of_the_roots_is_refused_at_registration(client, api_env, tmp_path, outside_file):
    folder = corpus(tmp_path / "corpus")
    (folder / "b.txt").symlink_to(outside_file)
    r = client.post("/api/v1/datasets", json={"name": "d", "source": str(folder)})
    assert r.status_code == 403, r.text
    (entry,) = r.json()["detail"]
    assert entry["loc"] == ["body", "source"] and str(folder / "b.txt") in entry["msg"], entry
    assert dataset_rows(api_env["PRUNESCOPE_DATABASE_URL"]) == 0


def test_a_link_inside_the_roots_is_read(client, tmp_path):
    elsewhere = corpus(tmp_path / "elsewhere")
    folder = corpus(tmp_path / "corpus")
    (folder / "b.txt").symlink_to(elsewhere / "a.txt")
    (folder / "sub").symlink_to(elsewhere, target_is_directory=True)
    r = client.post("/api/v1/datasets", json={"name": "d", "source": str(folder)})
    assert r.status_code == 201, r.text


def test_a_worker_refuses_a_link_added_after_registration(client, api_env, tmp_path, outside_file):
    folder = corpus(tmp_path / "corpus")
    r = client.post("/api/v1/datasets", json={"name": "d", "source": str(folder)})
    assert r.status_code == 201, r.text
    rt = SimpleNamespace(url=api_env["PRUNESCOPE_DATABASE_URL"], settings=settings_from(api_env))
    params = {"dataset_id": r.json()["id"]}
    assert job_dataset(rt, params).source == str(folder)  # in the roots: read
    (folder / "nested").mkdir()
    (folder / "nested" / "b.jsonl").symlink_to(outside_file)
    with pytest.raises(OutsideRoots, match=f"{folder / 'nested' / 'b.jsonl'} resolves to {outside_file}"):
        job_dataset(rt, params)


def test_a_streamed_job_over_a_link_added_later_is_refused_at_submit(client, api_env, tmp_path, outside_file):
    """A streamed job lists the dataset's files when it is submitted: a link out of the roots is a 403 at
    its dataset_id then, not a failure at the job's start (nothing is written)."""
    from backend.models import ImportanceRun, Job
    from tests.platform.helpers import student_rows

    url = api_env["PRUNESCOPE_DATABASE_URL"]
    folder = corpus(tmp_path / "corpus")
    dataset_id = client.post("/api/v1/datasets", json={"name": "d", "source": str(folder)}).json()["id"]
    with session_scope(url) as s:
        teacher, _ = student_rows(s, [])
        teacher_id = teacher.id
    (folder / "b.txt").symlink_to(outside_file)
    body = {"teacher_id": teacher_id, "dataset_id": dataset_id, "stream": True, "samples": 2, "seq_len": 16}
    r = client.post("/api/v1/importance-runs", json=body)
    assert r.status_code == 403, r.text
    (entry,) = r.json()["detail"]
    assert entry["loc"] == ["body", "dataset_id"] and str(folder / "b.txt") in entry["msg"], entry
    with session_scope(url) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
        assert s.scalar(select(func.count()).select_from(ImportanceRun)) == 0
    (folder / "b.txt").unlink()
    assert client.post("/api/v1/importance-runs", json=body).status_code == 201
