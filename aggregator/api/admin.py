"""Admin endpoints: channel accounts, users, teams and API tokens of the caller's workspace."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BeforeValidator, ConfigDict, Field, StringConstraints, field_validator

from aggregator.api.conversations import publish
from aggregator.api.framework import (
    ADMIN,
    STAFF,
    Api,
    ApiError,
    ApiModel,
    Call,
    OutModel,
    json_response,
    not_found,
    not_null,
    parse_time_cursor,
    time_cursor,
)
from aggregator.bus import Bus
from aggregator.model import ConnectionState, Event, Role, utcnow
from aggregator.store import ChannelAccount, Conflict
from aggregator.store.admin import (
    BY_PERSON,
    ChannelChange,
    ChannelRecord,
    Cursor,
    LastAdmin,
    TeamChange,
    TeamRecord,
    TokenRecord,
    UserChange,
    UserRecord,
)
from aggregator.tokens import hash_token, new_token
from channels.base import ChannelConfig, CheckResult, ConfigInvalid, UnknownChannelKind

log = logging.getLogger(__name__)

api = Api()

# A live check that has not answered by then is a failed one (an adapter's own timeouts are shorter).
CHECK_SECONDS = 30.0
# After a passing check, a channel in one of these states is restarted so that it reconnects.
ERROR_STATES = frozenset({ConnectionState.UNKNOWN_ERROR.value, ConnectionState.BAD_CREDENTIALS.value})
MAX_LANGUAGES = 50
MAX_MEMBERS = 1000

Id = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$"),
    Field(description="an email address, unique in the workspace"),
]
Language = Annotated[
    str,
    StringConstraints(max_length=35, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$"),
    Field(description="a language code such as `en` or `pt-BR`"),
]
Languages = Annotated[list[Language], Field(max_length=MAX_LANGUAGES)]


def _integral(value: object) -> object:
    """5.0 is the integer 5 in JSON (and to JSON Schema); the strict body validation refuses other floats."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Capacity = Annotated[
    int,
    Field(ge=0, le=10_000, description="open conversations the user takes at once"),
    BeforeValidator(_integral),
]


def _not_null(value: object) -> object:
    if value is None:
        raise ValueError("cannot be null; leave the field out to keep its value")
    return value


def _unique(values: list[str] | None) -> list[str] | None:
    return None if values is None else list(dict.fromkeys(values))


@contextmanager
def _conflicts(field: str, last_admin_field: str | None = "role") -> Iterator[None]:
    """Store conflicts as 409 answers naming the field to change."""
    try:
        yield
    except LastAdmin as exc:
        raise ApiError(409, "last_admin", str(exc), last_admin_field) from exc
    except Conflict as exc:
        raise ApiError(409, "conflict", str(exc), field) from exc


def _next(cursor: Cursor | None) -> str | None:
    return None if cursor is None else time_cursor(*cursor)


class PageQuery(ApiModel):
    limit: int = Field(50, ge=1, le=100)
    cursor: str | None = Field(None, max_length=400, description="`next_cursor` of the previous page")


NEXT_CURSOR = Field(description="pass as `cursor` for the next page; null on the last one")


def _leave_out(description: str | None = None) -> Any:
    """A PATCH field that keeps its value when left out and refuses null (_not_null): no null documented."""
    return Field(None, description=description, json_schema_extra=not_null)


# --------------------------------------------------------------------------------------------------
# Channels


class ChannelOut(OutModel):
    id: str
    kind: str
    name: str
    enabled: bool
    state: str = Field(description="the connection state: " + ", ".join(s.value for s in ConnectionState))
    state_detail: str | None
    config: dict[str, Any] = Field(description="the plain settings; secrets are never returned")
    secrets_set: list[str] = Field(description="names of the secret settings that have a value")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, record: ChannelRecord) -> ChannelOut:
        return cls(
            id=record.id,
            kind=record.kind,
            name=record.name,
            enabled=record.enabled,
            state=record.state,
            state_detail=record.state_detail,
            config=record.config,
            secrets_set=sorted(record.secrets),
            created_at=record.created_at,
            updated_at=record.updated_at,
        )


class ChannelPage(OutModel):
    items: list[ChannelOut]
    next_cursor: str | None = NEXT_CURSOR


