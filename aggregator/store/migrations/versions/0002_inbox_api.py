"""inbox API: denormalised conversation list, labels, read marks, soft deletes, tokens bound to users

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("deactivated_at", sa.String(length=27), nullable=True))
    with op.batch_alter_table("channel_accounts") as batch:
        batch.add_column(sa.Column("deleted_at", sa.String(length=27), nullable=True))
    with op.batch_alter_table("contacts") as batch:
        batch.create_index(
            batch.f("ix_contacts_workspace_id_created_at_id"), ["workspace_id", "created_at", "id"]
        )
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("message_count", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("inbound_count", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("last_message_preview", sa.Text(), nullable=True))
        batch.add_column(sa.Column("last_message_direction", sa.String(length=3), nullable=True))
        batch.add_column(sa.Column("sla_due_at", sa.String(length=27), nullable=True))
        batch.drop_index("ix_conversations_workspace_id_last_activity_at")
        for columns in (
            ["workspace_id", "last_activity_at", "id"],
            ["workspace_id", "status", "last_activity_at", "id"],
            ["workspace_id", "assignee_id", "last_activity_at", "id"],
            ["workspace_id", "team_id", "last_activity_at", "id"],
            ["status", "snoozed_until"],
        ):
            batch.create_index(batch.f("ix_conversations_" + "_".join(columns)), columns)
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_conversation_id_created_at")
        batch.create_index(
            batch.f("ix_messages_conversation_id_created_at_id"), ["conversation_id", "created_at", "id"]
        )
    op.create_table(
        "conversation_labels",
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_conversation_labels_conversation_id_conversations"),
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"], ["workspaces.id"], name=op.f("fk_conversation_labels_workspace_id_workspaces")
        ),
        sa.PrimaryKeyConstraint("conversation_id", "label", name=op.f("pk_conversation_labels")),
    )
    op.create_index(
        op.f("ix_conversation_labels_workspace_id_label"), "conversation_labels", ["workspace_id", "label"]
    )
    op.create_table(
        "conversation_reads",
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("read_count", sa.Integer(), nullable=False),
        sa.Column("read_at", sa.String(length=27), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_conversation_reads_conversation_id_conversations"),
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_conversation_reads_user_id_users")),
        sa.PrimaryKeyConstraint("conversation_id", "user_id", name=op.f("pk_conversation_reads")),
    )
    # Existing data: counts and previews from the messages, and a user for every token without one.
    op.execute(
        "UPDATE conversations SET "
        "message_count = (SELECT count(*) FROM messages m WHERE m.conversation_id = conversations.id "
        "AND m.kind = 'message'), "
        "inbound_count = (SELECT count(*) FROM messages m WHERE m.conversation_id = conversations.id "
        "AND m.direction = 'in'), "
        "last_message_preview = (SELECT substr(m.text, 1, 200) FROM messages m "
        "WHERE m.conversation_id = conversations.id AND m.kind = 'message' "
        "ORDER BY m.created_at DESC, m.id DESC LIMIT 1), "
        "last_message_direction = (SELECT m.direction FROM messages m "
        "WHERE m.conversation_id = conversations.id AND m.kind = 'message' "
        "ORDER BY m.created_at DESC, m.id DESC LIMIT 1)"
    )
    op.execute(
        "INSERT INTO users (id, workspace_id, name, email, role, languages, capacity, created_at) "
        "SELECT id, workspace_id, CASE WHEN name = '' THEN role || ' token' ELSE name END, "
        "'token-' || id || '@users.invalid', role, '[]', 10, created_at "
        "FROM api_tokens WHERE user_id IS NULL"
    )
    op.execute("UPDATE api_tokens SET user_id = id WHERE user_id IS NULL")


def downgrade() -> None:
    op.drop_table("conversation_reads")
    op.drop_index(op.f("ix_conversation_labels_workspace_id_label"), table_name="conversation_labels")
    op.drop_table("conversation_labels")
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_conversation_id_created_at_id")
        batch.create_index("ix_messages_conversation_id_created_at", ["conversation_id", "created_at"])
    with op.batch_alter_table("conversations") as batch:
        for name in (
            "ix_conversations_workspace_id_last_activity_at_id",
            "ix_conversations_workspace_id_status_last_activity_at_id",
            "ix_conversations_workspace_id_assignee_id_last_activity_at_id",
            "ix_conversations_workspace_id_team_id_last_activity_at_id",
            "ix_conversations_status_snoozed_until",
        ):
            batch.drop_index(name)
        batch.create_index(
            "ix_conversations_workspace_id_last_activity_at", ["workspace_id", "last_activity_at"]
        )
        for column in (
            "sla_due_at",
            "last_message_direction",
            "last_message_preview",
            "inbound_count",
            "message_count",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("contacts") as batch:
        batch.drop_index("ix_contacts_workspace_id_created_at_id")
    with op.batch_alter_table("channel_accounts") as batch:
        batch.drop_column("deleted_at")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("deactivated_at")
