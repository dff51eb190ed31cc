"""handed back: the agent who last gave a conversation back (routing gives it to someone else)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Set when a person unassigns a conversation, cleared when it is assigned again.
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("handed_back_by", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("handed_back_by")
