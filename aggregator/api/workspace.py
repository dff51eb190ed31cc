"""The caller's workspace: default language, detection languages, time zone, hours, automatic replies."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from babel import Locale, UnknownLocaleError
from pydantic import Field, ValidationError

from aggregator.api.framework import ADMIN, STAFF, Api, ApiError, ApiModel, Call, OutModel, json_response
from aggregator.api.keys import SETTINGS
from aggregator.hours import BusinessHours
from aggregator.store import NotFound
from aggregator.store.replies import WorkspaceRecord
from aggregator.templates import Variant, required_vars
from aggregator.workspace import AutoReplies, Routing, WorkspaceSettings

api = Api()


class WorkspaceOut(OutModel):
    id: str
    name: str
    default_language: str = Field(description="templates fall back to it when no language is known")
    settings: WorkspaceSettings

    @classmethod
    def from_record(cls, record: WorkspaceRecord) -> WorkspaceOut:
        return cls(
            id=record.id,
            name=record.name,
            default_language=record.default_language,
            settings=WorkspaceSettings.load(record.settings),
        )


class WorkspacePatch(ApiModel):
    default_language: str | None = Field(
        None,
        max_length=35,
        pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$",
        json_schema_extra={"type": "string"},
    )
    languages: list[str] | None = Field(None, description="replaces the detection languages")
    timezone: str | None = None
    hours: BusinessHours | None = Field(
        None,
        description="replaces the business hours (their `timezone` defaults to the workspace's); null "
        "removes them",
    )
    auto_replies: AutoReplies | None = Field(None, description="replaces the automatic-reply settings")
    routing: Routing | None = Field(None, description="replaces the routing settings")


@api.endpoint(
    "GET",
    "/workspace",
    summary="The workspace and its settings",
    tag="admin",
    roles=STAFF,
    response=WorkspaceOut,
)
async def get_workspace(call: Call) -> web.StreamResponse:
    return json_response(WorkspaceOut.from_record(await call.store.get_workspace(call.workspace_id)))


async def _check_templates(call: Call, auto: AutoReplies) -> None:
    refs: list[tuple[str, str]] = [
        (f"auto_replies.acknowledge.{channel}.template", rule.template)
        for channel, rule in auto.acknowledge.items()
    ]
    if auto.out_of_hours.template is not None:
        refs.append(("auto_replies.out_of_hours.template", auto.out_of_hours.template))
    elif auto.out_of_hours.enabled:
        raise ApiError(
            400, "missing_field", "auto_replies.out_of_hours.template: required when enabled", "auto_replies"
        )
    for field, ref in refs:
        try:
            template = await call.store.get_template(call.workspace_id, ref)
        except NotFound:
            raise ApiError(
                400, "invalid_field", f"{field}: no template with id or shortcode {ref!r}", "auto_replies"
            ) from None
        # Nobody fills in `vars` for an automatic reply: such a template would never be sent.
        needed = list(
            dict.fromkeys(
                name
                for v in template.variants
                for name in required_vars(
                    Variant(language=str(v["language"]), body=str(v["body"]), subject=v.get("subject"))
                )
            )
        )
        if needed:
            names = ", ".join(f"vars.{name}" for name in needed)
            raise ApiError(
                400,
                "invalid_field",
                f"{field}: template {template.name!r} uses {names}, which an automatic reply cannot fill in",
                "auto_replies",
            )
    channels = set(auto.acknowledge) | set(auto.out_of_hours.channels or ())
    for channel in sorted(channels):
        try:
            await call.store.get_channel(call.workspace_id, channel)
        except NotFound:
            raise ApiError(
                400, "invalid_field", f"auto_replies: no channel account with id {channel!r}", "auto_replies"
            ) from None


@api.endpoint(
    "PATCH",
    "/workspace",
    summary="Change the default language, detection languages, time zone, business hours or automatic replies",
    tag="admin",
    roles=ADMIN,
    body=WorkspacePatch,
    response=WorkspaceOut,
    description="Each field given replaces that setting; the others stay. Automatic replies name templates "
    "and channel accounts that must exist. Every process uses the new settings within 10 seconds.",
)
async def patch_workspace(call: Call) -> web.StreamResponse:
    body = call.body_as(WorkspacePatch)
    given = body.model_fields_set
    for name in ("default_language", "languages", "timezone", "auto_replies", "routing"):
        if name in given and getattr(body, name) is None:
            raise ApiError(400, "invalid_field", f"{name}: cannot be null; leave it out to keep it", name)
    current = await call.store.get_workspace(call.workspace_id)
    merged: dict[str, Any] = WorkspaceSettings.load(current.settings).model_dump(mode="json")
    for name in ("languages", "timezone", "hours", "auto_replies", "routing"):
        if name in given:
            value = getattr(body, name)
            merged[name] = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
    if body.hours is not None and "timezone" not in body.hours.model_fields_set:
        # Hours given without a zone are the workspace's hours, in its time zone.
        merged["hours"]["timezone"] = merged.get("timezone", "UTC")
    try:
        settings = WorkspaceSettings.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ApiError(400, "invalid_field", f"{where}: {message}", str(error["loc"][0])) from exc
    if "auto_replies" in given:
        await _check_templates(call, settings.auto_replies)
    away = settings.auto_replies.out_of_hours
    if away.calendar_id is not None and await call.store.calendar_hours(call.workspace_id, away.calendar_id) is None:
        raise ApiError(
            400,
            "invalid_field",
            f"auto_replies.out_of_hours.calendar_id: no calendar with id {away.calendar_id!r} (GET /calendars)",
            "auto_replies",
        )
    if (
        away.enabled
        and settings.hours is None
        and away.calendar_id is None
        and not any(team.calendar_id for team in await call.store.routing_teams(call.workspace_id))
    ):
        raise ApiError(
            400,
            "invalid_field",
            "auto_replies.out_of_hours: needs business hours to know when the team is away; set `hours`, "
            "`auto_replies.out_of_hours.calendar_id`, or give teams a calendar",
            "hours" if "hours" in given else "auto_replies",
        )
    if body.default_language is not None:
        try:
            Locale.parse(body.default_language.replace("-", "_"))
        except (ValueError, UnknownLocaleError):
            raise ApiError(
                400,
                "invalid_field",
                f"default_language: {body.default_language!r} is not a language we can format for "
                "(e.g. en, de, pt-BR)",
                "default_language",
            ) from None
    record = await call.store.update_workspace(
        call.workspace_id, default_language=body.default_language, settings=settings.model_dump(mode="json")
    )
    cache = call.request.app.get(SETTINGS)
    if cache is not None:
        cache.forget(call.workspace_id)
    return json_response(WorkspaceOut.from_record(record))
