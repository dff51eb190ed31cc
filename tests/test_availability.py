"""Agents' availability on a real daemon: set through the API, by the live stream's presence, and heard
by the daemon's own reactions (bus listeners) as `user.availability` events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from aggregator.api.stream import open_streams
from aggregator.daemon import Daemon
from aggregator.model import Event, Role, utcnow
from aggregator.store import Invalid, NotFound
from support.api import ApiClient, Reply, user_with_token
from support.app import daemon_url, wait_until
from support.stream import open_sse, open_ws

pytestmark = pytest.mark.timeout(60)


@dataclass
class Floor:
    daemon: Daemon
    http: aiohttp.ClientSession
    workspace_id: str
    admin: ApiClient
    admin_id: str
    agent: ApiClient
    agent_id: str
    agent_token: str
    seller: ApiClient
    seller_id: str
    seller_token: str
    other_admin: ApiClient
    heard: list[Event] = field(default_factory=list)

    @property
    def base(self) -> str:
        return daemon_url(self.daemon)

    def availability_events(self) -> list[dict[str, Any]]:
        return [
            {**e.data, "workspace_id": e.workspace_id} for e in self.heard if e.type == "user.availability"
        ]

    async def availability(self, user_id: str) -> str:
        return (await self.daemon.store.get_user(self.workspace_id, user_id)).availability


@pytest.fixture
async def floor(daemon: Daemon, http_session: aiohttp.ClientSession) -> AsyncIterator[Floor]:
    assert daemon.bootstrap is not None
    workspace_id = daemon.bootstrap.workspace.id
    base = daemon_url(daemon)
    store = daemon.store
    admin_id, admin = await user_with_token(store, workspace_id, Role.ADMIN)
    agent_id, agent = await user_with_token(store, workspace_id, Role.AGENT)
    seller_id, seller = await user_with_token(store, workspace_id, Role.SELLER)
    other = await store.create_workspace("other shop")
    _, other_admin = await user_with_token(store, other.id, Role.ADMIN)
    result = Floor(
        daemon,
        http_session,
        workspace_id,
        ApiClient(http_session, base, admin),
        admin_id,
        ApiClient(http_session, base, agent),
        agent_id,
        agent,
        ApiClient(http_session, base, seller),
        seller_id,
        seller,
        ApiClient(http_session, base, other_admin),
    )
    # The same listener list the daemon's reaction pipeline (rules, routing, SLA) hangs on.
    daemon.bus.listeners.append(result.heard.append)
    yield result
    daemon.bus.listeners.remove(result.heard.append)


def error_of(reply: Reply, status: int, code: str) -> dict[str, Any]:
    assert reply.status == status, reply.body
    error: dict[str, Any] = reply.body["error"]
    assert error["code"] == code, error
    return error


async def test_users_start_offline(floor: Floor) -> None:
    reply = await floor.admin.get(f"/users/{floor.agent_id}")
    assert reply.status == 200
    assert (reply.body["availability"], reply.body["availability_at"]) == ("offline", None)
    listed = await floor.admin.get("/users")
    assert {u["availability"] for u in listed.body["items"]} == {"offline"}


async def test_an_agent_sets_their_own_availability(floor: Floor) -> None:
    before = utcnow().isoformat()
    reply = await floor.agent.call("PUT", "/me/availability", json_body={"availability": "online"})
    assert reply.status == 200, reply.body
    assert reply.body["id"] == floor.agent_id and reply.body["availability"] == "online"
    assert reply.body["availability_at"] >= before[:19]
    assert floor.availability_events() == [
        {
            "user_id": floor.agent_id,
            "availability": "online",
            "previous": "offline",
            "workspace_id": floor.workspace_id,
        }
    ]

    # The same again changes nothing and tells no one.
    again = await floor.agent.call("PUT", "/me/availability", json_body={"availability": "online"})
    assert again.status == 200 and again.body["availability_at"] == reply.body["availability_at"]
    assert len(floor.availability_events()) == 1

    away = await floor.agent.call("PUT", "/me/availability", json_body={"availability": "away"})
    assert away.body["availability"] == "away"
    assert floor.availability_events()[-1]["previous"] == "online"
    assert await floor.availability(floor.agent_id) == "away"
    # Only the caller's own: the admin is untouched.
    assert await floor.availability(floor.admin_id) == "offline"


@pytest.mark.parametrize("body", [{"availability": "busy"}, {"availability": None}, {}, {"state": "online"}])
async def test_invalid_availability_is_refused(floor: Floor, body: dict[str, Any]) -> None:
    reply = await floor.agent.call("PUT", "/me/availability", json_body=body)
    assert reply.status == 400, reply.body
    assert reply.body["error"]["field"] in ("availability", "state")
    assert floor.availability_events() == []


async def test_sellers_have_no_availability_to_set(floor: Floor) -> None:
    reply = await floor.seller.call("PUT", "/me/availability", json_body={"availability": "online"})
    error_of(reply, 403, "forbidden")
    assert await floor.availability(floor.seller_id) == "offline"


async def test_admins_set_anyones_availability_with_patch(floor: Floor) -> None:
    reply = await floor.admin.patch(f"/users/{floor.agent_id}", {"availability": "online", "capacity": 3})
    assert reply.status == 200, reply.body
    assert (reply.body["availability"], reply.body["capacity"]) == ("online", 3)
    assert reply.body["availability_at"] is not None
    assert [e["availability"] for e in floor.availability_events()] == ["online"]

    error_of(
        await floor.admin.patch(f"/users/{floor.agent_id}", {"availability": None}), 400, "invalid_field"
    )
    error_of(
        await floor.admin.patch(f"/users/{floor.agent_id}", {"availability": "asleep"}), 400, "invalid_field"
    )
    # Agents cannot PATCH users (their own availability goes through PUT /me/availability).
    error_of(await floor.agent.patch(f"/users/{floor.agent_id}", {"availability": "away"}), 403, "forbidden")
    # Another workspace's admin does not find the user.
    error_of(
        await floor.other_admin.patch(f"/users/{floor.agent_id}", {"availability": "away"}), 404, "not_found"
    )
    assert await floor.availability(floor.agent_id) == "online"
    assert len(floor.availability_events()) == 1


async def test_store_set_availability(floor: Floor) -> None:
    store, ws = floor.daemon.store, floor.workspace_id
    now = utcnow()
    assert await store.set_availability(ws, floor.agent_id, "away", now) is True
    assert await store.set_availability(ws, floor.agent_id, "away", now) is False
    assert await store.set_availability(ws, floor.agent_id, "offline", now, only_from=("online",)) is False
    assert (await store.get_user(ws, floor.agent_id)).availability_at == now
    with pytest.raises(Invalid, match="'busy' is not one of online, away, offline"):
        await store.set_availability(ws, floor.agent_id, "busy", now)
    with pytest.raises(NotFound):
        await store.set_availability(ws, "no-such-user", "online", now)


async def closed_streams(floor: Floor, user_id: str) -> None:
    """Wait until the daemon noticed that the user's streams closed (it polls for gone clients)."""

    async def none_open() -> bool:
        return open_streams(floor.daemon.live, floor.workspace_id, user_id) == 0

    await wait_until(none_open, what="the daemon to notice the stream closed")