class ChannelCreate(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"kind": "api", "name": "shop", "config": {"secret": "at-least-16-characters-shared"}}
            ]
        }
    )

    kind: str = Field(min_length=1, max_length=32, description="an installed channel kind, e.g. `api`")
    name: Name
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="the kind's settings, secrets included (secrets are write-only: stored encrypted, "
        "never returned)",
    )
    enabled: bool = True


class ChannelPatch(ApiModel):
    name: Name | None = _leave_out()
    enabled: bool | None = _leave_out()
    config: dict[str, Any] | None = _leave_out(
        "settings to change, merged over the stored ones: a secret left out keeps its value"
    )

    _checked = field_validator("name", "enabled", "config")(_not_null)


class CheckOut(OutModel):
    ok: bool
    detail: str


def _parse_config(call: Call, kind: str, values: dict[str, Any]) -> ChannelConfig:
    """The settings validated by the kind's own model; 400 naming the first bad setting."""
    try:
        return call.channels.registry.parse_config(kind, values)
    except UnknownChannelKind as exc:
        raise ApiError(400, "invalid_field", f"kind: {exc}", "kind") from exc
    except ConfigInvalid as exc:
        # The problems name settings and what is wrong with them, never the values given.
        first = next(iter(exc.problems), "(config)")
        listing = "; ".join(f"{name}: {problem}" for name, problem in exc.problems.items())
        field = "config" if first == "(config)" else f"config.{first}"
        raise ApiError(400, "invalid_field", f"invalid {kind} settings: {listing}", field) from exc


def _account(record: ChannelRecord) -> ChannelAccount:
    return ChannelAccount(
        id=record.id,
        workspace_id=record.workspace_id,
        kind=record.kind,
        name=record.name,
        config=record.config,
        secrets=record.secrets,
        enabled=record.enabled,
        state=record.state,
        state_detail=record.state_detail,
    )


@api.endpoint(
    "GET",
    "/channels",
    summary="Channel accounts with their connection state",
    tag="admin",
    roles=ADMIN,
    query=PageQuery,
    response=ChannelPage,
)
async def list_channels(call: Call) -> web.StreamResponse:
    query = call.query_as(PageQuery)
    page = await call.store.list_channels(
        call.workspace_id, limit=query.limit, after=parse_time_cursor(query.cursor)
    )
    return json_response(
        ChannelPage(
            items=[ChannelOut.from_record(r) for r in page.items], next_cursor=_next(page.next_cursor)
        )
    )


@api.endpoint(
    "GET", "/channels/{id}", summary="One channel account", tag="admin", roles=ADMIN, response=ChannelOut
)
async def get_channel(call: Call) -> web.StreamResponse:
    return json_response(
        ChannelOut.from_record(await call.store.get_channel(call.workspace_id, call.path("id")))
    )


@api.endpoint(
    "POST",
    "/channels",
    summary="Add a channel account; it starts receiving at once",
    tag="admin",
    roles=ADMIN,
    body=ChannelCreate,
    response=ChannelOut,
    status=201,
    errors=(409,),
    description="`config` is validated by the kind's own settings model: a bad setting answers 400 with "
    "`field` `config.<setting>`. Secrets are stored encrypted and never returned: `secrets_set` names "
    "those that have a value.",
)
async def create_channel(call: Call) -> web.StreamResponse:
    body = call.body_as(ChannelCreate)
    plain, secrets = _parse_config(call, body.kind, body.config).split_secrets()
    with _conflicts("name"):
        record = await call.store.create_channel(
            call.workspace_id, body.kind, body.name, plain, secrets, enabled=body.enabled
        )
    await call.channels.apply(record.id)
    record = await call.store.get_channel(call.workspace_id, record.id)
    return json_response(ChannelOut.from_record(record), status=201)


