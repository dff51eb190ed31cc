"""/api/v1 endpoints: business-hours calendars (weekly hours, closed dates, a country's public holidays).

Teams and SLA policies refer to a calendar by id. Staff may read calendars, admins change them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from aiohttp import web
from pydantic import Field, StringConstraints, field_validator

from aggregator.api.framework import (
    ADMIN,
    STAFF,
    Api,
    ApiError,
    ApiModel,
    Call,
    OutModel,
    json_response,
    not_null,
)
from aggregator.hours import BusinessHours
from aggregator.store.calendars import CalendarChange, CalendarInUse, CalendarRecord

api = Api()

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
HOURS_DESCRIPTION = (
    "time zone, weekly opening hours, closed dates and optionally a country's public holidays "
    '(`"holidays": {"country": "HU"}`)'
)


class CalendarOut(OutModel):
    id: str
    name: str
    hours: BusinessHours
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, record: CalendarRecord) -> CalendarOut:
        return cls(
            id=record.id,
            name=record.name,
            hours=record.hours,
            created_at=record.created_at,
            updated_at=record.updated_at,
        )


class CalendarList(OutModel):
    items: list[CalendarOut]


class CalendarCreate(ApiModel):
    name: Name
    hours: BusinessHours = Field(description=HOURS_DESCRIPTION)


class CalendarPatch(ApiModel):
    name: Name | None = Field(None, json_schema_extra=not_null)
    hours: BusinessHours | None = Field(None, json_schema_extra=not_null, description="replaces the hours")

    @field_validator("name", "hours")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("cannot be null; leave the field out to keep its value")
        return value


@api.endpoint(
    "GET",
    "/calendars",
    summary="Business-hours calendars, by name",
    tag="calendars",
    roles=STAFF,
    response=CalendarList,
)
async def list_calendars(call: Call) -> web.StreamResponse:
    records = await call.store.list_calendars(call.workspace_id)
    return json_response(CalendarList(items=[CalendarOut.from_record(r) for r in records]))


@api.endpoint(
    "GET",
    "/calendars/{id}",
    summary="One business-hours calendar",
    tag="calendars",
    roles=STAFF,
    response=CalendarOut,
)
async def get_calendar(call: Call) -> web.StreamResponse:
    return json_response(
        CalendarOut.from_record(await call.store.get_calendar(call.workspace_id, call.path("id")))
    )


@api.endpoint(
    "POST",
    "/calendars",
    summary="Create a business-hours calendar",
    tag="calendars",
    roles=ADMIN,
    body=CalendarCreate,
    response=CalendarOut,
    status=201,
    errors=(409,),
    description="The hours are validated: a bad interval, time zone or holidays country answers 400 naming "
    "the field (e.g. `hours.holidays`). 409 `conflict` when another calendar has the name.",
)
async def create_calendar(call: Call) -> web.StreamResponse:
    body = call.body_as(CalendarCreate)
    record = await call.store.create_calendar(call.workspace_id, body.name, body.hours)
    return json_response(CalendarOut.from_record(record), status=201)


@api.endpoint(
    "PATCH",
    "/calendars/{id}",
    summary="Rename a calendar or replace its hours",
    tag="calendars",
    roles=ADMIN,
    body=CalendarPatch,
    response=CalendarOut,
    errors=(409,),
)
async def patch_calendar(call: Call) -> web.StreamResponse:
    body = call.body_as(CalendarPatch)
    change = CalendarChange(name=body.name, hours=body.hours)
    record = await call.store.update_calendar(call.workspace_id, call.path("id"), change)
    return json_response(CalendarOut.from_record(record))


@api.endpoint(
    "DELETE",
    "/calendars/{id}",
    summary="Delete a calendar (refused while a team, an SLA policy, a rule or the out-of-hours reply uses it)",
    tag="calendars",
    roles=ADMIN,
    status=204,
    errors=(409,),
    description="409 `calendar_in_use` names the teams, SLA policies and rules (and the out-of-hours reply) "
    "that use it.",
)
async def delete_calendar(call: Call) -> web.StreamResponse:
    try:
        await call.store.delete_calendar(call.workspace_id, call.path("id"))
    except CalendarInUse as exc:
        raise ApiError(409, "calendar_in_use", str(exc), "id") from exc
    return web.Response(status=204)
