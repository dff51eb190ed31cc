"""SLA policies: targets for first response, next response and resolution, chosen by conditions.

Policies are tried in `position` order; the first enabled one whose conditions all match a
conversation applies (a conversation's own `sla_policy_id`, set by an agent or a rule, comes first).
Targets are given in minutes and counted around the clock (marketplace mode) or in business hours
(company mode: the policy's calendar, else the conversation's team's, else the workspace's hours).
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Annotated, Any, Literal

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
from aggregator.bus import BusUnavailable
from aggregator.model import Event, Priority
from aggregator.sla import POLICIES_CHANGED
from aggregator.store.sla import SlaPolicyRecord

api = Api()

MAX_MINUTES = 366 * 24 * 60
MAX_CONDITION_VALUES = 100

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Minutes = Annotated[int, Field(ge=1, le=MAX_MINUTES)]
Value = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Values = Annotated[list[Value], Field(max_length=MAX_CONDITION_VALUES)]
Mode = Literal["around_the_clock", "business_hours"]
Id = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class Conditions(ApiModel):
    channel_account_ids: Values = Field(default_factory=list, description="any of these channel accounts")
    channel_kinds: Values = Field(
        default_factory=list, description="any of these channel kinds, e.g. `amazon`"
    )
    priorities: list[Priority] = Field(default_factory=list, description="any of these priorities")
    labels: Values = Field(default_factory=list, description="a conversation with any of these labels")


class ConditionsOut(OutModel):
    channel_account_ids: list[str]
    channel_kinds: list[str]
    priorities: list[str]
    labels: list[str]


class SlaPolicyOut(OutModel):
    id: str
    name: str
    position: int
    enabled: bool
    conditions: ConditionsOut
    first_response_minutes: int | None
    next_response_minutes: int | None
    resolution_minutes: int | None
    mode: Mode
    calendar_id: str | None
    warn_before_minutes: int | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, record: SlaPolicyRecord) -> SlaPolicyOut:
        def minutes(seconds: int | None) -> int | None:
            return None if seconds is None else seconds // 60

        cond = record.conditions
        return cls(
            id=record.id,
            name=record.name,
            position=record.position,
            enabled=record.enabled,
            conditions=ConditionsOut(
                channel_account_ids=list(cond.get("channel_account_ids", [])),
                channel_kinds=list(cond.get("channel_kinds", [])),
                priorities=list(cond.get("priorities", [])),
                labels=list(cond.get("labels", [])),
            ),
            first_response_minutes=minutes(record.first_response_seconds),
            next_response_minutes=minutes(record.next_response_seconds),
            resolution_minutes=minutes(record.resolution_seconds),
            mode="around_the_clock" if record.mode == "around_the_clock" else "business_hours",
            calendar_id=record.calendar_id,
            warn_before_minutes=minutes(record.warn_before_seconds),
            created_at=record.created_at,
            updated_at=record.updated_at,
        )


class SlaPolicyList(OutModel):
    items: list[SlaPolicyOut]


_MODE_DESCRIPTION = (
    "`around_the_clock` (marketplace mode: weekends and holidays count) or `business_hours` (company mode: "
    "only the calendar's open time counts)"
)


class SlaPolicyCreate(ApiModel):
    name: Name
    position: int = Field(0, ge=0, le=1_000_000, description="lower first")
    enabled: bool = True
    conditions: Conditions = Field(default_factory=Conditions, description="every list given must match")
    first_response_minutes: Minutes | None = None
    next_response_minutes: Minutes | None = None
    resolution_minutes: Minutes | None = None
    mode: Mode = Field("business_hours", description=_MODE_DESCRIPTION)
    calendar_id: Id | None = Field(
        None, description="business hours mode: this calendar, else the team's, else the workspace's hours"
    )
    warn_before_minutes: Minutes | None = Field(
        None, description="an `sla.warning` this long before the due time"
    )


class SlaPolicyPatch(ApiModel):
    name: Name | None = Field(None, json_schema_extra=not_null)
    position: int | None = Field(None, ge=0, le=1_000_000, json_schema_extra=not_null)
    enabled: bool | None = Field(None, json_schema_extra=not_null)
    conditions: Conditions | None = Field(None, json_schema_extra=not_null, description="replaces them all")
    first_response_minutes: Minutes | None = Field(None, description="null removes the target")
    next_response_minutes: Minutes | None = Field(None, description="null removes the target")
    resolution_minutes: Minutes | None = Field(None, description="null removes the target")
    mode: Mode | None = Field(None, json_schema_extra=not_null, description=_MODE_DESCRIPTION)
    calendar_id: Id | None = None
    warn_before_minutes: Minutes | None = None

    @field_validator("name", "position", "enabled", "conditions", "mode")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("cannot be null; leave the field out to keep its value")
        return value


TARGETS = ("first_response", "next_response", "resolution")


def _seconds(minutes: int | None) -> int | None:
    return None if minutes is None else minutes * 60


def _values(body: ApiModel, given: set[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in given:
        value = getattr(body, name)
        if name.endswith("_minutes"):
            values[name.removesuffix("_minutes") + "_seconds"] = _seconds(value)
        elif name == "conditions":
            conditions = value.model_dump(mode="json")
            values["conditions"] = {k: list(dict.fromkeys(v)) for k, v in conditions.items() if v}
        else:
            values[name] = value
    return values


def _check(values: dict[str, Any]) -> None:
    targets = {name: values.get(f"{name}_seconds") for name in TARGETS}
    if not any(targets.values()):
        raise ApiError(
            400,
            "invalid_field",
            "first_response_minutes: a policy needs at least one target (first_response_minutes, "
            "next_response_minutes or resolution_minutes)",
            "first_response_minutes",
        )
    warn = values.get("warn_before_seconds")
    shortest = min((v for v in targets.values() if v), default=None)
    if warn is not None and shortest is not None and warn >= shortest:
        raise ApiError(
            400,
            "invalid_field",
            f"warn_before_minutes: {warn // 60} is not less than the shortest target ({shortest // 60} minutes); "
            "warn earlier than the target, or leave it out",
            "warn_before_minutes",
        )


async def _retime(call: Call) -> None:
    """The SLA engine recomputes the workspace's timers (best effort: its catch-up covers a lost event)."""
    with contextlib.suppress(BusUnavailable):
        await call.bus.publish(Event(POLICIES_CHANGED, call.workspace_id, {}, None))


