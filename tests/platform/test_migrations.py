"""Migrations: ids are never reused after a deletion (on SQLite too, where the default rowid would hand
the highest freed id to the next row), and upgrading a database made by an older revision keeps its
rows and their foreign keys."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import delete

from backend.db import engine_for, session_scope
from backend.migrate import upgrade
from backend.models import Event, Job, Teacher


def add_job(url: str) -> int:
    with session_scope(url) as s:
        job = Job(kind="distill", params={}, queue="cpu")
        s.add(job)
        s.flush()
        return job.id


def test_deleted_ids_are_not_reused(database_url):
    ids = [add_job(database_url) for _ in range(3)]
    with session_scope(database_url) as s:
        s.execute(delete(Job).where(Job.id == ids[-1]))
    assert add_job(database_url) > ids[-1]


def test_upgrade_from_the_first_revision_keeps_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0001")
    with engine_for(url).begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO teachers (id, name, source, trust_remote_code, status, created_at) "
                "VALUES (1, 't', '/m', 0, 'ready', '2026-01-01')"
            )
        )
        for job_id in (1, 2, 3):
            conn.execute(
                sa.text(
                    "INSERT INTO jobs (id, kind, status, progress, params, queue, attempts, "
                    "cancel_requested, teacher_id, created_at) VALUES "
                    f"({job_id}, 'distill', 'succeeded', 1.0, '{{}}', 'gpu', 1, 0, 1, '2026-01-01')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO events (job_id, teacher_id, type, data, created_at) "
                    f"VALUES ({job_id}, 1, 'status', '{{}}', '2026-01-01')"
                )
            )
        conn.execute(sa.text("DELETE FROM events WHERE job_id = 3"))
        conn.execute(sa.text("DELETE FROM jobs WHERE id = 3"))
    engine_for(url).dispose()

    upgrade(url)
    with session_scope(url) as s:
        assert s.get(Teacher, 1).name == "t"
        assert [j.teacher_id for j in s.query(Job).order_by(Job.id)] == [1, 1]
        assert [e.job_id for e in s.query(Event).order_by(Event.id)] == [1, 2]
    # An id freed before the upgrade is gone from SQLite's memory; from now on none is handed out twice.
    first = add_job(url)
    with session_scope(url) as s:
        s.execute(delete(Job).where(Job.id == first))
    assert add_job(url) == first + 1
    with engine_for(url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # still enforced for the app
        sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'jobs'").scalar()
    assert "AUTOINCREMENT" in sql and "FOREIGN KEY" in sql