@api.endpoint(
    "PATCH",
    "/channels/{id}",
    summary="Rename, enable or disable a channel account, or change its settings",
    tag="admin",
    roles=ADMIN,
    body=ChannelPatch,
    response=ChannelOut,
    errors=(409,),
    description="`config` is merged over the stored settings (a secret left out keeps its value; null "
    "clears an optional setting) and validated again. The running channel restarts with the change.",
)
async def patch_channel(call: Call) -> web.StreamResponse:
    body = call.body_as(ChannelPatch)
    account_id = call.path("id")
    current = await call.store.get_channel(call.workspace_id, account_id)
    plain: dict[str, Any] | None = None
    secrets: dict[str, str] | None = None
    if body.config is not None:
        merged = {**current.config, **current.secrets, **body.config}
        plain, secrets = _parse_config(call, current.kind, merged).split_secrets()
    change = ChannelChange(name=body.name, enabled=body.enabled, config=plain, secrets=secrets)
    with _conflicts("name"):
        await call.store.update_channel(call.workspace_id, account_id, change)
    await call.channels.apply(account_id)
    return json_response(ChannelOut.from_record(await call.store.get_channel(call.workspace_id, account_id)))


@api.endpoint(
    "DELETE",
    "/channels/{id}",
    summary="Delete a channel account (its conversations and messages stay)",
    tag="admin",
    roles=ADMIN,
    status=204,
    description="The channel stops at once, its endpoints answer 404 and its name is free again.",
)
async def delete_channel(call: Call) -> web.StreamResponse:
    account_id = call.path("id")
    await call.store.delete_channel(call.workspace_id, account_id, utcnow())
    await call.channels.stop_account(account_id)
    return web.Response(status=204)


@api.endpoint(
    "POST",
    "/channels/{id}/check",
    summary="Test the channel's credentials and settings live",
    tag="admin",
    roles=ADMIN,
    response=CheckOut,
    description="Runs the adapter's own check against its service. A failure of an enabled channel is "
    "recorded as its state (`unknown_error`, with the detail); a pass restarts a channel that was in an "
    "error state, so that it reconnects.",
)
async def check_channel(call: Call) -> web.StreamResponse:
    account_id = call.path("id")
    record = await call.store.get_channel(call.workspace_id, account_id)
    result = await _check(call, record)
    # A disabled channel stays `stopped`: its state describes the running link, not the last check.
    if not result.ok and record.enabled:
        await call.store.set_channel_state(
            account_id, ConnectionState.UNKNOWN_ERROR, f"check failed: {result.detail}"
        )
    elif record.enabled and record.state in ERROR_STATES:
        await call.channels.restart_account(account_id)
    return json_response(CheckOut(ok=result.ok, detail=result.detail))


async def _check(call: Call, record: ChannelRecord) -> CheckResult:
    try:
        adapter = call.channels.build(_account(record))
    except (ConfigInvalid, UnknownChannelKind) as exc:
        return CheckResult(False, str(exc))
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            return await adapter.check()
    except TimeoutError:
        return CheckResult(False, f"no answer within {CHECK_SECONDS:g} seconds")
    except Exception as exc:
        # Only the type: an exception's text may carry a URL with a token in it.
        log.warning("channel %s: the check raised %s", record.id, type(exc).__name__)
        return CheckResult(False, f"the check failed with {type(exc).__name__}")


# --------------------------------------------------------------------------------------------------
# Users


Availability = Literal["online", "away", "offline"]


class UserOut(OutModel):
    id: str
    name: str
    email: str
    role: Role
    languages: list[str]
    capacity: int
    team_ids: list[str]
    active: bool
    signature: str | None = Field(description="ends replies made from templates (`{{ agent.signature }}`)")
    availability: Availability = Field(
        description="`online` (routing gives them conversations), `away` or `offline`; opening the live "
        "stream makes an offline user online, closing their last stream offline again (not `away`)"
    )
    availability_at: datetime | None = Field(
        description="when the availability last changed (for an `online` the live stream set, when "
        "its lease was last renewed)"
    )
    created_at: datetime
    deactivated_at: datetime | None

    @classmethod
    def from_record(cls, record: UserRecord) -> UserOut:
        return cls(
            id=record.id,
            name=record.name,
            email=record.email,
            role=record.role,
            languages=record.languages,
            capacity=record.capacity,
            team_ids=record.team_ids,
            active=record.deactivated_at is None,
            signature=record.signature,
            availability=record.availability,
            availability_at=record.availability_at,
            created_at=record.created_at,
            deactivated_at=record.deactivated_at,
        )


class UserPage(OutModel):
    items: list[UserOut]
    next_cursor: str | None = NEXT_CURSOR


class UserQuery(PageQuery):
    include_deactivated: bool = Field(False, description="list deactivated users too")


