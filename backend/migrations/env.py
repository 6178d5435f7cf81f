"""Alembic environment: the URL comes from `backend.migrate.alembic_config` (or PRUNESCOPE_DATABASE_URL)."""

from __future__ import annotations

from alembic import context

from backend.db import make_engine
from backend.models import Base
from backend.settings import Settings

config = context.config
url = config.attributes.get("database_url") or Settings().resolved_database_url


def run_migrations_online() -> None:
    engine = make_engine(url)
    sqlite = url.startswith("sqlite")
    with engine.connect() as connection:
        if sqlite:  # batch mode rebuilds tables: foreign keys must not fire while a parent is copied
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction:
            connection.commit()  # end the one SQLAlchemy began, before Alembic opens its own
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=sqlite,  # SQLite needs batch mode for ALTER
        )
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"migration left rows with dangling foreign keys: {broken[:5]}")
    engine.dispose()


run_migrations_online()