@api.endpoint(
    "GET",
    "/sla-policies",
    summary="SLA policies, in the order they are tried",
    tag="sla",
    roles=STAFF,
    response=SlaPolicyList,
)
async def list_sla_policies(call: Call) -> web.StreamResponse:
    records = await call.store.list_sla_policies(call.workspace_id)
    return json_response(SlaPolicyList(items=[SlaPolicyOut.from_record(r) for r in records]))


@api.endpoint(
    "GET",
    "/sla-policies/{id}",
    summary="One SLA policy",
    tag="sla",
    roles=STAFF,
    response=SlaPolicyOut,
)
async def get_sla_policy(call: Call) -> web.StreamResponse:
    record = await call.store.get_sla_policy(call.workspace_id, call.path("id"))
    return json_response(SlaPolicyOut.from_record(record))


@api.endpoint(
    "POST",
    "/sla-policies",
    summary="Create an SLA policy",
    tag="sla",
    roles=ADMIN,
    body=SlaPolicyCreate,
    response=SlaPolicyOut,
    status=201,
    errors=(409,),
)
async def create_sla_policy(call: Call) -> web.StreamResponse:
    body = call.body_as(SlaPolicyCreate)
    values = _values(body, set(SlaPolicyCreate.model_fields))
    _check(values)
    record = await call.store.create_sla_policy(call.workspace_id, values)
    await _retime(call)
    return json_response(SlaPolicyOut.from_record(record), status=201)


@api.endpoint(
    "PATCH",
    "/sla-policies/{id}",
    summary="Change an SLA policy (open conversations' timers are recomputed)",
    tag="sla",
    roles=ADMIN,
    body=SlaPolicyPatch,
    response=SlaPolicyOut,
    errors=(409,),
)
async def patch_sla_policy(call: Call) -> web.StreamResponse:
    body = call.body_as(SlaPolicyPatch)
    current = await call.store.get_sla_policy(call.workspace_id, call.path("id"))
    values = _values(body, set(body.model_fields_set))
    merged = {
        "first_response_seconds": current.first_response_seconds,
        "next_response_seconds": current.next_response_seconds,
        "resolution_seconds": current.resolution_seconds,
        "warn_before_seconds": current.warn_before_seconds,
        **values,
    }
    _check(merged)
    record = await call.store.update_sla_policy(call.workspace_id, current.id, values)
    await _retime(call)
    return json_response(SlaPolicyOut.from_record(record))


@api.endpoint(
    "DELETE",
    "/sla-policies/{id}",
    summary="Delete an SLA policy (conversations that named it fall back to the matching policies)",
    tag="sla",
    roles=ADMIN,
    status=204,
)
async def delete_sla_policy(call: Call) -> web.StreamResponse:
    await call.store.delete_sla_policy(call.workspace_id, call.path("id"))
    await _retime(call)
    return web.Response(status=204)