class UserCreate(ApiModel):
    name: Name
    email: Email
    role: Role = Role.AGENT
    languages: Languages = Field(default_factory=list)
    capacity: Capacity = 10


class UserPatch(ApiModel):
    name: Name | None = _leave_out()
    email: Email | None = _leave_out()
    role: Role | None = _leave_out("also changes the role of the user's tokens")
    languages: Languages | None = _leave_out()
    capacity: Capacity | None = _leave_out()
    signature: Annotated[str, StringConstraints(max_length=2000)] | None = _leave_out(
        'ends replies made from templates ({{ agent.signature }}), may span lines; "" removes it'
    )
    availability: Availability | None = _leave_out("`online`, `away` or `offline`")

    _checked = field_validator("name", "email", "role", "languages", "capacity", "signature", "availability")(
        _not_null
    )


@api.endpoint(
    "GET",
    "/users",
    summary="Users of the workspace (active ones unless asked otherwise)",
    tag="admin",
    roles=ADMIN,
    query=UserQuery,
    response=UserPage,
)
async def list_users(call: Call) -> web.StreamResponse:
    query = call.query_as(UserQuery)
    page = await call.store.list_users(
        call.workspace_id,
        include_deactivated=query.include_deactivated,
        limit=query.limit,
        after=parse_time_cursor(query.cursor),
    )
    return json_response(
        UserPage(items=[UserOut.from_record(r) for r in page.items], next_cursor=_next(page.next_cursor))
    )


class OneUserQuery(ApiModel):
    include_deactivated: bool = Field(False, description="answer for a deactivated user too (else 404)")


@api.endpoint(
    "GET",
    "/users/{id}",
    summary="One user",
    tag="admin",
    roles=ADMIN,
    query=OneUserQuery,
    response=UserOut,
)
async def get_user(call: Call) -> web.StreamResponse:
    query = call.query_as(OneUserQuery)
    record = await call.store.get_user(
        call.workspace_id, call.path("id"), include_deactivated=query.include_deactivated
    )
    return json_response(UserOut.from_record(record))


@api.endpoint(
    "POST",
    "/users",
    summary="Create a user",
    tag="admin",
    roles=ADMIN,
    body=UserCreate,
    response=UserOut,
    status=201,
    errors=(409,),
)
async def create_user(call: Call) -> web.StreamResponse:
    body = call.body_as(UserCreate)
    with _conflicts("email"):
        user_id = await call.store.create_user(
            call.workspace_id, body.name, body.email, body.role, _unique(body.languages) or [], body.capacity
        )
    return json_response(
        UserOut.from_record(await call.store.get_user(call.workspace_id, user_id)), status=201
    )


@api.endpoint(
    "PATCH",
    "/users/{id}",
    summary="Change a user's name, email, role, languages, capacity, signature or availability",
    tag="admin",
    roles=ADMIN,
    body=UserPatch,
    response=UserOut,
    errors=(409,),
    description="A new role applies to the user's tokens at once. The workspace's last active admin "
    "keeps the admin role (409 `last_admin`). A deactivated user is 404. A new availability is "
    "handed to routing (agents set their own with PUT /me/availability).",
)
async def patch_user(call: Call) -> web.StreamResponse:
    body = call.body_as(UserPatch)
    user_id = call.path("id")
    change = UserChange(
        name=body.name,
        email=body.email,
        role=body.role,
        languages=_unique(body.languages),
        capacity=body.capacity,
        signature=body.signature,
    )
    with _conflicts("email"):
        record = await call.store.update_user(call.workspace_id, user_id, change)
    if body.availability is not None and await change_availability(
        call, user_id, body.availability, by=BY_PERSON
    ):
        record = await call.store.get_user(call.workspace_id, user_id)
    return json_response(UserOut.from_record(record))


async def change_availability(
    call: Call,
    user_id: str,
    availability: str,
    *,
    by: str,
    only_from: tuple[str, ...] | None = None,
) -> bool:
    """Set a user's availability; when it changed, publish `user.availability` (routing reacts to it).

    `by`: BY_PERSON (the API's endpoints: never expires) or BY_STREAM (the live stream's presence: a
    lease it renews). With `only_from`, only a user whose availability is one of those changes (see
    the store).
    """
    previous = (await call.store.get_user(call.workspace_id, user_id)).availability
    changed = await call.store.set_availability(
        call.workspace_id, user_id, availability, utcnow(), by=by, only_from=only_from
    )
    if changed:
        data = {"user_id": user_id, "availability": availability, "previous": previous}
        tell_listeners(call.bus, Event("user.availability", call.workspace_id, data))
    return changed


