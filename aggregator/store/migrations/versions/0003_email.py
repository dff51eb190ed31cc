"""email channel: reply-only text and reply references on messages, lookup of raw originals by hash,
normalised conversation subjects for subject threading

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aggregator.threading import normalize_subject

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
    op.add_column("conversations", sa.Column("subject_key", sa.Text(), nullable=True))
    conversations = sa.table(
        "conversations", sa.column("id", sa.String()), sa.column("subject", sa.Text()),
        sa.column("subject_key", sa.Text()),
    )
    bind = op.get_bind()
    rows = bind.execute(sa.select(conversations.c.id, conversations.c.subject)).all()
    if rows:
        bind.execute(
            conversations.update()
            .where(conversations.c.id == sa.bindparam("b_id"))
            .values(subject_key=sa.bindparam("b_key")),
            [{"b_id": row.id, "b_key": normalize_subject(row.subject)} for row in rows],
        )


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("subject_key")
    op.drop_index("ix_messages_channel_account_id_raw_ref", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("reply_refs")
        batch.drop_column("reply_text")
