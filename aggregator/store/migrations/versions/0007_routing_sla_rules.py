"""routing, SLA and automation: calendars, agents' availability, team routing, SLA policies and
timers, rules and their firings

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_ID = sa.String(32)
_TIME = sa.String(27)


def _workspace() -> sa.Column[str]:
    return sa.Column("workspace_id", _ID, sa.ForeignKey("workspaces.id"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "calendars",
        sa.Column("id", _ID, primary_key=True),
        _workspace(),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("hours", sa.JSON(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.UniqueConstraint("workspace_id", "name", name=op.f("uq_calendars_workspace_id_name")),
    )
    op.create_table(
        "sla_policies",
        sa.Column("id", _ID, primary_key=True),
        _workspace(),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("enabled", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("conditions", sa.JSON(), nullable=False),
        sa.Column("first_response_seconds", sa.Integer()),
        sa.Column("next_response_seconds", sa.Integer()),
        sa.Column("resolution_seconds", sa.Integer()),
        sa.Column("mode", sa.String(32), nullable=False, server_default="business_hours"),
        sa.Column("calendar_id", _ID, sa.ForeignKey("calendars.id")),
        sa.Column("warn_before_seconds", sa.Integer()),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.UniqueConstraint("workspace_id", "name", name=op.f("uq_sla_policies_workspace_id_name")),
    )
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("availability", sa.String(16), nullable=False, server_default="offline"))
        batch.add_column(sa.Column("availability_at", _TIME))
        batch.add_column(sa.Column("last_assigned_at", _TIME))
    with op.batch_alter_table("teams") as batch:
        batch.add_column(sa.Column("channel_account_ids", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("calendar_id", _ID))
        batch.add_column(sa.Column("lead_id", _ID))
        batch.add_column(sa.Column("position", sa.Integer(), nullable=False, server_default="0"))
        batch.create_foreign_key(op.f("fk_teams_calendar_id_calendars"), "calendars", ["calendar_id"], ["id"])
        batch.create_foreign_key(op.f("fk_teams_lead_id_users"), "users", ["lead_id"], ["id"])
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("assigned_by", sa.String(16)))
        batch.add_column(sa.Column("awaiting_since", _TIME))
        batch.add_column(sa.Column("status_changed_at", _TIME))
        batch.add_column(sa.Column("sla_policy_id", _ID))
        batch.add_column(sa.Column("sla_state", sa.String(16)))
        batch.add_column(sa.Column("sla_breached_at", _TIME))
        batch.add_column(sa.Column("sla_checked_at", _TIME))
        batch.create_foreign_key(
            op.f("fk_conversations_sla_policy_id_sla_policies"), "sla_policies", ["sla_policy_id"], ["id"]
        )
        batch.create_index(op.f("ix_conversations_workspace_id_sla_due_at"), ["workspace_id", "sla_due_at"])
    # Existing conversations: one waits for an answer when its last message is the customer's.
    op.execute(
        "UPDATE conversations SET awaiting_since = last_inbound_at "
        "WHERE last_message_direction = 'in' AND status != 'resolved'"
    )
    # Existing assignments were made by people: routing leaves them alone.
    op.execute("UPDATE conversations SET assigned_by = 'manual' WHERE assignee_id IS NOT NULL")
    op.create_table(
        "sla_timers",
        sa.Column("conversation_id", _ID, sa.ForeignKey("conversations.id"), primary_key=True),
        sa.Column("metric", sa.String(32), primary_key=True),
        _workspace(),
        sa.Column("policy_id", _ID, sa.ForeignKey("sla_policies.id")),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("due_at", _TIME),
        sa.Column("warn_at", _TIME),
        sa.Column("paused_at", _TIME),
        sa.Column("remaining_seconds", sa.Float()),
        sa.Column("stopped_at", _TIME),
        sa.Column("warned_at", _TIME),
        sa.Column("breached_at", _TIME),
        sa.Column("next_fire_at", _TIME),
    )
    op.create_index(op.f("ix_sla_timers_next_fire_at"), "sla_timers", ["next_fire_at"])
    op.create_table(
        "rules",
        sa.Column("id", _ID, primary_key=True),
        _workspace(),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("enabled", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("event_options", sa.JSON(), nullable=False),
        sa.Column("conditions", sa.JSON(), nullable=False),
        sa.Column("actions", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False, server_default="api"),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.UniqueConstraint("workspace_id", "name", name=op.f("uq_rules_workspace_id_name")),
    )
    op.create_table(
        "rule_firings",
        sa.Column("rule_id", _ID, sa.ForeignKey("rules.id"), primary_key=True),
        sa.Column("conversation_id", _ID, sa.ForeignKey("conversations.id"), primary_key=True),
        sa.Column("key", sa.String(128), primary_key=True),
        _workspace(),
        sa.Column("fired_at", _TIME, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rule_firings")
    op.drop_table("rules")
    op.drop_index(op.f("ix_sla_timers_next_fire_at"), "sla_timers")
    op.drop_table("sla_timers")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_index(op.f("ix_conversations_workspace_id_sla_due_at"))
        batch.drop_constraint(op.f("fk_conversations_sla_policy_id_sla_policies"), type_="foreignkey")
        for name in (
            "sla_checked_at",
            "sla_breached_at",
            "sla_state",
            "sla_policy_id",
            "status_changed_at",
            "awaiting_since",
            "assigned_by",
        ):
            batch.drop_column(name)
    with op.batch_alter_table("teams") as batch:
        batch.drop_constraint(op.f("fk_teams_lead_id_users"), type_="foreignkey")
        batch.drop_constraint(op.f("fk_teams_calendar_id_calendars"), type_="foreignkey")
        for name in ("position", "lead_id", "calendar_id", "channel_account_ids"):
            batch.drop_column(name)
    with op.batch_alter_table("users") as batch:
        for name in ("last_assigned_at", "availability_at", "availability"):
            batch.drop_column(name)
    op.drop_table("sla_policies")
    op.drop_table("calendars")
