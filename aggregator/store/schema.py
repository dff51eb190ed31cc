"""The SQL schema (SQLAlchemy Core). Alembic migrations under migrations/ create it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes stored as fixed-width ISO 8601 text, so text order is time order."""

    impl = String(27)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return format_time(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # fromisoformat reads this fixed format (trailing Z included) 50 times faster than strptime,
        # which was half the cost of an inbox page.
        return datetime.fromisoformat(value)


class EncodedJSON(str):
    """JSON text encoded ahead of time, stored as it is by a JSONText column."""


class JSONText(TypeDecorator[Any]):
    """JSON stored as text; accepts EncodedJSON to skip encoding (done once, before a batch is written)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if isinstance(value, EncodedJSON):
            return str(value)
        return json.dumps(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


@lru_cache(maxsize=64)
def format_time(value: datetime) -> str:
    """Fixed-width UTC text; cached, as one batch stamps thousands of rows with the same time."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given where an aware UTC datetime is required")
    v = value.astimezone(UTC)
    # Not strftime: its %Y does not pad years before 1000, and this text must sort and parse back.
    return (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}."
        f"{v.microsecond:06d}Z"
    )


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = String(32)


def _id() -> Column[str]:
    return Column("id", ID, primary_key=True)


def _workspace() -> Column[str]:
    return Column("workspace_id", ID, ForeignKey("workspaces.id"), nullable=False)


def _created() -> Column[datetime]:
    return Column("created_at", UTCDateTime(), nullable=False)


workspaces = Table(
    "workspaces",
    metadata,
    _id(),
    Column("name", String(200), nullable=False, unique=True),
    Column("default_language", String(35), nullable=False, server_default="en"),
    Column("settings", JSON, nullable=False, default=dict),
    _created(),
)

