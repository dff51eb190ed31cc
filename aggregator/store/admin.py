"""Admin records: users, teams, API tokens and channel accounts, for the API and the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, delete, func, insert, literal, or_, select, tuple_, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from aggregator.model import ConnectionState, ConversationStatus, Role, new_id, utcnow
from aggregator.store import schema as t
from aggregator.store.base import ChannelAccount, Conflict, Invalid, NotFound, StoreBase

T = TypeVar("T")
# Where a page ended: (created_at, id) of its last record.
Cursor = tuple[datetime, str]
# The part of a deleted channel's name that is kept: the name is freed for a new channel, and the
# suffix naming the id must fit the column (200 characters).
DELETED_NAME_KEEP = 150


class LastAdmin(Conflict):
    """The change would leave the workspace without an active admin."""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: Cursor | None


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    workspace_id: str
    name: str
    email: str
    role: Role
    languages: list[str]
    capacity: int
    team_ids: list[str]
    created_at: datetime
    deactivated_at: datetime | None
    signature: str | None = None
    availability: str = "offline"  # "online" | "away" | "offline": routing gives work to online agents
    availability_at: datetime | None = None
    availability_by: str | None = None  # BY_STREAM or BY_PERSON; None: set before it was recorded


AVAILABILITIES = ("online", "away", "offline")
# Who set an availability (users.availability_by): the live stream's presence, a lease that expires
# unless renewed (see renew_presence), or a person through the API, which never expires.
BY_STREAM = "stream"
BY_PERSON = "person"
AVAILABILITY_SOURCES = (BY_STREAM, BY_PERSON)


@dataclass(frozen=True, slots=True)
class UserChange:
    """The fields a PATCH sets; None leaves a field as it is."""

    name: str | None = None
    email: str | None = None
    role: Role | None = None
    languages: list[str] | None = None
    capacity: int | None = None
    signature: str | None = None  # "" removes it


@dataclass(frozen=True, slots=True)
class TeamRecord:
    id: str
    workspace_id: str
    name: str
    languages: list[str]
    member_ids: list[str]
    created_at: datetime
    # Routing: the channel accounts whose conversations the team takes ([] = any), its business-hours
    # calendar, its lead, and its order among teams that fit equally well.
    channel_account_ids: list[str] = field(default_factory=list)
    calendar_id: str | None = None
    lead_id: str | None = None
    position: int = 0


@dataclass(frozen=True, slots=True)
class TeamChange:
    """The fields a PATCH sets; None leaves a field as it is (member_ids replaces the members; ""
    removes the calendar or the lead)."""

    name: str | None = None
    languages: list[str] | None = None
    member_ids: list[str] | None = None
    channel_account_ids: list[str] | None = None
    calendar_id: str | None = None
    lead_id: str | None = None
    position: int | None = None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An API token as admins see it: never the token or its hash."""

    id: str
    workspace_id: str
    user_id: str | None
    user_name: str | None
    user_email: str | None
    role: Role
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class ChannelRecord(ChannelAccount):
    """A channel account as the API shows it, with its times."""

    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ChannelChange:
    """The fields a PATCH sets; None leaves a field as it is. `config` and `secrets` go together."""

    name: str | None = None
    enabled: bool | None = None
    config: dict[str, Any] | None = None
    secrets: dict[str, str] | None = field(default=None, repr=False)


def _keyset(query: Select[Any], table: Any, after: Cursor | None, limit: int) -> Select[Any]:
    if after is not None:
        query = query.where(
            tuple_(table.c.created_at, table.c.id)
            > tuple_(literal(after[0], t.UTCDateTime()), literal(after[1]))
        )
    return query.order_by(table.c.created_at, table.c.id).limit(limit + 1)


def _cut(rows: Sequence[Row[Any]], limit: int) -> tuple[list[Row[Any]], Cursor | None]:
    page = list(rows[:limit])
    return page, (page[-1].created_at, page[-1].id) if len(rows) > limit else None


