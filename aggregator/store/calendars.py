"""Business-hours calendars of a workspace: a name and its hours (aggregator.hours.BusinessHours as JSON).

Teams and SLA policies refer to a calendar by id; a calendar in use cannot be deleted. The SLA and
routing engines read a calendar's hours with `calendar_hours`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from aggregator.hours import BusinessHours
from aggregator.model import new_id, utcnow
from aggregator.store import schema as t
from aggregator.store.base import Conflict, NotFound, StoreBase

log = logging.getLogger(__name__)


class CalendarInUse(Conflict):
    """A team or an SLA policy refers to the calendar."""


@dataclass(frozen=True, slots=True)
class CalendarRecord:
    id: str
    workspace_id: str
    name: str
    hours: BusinessHours
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CalendarChange:
    """The fields a PATCH sets; None leaves a field as it is."""

    name: str | None = None
    hours: BusinessHours | None = None


def _hours(value: Any) -> BusinessHours:
    try:
        return BusinessHours.model_validate(value or {})
    except ValidationError:
        # Stored hours were valid when saved; a package update that refuses them (a holidays country
        # dropped) must not make the calendar unreadable: keep the rest, without those holidays.
        data = dict(value or {})
        dropped = data.pop("holidays", None)
        hours = BusinessHours.model_validate(data)
        log.warning(
            "a stored calendar's holidays %s are no longer known: left out until it is saved again", dropped
        )
        return hours


def _record(row: Any) -> CalendarRecord:
    return CalendarRecord(
        row.id, row.workspace_id, row.name, _hours(row.hours), row.created_at, row.updated_at
    )


def _json(hours: BusinessHours) -> dict[str, Any]:
    return hours.model_dump(mode="json")


class CalendarQueries(StoreBase):
    async def _get_calendar(
        self, conn: AsyncConnection, workspace_id: str, calendar_id: str
    ) -> CalendarRecord:
        c = t.calendars
        row = (
            await conn.execute(select(c).where(c.c.workspace_id == workspace_id, c.c.id == calendar_id))
        ).first()
        if row is None:
            raise NotFound(f"no calendar with id {calendar_id!r}")
        return _record(row)

    async def list_calendars(self, workspace_id: str) -> list[CalendarRecord]:
        """By name."""
        c = t.calendars
        query = select(c).where(c.c.workspace_id == workspace_id).order_by(c.c.name, c.c.id)
        async with self.read() as conn:
            return [_record(row) for row in (await conn.execute(query)).all()]

    async def get_calendar(self, workspace_id: str, calendar_id: str) -> CalendarRecord:
        async with self.read() as conn:
            return await self._get_calendar(conn, workspace_id, calendar_id)

    async def calendar_hours(self, workspace_id: str, calendar_id: str | None) -> BusinessHours | None:
        """The hours of a calendar of the workspace; None when there is no such calendar (or no id)."""
        if calendar_id is None:
            return None
        c = t.calendars
        async with self.read() as conn:
            value = (
                await conn.execute(
                    select(c.c.hours).where(c.c.workspace_id == workspace_id, c.c.id == calendar_id)
                )
            ).scalar_one_or_none()
        return None if value is None else _hours(value)

    async def create_calendar(self, workspace_id: str, name: str, hours: BusinessHours) -> CalendarRecord:
        calendar_id = new_id()
        now = utcnow()
        try:
            async with self.write() as conn:
                await conn.execute(
                    insert(t.calendars).values(
                        id=calendar_id,
                        workspace_id=workspace_id,
                        name=name,
                        hours=_json(hours),
                        created_at=now,
                        updated_at=now,
                    )
                )
                return await self._get_calendar(conn, workspace_id, calendar_id)
        except IntegrityError as exc:
            raise Conflict(f"a calendar named {name!r} exists already in this workspace") from exc

    async def update_calendar(
        self, workspace_id: str, calendar_id: str, change: CalendarChange
    ) -> CalendarRecord:
        values: dict[str, Any] = {}
        if change.name is not None:
            values["name"] = change.name
        if change.hours is not None:
            values["hours"] = _json(change.hours)
        try:
            async with self.write() as conn:
                current = await self._get_calendar(conn, workspace_id, calendar_id)
                if values:
                    values["updated_at"] = utcnow()
                    await conn.execute(
                        update(t.calendars).where(t.calendars.c.id == current.id).values(**values)
                    )
                return await self._get_calendar(conn, workspace_id, current.id)
        except IntegrityError as exc:
            raise Conflict(f"a calendar named {change.name!r} exists already in this workspace") from exc

    async def delete_calendar(self, workspace_id: str, calendar_id: str) -> None:
        """Delete the calendar; CalendarInUse while a team, an SLA policy, a rule or the out-of-hours
        reply refers to it."""
        tt, sp = t.teams, t.sla_policies
        async with self.write() as conn:
            current = await self._get_calendar(conn, workspace_id, calendar_id)
            teams = list(
                (
                    await conn.execute(
                        select(tt.c.name).where(tt.c.calendar_id == current.id).order_by(tt.c.name).limit(5)
                    )
                ).scalars()
            )
            policies = list(
                (
                    await conn.execute(
                        select(sp.c.name).where(sp.c.calendar_id == current.id).order_by(sp.c.name).limit(5)
                    )
                ).scalars()
            )
            r, w = t.rules, t.workspaces
            rules = [
                name
                for name, conditions in (
                    await conn.execute(
                        select(r.c.name, r.c.conditions).where(r.c.workspace_id == workspace_id).order_by(r.c.name)
                    )
                ).all()
                if any(
                    isinstance(c, dict) and c.get("calendar_id") == current.id for c in conditions or ()
                )
            ][:5]
            settings = (
                await conn.execute(select(w.c.settings).where(w.c.id == workspace_id))
            ).scalar_one_or_none() or {}
            away = (settings.get("auto_replies") or {}).get("out_of_hours") or {}
            if teams or policies or rules or away.get("calendar_id") == current.id:
                users = (
                    [f"team {name!r}" for name in teams]
                    + [f"SLA policy {name!r}" for name in policies]
                    + [f"rule {name!r}" for name in rules]
                    + (["the out-of-hours reply"] if away.get("calendar_id") == current.id else [])
                )
                raise CalendarInUse(
                    f"calendar {current.name!r} is used by {', '.join(users)}: give them another calendar "
                    "(or none) first"
                )
            await conn.execute(delete(t.calendars).where(t.calendars.c.id == current.id))
