"""Automation rules, what each already did (rule_firings), and the facts their conditions read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from aggregator.model import new_id
from aggregator.secrets import SecretBox
from aggregator.store import schema as t
from aggregator.store.base import Conflict, Invalid, NotFound, StoreBase

# A webhook action's secret is stored encrypted (the channel secrets' SecretBox) under this key, never
# as `secret`; rows written before that may still hold a plain `secret`, which is read as well.
WEBHOOK_SECRET_STORED = "secret_encrypted"


@dataclass(frozen=True, slots=True)
class RuleRecord:
    id: str
    workspace_id: str
    name: str
    position: int
    enabled: bool
    event: str
    event_options: dict[str, Any]
    conditions: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    source: str  # "api" | "config"
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ConversationFacts:
    """A conversation as rule conditions see it, read fresh for each rule."""

    id: str
    workspace_id: str
    status: str
    priority: str
    assignee_id: str | None
    team_id: str | None
    team_lead_id: str | None
    labels: list[str]
    language: str | None
    subject: str | None
    channel_account_id: str
    channel_kind: str
    channel_name: str
    contact_id: str
    contact_name: str | None
    contact_email: str | None
    contact_attributes: dict[str, Any]
    last_inbound_text: str | None
    sla_policy_id: str | None
    created_at: datetime
    last_activity_at: datetime

    def as_json(self) -> dict[str, Any]:
        """What a webhook is sent of the conversation."""
        return {
            "id": self.id,
            "status": self.status,
            "priority": self.priority,
            "assignee_id": self.assignee_id,
            "team_id": self.team_id,
            "labels": list(self.labels),
            "language": self.language,
            "subject": self.subject,
            "channel": {"id": self.channel_account_id, "kind": self.channel_kind, "name": self.channel_name},
            "contact": {"id": self.contact_id, "name": self.contact_name, "email": self.contact_email},
            "sla_policy_id": self.sla_policy_id,
            "created_at": self.created_at.isoformat(),
            "last_activity_at": self.last_activity_at.isoformat(),
        }


def _record(row: Any) -> RuleRecord:
    return RuleRecord(
        row.id,
        row.workspace_id,
        row.name,
        int(row.position),
        bool(row.enabled),
        row.event,
        dict(row.event_options or {}),
        list(row.conditions or []),
        list(row.actions or []),
        row.source,
        row.created_at,
        row.updated_at,
    )


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


class RuleQueries(StoreBase):
    async def _get_rule(self, conn: AsyncConnection, workspace_id: str, rule_id: str) -> RuleRecord:
        r = t.rules
        row = (
            await conn.execute(select(r).where(r.c.workspace_id == workspace_id, r.c.id == rule_id))
        ).first()
        if row is None:
            raise NotFound(f"no rule with id {rule_id!r}")
        return _record(row)

    async def get_rule(self, workspace_id: str, rule_id: str) -> RuleRecord:
        async with self.read() as conn:
            return await self._get_rule(conn, workspace_id, rule_id)

    async def list_rules(
        self, workspace_id: str | None, *, event: str | None = None, enabled_only: bool = False
    ) -> list[RuleRecord]:
        """In evaluation order: position, then name. `workspace_id` None: of every workspace."""
        r = t.rules
        query = select(r)
        if workspace_id is not None:
            query = query.where(r.c.workspace_id == workspace_id)
        if event is not None:
            query = query.where(r.c.event == event)
        if enabled_only:
            query = query.where(r.c.enabled == 1)
        query = query.order_by(r.c.workspace_id, r.c.position, r.c.name, r.c.id)
        # Read for every event: one hand-off to a reader thread.
        return await self.read_sync(lambda conn: [_record(row) for row in conn.execute(query).all()])

    async def create_rule(
        self, workspace_id: str, definition: dict[str, Any], now: datetime, *, source: str = "api"
    ) -> RuleRecord:
        """`definition`: name, position, enabled, event, event_options, conditions, actions (validated)."""
        rule_id = new_id()
        try:
            async with self.write() as conn:
                await conn.execute(
                    insert(t.rules).values(
                        id=rule_id,
                        workspace_id=workspace_id,
                        **_columns(definition, self.secret_box),
                        source=source,
                        created_at=now,
                        updated_at=now,
                    )
                )
                return await self._get_rule(conn, workspace_id, rule_id)
        except IntegrityError as exc:
            raise Conflict(f"another rule of this workspace is named {definition['name']!r}") from exc

    async def update_rule(
        self, workspace_id: str, rule_id: str, values: dict[str, Any], now: datetime
    ) -> RuleRecord:
        r = t.rules
        try:
            async with self.write() as conn:
                current = await self._get_rule(conn, workspace_id, rule_id)
                if values:
                    await conn.execute(
                        update(r)
                        .where(r.c.id == current.id)
                        .values(**_columns(values, self.secret_box), updated_at=now)
                    )
                return await self._get_rule(conn, workspace_id, current.id)
        except IntegrityError as exc:
            raise Conflict(f"another rule of this workspace is named {values.get('name')!r}") from exc

    def webhook_secret(self, action: dict[str, Any]) -> str | None:
        """The plain secret of a stored webhook action (None: it has none); SecretKeyError when the
        key cannot decrypt it."""
        sealed = action.get(WEBHOOK_SECRET_STORED)
        if isinstance(sealed, str) and sealed:
            return self.secret_box.decrypt(sealed.encode("ascii"))["secret"]
        plain = action.get("secret")
        return plain if isinstance(plain, str) and plain else None

    async def delete_rule(self, workspace_id: str, rule_id: str) -> None:
        async with self.write() as conn:
            current = await self._get_rule(conn, workspace_id, rule_id)
            await conn.execute(delete(t.rule_firings).where(t.rule_firings.c.rule_id == current.id))
            await conn.execute(delete(t.rules).where(t.rules.c.id == current.id))

    async def replace_config_rules(
        self, workspace_id: str, definitions: Sequence[dict[str, Any]], now: datetime, *, file: str | None
    ) -> list[RuleRecord]:
        """Make the workspace's config rules exactly `definitions`, in one transaction.

        A rule keeps its id while its name stays, so what it already did (rule_firings) still counts
        after a restart. A name an API rule has is a Conflict.
        """
        r = t.rules
        async with self.write() as conn:
            rows = (await conn.execute(select(r).where(r.c.workspace_id == workspace_id))).all()
            by_name = {row.name: row for row in rows}
            wanted = {d["name"] for d in definitions}
            for definition in definitions:
                row = by_name.get(definition["name"])
                if row is not None and row.source != "config":
                    raise Conflict(
                        f"rule {definition['name']!r} of the config file has the name of a rule made "
                        "through the API: rename one of them"
                    )
                if row is None:
                    await conn.execute(
                        insert(r).values(
                            id=new_id(),
                            workspace_id=workspace_id,
                            **_columns(definition, self.secret_box),
                            source="config",
                            created_at=now,
                            updated_at=now,
                        )
                    )
                else:
                    await conn.execute(
                        update(r)
                        .where(r.c.id == row.id)
                        .values(**_columns(definition, self.secret_box), updated_at=now)
                    )
            gone = [row.id for row in rows if row.source == "config" and row.name not in wanted]
            if gone:
                await conn.execute(delete(t.rule_firings).where(t.rule_firings.c.rule_id.in_(gone)))
                await conn.execute(delete(r).where(r.c.id.in_(gone)))
            await conn.execute(
                insert(t.audit_events).values(
                    id=new_id(),
                    workspace_id=workspace_id,
                    conversation_id=None,
                    actor="config",
                    type="rules.loaded",
                    data={"file": file, "rules": sorted(wanted)},
                    created_at=now,
                )
            )
            result = (
                await conn.execute(
                    select(r)
                    .where(r.c.workspace_id == workspace_id, r.c.source == "config")
                    .order_by(r.c.position, r.c.name)
                )
            ).all()
        return [_record(row) for row in result]

    async def config_rules_file(self, workspace_id: str) -> str | None:
        """The config file the workspace's config rules were last loaded from."""
        a = t.audit_events
        async with self.read() as conn:
            row = (
                await conn.execute(
                    select(a.c.data)
                    .where(a.c.workspace_id == workspace_id, a.c.type == "rules.loaded")
                    .order_by(a.c.created_at.desc(), a.c.id.desc())
                    .limit(1)
                )
            ).first()
        if row is None or not isinstance(row.data, dict):
            return None
        file = row.data.get("file")
        return str(file) if file else None

    async def claim_rule_firing(
        self, workspace_id: str, rule_id: str, conversation_id: str, key: str, now: datetime
    ) -> bool:
        """Record that the rule fires for this occasion; False when it already did."""
        try:
            async with self.write() as conn:
                await conn.execute(
                    insert(t.rule_firings).values(
                        rule_id=rule_id,
                        conversation_id=conversation_id,
                        key=key[:128],
                        workspace_id=workspace_id,
                        fired_at=now,
                    )
                )
        except IntegrityError:
            return False
        return True

    async def fired_keys(self, rule_id: str, conversation_ids: Sequence[str]) -> set[tuple[str, str]]:
        """(conversation id, key) of the firings of the rule on these conversations."""
        if not conversation_ids:
            return set()
        rf = t.rule_firings
        async with self.read() as conn:
            rows = await conn.execute(
                select(rf.c.conversation_id, rf.c.key).where(
                    rf.c.rule_id == rule_id, rf.c.conversation_id.in_(list(conversation_ids))
                )
            )
            return {(row.conversation_id, row.key) for row in rows}

    async def add_audit_event(
        self,
        workspace_id: str,
        conversation_id: str | None,
        actor: str,
        type_: str,
        data: dict[str, Any],
        now: datetime,
    ) -> None:
        async with self.write() as conn:
            await conn.execute(
                insert(t.audit_events).values(
                    id=new_id(),
                    workspace_id=workspace_id,
                    conversation_id=conversation_id,
                    actor=actor,
                    type=type_,
                    data=data,
                    created_at=now,
                )
            )

    async def conversation_facts(self, workspace_id: str, conversation_id: str) -> ConversationFacts:
        c, ca, co, tm, m = t.conversations, t.channel_accounts, t.contacts, t.teams, t.messages

        def work(conn: Connection) -> tuple[Any, Any]:
            row = conn.execute(
                select(
                    c,
                    ca.c.kind.label("channel_kind"),
                    ca.c.name.label("channel_name"),
                    co.c.name.label("contact_name"),
                    co.c.email.label("contact_email"),
                    co.c.attributes.label("contact_attributes"),
                    tm.c.lead_id.label("team_lead_id"),
                )
                .join(ca, ca.c.id == c.c.channel_account_id)
                .join(co, co.c.id == c.c.contact_id)
                .outerjoin(tm, tm.c.id == c.c.team_id)
                .where(c.c.id == conversation_id, c.c.workspace_id == workspace_id)
            ).first()
            if row is None:
                return None, None
            inbound = conn.execute(
                select(m.c.text, m.c.reply_text)
                .where(m.c.conversation_id == conversation_id, m.c.direction == "in", m.c.kind == "message")
                .order_by(m.c.created_at.desc(), m.c.id.desc())
                .limit(1)
            ).first()
            return row, inbound

        # Read for every event a rule listens to: one hand-off to a reader thread.
        row, inbound = await self.read_sync(work)
        if row is None:
            raise NotFound(f"no conversation with id {conversation_id!r}")
        return ConversationFacts(
            id=row.id,
            workspace_id=row.workspace_id,
            status=row.status,
            priority=row.priority,
            assignee_id=row.assignee_id,
            team_id=row.team_id,
            team_lead_id=row.team_lead_id,
            labels=list(row.labels or []),
            language=row.language,
            subject=row.subject,
            channel_account_id=row.channel_account_id,
            channel_kind=row.channel_kind,
            channel_name=row.channel_name,
            contact_id=row.contact_id,
            contact_name=row.contact_name,
            contact_email=row.contact_email,
            contact_attributes=dict(row.contact_attributes or {}),
            last_inbound_text=None if inbound is None else (inbound.reply_text or inbound.text),
            sla_policy_id=row.sla_policy_id,
            created_at=row.created_at,
            last_activity_at=row.last_activity_at,
        )

    async def inbound_text(self, workspace_id: str, message_id: str) -> str | None:
        """The new text of a customer message (None when it is not one)."""
        m = t.messages
        query = select(m.c.text, m.c.reply_text, m.c.direction).where(
            m.c.id == message_id, m.c.workspace_id == workspace_id
        )
        row = await self.read_sync(lambda conn: conn.execute(query).first())
        if row is None or row.direction != "in":
            return None
        return str(row.reply_text or row.text)

    async def latest_inbound_flags(self, conversation_id: str) -> list[str]:
        """The flags of the conversation's latest customer message ([] when it has none)."""
        m = t.messages
        async with self.read() as conn:
            row = (
                await conn.execute(
                    select(m.c.flags)
                    .where(
                        m.c.conversation_id == conversation_id, m.c.direction == "in", m.c.kind == "message"
                    )
                    .order_by(m.c.created_at.desc(), m.c.id.desc())
                    .limit(1)
                )
            ).first()
        return [] if row is None else list(row.flags or [])

    async def calendar_hours(self, workspace_id: str, calendar_id: str) -> Any:
        """The stored hours JSON of a calendar; NotFound when it is not this workspace's."""
        cal = t.calendars
        async with self.read() as conn:
            row = (
                await conn.execute(
                    select(cal.c.hours).where(cal.c.id == calendar_id, cal.c.workspace_id == workspace_id)
                )
            ).first()
        if row is None:
            raise NotFound(f"no calendar with id {calendar_id!r}")
        return row.hours

    async def find_team_id(self, workspace_id: str, ref: str) -> str:
        """A team by id or by name."""
        tm = t.teams
        async with self.read() as conn:
            row = (
                await conn.execute(
                    select(tm.c.id).where(
                        tm.c.workspace_id == workspace_id, (tm.c.id == ref) | (tm.c.name == ref)
                    )
                )
            ).first()
        if row is None:
            raise Invalid("team_id", f"no team with id or name {ref!r} in this workspace")
        return str(row.id)

    async def find_active_user_id(self, workspace_id: str, ref: str) -> str:
        """An active user by id or by email."""
        u = t.users
        async with self.read() as conn:
            row = (
                await conn.execute(
                    select(u.c.id).where(
                        u.c.workspace_id == workspace_id,
                        u.c.deactivated_at.is_(None),
                        (u.c.id == ref) | (u.c.email == ref),
                    )
                )
            ).first()
        if row is None:
            raise Invalid("user_id", f"no active user with id or email {ref!r} in this workspace")
        return str(row.id)

    async def check_sla_policy(self, workspace_id: str, policy_id: str) -> None:
        p = t.sla_policies
        async with self.read() as conn:
            found = (
                await conn.execute(
                    select(p.c.id).where(p.c.id == policy_id, p.c.workspace_id == workspace_id)
                )
            ).first()
        if found is None:
            raise Invalid("policy_id", f"no SLA policy with id {policy_id!r} in this workspace")

    async def set_sla_policy(
        self, workspace_id: str, conversation_id: str, policy_id: str, actor: str, now: datetime
    ) -> bool:
        """Choose the conversation's SLA policy (the SLA engine recomputes on conversation.updated);
        False when it had it already."""
        c, p = t.conversations, t.sla_policies
        async with self.write() as conn:
            found = (
                await conn.execute(
                    select(p.c.id).where(p.c.id == policy_id, p.c.workspace_id == workspace_id)
                )
            ).first()
            if found is None:
                raise Invalid("policy_id", f"no SLA policy with id {policy_id!r} in this workspace")
            current = (
                await conn.execute(
                    select(c.c.sla_policy_id).where(
                        c.c.id == conversation_id, c.c.workspace_id == workspace_id
                    )
                )
            ).first()
            if current is None:
                raise NotFound(f"no conversation with id {conversation_id!r}")
            if current.sla_policy_id == policy_id:
                return False
            await conn.execute(
                update(c).where(c.c.id == conversation_id).values(sla_policy_id=policy_id, updated_at=now)
            )
            await conn.execute(
                insert(t.audit_events).values(
                    id=new_id(),
                    workspace_id=workspace_id,
                    conversation_id=conversation_id,
                    actor=actor,
                    type="conversation.updated",
                    data={"sla_policy_id": policy_id},
                    created_at=now,
                )
            )
        return True

    async def quiet_conversations(
        self, workspace_id: str, side: str, before: datetime
    ) -> list[tuple[str, datetime]]:
        """Open or pending conversations quiet since at most `before`: (id, when the quiet stretch began).

        side "customer": our last message (an agent's, not an automatic one) is the latest, and it was
        sent by `before`. side "agent": a customer message has had no agent answer since `before`
        (the stretch begins at the first unanswered customer message).
        """
        statement = text(
            "SELECT id, agent_at, (SELECT m.direction FROM messages m "
            "  WHERE m.conversation_id = q.id AND m.kind = 'message' "
            "  AND NOT (m.direction = 'out' AND m.flags LIKE '%automatic%') "
            "  ORDER BY m.created_at DESC, m.id DESC LIMIT 1) AS last_direction, "
            "(SELECT MIN(m.created_at) FROM messages m "
            "  WHERE m.conversation_id = q.id AND m.direction = 'in' AND m.kind = 'message' "
            "  AND m.created_at > COALESCE(q.agent_at, '')) AS unanswered_at "
            "FROM (SELECT c.id AS id, "
            "  (SELECT MAX(m.created_at) FROM messages m WHERE m.conversation_id = c.id "
            "   AND m.direction = 'out' AND m.kind = 'message' AND m.flags NOT LIKE '%automatic%') AS agent_at "
            "  FROM conversations c WHERE c.workspace_id = :ws AND c.status IN ('open', 'pending')) q"
        )
        async with self.read() as conn:
            rows = (await conn.execute(statement, {"ws": workspace_id})).all()
        found: list[tuple[str, datetime]] = []
        for row in rows:
            agent_at, unanswered_at = _time(row.agent_at), _time(row.unanswered_at)
            if side == "customer":
                # The latest message (notes and automatic replies left out) is an agent's.
                if agent_at is not None and row.last_direction == "out" and agent_at <= before:
                    found.append((row.id, agent_at))
            elif unanswered_at is not None and unanswered_at <= before:
                found.append((row.id, unanswered_at))
        return found

    async def conversations_created_since(
        self, workspace_id: str, since: datetime, limit: int = 1000
    ) -> list[str]:
        c = t.conversations
        async with self.read() as conn:
            rows = await conn.execute(
                select(c.c.id)
                .where(c.c.workspace_id == workspace_id, c.c.created_at >= since)
                .order_by(c.c.created_at, c.c.id)
                .limit(limit)
            )
            return [row.id for row in rows]