def _user(row: Any, team_ids: list[str]) -> UserRecord:
    return UserRecord(
        id=row.id,
        workspace_id=row.workspace_id,
        name=row.name,
        email=row.email,
        role=Role(row.role),
        languages=list(row.languages or []),
        capacity=row.capacity,
        team_ids=team_ids,
        created_at=row.created_at,
        deactivated_at=row.deactivated_at,
        signature=row.signature,
        availability=row.availability,
        availability_at=row.availability_at,
        availability_by=row.availability_by,
    )


def _team(row: Any, member_ids: list[str]) -> TeamRecord:
    return TeamRecord(
        row.id,
        row.workspace_id,
        row.name,
        list(row.languages or []),
        member_ids,
        row.created_at,
        channel_account_ids=list(row.channel_account_ids or []),
        calendar_id=row.calendar_id,
        lead_id=row.lead_id,
        position=row.position,
    )


def _token(row: Any) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        workspace_id=row.workspace_id,
        user_id=row.user_id,
        user_name=row.user_name,
        user_email=row.user_email,
        role=Role(row.role),
        name=row.name,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def _token_query() -> Select[Any]:
    a, u = t.api_tokens, t.users
    return (
        select(*a.c, u.c.name.label("user_name"), u.c.email.label("user_email"))
        .select_from(a)
        .outerjoin(u, u.c.id == a.c.user_id)
    )


def _active_admins(workspace_id: str, other_than: str) -> Select[Any]:
    u = t.users
    return (
        select(func.count())
        .select_from(u)
        .where(
            u.c.workspace_id == workspace_id,
            u.c.role == Role.ADMIN.value,
            u.c.deactivated_at.is_(None),
            u.c.id != other_than,
        )
    )