def tell_listeners(bus: Bus, event: Event) -> None:
    """Hand an event to this process's own reactions (bus.listeners: rules, routing, SLA) only.

    Availability changes are not live stream events: clients resuming a stream replay the same events
    as before, and presence already shows who is around.
    """
    for listener in list(bus.listeners):
        try:
            listener(event)
        except Exception:
            log.exception("event listener failed on %s", event.type)


class AvailabilityBody(ApiModel):
    availability: Availability = Field(
        description="`online` (routing gives you conversations), `away` (kept when your live stream closes) "
        "or `offline`"
    )


@api.endpoint(
    "PUT",
    "/me/availability",
    summary="Set the calling user's availability: online, away or offline",
    tag="admin",
    roles=STAFF,
    body=AvailabilityBody,
    response=UserOut,
    description="Routing hears each change (the daemon's `user.availability` event, not a live stream "
    "event) and gives conversations to online agents. The live stream sets an offline user "
    "online when it opens, and offline when the user's last stream closes, unless they set `away`.",
)
async def put_my_availability(call: Call) -> web.StreamResponse:
    body = call.body_as(AvailabilityBody)
    await change_availability(call, call.caller.user_id, body.availability, by=BY_PERSON)
    return json_response(
        UserOut.from_record(await call.store.get_user(call.workspace_id, call.caller.user_id))
    )


@api.endpoint(
    "DELETE",
    "/users/{id}",
    summary="Deactivate a user: its tokens are revoked and its open conversations unassigned",
    tag="admin",
    roles=ADMIN,
    status=204,
    errors=(409,),
    description="The user stays in the record (messages keep their author; `include_deactivated` shows "
    "it) but can no longer sign in, and leaves its teams; it is 404 from then on. An admin cannot "
    "deactivate themself (409 `own_user`), and the workspace keeps at least one active admin (409 "
    "`last_admin`).",
)
async def delete_user(call: Call) -> web.StreamResponse:
    user_id = call.path("id")
    if user_id == call.caller.user_id:
        raise ApiError(
            409, "own_user", "you cannot deactivate your own user: ask another admin to do it", "id"
        )
    with _conflicts("id", last_admin_field=None):
        unassigned = await call.store.deactivate_user(call.workspace_id, user_id, utcnow())
    for conversation_id in unassigned:
        await _conversation_changed(call, conversation_id, "assignee_id")
    return web.Response(status=204)


async def _conversation_changed(call: Call, conversation_id: str, changed: str) -> None:
    data = {"conversation_id": conversation_id, "changed": [changed], "by": call.caller.user_id}
    await publish(call, Event("conversation.updated", call.workspace_id, data, conversation_id))


# --------------------------------------------------------------------------------------------------
# Teams


class TeamOut(OutModel):
    id: str
    name: str
    languages: list[str]
    member_ids: list[str]
    channel_account_ids: list[str] = Field(description="routing: the channel accounts it takes ([] = any)")
    calendar_id: str | None = Field(description="its business-hours calendar (GET /calendars)")
    lead_id: str | None = Field(description="its lead (notified by rules)")
    position: int = Field(description="routing: its order among teams that fit equally well, lowest first")
    created_at: datetime

    @classmethod
    def from_record(cls, record: TeamRecord) -> TeamOut:
        return cls(
            id=record.id,
            name=record.name,
            languages=record.languages,
            member_ids=record.member_ids,
            channel_account_ids=record.channel_account_ids,
            calendar_id=record.calendar_id,
            lead_id=record.lead_id,
            position=record.position,
            created_at=record.created_at,
        )


class TeamPage(OutModel):
    items: list[TeamOut]
    next_cursor: str | None = NEXT_CURSOR


MemberIds = Annotated[
    list[Id], Field(max_length=MAX_MEMBERS, description="ids of active users of this workspace")
]


