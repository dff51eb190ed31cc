"""replies: who set a conversation's language, agents' signatures, the automatic-reply log

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 22:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("language_source", sa.String(16), nullable=True))
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("signature", sa.Text(), nullable=True))
    op.create_table(
        "auto_replies",
        sa.Column("workspace_id", sa.String(32), sa.ForeignKey("workspaces.id"), primary_key=True),
        sa.Column("contact_id", sa.String(32), sa.ForeignKey("contacts.id"), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message_id", sa.String(32), nullable=False),
        sa.Column("sent_at", sa.String(27), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("auto_replies")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("signature")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("language_source")
