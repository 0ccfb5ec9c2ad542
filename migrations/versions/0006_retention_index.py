"""Retention's index: finished jobs whose audio has not expired yet, oldest first.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Partial: a job leaves it once expired, so each retention pass reads only the jobs still
    # to expire, not the ones it expired before (which ix_jobs_finished_at would walk first).
    op.create_index(
        "ix_jobs_unexpired_finished_at",
        "jobs",
        ["finished_at"],
        postgresql_where=sa.text("expired_at IS NULL"),
        sqlite_where=sa.text("expired_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_unexpired_finished_at", table_name="jobs")
