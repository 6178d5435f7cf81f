"""teachers promoted from students record their lineage

A distilled (or pruned) student can become the teacher of the next round (POST /students/{id}/promote).
The teacher row keeps which student and which distill job its weights come from.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = ("parent_student_id", "parent_distill_job_id")


def upgrade() -> None:
    # Nullable columns without constraints: a plain ADD COLUMN on both SQLite and PostgreSQL.
    for name in COLUMNS:
        op.add_column("teachers", sa.Column(name, sa.Integer(), nullable=True))


def downgrade() -> None:
    # SQLite drops columns by copying the table; the copy keeps AUTOINCREMENT (migration 0002).
    with op.batch_alter_table("teachers", table_kwargs={"sqlite_autoincrement": True}) as batch:
        for name in COLUMNS:
            batch.drop_column(name)
