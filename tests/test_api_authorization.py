"""The authorization matrix: every endpoint x every role x own / other workspace, and no token at all.

The endpoints come from the API's own declarations, so a new endpoint without a case here fails
`test_every_endpoint_has_a_case`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aggregator.api.framework import Endpoint
from aggregator.api.v1 import build_api
from aggregator.daemon import Daemon
from aggregator.hours import BusinessHours
from aggregator.model import InboundAttachment, Role, new_id, utcnow
from support.api import ApiClient, user_with_token
from support.app import SECRET, add_channel, daemon_url, inbound, make_settings, running_daemon, sql

pytestmark = pytest.mark.timeout(90)

ENDPOINTS = {endpoint.operation_id: endpoint for endpoint in build_api().endpoints}


@dataclass
class Side:
    """One workspace with a channel and a client per role."""

    workspace_id: str
    channel_id: str
    clients: dict[Role, ApiClient] = field(default_factory=dict)
    user_ids: dict[Role, str] = field(default_factory=dict)


@dataclass
class World:
    daemon: Daemon
    own: Side
    other: Side
    anonymous: ApiClient

    async def conversation(self, side: Side) -> str:
        result = await self.daemon.ingestor(inbound(side.channel_id, new_id(), sender=new_id()[-8:], name="Cust"))
        return result.conversation_id

    async def contact(self, side: Side) -> str:
        conversation = await self.conversation(side)
        rows = await sql(self.daemon.store, "SELECT contact_id FROM conversations WHERE id = :id", id=conversation)
        return str(rows[0].contact_id)

    async def attachment(self, side: Side) -> str:
        result = await self.daemon.ingestor(
            inbound(
                side.channel_id,
                new_id(),
                sender=new_id()[-8:],
                attachments=(InboundAttachment("a.txt", "text/plain", new_id().encode()),),
            )
        )
        rows = await sql(
            self.daemon.store,
            "SELECT a.id FROM attachments a JOIN messages m ON m.id = a.message_id WHERE m.conversation_id = :c",
            c=result.conversation_id,
        )
        return str(rows[0].id)

    async def raw_message(self, side: Side) -> str:
        result = await self.daemon.ingestor(
            inbound(side.channel_id, new_id(), sender=new_id()[-8:], raw=b"Subject: x\r\n\r\n" + new_id().encode())
        )
        return result.message_id

    async def channel(self, side: Side) -> str:
        channel_id = await add_channel(self.daemon.store, side.workspace_id, {"secret": SECRET})
        assert self.daemon.channels is not None
        await self.daemon.channels.get(channel_id)
        return channel_id

    async def user(self, side: Side) -> str:
        user_id, _ = await user_with_token(self.daemon.store, side.workspace_id, Role.AGENT)
        return user_id

    async def team(self, side: Side) -> str:
        return (await self.daemon.store.create_team(side.workspace_id, f"team {new_id()}", [], [])).id

    async def template(self, side: Side) -> str:
        variants = [{"language": "en", "subject": None, "body": "Hello {{ contact.first_name }}"}]
        return (await self.daemon.store.create_template(side.workspace_id, f"t {new_id()}", variants)).id

    async def calendar(self, side: Side) -> str:
        return (await self.daemon.store.create_calendar(side.workspace_id, f"cal {new_id()}", BusinessHours())).id

    async def rule(self, side: Side) -> str:
        body = {"name": f"rule {new_id()}", "event": "conversation.created", "actions": [{"type": "resolve"}]}
        return (await self.daemon.store.create_rule(side.workspace_id, body, utcnow())).id

    async def sla_policy(self, side: Side) -> str:
        values = {"name": f"sla {new_id()}", "first_response_seconds": 3600, "conditions": {}}
        return (await self.daemon.store.create_sla_policy(side.workspace_id, values)).id

    async def token(self, side: Side) -> str:
        user_id = await self.user(side)
        rows = await sql(self.daemon.store, "SELECT id FROM api_tokens WHERE user_id = :u", u=user_id)
        return str(rows[0].id)


@dataclass(frozen=True)
class Request:
    path_ids: dict[str, str] = field(default_factory=dict)
    body: Any = None


Make = Callable[[World, Side], Awaitable[Request]]


def on(record: str, body: Any = None) -> Make:
    """A fresh record of that kind in the side's workspace as the {id} of the path."""

    async def make(world: World, side: Side) -> Request:
        record_id = await getattr(world, record)(side)
        return Request({"id": record_id}, body() if callable(body) else body)

    return make