async def test_the_live_stream_sets_an_offline_agent_online_until_the_last_stream_closes(
    floor: Floor,
) -> None:
    async with open_sse(floor.http, floor.base, floor.agent_token):
        assert await floor.availability(floor.agent_id) == "online"
        assert floor.availability_events() == [
            {
                "user_id": floor.agent_id,
                "availability": "online",
                "previous": "offline",
                "workspace_id": floor.workspace_id,
            }
        ]
        async with open_ws(floor.http, floor.base, floor.agent_token) as ws:
            await ws.live()
            assert open_streams(floor.daemon.live, floor.workspace_id, floor.agent_id) == 2

        async def one_open() -> bool:
            return open_streams(floor.daemon.live, floor.workspace_id, floor.agent_id) == 1

        await wait_until(one_open, what="the websocket to close")
        # One stream is still open: still online, nothing new.
        assert await floor.availability(floor.agent_id) == "online"
        assert len(floor.availability_events()) == 1
    await closed_streams(floor, floor.agent_id)
    assert await floor.availability(floor.agent_id) == "offline"
    assert floor.availability_events()[-1] == {
        "user_id": floor.agent_id,
        "availability": "offline",
        "previous": "online",
        "workspace_id": floor.workspace_id,
    }
    user = await floor.admin.get(f"/users/{floor.agent_id}")
    assert user.body["availability"] == "offline" and user.body["availability_at"] is not None


async def test_away_set_by_hand_outlasts_the_stream(floor: Floor) -> None:
    await floor.agent.call("PUT", "/me/availability", json_body={"availability": "away"})
    async with open_sse(floor.http, floor.base, floor.agent_token):
        assert await floor.availability(floor.agent_id) == "away"  # not made online
    await closed_streams(floor, floor.agent_id)
    assert await floor.availability(floor.agent_id) == "away"  # nor offline
    assert [e["availability"] for e in floor.availability_events()] == ["away"]

    # Set away while the stream is open: closing it keeps the away.
    await floor.agent.call("PUT", "/me/availability", json_body={"availability": "offline"})
    async with open_ws(floor.http, floor.base, floor.agent_token) as ws:
        await ws.live()
        assert await floor.availability(floor.agent_id) == "online"
        await floor.agent.call("PUT", "/me/availability", json_body={"availability": "away"})
    await closed_streams(floor, floor.agent_id)
    assert await floor.availability(floor.agent_id) == "away"
    assert [e["availability"] for e in floor.availability_events()] == ["away", "offline", "online", "away"]


async def test_sellers_streams_leave_availability_alone(floor: Floor) -> None:
    async with open_sse(floor.http, floor.base, floor.seller_token):
        assert open_streams(floor.daemon.live, floor.workspace_id, floor.seller_id) == 0
    assert await floor.availability(floor.seller_id) == "offline"
    assert floor.availability_events() == []
