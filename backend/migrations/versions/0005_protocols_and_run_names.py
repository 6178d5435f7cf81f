"""teachers keep an evaluation protocol; jobs get a name and tags

`teachers.eval_protocol`: the protocol (split, context, stride, documents) every perplexity of the
teacher and its students is measured on by default (worker/engine/eval_protocol.py); null: the default.
`jobs.name`, `jobs.tags`: the runs table's rename and tags (PATCH /jobs/{id}).

Revision ID: 0005
Revises: 0004 (workflows)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = {
    "teachers": [sa.Column("eval_protocol", sa.JSON(), nullable=True)],
    "jobs": [sa.Column("name", sa.String(200), nullable=True), sa.Column("tags", sa.JSON(), nullable=True)],
}


def upgrade() -> None:
    # Nullable columns without constraints: a plain ADD COLUMN on both SQLite and PostgreSQL.
    for table, columns in COLUMNS.items():
        for column in columns:
            op.add_column(table, column)


def downgrade() -> None:
    # SQLite drops columns by copying the table; the copy keeps AUTOINCREMENT (migration 0002).
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table, table_kwargs={"sqlite_autoincrement": True}) as batch:
            for column in columns:
                batch.drop_column(column.name)
