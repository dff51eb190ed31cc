"""What replies made from templates need: the workspace and its settings, the conversation's context,
and automatic replies (at most one per contact per period, claimed in the transaction that queues it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from aggregator.model import utcnow
from aggregator.store import schema as t
from aggregator.store.base import NotFound
from aggregator.store.inbox import InboxQueries


@dataclass(frozen=True, slots=True)
class WorkspaceRecord:
    id: str
    name: str
    default_language: str
    settings: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReplyContext:
    """A conversation as a template sees it, and where the reply goes."""

    workspace: WorkspaceRecord
    conversation_id: str
    subject: str | None
    language: str | None
    channel_account_id: str
    channel_kind: str
    channel_config: dict[str, Any]
    contact_id: str
    contact_name: str | None
    contact_email: str | None
    contact_language: str | None
    agent_name: str | None
    agent_signature: str | None


def _workspace(row: Any) -> WorkspaceRecord:
    return WorkspaceRecord(row.id, row.name, row.default_language, dict(row.settings or {}))


class ReplyQueries(InboxQueries):
    async def get_workspace(self, workspace_id: str) -> WorkspaceRecord:
        async with self.read() as conn:
            row = (await conn.execute(select(t.workspaces).where(t.workspaces.c.id == workspace_id))).first()
        if row is None:
            raise NotFound(f"no workspace with id {workspace_id!r}")
        return _workspace(row)

    async def workspace_settings(self, workspace_id: str) -> dict[str, Any]:
        return (await self.get_workspace(workspace_id)).settings

    async def update_workspace(
        self,
        workspace_id: str,
        *,
        default_language: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> WorkspaceRecord:
        values: dict[str, Any] = {}
        if default_language is not None:
            values["default_language"] = default_language
        if settings is not None:
            values["settings"] = settings
        async with self.write() as conn:
            if values:
                await conn.execute(
                    update(t.workspaces).where(t.workspaces.c.id == workspace_id).values(**values)
                )
            row = (await conn.execute(select(t.workspaces).where(t.workspaces.c.id == workspace_id))).first()
        if row is None:
            raise NotFound(f"no workspace with id {workspace_id!r}")
        return _workspace(row)

    async def reply_context(
        self, workspace_id: str, conversation_id: str, user_id: str | None
    ) -> ReplyContext:
        c, co, ca, w, u = t.conversations, t.contacts, t.channel_accounts, t.workspaces, t.users
        async with self.read() as conn:
            row = (
                await conn.execute(
                    select(
                        c.c.id,
                        c.c.subject,
                        c.c.language,
                        c.c.channel_account_id,
                        c.c.contact_id,
                        ca.c.kind.label("channel_kind"),
                        ca.c.config.label("channel_config"),
                        co.c.name.label("contact_name"),
                        co.c.email.label("contact_email"),
                        co.c.language.label("contact_language"),
                    )
                    .join(co, co.c.id == c.c.contact_id)
                    .join(ca, ca.c.id == c.c.channel_account_id)
                    .where(c.c.id == conversation_id, c.c.workspace_id == workspace_id)
                )
            ).first()
            if row is None:
                raise NotFound(f"no conversation with id {conversation_id!r}")
            workspace = (await conn.execute(select(w).where(w.c.id == workspace_id))).one()
            agent = None
            if user_id is not None:
                agent = (
                    await conn.execute(
                        select(u.c.name, u.c.signature).where(
                            u.c.id == user_id, u.c.workspace_id == workspace_id
                        )
                    )
                ).first()
        return ReplyContext(
            workspace=_workspace(workspace),
            conversation_id=row.id,
            subject=row.subject,
            language=row.language,
            channel_account_id=row.channel_account_id,
            channel_kind=row.channel_kind,
            channel_config=dict(row.channel_config or {}),
            contact_id=row.contact_id,
            contact_name=row.contact_name,
            contact_email=row.contact_email,
            contact_language=row.contact_language,
            agent_name=agent.name if agent is not None else None,
            agent_signature=agent.signature if agent is not None else None,
        )

    async def inbound_facts(self, message_id: str) -> InboundFacts | None:
        """None when the message is not a customer's message (ours, a note, gone)."""
        async with self.read() as conn:
            return await _facts(conn, message_id)

    async def recent_inbound(self, seconds: float, limit: int = 10_000) -> list[str]:
        """Ids of customer messages stored in the last `seconds` (real time: ids carry it, so this reads
        the primary key, no scan), oldest first."""
        m = t.messages
        floor = f"{max(0, int((time.time() - seconds) * 1000)):012x}" + "0" * 20
        async with self.read() as conn:
            rows = await conn.execute(
                select(m.c.id)
                .where(m.c.id >= floor, m.c.direction == "in", m.c.kind == "message")
                .order_by(m.c.id)
                .limit(limit)
            )
            return [row.id for row in rows]

    async def last_auto_reply(self, workspace_id: str, contact_id: str) -> tuple[str, datetime] | None:
        """(kind, when) of the contact's latest automatic reply, if any."""
        ar = t.auto_replies
        async with self.read() as conn:
            row = (
                await conn.execute(
                    select(ar.c.kind, ar.c.sent_at).where(
                        ar.c.workspace_id == workspace_id, ar.c.contact_id == contact_id
                    )
                )
            ).first()
        return None if row is None else (row.kind, row.sent_at)

    async def create_auto_reply(
        self,
        workspace_id: str,
        conversation_id: str,
        contact_id: str,
        kind: str,
        period: timedelta,
        text_body: str,
        *,
        html: str | None,
        subject: str | None,
        language: str | None,
        extra: dict[str, Any],
        now: datetime | None = None,
    ) -> tuple[str, str] | None:
        """Queue an automatic reply unless the contact had one within `period`: (message id, outbox id).

        The check and the claim are one transaction with the message, so two processes (or a message
        delivered twice) never send two.
        """
        now = now or utcnow()
        ar = t.auto_replies
        async with self.write() as conn:
            if await self._replied_within(conn, workspace_id, contact_id, now - period):
                return None
            message_id, outbox_id = await self._add_message(
                conn,
                workspace_id,
                conversation_id,
                text_body,
                user_id=None,
                private=False,
                html=html,
                subject=subject,
                automatic=True,
                now=now,
                language=language,
                extra=extra,
            )
            assert outbox_id is not None
            values = {"kind": kind, "message_id": message_id, "sent_at": now}
            claimed = await conn.execute(
                update(ar)
                .where(ar.c.workspace_id == workspace_id, ar.c.contact_id == contact_id)
                .values(**values)
            )
            if claimed.rowcount == 0:
                await conn.execute(
                    insert(ar).values(workspace_id=workspace_id, contact_id=contact_id, **values)
                )
        return message_id, outbox_id

    async def _replied_within(
        self, conn: AsyncConnection, workspace_id: str, contact_id: str, since: datetime
    ) -> bool:
        ar = t.auto_replies
        last = (
            await conn.execute(
                select(ar.c.sent_at).where(ar.c.workspace_id == workspace_id, ar.c.contact_id == contact_id)
            )
        ).scalar()
        return last is not None and last > since


