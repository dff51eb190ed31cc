"""The inbox: conversation lists, conversation changes, messages, notes and read marks."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from aggregator.model import (
    ConversationStatus,
    DeliveryStatus,
    Direction,
    MessageKind,
    OutboxStatus,
    new_id,
    utcnow,
)
from aggregator.store import schema as t
from aggregator.store.base import Invalid, NotFound, StoreBase
from aggregator.store.ingest_batch import SEARCH_INSERT, preview

# Search: matches are read newest first in chunks of this many, and at most this many chunks a page,
# so a common word costs a bounded amount per page (a page may then hold fewer than `limit` items).
SEARCH_CHUNK = 500
SEARCH_CHUNKS_PER_PAGE = 20
# Columns update_conversation writes but does not report as changed.
_NOT_REPORTED = frozenset(
    {"updated_at", "resolved_at", "language_source", "status_changed_at", "assigned_by", "handed_back_by"}
)


@dataclass(frozen=True, slots=True)
class ConversationFilter:
    """What GET /conversations may filter on; None means no filter."""

    statuses: tuple[str, ...] | None = None
    channel_account_ids: tuple[str, ...] | None = None
    assignee_id: str | None = None
    unassigned: bool = False
    team_id: str | None = None
    label: str | None = None
    language: str | None = None
    priority: str | None = None
    # SLA: a running timer due before this instant (not breached yet); or breached.
    sla_due_before: datetime | None = None
    sla_breached: bool = False


@dataclass(frozen=True, slots=True)
class ConversationPage:
    rows: list[Row[Any]]
    next_cursor: tuple[Any, ...] | None


@dataclass(slots=True)
class ConversationChange:
    """The fields a PATCH sets; `fields` lists which ones were given (None clears)."""

    fields: set[str] = field(default_factory=set)
    status: str | None = None
    priority: str | None = None
    assignee_id: str | None = None
    team_id: str | None = None
    labels: list[str] | None = None
    snooze_until: datetime | None = None
    # Set by an agent: detection never changes it afterwards; None hands the language back to detection.
    language: str | None = None
    # The SLA policy an agent or a rule chose; None goes back to the first matching policy.
    sla_policy_id: str | None = None


_WORD = re.compile(r"[\w*]+", re.UNICODE)


def fts_query(q: str) -> str | None:
    """A user's search words as an FTS5 query: every word must match, `word*` matches a prefix."""
    terms = []
    for word in _WORD.findall(q):
        prefix = word.endswith("*")
        core = word.strip("*")
        if core:
            terms.append(f'"{core}"' + ("*" if prefix else ""))
    return " ".join(terms) if terms else None


def _sla_timer_column(column: Any, label: str) -> Any:
    """A column of the conversation's SLA timer due first (sla_due_at is its due time; a paused one
    when none runs), looked up by primary key without a sort."""
    st, c = t.sla_timers, t.conversations
    return (
        select(column)
        .where(st.c.conversation_id == c.c.id, st.c.stopped_at.is_(None), st.c.due_at.is_(c.c.sla_due_at))
        .limit(1)
        .scalar_subquery()
        .label(label)
    )


def _conversation_columns() -> list[Any]:
    c, co, ca, st = t.conversations, t.contacts, t.channel_accounts, t.sla_timers
    return [
        *c.c,
        _sla_timer_column(st.c.metric, "sla_metric"),
        _sla_timer_column(st.c.policy_id, "sla_timer_policy_id"),
        co.c.name.label("contact_name"),
        co.c.email.label("contact_email"),
        ca.c.kind.label("channel_kind"),
        ca.c.name.label("channel_name"),
    ]


def _with_user(query: Select[Any], user_id: str) -> Select[Any]:
    c, co, ca, r = t.conversations, t.contacts, t.channel_accounts, t.conversation_reads
    return (
        query.add_columns(r.c.read_count)
        .join(co, co.c.id == c.c.contact_id)
        .join(ca, ca.c.id == c.c.channel_account_id)
        .outerjoin(r, and_(r.c.conversation_id == c.c.id, r.c.user_id == user_id))
    )