users = Table(
    "users",
    metadata,
    _id(),
    _workspace(),
    Column("name", String(200), nullable=False),
    Column("email", String(320), nullable=False),
    Column("role", String(16), nullable=False),
    Column("languages", JSON, nullable=False, default=list),
    Column("capacity", Integer, nullable=False, server_default="10"),
    _created(),
    Column("deactivated_at", UTCDateTime()),
    # Ends replies made from templates ({{ agent.signature }}); the name when unset.
    Column("signature", Text),
    # Routing: "online" | "away" | "offline" (set through the API and by the live stream's presence).
    Column("availability", String(16), nullable=False, server_default="offline"),
    Column("availability_at", UTCDateTime()),
    # Who set it: "stream" (a lease the live stream renews while open; expires unless renewed) or
    # "person" (PUT /me/availability, PATCH /users/{id}: never expires); NULL from before 0008.
    Column("availability_by", String(16)),
    # When routing last gave this agent a conversation: round robin among equally loaded agents.
    Column("last_assigned_at", UTCDateTime()),
    UniqueConstraint("workspace_id", "email"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    _id(),
    _workspace(),
    Column("user_id", ID, ForeignKey("users.id")),
    Column("role", String(16), nullable=False),
    Column("name", String(200), nullable=False, server_default=""),
    Column("token_hash", String(64), nullable=False, unique=True),
    _created(),
    Column("last_used_at", UTCDateTime()),
    Column("revoked_at", UTCDateTime()),
)

# Business-hours calendars (aggregator.hours.BusinessHours as JSON), used by teams and SLA policies.
calendars = Table(
    "calendars",
    metadata,
    _id(),
    _workspace(),
    Column("name", String(200), nullable=False),
    Column("hours", JSON, nullable=False),
    _created(),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("workspace_id", "name"),
)

teams = Table(
    "teams",
    metadata,
    _id(),
    _workspace(),
    Column("name", String(200), nullable=False),
    Column("languages", JSON, nullable=False, default=list),
    _created(),
    # Routing: the channel accounts whose conversations this team takes ([] = any), its business-hours
    # calendar, its lead (notified by rules), and its order among teams that fit equally well.
    Column("channel_account_ids", JSON, nullable=False, default=list),
    Column("calendar_id", ID, ForeignKey("calendars.id")),
    Column("lead_id", ID, ForeignKey("users.id")),
    Column("position", Integer, nullable=False, server_default="0"),
    UniqueConstraint("workspace_id", "name"),
)

team_members = Table(
    "team_members",
    metadata,
    Column("team_id", ID, ForeignKey("teams.id"), primary_key=True),
    Column("user_id", ID, ForeignKey("users.id"), primary_key=True),
)

contacts = Table(
    "contacts",
    metadata,
    _id(),
    _workspace(),
    Column("name", String(400)),
    Column("email", String(320)),
    Column("language", String(35)),
    Column("attributes", JSON, nullable=False, default=dict),
    Column("merged_into", ID, ForeignKey("contacts.id")),
    _created(),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index(None, "workspace_id", "created_at", "id"),
)

identities = Table(
    "identities",
    metadata,
    _id(),
    _workspace(),
    Column("contact_id", ID, ForeignKey("contacts.id"), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("address", String(512), nullable=False),
    Column("display_name", String(400)),
    # The channel's user name for the address (Telegram @username), kept current like display_name.
    Column("handle", String(255)),
    # Set while the contact cannot be written to on this channel (blocked the bot), with the reason.
    Column("blocked_at", UTCDateTime()),
    Column("blocked_reason", Text),
    _created(),
    UniqueConstraint("workspace_id", "kind", "address"),
)

channel_accounts = Table(
    "channel_accounts",
    metadata,
    _id(),
    _workspace(),
    Column("kind", String(32), nullable=False),
    Column("name", String(200), nullable=False),
    Column("config", JSON, nullable=False, default=dict),
    Column("secrets", LargeBinary),
    Column("enabled", Integer, nullable=False, server_default="1"),
    Column("state", String(32), nullable=False, server_default="stopped"),
    Column("state_detail", Text),
    _created(),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("deleted_at", UTCDateTime()),
    UniqueConstraint("workspace_id", "name"),
)

channel_checkpoints = Table(
    "channel_checkpoints",
    metadata,
    Column("channel_account_id", ID, ForeignKey("channel_accounts.id"), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

conversations = Table(
    "conversations",
    metadata,
    _id(),
    _workspace(),
    Column("channel_account_id", ID, ForeignKey("channel_accounts.id"), nullable=False),
    Column("contact_id", ID, ForeignKey("contacts.id"), nullable=False),
    Column("identity_id", ID, ForeignKey("identities.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", String(16), nullable=False, server_default="normal"),
    Column("assignee_id", ID, ForeignKey("users.id")),
    Column("team_id", ID, ForeignKey("teams.id")),
    Column("labels", JSON, nullable=False, default=list),
    Column("language", String(35)),
    # Who set `language`: "agent" (never overwritten by detection), "detected", "hint" or "contact".
    Column("language_source", String(16)),
    Column("subject", Text),
    # The subject without Re:/AW:/Fwd: and case (threading.normalize_subject), for subject threading.
    Column("subject_key", Text),
    Column("thread_ref", String(512)),
    Column("last_activity_at", UTCDateTime(), nullable=False),
    Column("last_inbound_at", UTCDateTime()),
    Column("first_response_at", UTCDateTime()),
    Column("resolved_at", UTCDateTime()),
    Column("snoozed_until", UTCDateTime()),
    _created(),
    Column("updated_at", UTCDateTime(), nullable=False),
    # Denormalised for the inbox list: counting or joining messages per row costs 84 ms at 1M messages.
    Column("message_count", Integer, nullable=False, server_default="0"),
    Column("inbound_count", Integer, nullable=False, server_default="0"),
    Column("last_message_preview", Text),
    Column("last_message_direction", String(3)),
    Column("sla_due_at", UTCDateTime()),
    # Who assigned it: "manual" (an agent or admin: routing never overrides), "routing" or "rule".
    Column("assigned_by", String(16)),
    # The agent who last gave it back (a person unassigned it): routing gives it to someone else.
    # Cleared when it is assigned again.
    Column("handed_back_by", ID),
    # The first customer message no agent has answered yet (NULL when answered): response timers.
    Column("awaiting_since", UTCDateTime()),
    Column("status_changed_at", UTCDateTime()),
    # SLA: the policy a rule or an agent chose (else the first matching one), the state of the running
    # timer ("running" | "paused" | "breached"), when it breached, and the updated_at it was computed at.
    Column("sla_policy_id", ID, ForeignKey("sla_policies.id")),
    Column("sla_state", String(16)),
    Column("sla_breached_at", UTCDateTime()),
    Column("sla_checked_at", UTCDateTime()),
    Index(None, "workspace_id", "last_activity_at", "id"),
    Index(None, "workspace_id", "status", "last_activity_at", "id"),
    Index(None, "workspace_id", "assignee_id", "last_activity_at", "id"),
    Index(None, "workspace_id", "team_id", "last_activity_at", "id"),
    Index(None, "status", "snoozed_until"),
    # Also serves subject threading: (contact, channel account, active since) then subject_key filtered.
    Index(None, "contact_id", "channel_account_id", "last_activity_at"),
    Index(None, "workspace_id", "sla_due_at"),
)

conversation_labels = Table(
    "conversation_labels",
    metadata,
    Column("conversation_id", ID, ForeignKey("conversations.id"), primary_key=True),
    Column("label", String(100), primary_key=True),
    _workspace(),
    Index(None, "workspace_id", "label"),
)

conversation_reads = Table(
    "conversation_reads",
    metadata,
    Column("conversation_id", ID, ForeignKey("conversations.id"), primary_key=True),
    Column("user_id", ID, ForeignKey("users.id"), primary_key=True),
    # conversations.inbound_count when the user last read it: unread = inbound_count - read_count.
    Column("read_count", Integer, nullable=False),
    Column("read_at", UTCDateTime(), nullable=False),
)

thread_keys = Table(
    "thread_keys",
    metadata,
    Column("channel_account_id", ID, ForeignKey("channel_accounts.id"), primary_key=True),
    Column("key", String(1024), primary_key=True),
    Column("conversation_id", ID, ForeignKey("conversations.id"), nullable=False),
)

messages = Table(
    "messages",
    metadata,
    _id(),
    _workspace(),
    Column("conversation_id", ID, ForeignKey("conversations.id"), nullable=False),
    Column("channel_account_id", ID, ForeignKey("channel_accounts.id"), nullable=False),
    Column("direction", String(3), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("sender_contact_id", ID, ForeignKey("contacts.id")),
    Column("sender_user_id", ID, ForeignKey("users.id")),
    Column("subject", Text),
    Column("text", Text, nullable=False),
    # The new part of `text` (quoted history and signature left out); NULL when it is all of it.
    Column("reply_text", Text),
    # What a reply to this message points at (email: References + its Message-ID), oldest first.
    Column("reply_refs", JSON),
    Column("html", Text),
    Column("external_id", String(512)),
    Column("delivery_status", String(16)),
    Column("delivery_error", Text),
    Column("raw_ref", String(64)),
    Column("flags", JSON, nullable=False, default=list),
    Column("extra", JSONText(), nullable=False, default=dict),
    Column("language", String(35)),
    Column("sent_at", UTCDateTime()),
    # When the sender last edited it; `versions` keeps what it said before, oldest first
    # ([{"text", "replaced_at"}]).
    Column("edited_at", UTCDateTime()),
    Column("versions", JSON(none_as_null=True)),
    _created(),
    UniqueConstraint("channel_account_id", "external_id"),
    Index(None, "conversation_id", "created_at", "id"),
    # Recognising a raw original seen before (mail re-numbered after a UIDVALIDITY change).
    Index(None, "channel_account_id", "raw_ref"),
)

templates = Table(
    "templates",
    metadata,
    _id(),
    _workspace(),
    Column("name", String(200), nullable=False),
    # What agents type to insert it as a canned response ("/where-is-my-order"), unique in a workspace.
    Column("shortcode", String(64)),
    Column("category", String(100)),
    # [{"language", "subject", "body"}]: the language variants, validated when saved.
    Column("variants", JSON, nullable=False, default=list),
    _created(),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("workspace_id", "name"),
    UniqueConstraint("workspace_id", "shortcode"),
)

# The last automatic reply each contact got (RFC 3834: at most one per sender per period).
auto_replies = Table(
    "auto_replies",
    metadata,
    Column("workspace_id", ID, ForeignKey("workspaces.id"), primary_key=True),
    Column("contact_id", ID, ForeignKey("contacts.id"), primary_key=True),
    Column("kind", String(32), nullable=False),  # "acknowledge" | "out_of_hours"
    Column("message_id", ID, nullable=False),
    Column("sent_at", UTCDateTime(), nullable=False),
)

# SLA policies: targets per metric, chosen by conditions in `position` order; "around_the_clock"
# (marketplace mode) or "business_hours" (company mode, the calendar's, else the team's or workspace's).
sla_policies = Table(
    "sla_policies",
    metadata,
    _id(),
    _workspace(),
    Column("name", String(200), nullable=False),
    Column("position", Integer, nullable=False, server_default="0"),
    Column("enabled", Integer, nullable=False, server_default="1"),
    # {"channel_account_ids": [...], "channel_kinds": [...], "priorities": [...], "labels": [...]}
    Column("conditions", JSON, nullable=False, default=dict),
    Column("first_response_seconds", Integer),
    Column("next_response_seconds", Integer),
    Column("resolution_seconds", Integer),
    Column("mode", String(32), nullable=False, server_default="business_hours"),
    Column("calendar_id", ID, ForeignKey("calendars.id")),
    Column("warn_before_seconds", Integer),
    _created(),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("workspace_id", "name"),
)

# One row per conversation and metric ("first_response" | "next_response" | "resolution"). The
# scheduler reads rows whose next_fire_at has come (the warning, then the breach; each fires once).
sla_timers = Table(
    "sla_timers",
    metadata,
    Column("conversation_id", ID, ForeignKey("conversations.id"), primary_key=True),
    Column("metric", String(32), primary_key=True),
    _workspace(),
    Column("policy_id", ID, ForeignKey("sla_policies.id")),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("due_at", UTCDateTime()),
    Column("warn_at", UTCDateTime()),
    Column("paused_at", UTCDateTime()),
    # While paused: what was left of the target (business seconds in business-hours mode).
    Column("remaining_seconds", Float),
    Column("stopped_at", UTCDateTime()),
    Column("warned_at", UTCDateTime()),
    Column("breached_at", UTCDateTime()),
    Column("next_fire_at", UTCDateTime()),
    Index(None, "next_fire_at"),
)

# Automation rules: on `event`, when every condition holds, the actions run; `position` orders them.
rules = Table(
    "rules",
    metadata,
    _id(),
    _workspace(),
    Column("name", String(200), nullable=False),
    Column("position", Integer, nullable=False, server_default="0"),
    Column("enabled", Integer, nullable=False, server_default="1"),
    Column("event", String(64), nullable=False),
    # Event parameters (time-based: {"hours": 360}).
    Column("event_options", JSON, nullable=False, default=dict),
    Column("conditions", JSON, nullable=False, default=list),
    Column("actions", JSON, nullable=False, default=list),
    # "api" or "config" (loaded from the config file; replaced on each start).
    Column("source", String(16), nullable=False, server_default="api"),
    _created(),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("workspace_id", "name"),
)

# What a rule already did to a conversation for a given occasion (time-based rules fire once per
# quiet stretch; recovery after a crash does not fire a rule twice).
rule_firings = Table(
    "rule_firings",
    metadata,
    Column("rule_id", ID, ForeignKey("rules.id"), primary_key=True),
    Column("conversation_id", ID, ForeignKey("conversations.id"), primary_key=True),
    Column("key", String(128), primary_key=True),
    _workspace(),
    Column("fired_at", UTCDateTime(), nullable=False),
)

attachments = Table(
    "attachments",
    metadata,
    _id(),
    _workspace(),
    Column("message_id", ID, ForeignKey("messages.id"), nullable=False, index=True),
    Column("filename", String(512), nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("size", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    _created(),
)

outbox = Table(
    "outbox",
    metadata,
    _id(),
    _workspace(),
    Column("message_id", ID, ForeignKey("messages.id"), nullable=False, unique=True),
    Column("channel_account_id", ID, ForeignKey("channel_accounts.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("claimed_until", UTCDateTime()),
    Column("last_error", Text),
    _created(),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index(None, "status", "next_attempt_at"),
)

audit_events = Table(
    "audit_events",
    metadata,
    _id(),
    _workspace(),
    Column("conversation_id", ID, ForeignKey("conversations.id"), index=True),
    Column("actor", String(200), nullable=False),
    Column("type", String(64), nullable=False),
    Column("data", JSON, nullable=False, default=dict),
    _created(),
)

# The FTS5 index is created by the migration (SQLAlchemy has no type for it):
# search_index(body, workspace_id UNINDEXED, conversation_id UNINDEXED, ref_id UNINDEXED, kind UNINDEXED)
SEARCH_INDEX_DDL = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS search_index USING fts5("
    "body, workspace_id UNINDEXED, conversation_id UNINDEXED, ref_id UNINDEXED, kind UNINDEXED, "
    "tokenize = 'unicode61 remove_diacritics 2')"
)
