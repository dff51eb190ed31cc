"""availability source: who set an agent's availability (the live stream's presence, or a person)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # "stream" (a lease the live stream renews; it expires when no process renews it) or "person".
    # NULL for availabilities set before: treated as a person's, which never expire.
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("availability_by", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("availability_by")
