"""The record: every query the daemon makes, each scoped by workspace."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from aggregator.attachments import write_files
from aggregator.model import (
    ConnectionState,
    DeliveryStatus,
    Direction,
    Identity,
    OutboundMessage,
    OutboxStatus,
    Reachability,
    Role,
    new_id,
    utcnow,
)
from aggregator.secrets import SecretBox
from aggregator.store import schema as t
from aggregator.store.admin import AdminQueries
from aggregator.store.base import ChannelAccount, Conflict, NotFound
from aggregator.store.calendars import CalendarQueries
from aggregator.store.contacts import ContactQueries
from aggregator.store.engine import create_engine, migrate
from aggregator.store.ingest_batch import BatchOutcome, PreparedInbound, detect_languages, ingest_batch
from aggregator.store.replies import ReplyQueries
from aggregator.store.routing import RoutingQueries
from aggregator.store.rules import RuleQueries
from aggregator.store.sla import SlaQueries
from aggregator.store.templates import TemplateQueries
from aggregator.store.writer import BatchWriter
from aggregator.tokens import hash_token


@dataclass(frozen=True, slots=True)
class Workspace:
    id: str
    name: str
    default_language: str


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    workspace_id: str
    user_id: str | None
    role: Role


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A claimed outbox row with all an adapter needs to send it."""

    outbox_id: str
    workspace_id: str
    message_id: str
    conversation_id: str
    channel_account_id: str
    attempts: int
    text: str
    html: str | None
    subject: str | None
    thread_ref: str | None
    recipient: Identity
    automatic: bool
    references: tuple[str, ...] = ()
    markdown_v2: str | None = None

    def outbound(self) -> OutboundMessage:
        """The message as the adapter sends it (this attempt's number, the thread's references)."""
        return OutboundMessage(
            message_id=self.message_id,
            conversation_id=self.conversation_id,
            channel_account_id=self.channel_account_id,
            recipient=self.recipient,
            text=self.text,
            attempt=self.attempts,
            html=self.html,
            subject=self.subject,
            thread_ref=self.thread_ref,
            automatic=self.automatic,
            in_reply_to=self.references[-1] if self.references else None,
            references=self.references,
            markdown_v2=self.markdown_v2,
        )


def _markdown_v2_of(extra: Any) -> str | None:
    value = extra.get("markdown_v2") if isinstance(extra, dict) else None
    return value if isinstance(value, str) else None


