"""telegram channel: edited messages keep their previous versions; identities get a handle
(@username) and a blocked state

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable ADD COLUMNs: SQLite adds them in place whatever the table size. Timestamps are the
    # fixed-width ISO text UTCDateTime stores (String(27)).
    op.add_column("messages", sa.Column("edited_at", sa.String(27), nullable=True))
    op.add_column("messages", sa.Column("versions", sa.JSON(), nullable=True))
    op.add_column("identities", sa.Column("handle", sa.String(255), nullable=True))
    op.add_column("identities", sa.Column("blocked_at", sa.String(27), nullable=True))
    op.add_column("identities", sa.Column("blocked_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("identities") as batch:
        batch.drop_column("blocked_reason")
        batch.drop_column("blocked_at")
        batch.drop_column("handle")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("versions")
        batch.drop_column("edited_at")