@dataclass(frozen=True, slots=True)
class InboundFacts:
    """What deciding on an automatic reply to one inbound message needs."""

    workspace_id: str
    message_id: str
    conversation_id: str
    channel_account_id: str
    contact_id: str
    flags: list[str]
    first_in_conversation: bool  # no earlier message, ours or theirs, in its conversation
    blocked: bool  # the customer cannot be written to there (blocked the bot)
    address: str = ""  # the customer's address on the channel (the conversation's identity)
    created_at: datetime | None = None  # when it was stored


async def _facts(conn: AsyncConnection, message_id: str) -> InboundFacts | None:
    m, c, i = t.messages, t.conversations, t.identities
    row = (
        await conn.execute(
            select(
                m.c.workspace_id,
                m.c.conversation_id,
                m.c.channel_account_id,
                m.c.direction,
                m.c.kind,
                m.c.flags,
                m.c.created_at,
                c.c.contact_id,
                i.c.address,
                i.c.blocked_at,
            )
            .join(c, c.c.id == m.c.conversation_id)
            .join(i, i.c.id == c.c.identity_id)
            .where(m.c.id == message_id)
        )
    ).first()
    if row is None or row.direction != "in" or row.kind != "message":
        return None
    earlier = (
        await conn.execute(
            select(m.c.id)
            .where(m.c.conversation_id == row.conversation_id, m.c.id != message_id, m.c.id < message_id)
            .limit(1)
        )
    ).first()
    return InboundFacts(
        workspace_id=row.workspace_id,
        message_id=message_id,
        conversation_id=row.conversation_id,
        channel_account_id=row.channel_account_id,
        contact_id=row.contact_id,
        flags=list(row.flags or []),
        first_in_conversation=earlier is None,
        blocked=row.blocked_at is not None,
        created_at=row.created_at,
        address=row.address,
    )