def plain(body: Any = None) -> Make:
    async def make(world: World, side: Side) -> Request:
        return Request({}, body(world, side) if callable(body) else body)

    return make


def unique(prefix: str) -> Callable[[], dict[str, Any]]:
    return lambda: {"name": f"{prefix} {new_id()}"}


async def _merge(world: World, side: Side) -> Request:
    return Request({"id": await world.contact(side)}, {"other_id": await world.contact(side)})


async def _render(world: World, side: Side) -> Request:
    return Request({"id": await world.template(side)}, {"conversation_id": await world.conversation(side)})


async def _new_token(world: World, side: Side) -> Request:
    return Request({}, {"user_id": await world.user(side), "name": "laptop"})


ANYONE = None
ALL = frozenset(Role)
STAFF = frozenset({Role.ADMIN, Role.AGENT})
ADMIN = frozenset({Role.ADMIN})

# Who may do what, as the product defines it (not read from the declarations, so that a wrong
# declaration fails here): agents work conversations and contacts, sellers read them, admins do all.
ROLES: dict[str, frozenset[Role] | None] = {
    "get_openapi": ANYONE,
    "get_stream": ALL,
    "mark_read": ALL,
    "post_message": STAFF,
    "patch_conversation": STAFF,
    "post_presence": STAFF,
    "patch_contact": STAFF,
    "merge_contact": STAFF,
    **{name: ALL for name in ("list_conversations", "get_conversation", "list_messages", "get_presence",
                              "get_attachment", "get_raw_message", "list_contacts", "get_contact")},
    **{
        f"{verb}_{noun}": ADMIN
        for noun in ("channel", "user", "team", "token")
        for verb in ("get", "create", "patch", "delete")
    },
    **{f"list_{noun}s": ADMIN for noun in ("channel", "user", "team", "token")},
    "check_channel": ADMIN,
    **{name: STAFF for name in ("list_templates", "template_variables", "get_template", "render_template")},
    **{f"{verb}_template": ADMIN for verb in ("create", "patch", "delete")},
    "get_workspace": STAFF,
    "patch_workspace": ADMIN,
    "list_rules": ADMIN,
    **{f"{verb}_rule": ADMIN for verb in ("get", "create", "patch", "delete")},
    **{name: STAFF for name in ("list_calendars", "get_calendar")},
    **{f"{verb}_calendar": ADMIN for verb in ("create", "patch", "delete")},
    **{name: STAFF for name in ("list_sla_policies", "get_sla_policy")},
    **{f"{verb}_sla_policy": ADMIN for verb in ("create", "patch", "delete")},
    "put_my_availability": STAFF,
}

CASES: dict[str, Make] = {
    "get_openapi": plain(),
    "list_conversations": plain(),
    "get_conversation": on("conversation"),
    "patch_conversation": on("conversation", {"priority": "high"}),
    "list_messages": on("conversation"),
    "post_message": on("conversation", {"text": "hello"}),
    "mark_read": on("conversation"),
    "get_presence": on("conversation"),
    "post_presence": on("conversation", {"state": "viewing"}),
    "get_attachment": on("attachment"),
    "get_raw_message": on("raw_message"),
    "list_contacts": plain(),
    "get_contact": on("contact"),
    "patch_contact": on("contact", {"name": "Renamed"}),
    "merge_contact": _merge,
    "list_channels": plain(),
    "get_channel": on("channel"),
    "create_channel": plain(lambda w, s: {"kind": "api", "name": f"shop {new_id()}", "config": {"secret": SECRET}}),
    "patch_channel": on("channel", unique("shop")),
    "delete_channel": on("channel"),
    "check_channel": on("channel"),
    "list_users": plain(),
    "get_user": on("user"),
    "create_user": plain(lambda w, s: {"name": "New", "email": f"{new_id()}@example.test", "role": "agent"}),
    "patch_user": on("user", {"name": "Renamed"}),
    "delete_user": on("user"),
    "list_teams": plain(),
    "get_team": on("team"),
    "create_team": plain(lambda w, s: {"name": f"team {new_id()}"}),
    "patch_team": on("team", unique("team")),
    "delete_team": on("team"),
    "list_tokens": plain(),
    "get_token": on("token"),
    "create_token": _new_token,
    "patch_token": on("token", {"name": "renamed"}),
    "delete_token": on("token"),
    "get_stream": plain(),
    "list_templates": plain(),
    "template_variables": plain(),
    "get_template": on("template"),
    "create_template": plain(
        lambda w, s: {"name": f"t {new_id()}", "variants": [{"language": "en", "body": "Hi {{ contact.name }}"}]}
    ),
    "patch_template": on("template", {"category": "orders"}),
    "delete_template": on("template"),
    "render_template": _render,
    "get_workspace": plain(),
    "patch_workspace": plain({"timezone": "Europe/Berlin"}),
    "list_rules": plain(),
    "get_rule": on("rule"),
    "create_rule": plain(
        lambda w, s: {"name": f"rule {new_id()}", "event": "conversation.created", "actions": [{"type": "resolve"}]}
    ),
    "patch_rule": on("rule", {"enabled": False}),
    "delete_rule": on("rule"),
    "list_calendars": plain(),
    "get_calendar": on("calendar"),
    "create_calendar": plain(lambda w, s: {"name": f"cal {new_id()}", "hours": {"timezone": "Europe/Budapest"}}),
    "patch_calendar": on("calendar", unique("cal")),
    "delete_calendar": on("calendar"),
    "list_sla_policies": plain(),
    "get_sla_policy": on("sla_policy"),
    "create_sla_policy": plain(lambda w, s: {"name": f"sla {new_id()}", "first_response_minutes": 60}),
    "patch_sla_policy": on("sla_policy", {"enabled": False}),
    "delete_sla_policy": on("sla_policy"),
    "put_my_availability": plain({"availability": "away"}),
}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with running_daemon(make_settings(tmp_path)) as daemon, aiohttp.ClientSession() as http:
        assert daemon.bootstrap is not None and daemon.channels is not None
        base = daemon_url(daemon)
        sides = []
        for workspace_id in (daemon.bootstrap.workspace.id, (await daemon.store.create_workspace("other")).id):
            channel_id = await add_channel(daemon.store, workspace_id, {"secret": SECRET})
            side = Side(workspace_id, channel_id)
            for role in Role:
                user_id, token = await user_with_token(daemon.store, workspace_id, role)
                side.clients[role] = ApiClient(http, base, token)
                side.user_ids[role] = user_id
            sides.append(side)
        yield World(daemon, sides[0], sides[1], ApiClient(http, base, None))


