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
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=url.startswith("sqlite"),  # SQLite needs batch mode for ALTER
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
