"""plan names are unique per teacher; students keep the search candidate they were cut from

`plans`: a unique index on (teacher_id, name), so two requests saving the same name at once (a search
candidate saved twice) cannot both insert. Plans already sharing a name with an earlier plan of their
teacher are renamed first, deterministically: the oldest (lowest id) keeps the name, the next ones become
"name (2)", "name (3)"... (numbers a name of that teacher already holds are skipped).
`students.candidate_id`: the search candidate (its id in the search report) a workflow cut the student from.

Revision ID: 0006
Revises: 0005 (protocols and run names)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEX = "uq_plans_teacher_name"
MAX_NAME = 200  # plans.name


def numbered(name: str, number: int) -> str:
    """`name (number)` within the column's length (the name is cut, never the number)."""
    suffix = f" ({number})"
    return name[: MAX_NAME - len(suffix)] + suffix


def renames(rows: list[tuple[int, int, str]]) -> dict[int, str]:
    """New names of the plans (id, teacher_id, name) that repeat an earlier plan's name of their teacher."""
    taken = {(teacher, name) for _, teacher, name in rows}
    seen: set[tuple[int, str]] = set()
    out: dict[int, str] = {}
    for plan_id, teacher, name in sorted(rows):
        if (teacher, name) not in seen:
            seen.add((teacher, name))
            continue
        number = 2
        while (teacher, numbered(name, number)) in taken:
            number += 1
        out[plan_id] = numbered(name, number)
        taken.add((teacher, out[plan_id]))
    return out


def upgrade() -> None:
    conn = op.get_bind()
    rows = [tuple(r) for r in conn.execute(sa.text("SELECT id, teacher_id, name FROM plans"))]
    for plan_id, name in renames(rows).items():
        conn.execute(sa.text("UPDATE plans SET name = :name WHERE id = :id"), {"name": name, "id": plan_id})
    # A unique index (not a table constraint): created in place on SQLite too, no table copy.
    op.create_index(INDEX, "plans", ["teacher_id", "name"], unique=True)
    op.add_column("students", sa.Column("candidate_id", sa.String(200), nullable=True))


def downgrade() -> None:
    # SQLite drops columns by copying the table; the copy keeps AUTOINCREMENT (migration 0002).
    with op.batch_alter_table("students", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("candidate_id")
    op.drop_index(INDEX, table_name="plans")
