"""The app's own state is never a source: its SQLite database (and journal files), the embedded broker's
folder and the lock files lie under an allowed root by default (the data folder), but POST /datasets and
POST /teachers refuse them (403 at body.source, nothing registered), and a worker refuses a data file
linked to one after registration. Before, the database registered as a dataset: the API's sniff of its
first bytes (open, close) dropped the API's locks on it, the next process to close the database deleted
the write-ahead log the API still used, and requests failed with 500s and lost acknowledged writes."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import func, select

from backend.db import session_scope
from backend.models import Dataset, Teacher
from tests.conftest import settings_from
from worker.engine.roots import OutsideRoots, Roots
from worker.engine.shards import check_source_inside


def rows(url: str, model) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(model))


def broker_file(api_env) -> Path:
    """A file in the data folder's `redis/` (where the embedded broker keeps its append-only file)."""
    folder = Path(api_env["PRUNESCOPE_DATA_DIR"]) / "redis"
    folder.mkdir()
    (folder / "appendonly.aof").write_text("*2\r\n$6\r\nSELECT\r\n")
    return folder / "appendonly.aof"


def refused(client, path: str, what: str = "datasets") -> str:
    r = client.post(f"/api/v1/{what}", json={"name": "mine", "source": path})
    assert r.status_code == 403, r.text
    (entry,) = r.json()["detail"]
    assert entry["loc"] == ["body", "source"], entry
    assert "the app's own state" in entry["msg"], entry
    return entry["msg"]


def test_the_broker_and_lock_files_are_not_sources(client, api_env):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    aof = broker_file(api_env)
    refused(client, str(aof))
    refused(client, str(aof.parent))
    locks = Path(api_env["PRUNESCOPE_DATA_DIR"]) / "locks"
    locks.mkdir()
    (locks / "cpu.txt").write_text("text")
    refused(client, str(locks / "cpu.txt"))
    # A link to one, inside an allowed folder, is refused the same way, naming the link.
    corpus = Path(api_env["PRUNESCOPE_DATA_DIR"]).parent / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("plain text")
    (corpus / "b.txt").symlink_to(aof)
    assert str(corpus / "b.txt") in refused(client, str(corpus))
    assert rows(url, Dataset) == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_database_and_its_journal_are_not_sources(client, api_env):
    url = api_env["PRUNESCOPE_DATABASE_URL"]
    database = Path(url.removeprefix("sqlite:///"))
    assert database.parent == Path(api_env["PRUNESCOPE_ALLOWED_ROOTS"])  # inside the roots: refused anyway
    msg = refused(client, str(database))
    assert str(database) in msg
    wal = database.with_name(database.name + "-wal")
    wal.write_bytes(b"x")  # whether or not SQLite holds one at this moment
    refused(client, str(wal))
    model = database.parent / "model"
    model.mkdir()
    (model / "config.json").symlink_to(database)
    assert str(model / "config.json") in refused(client, str(model), "teachers")
    assert rows(url, Dataset) == 0 and rows(url, Teacher) == 0
    with closing(sqlite3.connect(database)) as db:  # still the app's healthy database
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert client.get("/api/v1/datasets").status_code == 200


def test_a_worker_refuses_a_data_file_linked_to_the_app_state_later(client, api_env):
    corpus = Path(api_env["PRUNESCOPE_DATA_DIR"]).parent / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("plain text")
    r = client.post("/api/v1/datasets", json={"name": "c", "source": str(corpus)})
    assert r.status_code == 201, r.text
    settings = settings_from(api_env)
    check_source_inside(r.json()["source"], settings.roots)  # fine so far
    (corpus / "b.txt").symlink_to(broker_file(api_env))
    with pytest.raises(
        OutsideRoots, match=r"data file .*b\.txt resolves to .*appendonly\.aof, part of the app's own state"
    ):
        check_source_inside(r.json()["source"], settings.roots)


def test_the_private_paths_follow_the_settings(tmp_path):
    from backend.settings import Settings

    data = tmp_path / "data"
    sqlite = Settings(data_dir=data, device_lock_dir=tmp_path / "held")
    private = set(sqlite.private_paths)
    database = (data / "prunescope.db").resolve()
    assert {
        database,
        database.with_name("prunescope.db-wal"),
        database.with_name("prunescope.db-shm"),
    } <= private
    assert (tmp_path / "held").resolve() in private and (data / "redis").resolve() in private
    server = Settings(data_dir=data, database_url="postgresql+psycopg://u@h/db")
    assert not any(p.name.startswith("prunescope.db") for p in server.private_paths)
    # Adding the artifact store to the roots (a worker reading a promoted student) keeps them private.
    roots = sqlite.roots + [tmp_path / "artifacts"]
    assert isinstance(roots, Roots) and roots.private == sqlite.roots.private
