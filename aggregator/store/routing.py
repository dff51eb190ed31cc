"""Store queries: what routing decides on (conversations, teams, agents and their load) and its writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, literal, select, tuple_, update
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from aggregator.model import ConversationStatus, new_id
from aggregator.store import schema as t
from aggregator.store.base import StoreBase

ROUTING = "routing"
# The conversations that take up an agent's capacity.
LOAD_STATUSES = (
    ConversationStatus.OPEN.value,
    ConversationStatus.PENDING.value,
    ConversationStatus.SNOOZED.value,
)
# Where a page of the queue ended: (last_activity_at, id) of its last conversation.
QueueCursor = tuple[datetime, str]


@dataclass(frozen=True, slots=True)
class RoutedConversation:
    """What routing knows of a conversation."""

    id: str
    workspace_id: str
    channel_account_id: str
    language: str | None
    team_id: str | None
    assignee_id: str | None
    status: str
    handed_back_by: str | None = None  # the agent who gave it back: not them again


@dataclass(frozen=True, slots=True)
class RoutingTeam:
    id: str
    name: str
    languages: tuple[str, ...]
    channel_account_ids: tuple[str, ...]
    position: int
    member_ids: tuple[str, ...]
    calendar_id: str | None = None


@dataclass(frozen=True, slots=True)
class RoutingAgent:
    """A team member as routing sees them: languages, capacity, availability and open load."""

    id: str
    languages: tuple[str, ...]
    capacity: int
    availability: str
    open_count: int
    last_assigned_at: datetime | None


def _conversation(row: Any) -> RoutedConversation:
    return RoutedConversation(
        row.id,
        row.workspace_id,
        row.channel_account_id,
        row.language,
        row.team_id,
        row.assignee_id,
        row.status,
        row.handed_back_by,
    )


def _conversation_query() -> Any:
    c = t.conversations
    return select(
        c.c.id,
        c.c.workspace_id,
        c.c.channel_account_id,
        c.c.language,
        c.c.team_id,
        c.c.assignee_id,
        c.c.status,
        c.c.handed_back_by,
    )


def _open_count(workspace_id: Any, user_id: Any) -> Any:
    c = t.conversations
    # By the index on (workspace, assignee): SQLite would otherwise pick the one on (workspace, status)
    # and read every open conversation of the workspace for each agent (1.2 ms at 2,000).
    status = UnaryExpression(c.c.status, operator=custom_op("+"), type_=c.c.status.type)
    return (
        select(func.count())
        .select_from(c)
        .where(c.c.workspace_id == workspace_id, c.c.assignee_id == user_id, status.in_(LOAD_STATUSES))
        .scalar_subquery()
    )


def _audit(workspace_id: str, conversation_id: str, kind: str, data: dict[str, Any], now: datetime) -> Any:
    return insert(t.audit_events).values(
        id=new_id(),
        workspace_id=workspace_id,
        conversation_id=conversation_id,
        actor=ROUTING,
        type=kind,
        data=data,
        created_at=now,
    )


class RoutingQueries(StoreBase):
    # The reads run on a reader thread and the writes in one hand-off each (run_sync): routing reads
    # a conversation, the teams and the agents for every event, and through aiosqlite each statement
    # would be a hand-off of its own.

    async def routing_conversation(
        self, workspace_id: str, conversation_id: str
    ) -> RoutedConversation | None:
        c = t.conversations
        query = _conversation_query().where(c.c.id == conversation_id, c.c.workspace_id == workspace_id)
        row = await self.read_sync(lambda conn: conn.execute(query).first())
        return None if row is None else _conversation(row)

    async def routing_conversations(self, workspace_id: str, conversation_ids: Sequence[str]) -> list[RoutedConversation]:
        """Those of these conversations that exist in the workspace, in the order given."""
        c = t.conversations
        ids = list(dict.fromkeys(conversation_ids))
        query = _conversation_query().where(c.c.id.in_(ids), c.c.workspace_id == workspace_id)
        rows = await self.read_sync(lambda conn: conn.execute(query).all())
        found = {row.id: _conversation(row) for row in rows}
        return [found[cid] for cid in ids if cid in found]

    async def routing_queue(
        self,
        workspace_id: str,
        *,
        team_ids: Sequence[str] | None = None,
        after: QueueCursor | None = None,
        limit: int = 500,
    ) -> tuple[list[RoutedConversation], QueueCursor | None]:
        """Open unassigned conversations, longest quiet first; of the given teams only, when given."""
        c = t.conversations
        query = (
            _conversation_query()
            .add_columns(c.c.last_activity_at)
            .where(
                c.c.workspace_id == workspace_id,
                c.c.status == ConversationStatus.OPEN.value,
                c.c.assignee_id.is_(None),
            )
        )
        if team_ids is not None:
            query = query.where(c.c.team_id.in_(list(team_ids)))
        if after is not None:
            query = query.where(
                tuple_(c.c.last_activity_at, c.c.id)
                > tuple_(literal(after[0], t.UTCDateTime()), literal(after[1]))
            )
        query = query.order_by(c.c.last_activity_at, c.c.id).limit(limit)
        rows = await self.read_sync(lambda conn: conn.execute(query).all())
        cursor = (rows[-1].last_activity_at, rows[-1].id) if len(rows) == limit else None
        return [_conversation(row) for row in rows], cursor

    async def routing_teams(self, workspace_id: str) -> list[RoutingTeam]:
        """Every team of the workspace with its routing fields and its active members."""
        tt, tm, u = t.teams, t.team_members, t.users

        def work(conn: Connection) -> list[RoutingTeam]:
            rows = conn.execute(select(tt).where(tt.c.workspace_id == workspace_id)).all()
            members: dict[str, list[str]] = {row.id: [] for row in rows}
            if rows:
                found = conn.execute(
                    select(tm.c.team_id, tm.c.user_id)
                    .join(u, u.c.id == tm.c.user_id)
                    .where(tm.c.team_id.in_(list(members)), u.c.deactivated_at.is_(None))
                    .order_by(tm.c.user_id)
                )
                for team_id, user_id in found:
                    members[team_id].append(user_id)
            return [
                RoutingTeam(
                    row.id,
                    row.name,
                    tuple(row.languages or ()),
                    tuple(row.channel_account_ids or ()),
                    row.position or 0,
                    tuple(members[row.id]),
                    row.calendar_id,
                )
                for row in rows
            ]

        return await self.read_sync(work)

    async def routing_agents(self, workspace_id: str, user_ids: Sequence[str]) -> list[RoutingAgent]:
        """Those active users with their open load (conversations open, pending or snoozed on them)."""
        if not user_ids:
            return []
        u = t.users
        query = select(
            u.c.id,
            u.c.languages,
            u.c.capacity,
            u.c.availability,
            u.c.last_assigned_at,
            _open_count(u.c.workspace_id, u.c.id),
        ).where(u.c.workspace_id == workspace_id, u.c.id.in_(list(user_ids)), u.c.deactivated_at.is_(None))
        rows = await self.read_sync(lambda conn: conn.execute(query).all())
        return [
            RoutingAgent(row[0], tuple(row[1] or ()), row[2], row[3], int(row[5]), row[4]) for row in rows
        ]

    async def user_routing_state(self, workspace_id: str, user_id: str) -> tuple[str, list[str]] | None:
        """An active user's availability and team ids; None for no such user."""
        u, tm = t.users, t.team_members

        def work(conn: Connection) -> tuple[str, list[str]] | None:
            availability = conn.execute(
                select(u.c.availability).where(
                    u.c.id == user_id, u.c.workspace_id == workspace_id, u.c.deactivated_at.is_(None)
                )
            ).scalar_one_or_none()
            if availability is None:
                return None
            teams = list(conn.execute(select(tm.c.team_id).where(tm.c.user_id == user_id)).scalars())
            return str(availability), teams

        return await self.read_sync(work)

    async def route_conversation(
        self, workspace_id: str, conversation_id: str, team_id: str, agent_id: str | None, now: datetime
    ) -> list[str]:
        """Put an unassigned conversation into the team, and give it to the agent when they still fit.

        Conditional on the conversation being unassigned and open (a person may have assigned it since it
        was read), and, in the same write transaction, on the agent still being online with room to spare
        (another process may have given them one meanwhile). Returns the fields changed: [] when nothing
        was done, ["team_id"] when it only joined the team's queue.
        """
        done = await self.route_conversations(workspace_id, [(conversation_id, team_id, agent_id)], now)
        return done[0]

    async def route_conversations(
        self, workspace_id: str, decisions: Sequence[tuple[str, str, str | None]], now: datetime
    ) -> list[list[str]]:
        """Apply routing's (conversation id, team id, agent id or None) decisions as route_conversation
        does each, in one write transaction (each checked in turn: the load an earlier one added counts);
        the fields changed, for each."""

        def work(conn: Connection) -> list[list[str]]:
            return [
                _route_one(conn, workspace_id, conversation_id, team_id, agent_id, now)
                for conversation_id, team_id, agent_id in decisions
            ]

        if not decisions:
            return []
        async with self.write() as conn:
            return await conn.run_sync(work)

    async def unassign_routed(self, workspace_id: str, user_id: str, now: datetime) -> list[str]:
        """Take back the unresolved conversations routing gave this user (they went offline); their ids."""
        c = t.conversations

        def work(conn: Connection) -> list[str]:
            ids = list(
                conn.execute(
                    update(c)
                    .where(
                        c.c.workspace_id == workspace_id,
                        c.c.assignee_id == user_id,
                        c.c.assigned_by == ROUTING,
                        c.c.status.in_(LOAD_STATUSES),
                    )
                    .values(assignee_id=None, assigned_by=None, updated_at=now)
                    .returning(c.c.id)
                ).scalars()
            )
            data = {"assignee_id": user_id, "reason": "offline"}
            for conversation_id in ids:
                conn.execute(_audit(workspace_id, conversation_id, "conversation.unassigned", data, now))
            return ids

        async with self.write() as conn:
            return await conn.run_sync(work)