def _columns(definition: dict[str, Any], box: SecretBox) -> dict[str, Any]:
    names = ("name", "position", "enabled", "event", "event_options", "conditions", "actions")
    values = {name: definition[name] for name in names if name in definition}
    if "enabled" in values:
        values["enabled"] = 1 if values["enabled"] else 0
    if "actions" in values:
        values["actions"] = [_sealed(action, box) for action in values["actions"]]
    return values


def _sealed(action: dict[str, Any], box: SecretBox) -> dict[str, Any]:
    """The action as stored: a webhook's plain `secret` encrypted (an encrypted one kept as it is)."""
    if action.get("type") != "webhook" or "secret" not in action:
        return action
    stored = {key: value for key, value in action.items() if key != "secret"}
    secret = action["secret"]
    if isinstance(secret, str):
        stored[WEBHOOK_SECRET_STORED] = box.encrypt({"secret": secret}).decode("ascii")
    return stored


def webhook_secret_set(action: dict[str, Any]) -> bool:
    """Whether a stored webhook action has a secret (encrypted, or plain from before encryption)."""
    return bool(action.get(WEBHOOK_SECRET_STORED) or action.get("secret"))


def without_secret(action: dict[str, Any]) -> dict[str, Any]:
    """A stored action without its secret in any form."""
    return {key: value for key, value in action.items() if key not in ("secret", WEBHOOK_SECRET_STORED)}
