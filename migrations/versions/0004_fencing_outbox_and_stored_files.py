"""Announce each job's end once (done_announced) and keep files in the database (stored_files).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        # Jobs that ended before this revision have had their `done` event already.
        batch.add_column(
            sa.Column("done_announced", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.create_index("ix_jobs_done_announced_status", ["done_announced", "status"])
    op.execute(
        "UPDATE jobs SET done_announced = true WHERE status IN ('succeeded', 'failed', 'canceled')"
    )
    op.create_table(
        "stored_files",
        sa.Column("area", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("stored_files")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_done_announced_status")
        batch.drop_column("done_announced")