class Store(
    ReplyQueries,
    AdminQueries,
    ContactQueries,
    TemplateQueries,
    CalendarQueries,
    SlaQueries,
    RoutingQueries,
    RuleQueries,
):
    """Access to the SQL record. Adapters never see it; the core calls it."""

    @classmethod
    def open(cls, url: str, secret_box: SecretBox, *, writer_process: bool = False) -> Store:
        """`writer_process`: with SQLite, write ingest batches in a process of their own (see writer.py)."""
        writer = BatchWriter(url, process=writer_process) if url.startswith("sqlite+aiosqlite:") else None
        return cls(create_engine(url), secret_box, writer)

    async def start_writer(self) -> None:
        """Have the ingest writer ready before the first message arrives."""
        if self._writer is not None:
            await self._writer.start()

    async def migrate(self) -> tuple[str | None, str | None]:
        return await migrate(self.engine)

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
        await self.close_reader()
        await self.engine.dispose()

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(text("SELECT 1"))

    # Workspaces, users, tokens

    async def create_workspace(self, name: str, default_language: str = "en") -> Workspace:
        workspace = Workspace(new_id(), name, default_language)
        try:
            async with self.write() as conn:
                await conn.execute(
                    insert(t.workspaces).values(
                        id=workspace.id,
                        name=name,
                        default_language=default_language,
                        settings={},
                        created_at=utcnow(),
                    )
                )
        except IntegrityError as exc:
            raise Conflict(f"a workspace named {name!r} exists already") from exc
        return workspace

    async def get_workspace_by_name(self, name: str) -> Workspace:
        async with self.read() as conn:
            row = (await conn.execute(select(t.workspaces).where(t.workspaces.c.name == name))).first()
        if row is None:
            raise NotFound(f"no workspace named {name!r}")
        return Workspace(row.id, row.name, row.default_language)

    async def ensure_workspace(self, name: str) -> tuple[Workspace, bool]:
        """The workspace of that name, created when missing; True when it was created."""
        try:
            return await self.get_workspace_by_name(name), False
        except NotFound:
            return await self.create_workspace(name), True

    async def list_workspaces(self) -> list[Workspace]:
        async with self.read() as conn:
            rows = (await conn.execute(select(t.workspaces).order_by(t.workspaces.c.name))).all()
        return [Workspace(r.id, r.name, r.default_language) for r in rows]

    async def create_user(
        self,
        workspace_id: str,
        name: str,
        email: str,
        role: Role,
        languages: Sequence[str] = (),
        capacity: int = 10,
    ) -> str:
        user_id = new_id()
        try:
            async with self.write() as conn:
                await conn.execute(
                    insert(t.users).values(
                        id=user_id,
                        workspace_id=workspace_id,
                        name=name,
                        email=email,
                        role=role.value,
                        languages=list(languages),
                        capacity=capacity,
                        created_at=utcnow(),
                    )
                )
        except IntegrityError as exc:
            raise Conflict(f"a user with email {email!r} exists already in this workspace") from exc
        return user_id

    async def find_user_id(self, workspace_id: str, email: str) -> str | None:
        """The active user with that email, if any."""
        async with self.read() as conn:
            found: str | None = (
                await conn.execute(
                    select(t.users.c.id).where(
                        t.users.c.workspace_id == workspace_id,
                        t.users.c.email == email,
                        t.users.c.deactivated_at.is_(None),
                    )
                )
            ).scalar_one_or_none()
        return found

    async def create_token(
        self, workspace_id: str, role: Role, token: str, user_id: str | None = None, name: str = ""
    ) -> str:
        token_id = new_id()
        async with self.write() as conn:
            await conn.execute(
                insert(t.api_tokens).values(
                    id=token_id,
                    workspace_id=workspace_id,
                    user_id=user_id,
                    role=role.value,
                    name=name,
                    token_hash=hash_token(token),
                    created_at=utcnow(),
                )
            )
        return token_id

    async def count_tokens(self, workspace_id: str, role: Role | None = None) -> int:
        query = (
            select(func.count())
            .select_from(t.api_tokens)
            .where(t.api_tokens.c.workspace_id == workspace_id, t.api_tokens.c.revoked_at.is_(None))
        )
        if role is not None:
            query = query.where(t.api_tokens.c.role == role.value)
        async with self.read() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def authenticate(self, token: str) -> TokenInfo | None:
        """The live token's id, workspace, user and role; None for an unknown, revoked or deactivated one."""
        query = (
            select(
                t.api_tokens.c.id, t.api_tokens.c.workspace_id, t.api_tokens.c.user_id, t.api_tokens.c.role
            )
            .join(t.users, t.users.c.id == t.api_tokens.c.user_id)
            .where(
                t.api_tokens.c.token_hash == hash_token(token),
                t.api_tokens.c.revoked_at.is_(None),
                t.users.c.deactivated_at.is_(None),
            )
        )
        row = await self.read_sync(lambda conn: conn.execute(query).first())
        if row is None:
            return None
        return TokenInfo(row.id, row.workspace_id, row.user_id, Role(row.role))

    async def touch_token(self, token_id: str) -> None:
        async with self.write() as conn:
            await conn.execute(
                update(t.api_tokens).where(t.api_tokens.c.id == token_id).values(last_used_at=utcnow())
            )

    # Channel accounts

    async def create_channel_account(
        self, workspace_id: str, kind: str, name: str, config: dict[str, Any], secrets: dict[str, str]
    ) -> str:
        return (await self.create_channel(workspace_id, kind, name, config, secrets)).id

    async def get_channel_account(self, account_id: str, workspace_id: str | None = None) -> ChannelAccount:
        query = select(t.channel_accounts).where(t.channel_accounts.c.id == account_id)
        if workspace_id is not None:
            query = query.where(t.channel_accounts.c.workspace_id == workspace_id)
        async with self.read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(f"no channel with id {account_id!r}")
        return self._channel_account(row)

    async def list_channel_accounts(
        self, workspace_id: str | None = None, enabled_only: bool = False
    ) -> list[ChannelAccount]:
        query = select(t.channel_accounts).order_by(t.channel_accounts.c.created_at)
        if workspace_id is not None:
            query = query.where(t.channel_accounts.c.workspace_id == workspace_id)
        if enabled_only:
            query = query.where(t.channel_accounts.c.enabled == 1)
        query = query.where(t.channel_accounts.c.deleted_at.is_(None))
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [self._channel_account(r) for r in rows]

    async def set_channel_state(self, account_id: str, state: ConnectionState, detail: str | None) -> None:
        async with self.write() as conn:
            await conn.execute(
                update(t.channel_accounts)
                .where(t.channel_accounts.c.id == account_id)
                .values(state=state.value, state_detail=detail, updated_at=utcnow())
            )

    async def get_checkpoint(self, account_id: str, key: str) -> Any:
        async with self.read() as conn:
            return (
                await conn.execute(
                    select(t.channel_checkpoints.c.value).where(
                        t.channel_checkpoints.c.channel_account_id == account_id,
                        t.channel_checkpoints.c.key == key,
                    )
                )
            ).scalar_one_or_none()

    async def set_checkpoint(self, account_id: str, key: str, value: Any) -> None:
        async with self.write() as conn:
            updated = await conn.execute(
                update(t.channel_checkpoints)
                .where(
                    t.channel_checkpoints.c.channel_account_id == account_id,
                    t.channel_checkpoints.c.key == key,
                )
                .values(value=value, updated_at=utcnow())
            )
            if updated.rowcount == 0:
                await conn.execute(
                    insert(t.channel_checkpoints).values(
                        channel_account_id=account_id, key=key, value=value, updated_at=utcnow()
                    )
                )

    async def delete_checkpoint(self, account_id: str, key: str) -> None:
        async with self.write() as conn:
            await conn.execute(
                delete(t.channel_checkpoints).where(
                    t.channel_checkpoints.c.channel_account_id == account_id,
                    t.channel_checkpoints.c.key == key,
                )
            )

    async def set_reachability(self, account_id: str, identity: Identity, reachability: Reachability) -> bool:
        """Record on the contact's identity whether it can be written to; False when it is unknown.

        Nothing changes when the state is already the same (the service may report it again).
        """
        i = t.identities
        at = reachability.at or utcnow()
        async with self.write() as conn:
            workspace_id = (
                await conn.execute(
                    select(t.channel_accounts.c.workspace_id).where(t.channel_accounts.c.id == account_id)
                )
            ).scalar_one_or_none()
            if workspace_id is None:
                return False
            where = (
                i.c.workspace_id == workspace_id,
                i.c.kind == identity.kind,
                i.c.address == identity.address,
            )
            if reachability.blocked:
                values = {"blocked_at": at, "blocked_reason": reachability.reason}
                condition = i.c.blocked_at.is_(None)
            else:
                values = {"blocked_at": None, "blocked_reason": None}
                condition = i.c.blocked_at.is_not(None)
            await conn.execute(update(i).where(*where, condition).values(**values))
            known = (await conn.execute(select(i.c.id).where(*where))).scalar_one_or_none()
            return known is not None

    # Replies and the outbox

    async def create_reply(
        self,
        workspace_id: str,
        conversation_id: str,
        text_body: str,
        *,
        user_id: str | None = None,
        html: str | None = None,
        subject: str | None = None,
        automatic: bool = False,
        language: str | None = None,
        extra: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> tuple[str, str]:
        """Store an outgoing message and its outbox row in one transaction: (message id, outbox id)."""
        message_id, outbox_id = await self.create_message(
            workspace_id,
            conversation_id,
            text_body,
            user_id=user_id,
            private=False,
            html=html,
            subject=subject,
            automatic=automatic,
            language=language,
            extra=extra,
            now=now,
        )
        assert outbox_id is not None
        return message_id, outbox_id

    async def claim_outbox(self, outbox_id: str, now: datetime, claim_until: datetime) -> OutboxItem | None:
        """Take one due outbox row for sending; None when it is not due or another worker holds it."""
        o, m, c, i = t.outbox, t.messages, t.conversations, t.identities
        async with self.write() as conn:
            claimed = (
                await conn.execute(
                    update(o)
                    .where(
                        o.c.id == outbox_id,
                        or_(
                            and_(o.c.status == OutboxStatus.QUEUED.value, o.c.next_attempt_at <= now),
                            and_(o.c.status == OutboxStatus.SENDING.value, o.c.claimed_until < now),
                        ),
                    )
                    .values(
                        status=OutboxStatus.SENDING.value,
                        claimed_until=claim_until,
                        attempts=o.c.attempts + 1,
                        updated_at=now,
                    )
                    .returning(o.c.attempts)
                )
            ).first()
            if claimed is None:
                return None
            row = (
                await conn.execute(
                    select(
                        o.c.workspace_id,
                        o.c.message_id,
                        o.c.channel_account_id,
                        m.c.conversation_id,
                        m.c.text,
                        m.c.html,
                        m.c.subject,
                        m.c.flags,
                        m.c.extra,
                        c.c.thread_ref,
                        c.c.subject.label("conversation_subject"),
                        i.c.kind,
                        i.c.address,
                        i.c.display_name,
                    )
                    .join(m, m.c.id == o.c.message_id)
                    .join(c, c.c.id == m.c.conversation_id)
                    .join(i, i.c.id == c.c.identity_id)
                    .where(o.c.id == outbox_id)
                )
            ).one()
            # What the customer's latest message asks a reply to point at (email References).
            reply_refs = (
                await conn.execute(
                    select(m.c.reply_refs)
                    .where(
                        m.c.conversation_id == row.conversation_id,
                        m.c.direction == Direction.IN.value,
                        m.c.reply_refs.is_not(None),
                    )
                    .order_by(m.c.created_at.desc(), m.c.id.desc())
                    .limit(1)
                )
            ).scalar()
        return OutboxItem(
            outbox_id=outbox_id,
            workspace_id=row.workspace_id,
            message_id=row.message_id,
            conversation_id=row.conversation_id,
            channel_account_id=row.channel_account_id,
            attempts=claimed.attempts,
            text=row.text,
            html=row.html,
            subject=row.subject or row.conversation_subject,
            thread_ref=row.thread_ref,
            recipient=Identity(row.kind, row.address, row.display_name),
            automatic="automatic" in row.flags,
            references=tuple(reply_refs or ()),
            markdown_v2=_markdown_v2_of(row.extra),
        )

    async def finish_outbox(
        self,
        item: OutboxItem,
        status: OutboxStatus,
        *,
        external_id: str | None = None,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
        attempted: bool = True,
    ) -> None:
        """Record the outcome of a send: sent, failed for good, or queued again for a retry.

        `attempted=False` hands back a claim that did not try to send (e.g. held by a rate limit), so
        it does not count towards the attempt limit.
        """
        now = utcnow()
        values: dict[str, Any] = {
            "status": status.value,
            "claimed_until": None,
            "next_attempt_at": next_attempt_at or now,
            "updated_at": now,
        }
        if attempted:
            values["last_error"] = error
        else:
            values["attempts"] = t.outbox.c.attempts - 1
        async with self.write() as conn:
            await conn.execute(update(t.outbox).where(t.outbox.c.id == item.outbox_id).values(**values))
            if not attempted:
                return
            message_values: dict[str, Any] = {"delivery_error": error}
            if status is OutboxStatus.SENT:
                message_values |= {"delivery_status": DeliveryStatus.SENT.value, "sent_at": now}
                if external_id is not None:
                    message_values["external_id"] = external_id
            elif status is OutboxStatus.FAILED:
                message_values["delivery_status"] = DeliveryStatus.FAILED.value
            await conn.execute(
                update(t.messages).where(t.messages.c.id == item.message_id).values(**message_values)
            )

    async def due_outbox(self, now: datetime, limit: int = 1000) -> list[tuple[str, datetime]]:
        """Outbox rows to (re)enqueue: queued ones, and claims a crashed worker left behind."""
        o = t.outbox
        query = (
            select(o.c.id, o.c.next_attempt_at)
            .where(
                or_(
                    o.c.status == OutboxStatus.QUEUED.value,
                    and_(o.c.status == OutboxStatus.SENDING.value, o.c.claimed_until < now),
                )
            )
            .order_by(o.c.next_attempt_at)
            .limit(limit)
        )
        async with self.read() as conn:
            return [(r.id, r.next_attempt_at) for r in (await conn.execute(query)).all()]

    async def outbox_counts(self) -> dict[str, int]:
        query = select(t.outbox.c.status, func.count()).group_by(t.outbox.c.status)
        async with self.read() as conn:
            return {status: int(n) for status, n in (await conn.execute(query)).all()}

    async def get_message(self, message_id: str, workspace_id: str) -> dict[str, Any]:
        async with self.read() as conn:
            row = (
                await conn.execute(
                    select(t.messages).where(
                        t.messages.c.id == message_id, t.messages.c.workspace_id == workspace_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"no message with id {message_id!r}")
        return dict(row._mapping)

    async def count_messages(self, channel_account_id: str | None = None) -> int:
        query = select(func.count()).select_from(t.messages)
        if channel_account_id is not None:
            query = query.where(t.messages.c.channel_account_id == channel_account_id)
        async with self.read() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def ingest_batch(
        self, items: Sequence[PreparedInbound], now: datetime, *, files_root: Path | None = None
    ) -> BatchOutcome:
        """Store a batch of inbound messages in one transaction (see ingest_batch.py); the items' small
        files are written under `files_root` first."""
        root = str(files_root) if files_root is not None else None
        if self._writer is None:
            await asyncio.to_thread(detect_languages, items)
            files = [f for item in items for f in item.files]
            if root is not None and files:
                await asyncio.to_thread(write_files, root, files)
            async with self.write() as conn:
                return await conn.run_sync(ingest_batch, items, now)
        return await self._writer.write(items, now, root)
