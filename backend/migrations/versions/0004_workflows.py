"""server-side workflows: jobs know their parent workflow; a workflow's steps are rows

A workflow (the depth-vs-width study, the search bake-off) is a job of kind "workflow" whose children
are ordinary jobs. `jobs.parent_id` links a child to its workflow; `workflow_steps` records which job
runs which step of which branch, one row per try. The unique (workflow, branch, step, try) is what makes
advancing a workflow safe when two workers finish children at the same moment: the second insert of the
same step fails and its transaction (with the job it created) is rolled back.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain nullable column (no constraint): ADD COLUMN on both SQLite and PostgreSQL.
    op.add_column("jobs", sa.Column("parent_id", sa.Integer(), nullable=True))
    op.create_index("ix_jobs_parent_id", "jobs", ["parent_id"])
    op.create_table(
        "workflow_steps",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("workflow_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("branch", sa.String(32), nullable=False),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("try_number", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("workflow_id", "branch", "step", "try_number", name="uq_workflow_step_try"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_workflow_steps_workflow_id", "workflow_steps", ["workflow_id"])


def downgrade() -> None:
    op.drop_index("ix_workflow_steps_workflow_id", table_name="workflow_steps")
    op.drop_table("workflow_steps")
    op.drop_index("ix_jobs_parent_id", table_name="jobs")
    with op.batch_alter_table("jobs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("parent_id")