async def _status(client: ApiClient, endpoint: Endpoint, request: Request) -> int:
    path = endpoint.path
    for name, value in request.path_ids.items():
        path = path.replace("{" + name + "}", value)
    if endpoint.operation_id == "get_stream":
        # The stream never ends: the status line is the answer.
        headers = {} if client.token is None else {"Authorization": f"Bearer {client.token}"}
        async with client.http.get(f"{client.base_url}/api/v1{path}", headers=headers) as response:
            return response.status
    reply = await client.call(endpoint.method, path, json_body=request.body)
    return reply.status


def test_every_endpoint_has_a_case_and_the_roles_the_product_gives_it() -> None:
    assert sorted(ENDPOINTS) == sorted(CASES) == sorted(ROLES)
    assert {name: e.roles for name, e in ENDPOINTS.items()} == ROLES


@pytest.mark.parametrize("operation_id", sorted(CASES))
async def test_endpoint_by_role_and_workspace(world: World, operation_id: str) -> None:
    endpoint = ENDPOINTS[operation_id]
    make = CASES[operation_id]
    seen: dict[str, int] = {}
    expected: dict[str, int] = {}
    roles = ROLES[operation_id]
    for role in Role:
        allowed = roles is None or role in roles
        seen[f"{role.value}/own"] = await _status(world.own.clients[role], endpoint, await make(world, world.own))
        expected[f"{role.value}/own"] = endpoint.status if allowed else 403
        if endpoint.path_params:
            # A record of another workspace is 404 exactly as a missing one; the role check comes first.
            seen[f"{role.value}/other"] = await _status(
                world.own.clients[role], endpoint, await make(world, world.other)
            )
            expected[f"{role.value}/other"] = 404 if allowed else 403
    seen["no token"] = await _status(world.anonymous, endpoint, await make(world, world.own))
    expected["no token"] = endpoint.status if roles is None else 401
    assert seen == expected


async def test_a_forbidden_action_is_403_whatever_its_body(world: World) -> None:
    conversation = await world.conversation(world.own)
    seller = world.own.clients[Role.SELLER]
    agent = world.own.clients[Role.AGENT]
    for body in (None, {"bogus": 1}, ["not", "an", "object"], {"text": ""}):
        reply = await seller.call("POST", f"/conversations/{conversation}/messages", json_body=body)
        assert reply.status == 403, body
    for body in (None, {"kind": "nope"}, {"name": ""}):
        assert (await agent.call("POST", "/channels", json_body=body)).status == 403
        assert (await agent.call("POST", "/users", json_body=body)).status == 403
    await asyncio.sleep(0)