def _route_one(
    conn: Connection, workspace_id: str, conversation_id: str, team_id: str, agent_id: str | None, now: datetime
) -> list[str]:
    c, u = t.conversations, t.users
    current = conn.execute(
        select(c.c.team_id).where(
            c.c.id == conversation_id,
            c.c.workspace_id == workspace_id,
            c.c.assignee_id.is_(None),
            c.c.status == ConversationStatus.OPEN.value,
        )
    ).first()
    if current is None:
        return []
    changed = [] if current.team_id == team_id else ["team_id"]
    agent = agent_id
    if agent is not None:
        fits = conn.execute(
            select(u.c.capacity, _open_count(u.c.workspace_id, u.c.id)).where(
                u.c.id == agent,
                u.c.workspace_id == workspace_id,
                u.c.availability == "online",
                u.c.deactivated_at.is_(None),
            )
        ).first()
        if fits is None or int(fits[1]) >= int(fits[0]):
            agent = None
    values: dict[str, Any] = {"team_id": team_id, "updated_at": now}
    if agent is not None:
        values.update(assignee_id=agent, assigned_by=ROUTING, handed_back_by=None)
        changed.insert(0, "assignee_id")
    if not changed:
        return []
    done = conn.execute(
        update(c).where(c.c.id == conversation_id, c.c.assignee_id.is_(None)).values(**values)
    )
    if not done.rowcount:
        return []
    if agent is not None:
        conn.execute(update(u).where(u.c.id == agent).values(last_assigned_at=now))
        data = {"assignee_id": agent, "team_id": team_id}
        conn.execute(_audit(workspace_id, conversation_id, "conversation.assigned", data, now))
    else:
        data = {"team_id": team_id}
        conn.execute(_audit(workspace_id, conversation_id, "conversation.queued", data, now))
    return changed
