"""ids are never reused on SQLite

Plans, students and their jobs can be deleted. SQLite's default rowid reuses the highest freed id,
so a shared link (#/job/12) or an SSE client's Last-Event-ID would then point at a new row, and a
stream resumed after a deletion could skip new events. AUTOINCREMENT keeps ids increasing, as
PostgreSQL sequences already do (nothing to change there).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Children after parents is not needed (foreign keys are off while migrating, see env.py).
TABLES = (
    "teachers",
    "datasets",
    "importance_runs",
    "plans",
    "students",
    "jobs",
    "artifacts",
    "benchmark_results",
    "events",
    "metric_points",
)


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        # Batch mode copies the table (rows, indexes, constraints) into one created with the new option.
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ):
            pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
