"""email channel: reply-only text and reply references on messages, lookup of raw originals by hash

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN, not a batch rebuild: SQLite adds nullable columns in place, whatever the size.
    op.add_column("messages", sa.Column("reply_text", sa.Text(), nullable=True))
    op.add_column("messages", sa.Column("reply_refs", sa.JSON(), nullable=True))
    op.create_index(
        "ix_messages_channel_account_id_raw_ref", "messages", ["channel_account_id", "raw_ref"]
    )


def downgrade() -> None:
    op.drop_index("ix_messages_channel_account_id_raw_ref", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("reply_refs")
        batch.drop_column("reply_text")
