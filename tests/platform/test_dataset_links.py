"""A symlink inside a dataset folder that leads out of PRUNESCOPE_ALLOWED_ROOTS is never read: POST
/datasets refuses it (403 naming `source` and the file), and a worker refuses it if it appears later
(worker/handlers.py `_dataset`, with the engine's one roots rule, worker/engine/streaming.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from backend.db import session_scope
from backend.models import Dataset
from tests.conftest import settings_from
from worker.engine.streaming import OutsideRoots
from worker.handlers import _dataset


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
    assert _dataset(rt, params).source == str(folder)  # in the roots: read
    (folder / "nested").mkdir()
    (folder / "nested" / "b.jsonl").symlink_to(outside_file)
    with pytest.raises(OutsideRoots, match=f"{folder / 'nested' / 'b.jsonl'} resolves to {outside_file}"):
        _dataset(rt, params)