ChannelAccountIds = Annotated[
    list[Id],
    Field(
        max_length=MAX_MEMBERS,
        description="ids of channel accounts of this workspace whose conversations it takes",
    ),
]
Position = Annotated[
    int,
    Field(ge=-1_000_000, le=1_000_000, description="order among teams that fit equally well, lowest first"),
    BeforeValidator(_integral),
]
OptionalId = Annotated[str, StringConstraints(max_length=64)]


class TeamCreate(ApiModel):
    name: Name
    languages: Languages = Field(default_factory=list)
    member_ids: MemberIds = Field(default_factory=list)
    channel_account_ids: ChannelAccountIds = Field(default_factory=list)
    calendar_id: Id | None = Field(None, description="a calendar of this workspace (GET /calendars)")
    lead_id: Id | None = Field(None, description="an active user of this workspace")
    position: Position = 0


class TeamPatch(ApiModel):
    name: Name | None = _leave_out()
    languages: Languages | None = _leave_out()
    member_ids: MemberIds | None = _leave_out("replaces the members")
    channel_account_ids: ChannelAccountIds | None = _leave_out("replaces the channel accounts")
    calendar_id: OptionalId | None = _leave_out('a calendar of this workspace; "" removes it')
    lead_id: OptionalId | None = _leave_out('an active user of this workspace; "" removes it')
    position: Position | None = _leave_out()

    _checked = field_validator(
        "name", "languages", "member_ids", "channel_account_ids", "calendar_id", "lead_id", "position"
    )(_not_null)


@api.endpoint("GET", "/teams", summary="Teams", tag="admin", roles=ADMIN, query=PageQuery, response=TeamPage)
async def list_teams(call: Call) -> web.StreamResponse:
    query = call.query_as(PageQuery)
    page = await call.store.list_teams(
        call.workspace_id, limit=query.limit, after=parse_time_cursor(query.cursor)
    )
    return json_response(
        TeamPage(items=[TeamOut.from_record(r) for r in page.items], next_cursor=_next(page.next_cursor))
    )


@api.endpoint("GET", "/teams/{id}", summary="One team", tag="admin", roles=ADMIN, response=TeamOut)
async def get_team(call: Call) -> web.StreamResponse:
    return json_response(TeamOut.from_record(await call.store.get_team(call.workspace_id, call.path("id"))))


@api.endpoint(
    "POST",
    "/teams",
    summary="Create a team",
    tag="admin",
    roles=ADMIN,
    body=TeamCreate,
    response=TeamOut,
    status=201,
    errors=(409,),
)
async def create_team(call: Call) -> web.StreamResponse:
    body = call.body_as(TeamCreate)
    with _conflicts("name"):
        record = await call.store.create_team(
            call.workspace_id,
            body.name,
            _unique(body.languages) or [],
            body.member_ids,
            channel_account_ids=body.channel_account_ids,
            calendar_id=body.calendar_id,
            lead_id=body.lead_id,
            position=body.position,
        )
    return json_response(TeamOut.from_record(record), status=201)


@api.endpoint(
    "PATCH",
    "/teams/{id}",
    summary="Rename a team, change its languages, members, channel accounts, calendar, lead or position",
    tag="admin",
    roles=ADMIN,
    body=TeamPatch,
    response=TeamOut,
    errors=(409,),
)
async def patch_team(call: Call) -> web.StreamResponse:
    body = call.body_as(TeamPatch)
    change = TeamChange(
        name=body.name,
        languages=_unique(body.languages),
        member_ids=body.member_ids,
        channel_account_ids=body.channel_account_ids,
        calendar_id=body.calendar_id,
        lead_id=body.lead_id,
        position=body.position,
    )
    with _conflicts("name"):
        record = await call.store.update_team(call.workspace_id, call.path("id"), change)
    return json_response(TeamOut.from_record(record))


@api.endpoint(
    "DELETE",
    "/teams/{id}",
    summary="Delete a team: its members leave it and its conversations lose it",
    tag="admin",
    roles=ADMIN,
    status=204,
)
async def delete_team(call: Call) -> web.StreamResponse:
    cleared = await call.store.delete_team(call.workspace_id, call.path("id"), utcnow())
    for conversation_id in cleared:
        await _conversation_changed(call, conversation_id, "team_id")
    return web.Response(status=204)


# --------------------------------------------------------------------------------------------------
# API tokens


