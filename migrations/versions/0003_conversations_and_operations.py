"""Add conversations and their turns, job operations, history, usage and transcript segments.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("system", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "turns",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "conversation_id",
            sa.String(32),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_turns_conversation_id_id", "turns", ["conversation_id", "id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("operation", sa.String(16), nullable=False, server_default="chat")
        )
        batch.add_column(sa.Column("conversation_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("history", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("transcript_language", sa.String(16), nullable=True))
        batch.add_column(sa.Column("transcript_segments", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("prompt_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("completion_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("finish_reason", sa.String(16), nullable=True))
        batch.create_foreign_key(
            "fk_jobs_conversation_id",
            "conversations",
            ["conversation_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index("ix_jobs_conversation_id", ["conversation_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_conversation_id")
        batch.drop_constraint("fk_jobs_conversation_id", type_="foreignkey")
        for column in (
            "finish_reason",
            "completion_tokens",
            "prompt_tokens",
            "transcript_segments",
            "transcript_language",
            "history",
            "conversation_id",
            "operation",
        ):
            batch.drop_column(column)
    op.drop_index("ix_turns_conversation_id_id", table_name="turns")
    op.drop_table("turns")
    op.drop_table("conversations")