class AdminQueries(StoreBase):
    # Users

    async def _team_ids(self, conn: AsyncConnection, user_ids: Sequence[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {user_id: [] for user_id in user_ids}
        if user_ids:
            tm = t.team_members
            rows = await conn.execute(
                select(tm.c.user_id, tm.c.team_id).where(tm.c.user_id.in_(user_ids)).order_by(tm.c.team_id)
            )
            for user_id, team_id in rows:
                found[user_id].append(team_id)
        return found

    async def _get_user(
        self, conn: AsyncConnection, workspace_id: str, user_id: str, *, include_deactivated: bool = False
    ) -> UserRecord:
        u = t.users
        query = select(u).where(u.c.id == user_id, u.c.workspace_id == workspace_id)
        if not include_deactivated:
            query = query.where(u.c.deactivated_at.is_(None))
        row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(f"no user with id {user_id!r}")
        return _user(row, (await self._team_ids(conn, [row.id]))[row.id])

    async def list_users(
        self, workspace_id: str, *, include_deactivated: bool = False, limit: int, after: Cursor | None = None
    ) -> Page[UserRecord]:
        """Users in creation order; deactivated ones only when asked for."""
        u = t.users
        query = select(u).where(u.c.workspace_id == workspace_id)
        if not include_deactivated:
            query = query.where(u.c.deactivated_at.is_(None))
        async with self.read() as conn:
            rows, cursor = _cut((await conn.execute(_keyset(query, u, after, limit))).all(), limit)
            teams = await self._team_ids(conn, [row.id for row in rows])
        return Page([_user(row, teams[row.id]) for row in rows], cursor)

    async def get_user(
        self, workspace_id: str, user_id: str, *, include_deactivated: bool = False
    ) -> UserRecord:
        """An active user (a deactivated one only when asked for); NotFound otherwise."""
        async with self.read() as conn:
            return await self._get_user(conn, workspace_id, user_id, include_deactivated=include_deactivated)

    async def find_user(self, workspace_id: str, id_or_email: str) -> UserRecord | None:
        """The user of the workspace with that id or that email address, if any."""
        u = t.users
        query = select(u.c.id).where(
            u.c.workspace_id == workspace_id, or_(u.c.id == id_or_email, u.c.email == id_or_email)
        )
        async with self.read() as conn:
            user_id = (await conn.execute(query)).scalars().first()
            if user_id is None:
                return None
            return await self._get_user(conn, workspace_id, user_id, include_deactivated=True)

    async def update_user(self, workspace_id: str, user_id: str, change: UserChange) -> UserRecord:
        """Change an active user; a new role applies to the user's tokens in the same transaction."""
        u = t.users
        values: dict[str, Any] = {
            name: getattr(change, name)
            for name in ("name", "email", "languages", "capacity")
            if getattr(change, name) is not None
        }
        if change.role is not None:
            values["role"] = change.role.value
        if change.signature is not None:
            values["signature"] = change.signature or None
        try:
            async with self.write() as conn:
                current = await self._get_user(conn, workspace_id, user_id)
                if (
                    change.role is not None
                    and change.role is not Role.ADMIN
                    and current.role is Role.ADMIN
                    and not (await conn.execute(_active_admins(workspace_id, user_id))).scalar_one()
                ):
                    raise LastAdmin(
                        f"user {user_id!r} is the workspace's only active admin: make another user admin "
                        "first"
                    )
                if values:
                    await conn.execute(update(u).where(u.c.id == user_id).values(**values))
                if change.role is not None and change.role is not current.role:
                    await conn.execute(
                        update(t.api_tokens)
                        .where(t.api_tokens.c.user_id == user_id)
                        .values(role=change.role.value)
                    )
                return await self._get_user(conn, workspace_id, user_id)
        except IntegrityError as exc:
            raise Conflict(f"a user with email {change.email!r} exists already in this workspace") from exc

    async def set_availability(
        self,
        workspace_id: str,
        user_id: str,
        availability: str,
        now: datetime,
        *,
        by: str,
        only_from: Sequence[str] | None = None,
    ) -> bool:
        """Set an active user's availability ("online", "away" or "offline"); whether it changed.

        `by` records who set it: BY_STREAM (the live stream's presence: an online that expires unless
        renewed, see renew_presence) or BY_PERSON (never expires). A person setting the availability
        the user has already takes it over from the stream (it no longer expires) without a change.
        With `only_from`, only a user whose availability is one of those changes (the live stream's
        presence never overrides an "away" set by hand). NotFound for no such active user.
        """
        if availability not in AVAILABILITIES:
            raise Invalid("availability", f"{availability!r} is not one of {', '.join(AVAILABILITIES)}")
        if by not in AVAILABILITY_SOURCES:
            raise Invalid("by", f"{by!r} is not one of {', '.join(AVAILABILITY_SOURCES)}")
        u = t.users
        async with self.write() as conn:
            current = await self._get_user(conn, workspace_id, user_id)
            if current.availability == availability:
                if by == BY_PERSON and current.availability_by != BY_PERSON:
                    await conn.execute(update(u).where(u.c.id == user_id).values(availability_by=by))
                return False
            if only_from is not None and current.availability not in only_from:
                return False
            await conn.execute(
                update(u)
                .where(u.c.id == user_id)
                .values(availability=availability, availability_at=now, availability_by=by)
            )
        return True

    async def renew_presence(self, workspace_id: str, user_id: str, now: datetime) -> str | None:
        """Renew the lease of an online the live stream set (availability_at = now): "renewed"; or make
        a user the stream had set offline (their lease lapsed, or another process's last stream closed)
        online again while a stream of theirs is open here: "resumed"; else None (an availability a
        person set, or away, is left alone)."""
        u = t.users
        mine = (
            u.c.id == user_id,
            u.c.workspace_id == workspace_id,
            u.c.availability_by == BY_STREAM,
            u.c.deactivated_at.is_(None),
        )
        async with self.write() as conn:
            done = await conn.execute(
                update(u).where(*mine, u.c.availability == "online").values(availability_at=now)
            )
            if done.rowcount:
                return "renewed"
            done = await conn.execute(
                update(u).where(*mine, u.c.availability == "offline").values(availability="online", availability_at=now)
            )
        return "resumed" if done.rowcount else None

    async def expire_presence(
        self, before: datetime, *, now: datetime | None = None
    ) -> list[tuple[str, str]]:
        """Set offline every user online by the live stream whose lease was last renewed before `before`
        (the process holding their stream died); (workspace id, user id) of each."""
        u = t.users
        now = utcnow() if now is None else now
        async with self.write() as conn:
            rows = await conn.execute(
                update(u)
                .where(
                    u.c.availability == "online",
                    u.c.availability_by == BY_STREAM,
                    u.c.availability_at < before,
                    u.c.deactivated_at.is_(None),
                )
                .values(availability="offline", availability_at=now, availability_by=BY_STREAM)
                .returning(u.c.workspace_id, u.c.id)
            )
            return [(row[0], row[1]) for row in rows]

    async def deactivate_user(self, workspace_id: str, user_id: str, now: datetime) -> list[str]:
        """Deactivate, revoke its tokens, leave its teams, unassign its unresolved conversations (ids)."""
        u, c = t.users, t.conversations
        async with self.write() as conn:
            current = await self._get_user(conn, workspace_id, user_id)
            if (
                current.role is Role.ADMIN
                and not (await conn.execute(_active_admins(workspace_id, user_id))).scalar_one()
            ):
                raise LastAdmin(
                    f"user {user_id!r} is the workspace's only active admin: make another user admin first"
                )
            await conn.execute(update(u).where(u.c.id == user_id).values(deactivated_at=now))
            await conn.execute(
                update(t.api_tokens)
                .where(t.api_tokens.c.user_id == user_id, t.api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            await conn.execute(delete(t.team_members).where(t.team_members.c.user_id == user_id))
            unassigned = list(
                (
                    await conn.execute(
                        update(c)
                        .where(
                            c.c.workspace_id == workspace_id,
                            c.c.assignee_id == user_id,
                            c.c.status != ConversationStatus.RESOLVED.value,
                        )
                        .values(assignee_id=None, updated_at=now)
                        .returning(c.c.id)
                    )
                ).scalars()
            )
        return unassigned

    # Teams

    async def _members(self, conn: AsyncConnection, team_ids: Sequence[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {team_id: [] for team_id in team_ids}
        if team_ids:
            tm = t.team_members
            rows = await conn.execute(
                select(tm.c.team_id, tm.c.user_id).where(tm.c.team_id.in_(team_ids)).order_by(tm.c.user_id)
            )
            for team_id, user_id in rows:
                found[team_id].append(user_id)
        return found

    async def _get_team(self, conn: AsyncConnection, workspace_id: str, team_id: str) -> TeamRecord:
        tt = t.teams
        row = (
            await conn.execute(select(tt).where(tt.c.id == team_id, tt.c.workspace_id == workspace_id))
        ).first()
        if row is None:
            raise NotFound(f"no team with id {team_id!r}")
        return _team(row, (await self._members(conn, [row.id]))[row.id])

    async def _check_routing(
        self,
        conn: AsyncConnection,
        workspace_id: str,
        channel_account_ids: Sequence[str] | None,
        calendar_id: str | None,
        lead_id: str | None,
    ) -> None:
        """Invalid unless the channel accounts, the calendar and the (active) lead are the workspace's."""
        if channel_account_ids:
            ca = t.channel_accounts
            known = set(
                (
                    await conn.execute(
                        select(ca.c.id).where(
                            ca.c.id.in_(list(channel_account_ids)),
                            ca.c.workspace_id == workspace_id,
                            ca.c.deleted_at.is_(None),
                        )
                    )
                ).scalars()
            )
            unknown = [account_id for account_id in channel_account_ids if account_id not in known]
            if unknown:
                listing = ", ".join(repr(account_id) for account_id in unknown)
                raise Invalid(
                    "channel_account_ids", f"no channel account in this workspace with id {listing}"
                )
        if calendar_id:
            c = t.calendars
            found = (
                await conn.execute(
                    select(c.c.id).where(c.c.id == calendar_id, c.c.workspace_id == workspace_id)
                )
            ).first()
            if found is None:
                raise Invalid(
                    "calendar_id",
                    f"no calendar in this workspace with id {calendar_id!r} (see GET /calendars)",
                )
        if lead_id:
            u = t.users
            found = (
                await conn.execute(
                    select(u.c.id).where(
                        u.c.id == lead_id, u.c.workspace_id == workspace_id, u.c.deactivated_at.is_(None)
                    )
                )
            ).first()
            if found is None:
                raise Invalid("lead_id", f"no active user in this workspace with id {lead_id!r}")

    async def _set_members(
        self, conn: AsyncConnection, workspace_id: str, team_id: str, member_ids: Sequence[str]
    ) -> None:
        u, tm = t.users, t.team_members
        wanted = list(dict.fromkeys(member_ids))
        if wanted:
            known = set(
                (
                    await conn.execute(
                        select(u.c.id).where(
                            u.c.id.in_(wanted), u.c.workspace_id == workspace_id, u.c.deactivated_at.is_(None)
                        )
                    )
                ).scalars()
            )
            unknown = [user_id for user_id in wanted if user_id not in known]
            if unknown:
                listing = ", ".join(repr(user_id) for user_id in unknown)
                raise Invalid("member_ids", f"no active user in this workspace with id {listing}")
        await conn.execute(delete(tm).where(tm.c.team_id == team_id))
        if wanted:
            await conn.execute(insert(tm), [{"team_id": team_id, "user_id": user_id} for user_id in wanted])

    async def list_teams(
        self, workspace_id: str, *, limit: int, after: Cursor | None = None
    ) -> Page[TeamRecord]:
        tt = t.teams
        query = select(tt).where(tt.c.workspace_id == workspace_id)
        async with self.read() as conn:
            rows, cursor = _cut((await conn.execute(_keyset(query, tt, after, limit))).all(), limit)
            members = await self._members(conn, [row.id for row in rows])
        return Page([_team(r, members[r.id]) for r in rows], cursor)

    async def get_team(self, workspace_id: str, team_id: str) -> TeamRecord:
        async with self.read() as conn:
            return await self._get_team(conn, workspace_id, team_id)

    async def create_team(
        self,
        workspace_id: str,
        name: str,
        languages: Sequence[str],
        member_ids: Sequence[str],
        *,
        channel_account_ids: Sequence[str] = (),
        calendar_id: str | None = None,
        lead_id: str | None = None,
        position: int = 0,
    ) -> TeamRecord:
        team_id = new_id()
        accounts = list(dict.fromkeys(channel_account_ids))
        try:
            async with self.write() as conn:
                await self._check_routing(conn, workspace_id, accounts, calendar_id, lead_id)
                await conn.execute(
                    insert(t.teams).values(
                        id=team_id,
                        workspace_id=workspace_id,
                        name=name,
                        languages=list(languages),
                        created_at=utcnow(),
                        channel_account_ids=accounts,
                        calendar_id=calendar_id or None,
                        lead_id=lead_id or None,
                        position=position,
                    )
                )
                await self._set_members(conn, workspace_id, team_id, member_ids)
                return await self._get_team(conn, workspace_id, team_id)
        except IntegrityError as exc:
            raise Conflict(f"a team named {name!r} exists already in this workspace") from exc

    async def update_team(self, workspace_id: str, team_id: str, change: TeamChange) -> TeamRecord:
        values: dict[str, Any] = {}
        if change.name is not None:
            values["name"] = change.name
        if change.languages is not None:
            values["languages"] = list(change.languages)
        accounts = (
            None if change.channel_account_ids is None else list(dict.fromkeys(change.channel_account_ids))
        )
        if accounts is not None:
            values["channel_account_ids"] = accounts
        if change.calendar_id is not None:
            values["calendar_id"] = change.calendar_id or None
        if change.lead_id is not None:
            values["lead_id"] = change.lead_id or None
        if change.position is not None:
            values["position"] = change.position
        try:
            async with self.write() as conn:
                await self._get_team(conn, workspace_id, team_id)
                await self._check_routing(conn, workspace_id, accounts, change.calendar_id, change.lead_id)
                if values:
                    await conn.execute(update(t.teams).where(t.teams.c.id == team_id).values(**values))
                if change.member_ids is not None:
                    await self._set_members(conn, workspace_id, team_id, change.member_ids)
                return await self._get_team(conn, workspace_id, team_id)
        except IntegrityError as exc:
            raise Conflict(f"a team named {change.name!r} exists already in this workspace") from exc

    async def delete_team(self, workspace_id: str, team_id: str, now: datetime) -> list[str]:
        """Delete the team: its members leave it and its conversations lose it; returns their ids."""
        c = t.conversations
        async with self.write() as conn:
            await self._get_team(conn, workspace_id, team_id)
            cleared = list(
                (
                    await conn.execute(
                        update(c)
                        .where(c.c.workspace_id == workspace_id, c.c.team_id == team_id)
                        .values(team_id=None, updated_at=now)
                        .returning(c.c.id)
                    )
                ).scalars()
            )
            await conn.execute(delete(t.team_members).where(t.team_members.c.team_id == team_id))
            await conn.execute(delete(t.teams).where(t.teams.c.id == team_id))
        return cleared

    # API tokens

    async def _get_token(
        self, conn: AsyncConnection, workspace_id: str, token_id: str, *, include_revoked: bool = False
    ) -> TokenRecord:
        a = t.api_tokens
        query = _token_query().where(a.c.id == token_id, a.c.workspace_id == workspace_id)
        if not include_revoked:
            query = query.where(a.c.revoked_at.is_(None))
        row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(f"no token with id {token_id!r}")
        return _token(row)

    async def list_tokens(
        self,
        workspace_id: str,
        *,
        include_revoked: bool = False,
        user_id: str | None = None,
        limit: int,
        after: Cursor | None = None,
    ) -> Page[TokenRecord]:
        a = t.api_tokens
        where: list[ColumnElement[bool]] = [a.c.workspace_id == workspace_id]
        if not include_revoked:
            where.append(a.c.revoked_at.is_(None))
        if user_id is not None:
            where.append(a.c.user_id == user_id)
        async with self.read() as conn:
            rows = (await conn.execute(_keyset(_token_query().where(*where), a, after, limit))).all()
        page, cursor = _cut(rows, limit)
        return Page([_token(row) for row in page], cursor)

    async def get_token(
        self, workspace_id: str, token_id: str, *, include_revoked: bool = False
    ) -> TokenRecord:
        """A live token (a revoked one only when asked for); NotFound otherwise."""
        async with self.read() as conn:
            return await self._get_token(conn, workspace_id, token_id, include_revoked=include_revoked)

    async def create_user_token(
        self, workspace_id: str, user_id: str, name: str, token_hash: str
    ) -> TokenRecord:
        """A token for an active user of the workspace, with that user's role."""
        u = t.users
        async with self.write() as conn:
            role = (
                await conn.execute(
                    select(u.c.role).where(
                        u.c.id == user_id, u.c.workspace_id == workspace_id, u.c.deactivated_at.is_(None)
                    )
                )
            ).scalar_one_or_none()
            if role is None:
                raise Invalid("user_id", f"no active user with id {user_id!r} in this workspace")
            token_id = new_id()
            await conn.execute(
                insert(t.api_tokens).values(
                    id=token_id,
                    workspace_id=workspace_id,
                    user_id=user_id,
                    role=role,
                    name=name,
                    token_hash=token_hash,
                    created_at=utcnow(),
                )
            )
            return await self._get_token(conn, workspace_id, token_id)

    async def rename_token(self, workspace_id: str, token_id: str, name: str) -> TokenRecord:
        async with self.write() as conn:
            await self._get_token(conn, workspace_id, token_id)
            await conn.execute(update(t.api_tokens).where(t.api_tokens.c.id == token_id).values(name=name))
            return await self._get_token(conn, workspace_id, token_id)

    async def revoke_token(self, workspace_id: str, token_id: str, now: datetime) -> bool:
        """Revoke the token at once; False when it was revoked already."""
        a = t.api_tokens
        async with self.write() as conn:
            await self._get_token(conn, workspace_id, token_id, include_revoked=True)
            revoked = await conn.execute(
                update(a).where(a.c.id == token_id, a.c.revoked_at.is_(None)).values(revoked_at=now)
            )
        return bool(revoked.rowcount)

    async def token_workspace(self, token_id: str) -> str:
        """The workspace a token belongs to (the CLI names tokens by id alone)."""
        async with self.read() as conn:
            found: str | None = (
                await conn.execute(select(t.api_tokens.c.workspace_id).where(t.api_tokens.c.id == token_id))
            ).scalar_one_or_none()
        if found is None:
            raise NotFound(f"no token with id {token_id!r}")
        return found

    # Channel accounts

    def _channel(self, row: Any) -> ChannelRecord:
        account = self._channel_account(row)
        fields = {name: getattr(account, name) for name in ChannelAccount.__dataclass_fields__}
        return ChannelRecord(**fields, created_at=row.created_at, updated_at=row.updated_at)

    async def _get_channel(self, conn: AsyncConnection, workspace_id: str, account_id: str) -> ChannelRecord:
        ca = t.channel_accounts
        row = (
            await conn.execute(
                select(ca).where(
                    ca.c.id == account_id, ca.c.workspace_id == workspace_id, ca.c.deleted_at.is_(None)
                )
            )
        ).first()
        if row is None:
            raise NotFound(f"no channel with id {account_id!r}")
        return self._channel(row)

    async def list_channels(
        self, workspace_id: str, *, limit: int, after: Cursor | None = None
    ) -> Page[ChannelRecord]:
        """The workspace's channel accounts that are not deleted, in creation order."""
        ca = t.channel_accounts
        query = select(ca).where(ca.c.workspace_id == workspace_id, ca.c.deleted_at.is_(None))
        async with self.read() as conn:
            rows = (await conn.execute(_keyset(query, ca, after, limit))).all()
        page, cursor = _cut(rows, limit)
        return Page([self._channel(row) for row in page], cursor)

    async def get_channel(self, workspace_id: str, account_id: str) -> ChannelRecord:
        async with self.read() as conn:
            return await self._get_channel(conn, workspace_id, account_id)

    async def create_channel(
        self,
        workspace_id: str,
        kind: str,
        name: str,
        config: dict[str, Any],
        secrets: dict[str, str],
        *,
        enabled: bool = True,
    ) -> ChannelRecord:
        """A new channel account with its (already validated) plain settings and secrets."""
        account_id = new_id()
        now = utcnow()
        try:
            async with self.write() as conn:
                await conn.execute(
                    insert(t.channel_accounts).values(
                        id=account_id,
                        workspace_id=workspace_id,
                        kind=kind,
                        name=name,
                        config=config,
                        secrets=self.secret_box.encrypt(secrets) if secrets else None,
                        enabled=int(enabled),
                        created_at=now,
                        updated_at=now,
                    )
                )
                return await self._get_channel(conn, workspace_id, account_id)
        except IntegrityError as exc:
            raise Conflict(f"a channel named {name!r} exists already in this workspace") from exc

    async def update_channel(
        self, workspace_id: str, account_id: str, change: ChannelChange
    ) -> ChannelRecord:
        """Apply the change; updated_at moves only when something did change."""
        ca = t.channel_accounts
        try:
            async with self.write() as conn:
                current = await self._get_channel(conn, workspace_id, account_id)
                values: dict[str, Any] = {}
                if change.name is not None and change.name != current.name:
                    values["name"] = change.name
                if change.enabled is not None and change.enabled != current.enabled:
                    values["enabled"] = int(change.enabled)
                if change.config is not None and change.config != current.config:
                    values["config"] = change.config
                if change.secrets is not None and change.secrets != current.secrets:
                    values["secrets"] = self.secret_box.encrypt(change.secrets) if change.secrets else None
                if not values:
                    return current
                values["updated_at"] = utcnow()
                await conn.execute(update(ca).where(ca.c.id == account_id).values(**values))
                return await self._get_channel(conn, workspace_id, account_id)
        except IntegrityError as exc:
            raise Conflict(f"a channel named {change.name!r} exists already in this workspace") from exc

    async def delete_channel(self, workspace_id: str, account_id: str, now: datetime) -> None:
        """Soft delete: disabled, hidden and its name freed; its conversations and messages stay."""
        ca = t.channel_accounts
        async with self.write() as conn:
            current = await self._get_channel(conn, workspace_id, account_id)
            name = f"{current.name[:DELETED_NAME_KEEP]} (deleted {account_id})"
            # Someone may have named a channel just so; then the deleted one's name gets a random tag.
            while (
                await conn.execute(
                    select(ca.c.id).where(ca.c.workspace_id == workspace_id, ca.c.name == name)
                )
            ).first() is not None:
                name = f"{current.name[:DELETED_NAME_KEEP]} (deleted {account_id} {new_id()[-8:]})"
            await conn.execute(
                update(ca)
                .where(ca.c.id == account_id)
                .values(
                    name=name,
                    enabled=0,
                    deleted_at=now,
                    state=ConnectionState.STOPPED.value,
                    state_detail="deleted",
                    updated_at=now,
                )
            )
