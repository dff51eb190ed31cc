"""/api/v1 endpoints: automation rules (admin). Rules loaded from the config file are read-only here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, StringConstraints, field_validator

from aggregator.api.framework import ADMIN, Api, ApiError, ApiModel, Call, OutModel, json_response, not_null
from aggregator.automation import (
    Actions,
    AssignAgentAction,
    AssigneeCondition,
    AssignTeamAction,
    BusinessHoursCondition,
    Conditions,
    NotifyAction,
    ReplyTemplateAction,
    RuleEventName,
    SetSlaPolicyAction,
    WebhookAction,
    check_event_options,
)
from aggregator.model import utcnow
from aggregator.store import Invalid, NotFound
from aggregator.store.rules import WEBHOOK_SECRET_STORED, RuleRecord, webhook_secret_set, without_secret

api = Api()

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Position = Annotated[int, Field(ge=-1_000_000, le=1_000_000, description="lower runs first; ties by name")]
EventOptions = Annotated[
    dict[str, Any], Field(description='no_reply: {"hours": N, "side": "customer" | "agent"}; others: {}')
]


class RuleOut(OutModel):
    id: str
    name: str
    position: int
    enabled: bool
    event: str
    event_options: dict[str, Any]
    conditions: list[dict[str, Any]]
    actions: list[dict[str, Any]] = Field(
        description="a webhook action's secret is never returned: `secret_set` says whether it has one"
    )
    source: str = Field(description="`api`, or `config` (from the config file: read-only here)")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, record: RuleRecord) -> RuleOut:
        return cls(
            id=record.id,
            name=record.name,
            position=record.position,
            enabled=record.enabled,
            event=record.event,
            event_options=record.event_options,
            conditions=record.conditions,
            actions=[_shown(action) for action in record.actions],
            source=record.source,
            created_at=record.created_at,
            updated_at=record.updated_at,
        )


def _shown(action: dict[str, Any]) -> dict[str, Any]:
    if action.get("type") != "webhook":
        return action
    return {**without_secret(action), "secret_set": webhook_secret_set(action)}


class RuleList(OutModel):
    items: list[RuleOut]


class RuleCreate(ApiModel):
    name: Name
    position: Position = 0
    enabled: bool = True
    event: RuleEventName
    event_options: EventOptions = Field(default_factory=dict)
    conditions: Conditions = Field(default_factory=list, description="all must hold")
    actions: Actions = Field(description="run in order")


class RulePatch(ApiModel):
    name: Name | None = Field(None, json_schema_extra=not_null)
    position: Position | None = Field(None, json_schema_extra=not_null)
    enabled: bool | None = Field(None, json_schema_extra=not_null)
    event: RuleEventName | None = Field(None, json_schema_extra=not_null)
    event_options: EventOptions | None = Field(None, json_schema_extra=not_null)
    conditions: Conditions | None = Field(None, json_schema_extra=not_null, description="replaces them all")
    actions: Actions | None = Field(None, json_schema_extra=not_null, description="replaces them all")

    @field_validator("name", "position", "enabled", "event", "event_options", "conditions", "actions")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("cannot be null; leave the field out to keep its value")
        return value


class RuleQuery(ApiModel):
    event: RuleEventName | None = None


@api.endpoint(
    "GET",
    "/rules",
    summary="Automation rules, in evaluation order",
    tag="rules",
    roles=ADMIN,
    query=RuleQuery,
    response=RuleList,
)
async def list_rules(call: Call) -> web.StreamResponse:
    query = call.query_as(RuleQuery)
    records = await call.store.list_rules(call.workspace_id, event=query.event)
    return json_response(RuleList(items=[RuleOut.from_record(r) for r in records]))


@api.endpoint("GET", "/rules/{id}", summary="One automation rule", tag="rules", roles=ADMIN, response=RuleOut)
async def get_rule(call: Call) -> web.StreamResponse:
    return json_response(RuleOut.from_record(await call.store.get_rule(call.workspace_id, call.path("id"))))


@api.endpoint(
    "POST",
    "/rules",
    summary="Create an automation rule",
    tag="rules",
    roles=ADMIN,
    body=RuleCreate,
    response=RuleOut,
    status=201,
    errors=(409,),
    description="An event, conditions (all must hold) and actions (in order). Rules of an event run by "
    "position, then name; a rule never fires on an event its own actions caused.",
)
async def create_rule(call: Call) -> web.StreamResponse:
    body = call.body_as(RuleCreate)
    values = body.model_dump(mode="json")
    values["event_options"] = _options(body.event, body.event_options)
    await _check_references(call, body.conditions, body.actions)
    record = await call.store.create_rule(call.workspace_id, values, utcnow())
    return json_response(RuleOut.from_record(record), status=201)


async def _check_references(call: Call, conditions: Any, actions: Any) -> None:
    """What the rule names exists in this workspace: 400 naming the condition or action otherwise."""
    store, ws = call.store, call.workspace_id
    checks: list[tuple[str, Callable[[str, str], Awaitable[Any]], str]] = []
    for i, condition in enumerate(conditions or []):
        where = f"conditions.{i}.{condition.type}"
        if isinstance(condition, BusinessHoursCondition) and condition.calendar_id is not None:
            checks.append((f"{where}.calendar_id", store.calendar_hours, condition.calendar_id))
        if isinstance(condition, AssigneeCondition) and condition.assignee not in ("none", "any"):
            checks.append((f"{where}.assignee", store.find_active_user_id, condition.assignee))
    for i, action in enumerate(actions or []):
        where = f"actions.{i}.{action.type}"
        if isinstance(action, AssignAgentAction):
            checks.append((f"{where}.user_id", store.find_active_user_id, action.user_id))
        elif isinstance(action, AssignTeamAction):
            checks.append((f"{where}.team_id", store.find_team_id, action.team_id))
        elif isinstance(action, SetSlaPolicyAction):
            checks.append((f"{where}.policy_id", store.check_sla_policy, action.policy_id))
        elif isinstance(action, ReplyTemplateAction):
            checks.append((f"{where}.template", store.get_template, action.template))
        elif isinstance(action, NotifyAction):
            for j, user in enumerate(action.users):
                if user != "team_lead":
                    checks.append((f"{where}.users.{j}", store.find_active_user_id, user))
    for field_name, check, ref in checks:
        try:
            await check(ws, ref)
        except (Invalid, NotFound) as exc:
            raise ApiError(400, "invalid_field", f"{field_name}: {exc}", field_name) from exc


def _options(event: str, options: dict[str, Any]) -> dict[str, Any]:
    try:
        return check_event_options(event, options)
    except ValueError as exc:
        raise ApiError(400, "invalid_field", f"event_options: {exc}", "event_options") from exc


async def _editable(call: Call) -> RuleRecord:
    record = await call.store.get_rule(call.workspace_id, call.path("id"))
    if record.source == "config":
        file = await call.store.config_rules_file(call.workspace_id) or "the config file"
        raise ApiError(
            409,
            "rule_from_config",
            f"rule {record.name!r} comes from {file}: change it there and restart the daemon",
        )
    return record


@api.endpoint(
    "PATCH",
    "/rules/{id}",
    summary="Change an automation rule",
    tag="rules",
    roles=ADMIN,
    body=RulePatch,
    response=RuleOut,
    errors=(409,),
    description="`actions` replaces them all. A webhook action's secret is write-only: one that leaves "
    "`secret` out keeps the secret of the rule's webhook action with the same url, `secret` null "
    "removes it; `secret_set` (what answers show) is not accepted in a body.",
)
async def patch_rule(call: Call) -> web.StreamResponse:
    body = call.body_as(RulePatch)
    current = await _editable(call)
    values = body.model_dump(mode="json", exclude_unset=True)
    event = values.get("event", current.event)
    if "event" in values or "event_options" in values:
        options = values.get("event_options", current.event_options if "event" not in values else {})
        values["event_options"] = _options(event, options)
    await _check_references(call, body.conditions, body.actions)
    if body.actions is not None:
        values["actions"] = _keep_secrets(body.actions, values["actions"], current.actions)
    record = await call.store.update_rule(call.workspace_id, current.id, values, utcnow())
    return json_response(RuleOut.from_record(record))


def _keep_secrets(
    actions: list[Any], values: list[dict[str, Any]], current: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """A webhook action that leaves `secret` out keeps the (stored, encrypted) secret of the current
    rule's first webhook action with the same url; null removes it."""
    stored_by_url: dict[str, dict[str, Any]] = {}
    for action in current:
        if action.get("type") == "webhook" and isinstance(action.get("url"), str):
            stored_by_url.setdefault(action["url"], action)
    kept: list[dict[str, Any]] = []
    for model, value in zip(actions, values, strict=True):
        stored = stored_by_url.get(model.url) if isinstance(model, WebhookAction) else None
        if stored is not None and "secret" not in model.model_fields_set:
            value = {key: item for key, item in value.items() if key != "secret"}
            for key in (WEBHOOK_SECRET_STORED, "secret"):  # "secret": a row from before encryption
                if stored.get(key):
                    value[key] = stored[key]
        kept.append(value)
    return kept


@api.endpoint(
    "DELETE",
    "/rules/{id}",
    summary="Delete an automation rule",
    tag="rules",
    roles=ADMIN,
    status=204,
    errors=(409,),
)
async def delete_rule(call: Call) -> web.StreamResponse:
    current = await _editable(call)
    await call.store.delete_rule(call.workspace_id, current.id)
    return web.Response(status=204)
