"""Fixtures of the platform tests.

`live_app`: one running app (API + worker, SQLite, Redis: tests/conftest.py's `start_live_app`) for all
the platform modules of a session instead of one started and stopped for each module (about 7 s of CPU
each, 25-40 s on the busy 2-core box); tests/conftest.py `settle_jobs` cancels whatever a module leaves
queued or running. Not tests/ui's `shared_live_app`: those modules then start on an app without the
platform modules' rows. Modules whose app needs settings of its own (heartbeat timeouts, sweep intervals,
no worker) still start their own with `start_live_app`.

`database_url`: a migrated, empty database of each test's own on SQLite and PostgreSQL, made by copying
one migrated template instead of migrating again for every test; `api_env` and `client` run on it.

Running the Alembic migrations took about 1.5 s on SQLite and 1 s on PostgreSQL per test (about 80 tests
use this fixture, each on both databases). The migrations now run once per session and database kind:
- SQLite: a template file is migrated once; each test gets a byte copy of it (SQLite's backup API).
- PostgreSQL: a template database is migrated once; each test gets its own database made by
  `CREATE DATABASE ... TEMPLATE` (a copy of its files), dropped afterwards. Where the server refuses
  CREATE DATABASE (a user without CREATEDB), each test migrates its own schema as before.
Every test still starts from a freshly migrated database of its own; only the way it is made changed.
"""

from __future__ import annotations

import sqlite3
import uuid
from contextlib import closing

import pytest

from tests.conftest import (
    DB_KINDS,
    platform_env,
    postgres_base_url,
    postgres_schema,
    settings_from,
    settle_jobs,
    start_live_app,
    stop_live_app,
)


@pytest.fixture(scope="session")
def _platform_live_app(tmp_path_factory, redis_url):
    app = start_live_app(tmp_path_factory.mktemp("platform-live"), redis_url)
    yield app
    stop_live_app(app)


@pytest.fixture(scope="module")
def live_app(_platform_live_app):
    yield _platform_live_app
    left = settle_jobs(_platform_live_app)
    if left:
        print(f"cancelled jobs left by the module: {left}")


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory):
    from backend.db import engine_for
    from backend.migrate import upgrade

    path = tmp_path_factory.mktemp("db-template") / "prunescope.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    engine_for(url).dispose()
    return path


def _admin_engine():
    import sqlalchemy as sa

    from backend.db import normalize_url

    return sa.create_engine(normalize_url(postgres_base_url()), isolation_level="AUTOCOMMIT")


def _database_url(name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(postgres_base_url()).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def _postgres_template():
    """The name of a migrated template database, or None where this user may not create databases."""
    import sqlalchemy as sa

    from backend.db import engine_for
    from backend.migrate import upgrade

    if "postgresql" not in DB_KINDS:
        yield None
        return
    name = f"ps_tmpl_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.DBAPIError:
        admin.dispose()
        yield None
        return
    try:
        url = _database_url(name)
        upgrade(url)
        engine_for(url).dispose()  # a template must have no connections when it is copied
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=DB_KINDS)
def database_url(request, tmp_path):
    """A migrated, empty database of this test's own: SQLite always, PostgreSQL when reachable."""
    if request.param == "sqlite":
        template = request.getfixturevalue("_sqlite_template")
        path = tmp_path / "prunescope.db"
        with closing(sqlite3.connect(template)) as src, closing(sqlite3.connect(path)) as dst:
            src.backup(dst)
        yield f"sqlite:///{path}"
        return
    template = request.getfixturevalue("_postgres_template")
    if template is None:
        from backend.migrate import upgrade

        with postgres_schema() as url:
            upgrade(url)
            yield url
        return
    import sqlalchemy as sa

    from backend.db import engine_for

    name = f"ps_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    url = _database_url(name)
    try:
        yield url
    finally:
        engine_for(url).dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def api_env(database_url, redis_url, tmp_path) -> dict[str, str]:
    data = tmp_path / "data"
    data.mkdir()
    return platform_env(database_url, redis_url, data)


@pytest.fixture
def client(api_env):
    """An in-process API (FastAPI TestClient) on `database_url` (both SQLite and PostgreSQL)."""
    from fastapi.testclient import TestClient

    from backend.app import create_app

    with TestClient(create_app(settings_from(api_env)), base_url="http://127.0.0.1") as c:
        yield c