def _no_index(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """`+column`: SQLite then uses no index for the term (the row is found by another one)."""
    return UnaryExpression(column, operator=custom_op("+"), type_=column.type)


def _filters(
    workspace_id: str | None, f: ConversationFilter, *, indexed: bool = True
) -> list[ColumnElement[bool]]:
    """The filter's terms. `indexed=False` for rows found by id: without statistics SQLite would rather
    walk a status or team index than look up a list of ids (26 ms instead of 2 for 290 ids)."""
    c = t.conversations
    col = (lambda column: column) if indexed else _no_index
    where: list[ColumnElement[bool]] = [] if workspace_id is None else [col(c.c.workspace_id) == workspace_id]
    if f.statuses is not None:
        status = col(c.c.status)
        where.append(status == f.statuses[0] if len(f.statuses) == 1 else status.in_(f.statuses))
    if f.channel_account_ids is not None:
        where.append(col(c.c.channel_account_id).in_(f.channel_account_ids))
    if f.unassigned:
        where.append(col(c.c.assignee_id).is_(None))
    elif f.assignee_id is not None:
        where.append(col(c.c.assignee_id) == f.assignee_id)
    if f.team_id is not None:
        where.append(col(c.c.team_id) == f.team_id)
    if f.language is not None:
        where.append(col(c.c.language) == f.language)
    if f.priority is not None:
        where.append(col(c.c.priority) == f.priority)
    if f.sla_due_before is not None:
        where.append(col(c.c.sla_due_at).is_not(None))
        where.append(col(c.c.sla_due_at) <= f.sla_due_before)
        where.append(col(c.c.sla_state) == "running")
    if f.sla_breached:
        where.append(col(c.c.sla_state) == "breached")
    if f.label is not None:
        cl = t.conversation_labels
        where.append(exists().where(cl.c.conversation_id == c.c.id, cl.c.label == f.label))
    return where


def _index_for(f: ConversationFilter) -> str:
    """The index that serves this filter in activity order, so a page reads about `limit` rows.

    SQLite's planner, without statistics, may pick an index that matches the filter but then sorts
    every match; naming the index keeps the list a range scan that stops at the page's end.
    """
    if f.sla_due_before is not None:
        return "ix_conversations_workspace_id_sla_due_at"
    if f.unassigned or f.assignee_id is not None:
        return "ix_conversations_workspace_id_assignee_id_last_activity_at_id"
    if f.team_id is not None:
        return "ix_conversations_workspace_id_team_id_last_activity_at_id"
    if f.statuses is not None and len(f.statuses) == 1:
        return "ix_conversations_workspace_id_status_last_activity_at_id"
    return "ix_conversations_workspace_id_last_activity_at_id"


# A label on at most this many conversations is read through the label index and sorted (about 2 ms);
# a commoner one is found by walking the activity order (a rare one that way reads 100k rows: 30 ms).
RARE_LABEL = 2000


def conversation_list_query(
    workspace_id: str,
    user_id: str,
    f: ConversationFilter,
    *,
    limit: int,
    after: tuple[datetime, str] | None,
    rare_label: bool = False,
) -> Select[Any]:
    """One page of the inbox list, `limit + 1` rows: a range scan of the index that fits the filter, or,
    for a rare label, the labelled conversations sorted."""
    c = t.conversations
    query = _with_user(select(*_conversation_columns()).select_from(c), user_id)
    if rare_label and f.label is not None:
        cl = t.conversation_labels
        labelled = select(cl.c.conversation_id).where(cl.c.workspace_id == workspace_id, cl.c.label == f.label)
        query = query.where(
            c.c.id.in_(labelled),
            *_filters(workspace_id, dataclasses.replace(f, label=None), indexed=False),
        )
    else:
        query = query.where(*_filters(workspace_id, f)).with_hint(
            c, f"INDEXED BY {_index_for(f)}", "sqlite"
        )
    if after is not None:
        query = query.where(
            tuple_(c.c.last_activity_at, c.c.id) < tuple_(literal(after[0], t.UTCDateTime()), literal(after[1]))
        )
    return query.order_by(c.c.last_activity_at.desc(), c.c.id.desc()).limit(limit + 1)


def _search(
    conn: Connection,
    workspace_id: str,
    user_id: str,
    f: ConversationFilter,
    match: str,
    *,
    limit: int,
    before_rowid: int | None,
) -> ConversationPage:
    c = t.conversations
    found: list[Row[Any]] = []
    seen: set[str] = set()
    position = before_rowid
    for _ in range(SEARCH_CHUNKS_PER_PAGE):
        params: dict[str, Any] = {"q": match, "ws": workspace_id, "n": SEARCH_CHUNK}
        bound = ""
        if position is not None:
            bound = "AND rowid < :before "
            params["before"] = position
        chunk = conn.execute(
            text(
                "SELECT rowid, conversation_id FROM search_index WHERE search_index MATCH :q "
                "AND workspace_id = :ws AND conversation_id IS NOT NULL "
                f"{bound}ORDER BY rowid DESC LIMIT :n"
            ),
            params,
        ).all()
        if not chunk:
            return ConversationPage(found, None)
        newest: dict[str, int] = {}
        for rowid, conversation_id in chunk:
            if conversation_id not in seen:
                seen.add(conversation_id)
                newest[conversation_id] = int(rowid)
        if newest and before_rowid is not None:
            # Listed on an earlier page already: it has a newer match than where this page began.
            earlier = conn.execute(
                text(
                    "SELECT DISTINCT conversation_id FROM search_index WHERE search_index MATCH :q "
                    "AND rowid >= :start AND workspace_id = :ws"
                ),
                {"q": match, "start": before_rowid, "ws": workspace_id},
            )
            for (conversation_id,) in earlier:
                newest.pop(conversation_id, None)
        candidates = list(newest)
        # Looked up in order, a few more than still needed at a time: a common word brings hundreds of
        # candidates, and building each row costs more than finding it.
        while candidates and len(found) < limit:
            size = max(8, 2 * (limit - len(found)))
            batch, candidates = candidates[:size], candidates[size:]
            query = _with_user(select(*_conversation_columns()).select_from(c), user_id).where(
                *_filters(workspace_id, f, indexed=False), c.c.id.in_(batch)
            )
            by_id = {row.id: row for row in conn.execute(query).all()}
            for conversation_id in batch:
                row = by_id.get(conversation_id)
                if row is not None:
                    found.append(row)
                    if len(found) == limit:
                        # Go on right after this conversation's newest match, not after the whole chunk.
                        return ConversationPage(found, (newest[conversation_id],))
        position = int(chunk[-1][0])
        if len(chunk) < SEARCH_CHUNK:
            return ConversationPage(found, None)
    return ConversationPage(found, (position,) if position is not None else None)


class InboxQueries(StoreBase):
    async def list_conversations(
        self,
        workspace_id: str,
        user_id: str,
        f: ConversationFilter,
        *,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> ConversationPage:
        """Newest activity first; `after` is the (last_activity_at, id) the previous page ended on."""

        def work(conn: Connection) -> ConversationPage:
            rare = False
            if f.label is not None:
                cl = t.conversation_labels
                counted = (
                    select(cl.c.conversation_id)
                    .where(cl.c.workspace_id == workspace_id, cl.c.label == f.label)
                    .limit(RARE_LABEL + 1)
                    .subquery()
                )
                rare = conn.execute(select(func.count()).select_from(counted)).scalar_one() <= RARE_LABEL
            query = conversation_list_query(workspace_id, user_id, f, limit=limit, after=after, rare_label=rare)
            rows = list(conn.execute(query).all())
            more = len(rows) > limit
            rows = rows[:limit]
            return ConversationPage(rows, (rows[-1].last_activity_at, rows[-1].id) if more else None)

        return await self.read_sync(work)

    async def search_conversations(
        self,
        workspace_id: str,
        user_id: str,
        f: ConversationFilter,
        q: str,
        *,
        limit: int,
        before_rowid: int | None = None,
    ) -> ConversationPage:
        """Conversations whose messages or subject match `q`, by their newest match first.

        Matches are read newest first (FTS5 reads rowid order without ranking: ranking a word that
        matches 100k messages costs over 100 ms); a conversation is listed once, where its newest match
        falls. The cursor is the rowid where the page stopped reading.
        """
        match = fts_query(q)
        if match is None:
            return ConversationPage([], None)
        return await self.read_sync(
            lambda conn: _search(conn, workspace_id, user_id, f, match, limit=limit, before_rowid=before_rowid)
        )


    async def get_conversation(self, workspace_id: str, user_id: str, conversation_id: str) -> Any:
        c = t.conversations
        query = _with_user(select(*_conversation_columns()).select_from(c), user_id).where(
            c.c.id == conversation_id, c.c.workspace_id == workspace_id
        )
        row = await self.read_sync(lambda conn: conn.execute(query).first())
        if row is None:
            raise NotFound(f"no conversation with id {conversation_id!r}")
        return row

    async def _check_member(
        self, conn: AsyncConnection, table: Any, workspace_id: str, record_id: str, field_name: str, what: str
    ) -> None:
        query = select(table.c.id).where(table.c.id == record_id, table.c.workspace_id == workspace_id)
        if table is t.users:
            query = query.where(table.c.deactivated_at.is_(None))
        if (await conn.execute(query)).first() is None:
            raise Invalid(field_name, f"no {what} with id {record_id!r} in this workspace")

    async def update_conversation(
        self, workspace_id: str, conversation_id: str, change: ConversationChange, actor: str, now: datetime
    ) -> dict[str, Any]:
        """Apply the change in one transaction with its audit events; returns {field: new value} changed."""
        c = t.conversations
        async with self.write() as conn:
            current = (
                await conn.execute(
                    select(c).where(c.c.id == conversation_id, c.c.workspace_id == workspace_id)
                )
            ).first()
            if current is None:
                raise NotFound(f"no conversation with id {conversation_id!r}")
            values: dict[str, Any] = {}
            if "assignee_id" in change.fields and change.assignee_id is not None:
                await self._check_member(
                    conn, t.users, workspace_id, change.assignee_id, "assignee_id", "user"
                )
            if "team_id" in change.fields and change.team_id is not None:
                await self._check_member(conn, t.teams, workspace_id, change.team_id, "team_id", "team")
            if "sla_policy_id" in change.fields and change.sla_policy_id is not None:
                await self._check_member(
                    conn, t.sla_policies, workspace_id, change.sla_policy_id, "sla_policy_id", "SLA policy"
                )
            for name in ("priority", "assignee_id", "team_id", "sla_policy_id"):
                if name in change.fields and getattr(change, name) != getattr(current, name):
                    values[name] = getattr(change, name)
            if "assignee_id" in values:
                # Who assigned, in the same write: routing takes back only what routing gave.
                by = "rule" if actor.startswith("rule:") else "manual"
                values["assigned_by"] = None if values["assignee_id"] is None else by
                # A person giving it back: routing will not hand it straight back to the same agent.
                values["handed_back_by"] = (
                    current.assignee_id if values["assignee_id"] is None and by == "manual" else None
                )
            if "language" in change.fields:
                if change.language is not None and (
                    change.language != current.language or current.language_source != "agent"
                ):
                    values["language"] = change.language
                    values["language_source"] = "agent"
                elif change.language is None and current.language_source == "agent":
                    # Back to detection: the next customer message sets it again.
                    values["language_source"] = None
            status = change.status if "status" in change.fields else None
            if "snooze_until" in change.fields:
                if change.snooze_until is None:
                    if current.status == ConversationStatus.SNOOZED.value and status is None:
                        status = ConversationStatus.OPEN.value
                else:
                    status = ConversationStatus.SNOOZED.value
                    values["snoozed_until"] = change.snooze_until
            if status is not None and status != current.status:
                values["status"] = status
                values["status_changed_at"] = now
                if status == ConversationStatus.RESOLVED.value:
                    values["resolved_at"] = now
                else:
                    values["resolved_at"] = None
                if status != ConversationStatus.SNOOZED.value:
                    values["snoozed_until"] = None
            changed: dict[str, Any] = {}
            if values:
                values["updated_at"] = now
                await conn.execute(update(c).where(c.c.id == conversation_id).values(**values))
                changed = {k: v for k, v in values.items() if k not in _NOT_REPORTED}
                if "language_source" in values and "language" not in values:
                    changed["language"] = current.language
            if change.labels is not None:
                cl = t.conversation_labels
                old = set(
                    (
                        await conn.execute(select(cl.c.label).where(cl.c.conversation_id == conversation_id))
                    ).scalars()
                )
                new = set(change.labels)
                if old != new:
                    await conn.execute(delete(cl).where(cl.c.conversation_id == conversation_id))
                    if new:
                        await conn.execute(
                            insert(cl),
                            [
                                {
                                    "conversation_id": conversation_id,
                                    "label": label,
                                    "workspace_id": workspace_id,
                                }
                                for label in sorted(new)
                            ],
                        )
                    await conn.execute(
                        update(c).where(c.c.id == conversation_id).values(labels=sorted(new), updated_at=now)
                    )
                    changed["labels"] = sorted(new)
            if changed:
                await conn.execute(
                    insert(t.audit_events).values(
                        id=new_id(),
                        workspace_id=workspace_id,
                        conversation_id=conversation_id,
                        actor=actor,
                        type="conversation.updated",
                        data={k: v.isoformat() if isinstance(v, datetime) else v for k, v in changed.items()},
                        created_at=now,
                    )
                )
        return changed

    async def wake_snoozed(self, now: datetime, limit: int = 500) -> list[tuple[str, str]]:
        """Reopen conversations whose snooze has run out: (workspace id, conversation id) of each."""
        c = t.conversations
        due_query = (
            select(c.c.id, c.c.workspace_id)
            .where(c.c.status == ConversationStatus.SNOOZED.value, c.c.snoozed_until <= now)
            .limit(limit)
        )
        # Checked with a read first: this runs every second in every process, and a write transaction
        # would take SQLite's write lock from the ingest writer each time.
        async with self.read() as conn:
            if (await conn.execute(due_query)).first() is None:
                return []
        async with self.write() as conn:
            due = (await conn.execute(due_query)).all()
            if not due:
                return []
            ids = [row.id for row in due]
            await conn.execute(
                update(c)
                .where(c.c.id.in_(ids))
                .values(
                    status=ConversationStatus.OPEN.value, snoozed_until=None, updated_at=now, status_changed_at=now
                )
            )
            await conn.execute(
                insert(t.audit_events),
                [
                    {
                        "id": new_id(),
                        "workspace_id": row.workspace_id,
                        "conversation_id": row.id,
                        "actor": "system",
                        "type": "conversation.snooze_ended",
                        "data": {},
                        "created_at": now,
                    }
                    for row in due
                ],
            )
        return [(row.workspace_id, row.id) for row in due]

    async def mark_read(self, workspace_id: str, conversation_id: str, user_id: str, now: datetime) -> None:
        c, r = t.conversations, t.conversation_reads
        async with self.write() as conn:
            count = (
                await conn.execute(
                    select(c.c.inbound_count).where(
                        c.c.id == conversation_id, c.c.workspace_id == workspace_id
                    )
                )
            ).scalar_one_or_none()
            if count is None:
                raise NotFound(f"no conversation with id {conversation_id!r}")
            updated = await conn.execute(
                update(r)
                .where(r.c.conversation_id == conversation_id, r.c.user_id == user_id)
                .values(read_count=count, read_at=now)
            )
            if updated.rowcount == 0:
                await conn.execute(
                    insert(r).values(
                        conversation_id=conversation_id, user_id=user_id, read_count=count, read_at=now
                    )
                )

    # Messages

    async def list_messages(
        self, workspace_id: str, conversation_id: str, *, limit: int, before: tuple[datetime, str] | None
    ) -> tuple[list[Any], dict[str, list[Any]], tuple[datetime, str] | None]:
        """The newest `limit` messages before `before`, oldest first; with their attachments by message."""
        m, a, co, u = t.messages, t.attachments, t.contacts, t.users

        def work(conn: Connection) -> tuple[list[Any], dict[str, list[Any]], bool]:
            conversations = t.conversations
            found = conn.execute(
                select(conversations.c.id).where(
                    conversations.c.id == conversation_id, conversations.c.workspace_id == workspace_id
                )
            ).first()
            if found is None:
                raise NotFound(f"no conversation with id {conversation_id!r}")
            query = (
                select(*m.c, co.c.name.label("contact_name"), u.c.name.label("user_name"))
                .outerjoin(co, co.c.id == m.c.sender_contact_id)
                .outerjoin(u, u.c.id == m.c.sender_user_id)
                .where(m.c.conversation_id == conversation_id)
            )
            if before is not None:
                query = query.where(
                    tuple_(m.c.created_at, m.c.id)
                    < tuple_(literal(before[0], t.UTCDateTime()), literal(before[1]))
                )
            rows = list(conn.execute(query.order_by(m.c.created_at.desc(), m.c.id.desc()).limit(limit + 1)).all())
            more = len(rows) > limit
            rows = rows[:limit]
            files: dict[str, list[Any]] = {}
            if rows:
                listed = select(a).where(a.c.message_id.in_([r.id for r in rows])).order_by(a.c.id)
                for row in conn.execute(listed).all():
                    files.setdefault(row.message_id, []).append(row)
            return rows, files, more

        rows, attachments, more = await self.read_sync(work)
        cursor = (rows[-1].created_at, rows[-1].id) if more else None
        rows.reverse()
        return rows, attachments, cursor

    async def get_message_row(self, workspace_id: str, message_id: str) -> tuple[Any, list[Any]]:
        m, a, co, u = t.messages, t.attachments, t.contacts, t.users
        async with self.read() as conn:
            row = (
                await conn.execute(
                    select(*m.c, co.c.name.label("contact_name"), u.c.name.label("user_name"))
                    .outerjoin(co, co.c.id == m.c.sender_contact_id)
                    .outerjoin(u, u.c.id == m.c.sender_user_id)
                    .where(m.c.id == message_id, m.c.workspace_id == workspace_id)
                )
            ).first()
            if row is None:
                raise NotFound(f"no message with id {message_id!r}")
            files = list((await conn.execute(select(a).where(a.c.message_id == message_id))).all())
        return row, files

    async def create_message(
        self,
        workspace_id: str,
        conversation_id: str,
        text_body: str,
        *,
        user_id: str | None,
        private: bool,
        html: str | None = None,
        subject: str | None = None,
        automatic: bool = False,
        now: datetime | None = None,
        language: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[str, str | None]:
        """A reply (message + outbox row) or a private note, in one transaction: (message id, outbox id).

        `extra` holds what the outbox hands the adapter besides text and HTML (`markdown_v2`, `template`).
        An automatic reply does not count as the first response.
        """
        now = now or utcnow()
        async with self.write() as conn:
            return await self._add_message(
                conn,
                workspace_id,
                conversation_id,
                text_body,
                user_id=user_id,
                private=private,
                html=html,
                subject=subject,
                automatic=automatic,
                now=now,
                language=language,
                extra=extra,
            )

    async def _add_message(
        self,
        conn: AsyncConnection,
        workspace_id: str,
        conversation_id: str,
        text_body: str,
        *,
        user_id: str | None,
        private: bool,
        html: str | None,
        subject: str | None,
        automatic: bool,
        now: datetime,
        language: str | None,
        extra: dict[str, Any] | None,
    ) -> tuple[str, str | None]:
        message_id = new_id()
        outbox_id = None if private else new_id()
        c = t.conversations
        conv = (
            await conn.execute(
                select(c.c.channel_account_id, c.c.first_response_at).where(
                    c.c.id == conversation_id, c.c.workspace_id == workspace_id
                )
            )
        ).first()
        if conv is None:
            raise NotFound(f"no conversation with id {conversation_id!r}")
        await conn.execute(
            insert(t.messages).values(
                id=message_id,
                workspace_id=workspace_id,
                conversation_id=conversation_id,
                channel_account_id=conv.channel_account_id,
                direction=Direction.OUT.value,
                kind=(MessageKind.NOTE if private else MessageKind.MESSAGE).value,
                sender_user_id=user_id,
                subject=subject,
                text=text_body,
                html=html,
                delivery_status=None if private else DeliveryStatus.QUEUED.value,
                flags=["automatic"] if automatic else [],
                extra=extra or {},
                language=language,
                created_at=now,
            )
        )
        values: dict[str, Any] = {"last_activity_at": now, "updated_at": now}
        if outbox_id is not None:
            await conn.execute(
                insert(t.outbox).values(
                    id=outbox_id,
                    workspace_id=workspace_id,
                    message_id=message_id,
                    channel_account_id=conv.channel_account_id,
                    status=OutboxStatus.QUEUED.value,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )
            if not automatic:
                # An agent's reply: answered (an automatic reply neither answers nor stops the SLA).
                values["awaiting_since"] = None
                if conv.first_response_at is None:
                    values["first_response_at"] = now
            values |= {
                "message_count": c.c.message_count + 1,
                "last_message_preview": preview(text_body),
                "last_message_direction": Direction.OUT.value,
            }
        await conn.execute(update(c).where(c.c.id == conversation_id).values(**values))
        await conn.execute(
            SEARCH_INSERT,
            {
                "body": text_body,
                "workspace_id": workspace_id,
                "conversation_id": conversation_id,
                "ref_id": message_id,
                "kind": "note" if private else "message",
            },
        )
        return message_id, outbox_id

    async def get_attachment(self, workspace_id: str, attachment_id: str) -> Any:
        a = t.attachments
        async with self.read() as conn:
            row = (
                await conn.execute(select(a).where(a.c.id == attachment_id, a.c.workspace_id == workspace_id))
            ).first()
        if row is None:
            raise NotFound(f"no attachment with id {attachment_id!r}")
        return row

    async def channel_kind(self, channel_account_id: str) -> str | None:
        ca = t.channel_accounts
        query = select(ca.c.kind).where(ca.c.id == channel_account_id)
        return await self.read_sync(lambda conn: conn.execute(query).scalar())

    async def channel_ids_of_kind(self, workspace_id: str, kind_or_id: str) -> tuple[str, ...]:
        """Channel account ids matching an id or a kind in this workspace (the `channel` filter)."""
        ca = t.channel_accounts
        query = select(ca.c.id).where(
            ca.c.workspace_id == workspace_id, (ca.c.id == kind_or_id) | (ca.c.kind == kind_or_id)
        )
        return await self.read_sync(lambda conn: tuple(conn.execute(query).scalars()))


def unread(row: Any) -> int:
    return max(0, int(row.inbound_count) - int(row.read_count or 0))


__all__: Sequence[str] = [
    "ConversationChange",
    "ConversationFilter",
    "ConversationPage",
    "InboxQueries",
    "fts_query",
]