class TokenOut(OutModel):
    id: str
    name: str
    role: Role
    user_id: str | None
    user_name: str | None
    created_at: datetime
    last_used_at: datetime | None = Field(description="recorded at most once a minute")
    revoked_at: datetime | None

    @classmethod
    def fields_of(cls, record: TokenRecord) -> dict[str, Any]:
        return {
            "id": record.id,
            "name": record.name,
            "role": record.role,
            "user_id": record.user_id,
            "user_name": record.user_name,
            "created_at": record.created_at,
            "last_used_at": record.last_used_at,
            "revoked_at": record.revoked_at,
        }

    @classmethod
    def from_record(cls, record: TokenRecord) -> TokenOut:
        return cls(**cls.fields_of(record))


class TokenCreated(TokenOut):
    token: str = Field(description="the bearer token: shown this once, stored only hashed")


class TokenPage(OutModel):
    items: list[TokenOut]
    next_cursor: str | None = NEXT_CURSOR


class TokenQuery(PageQuery):
    include_revoked: bool = Field(False, description="list revoked tokens too")
    user_id: Id | None = Field(None, description="only this user's tokens")


TokenName = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=200), Field(description="a note to know it by")
]


class TokenCreate(ApiModel):
    user_id: Id = Field(description="the active user the token acts as; it gets that user's role")
    name: TokenName = ""


class TokenPatch(ApiModel):
    name: TokenName


@api.endpoint(
    "GET",
    "/tokens",
    summary="API tokens (never the tokens themselves)",
    tag="admin",
    roles=ADMIN,
    query=TokenQuery,
    response=TokenPage,
)
async def list_tokens(call: Call) -> web.StreamResponse:
    query = call.query_as(TokenQuery)
    page = await call.store.list_tokens(
        call.workspace_id,
        include_revoked=query.include_revoked,
        user_id=query.user_id,
        limit=query.limit,
        after=parse_time_cursor(query.cursor),
    )
    return json_response(
        TokenPage(items=[TokenOut.from_record(r) for r in page.items], next_cursor=_next(page.next_cursor))
    )


class OneTokenQuery(ApiModel):
    include_revoked: bool = Field(False, description="answer for a revoked token too (else 404)")


@api.endpoint(
    "GET",
    "/tokens/{id}",
    summary="One API token",
    tag="admin",
    roles=ADMIN,
    query=OneTokenQuery,
    response=TokenOut,
)
async def get_token(call: Call) -> web.StreamResponse:
    query = call.query_as(OneTokenQuery)
    record = await call.store.get_token(
        call.workspace_id, call.path("id"), include_revoked=query.include_revoked
    )
    return json_response(TokenOut.from_record(record))


@api.endpoint(
    "POST",
    "/tokens",
    summary="Create an API token for a user; the token is in the answer, once",
    tag="admin",
    roles=ADMIN,
    body=TokenCreate,
    response=TokenCreated,
    status=201,
)
async def create_token(call: Call) -> web.StreamResponse:
    # aggregator.daemon imports the API, so it is imported when first needed, not with this module.

    body = call.body_as(TokenCreate)
    token = new_token()
    record = await call.store.create_user_token(call.workspace_id, body.user_id, body.name, hash_token(token))
    return json_response(TokenCreated(**TokenOut.fields_of(record), token=token), status=201)


@api.endpoint(
    "PATCH",
    "/tokens/{id}",
    summary="Rename an API token",
    tag="admin",
    roles=ADMIN,
    body=TokenPatch,
    response=TokenOut,
)
async def patch_token(call: Call) -> web.StreamResponse:
    body = call.body_as(TokenPatch)
    record = await call.store.rename_token(call.workspace_id, call.path("id"), body.name)
    return json_response(TokenOut.from_record(record))


@api.endpoint(
    "DELETE",
    "/tokens/{id}",
    summary="Revoke an API token: it is refused from the next request on",
    tag="admin",
    roles=ADMIN,
    status=204,
    description="The token stays listed with `include_revoked`; it is 404 from then on.",
)
async def delete_token(call: Call) -> web.StreamResponse:
    token_id = call.path("id")
    if not await call.store.revoke_token(call.workspace_id, token_id, utcnow()):
        raise not_found("token", token_id)
    return web.Response(status=204)
