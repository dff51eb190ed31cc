"""Agents' availability on a real daemon: set through the API, by the live stream's presence (a lease
that runs out when the process serving the stream dies), and heard by the daemon's own reactions (bus
listeners) as `user.availability` events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from aggregator.api.stream import open_streams, presence_lease
from aggregator.daemon import Daemon
from aggregator.model import Event, Role, utcnow
from aggregator.routing import PRESENCE_LEASE
from aggregator.store import Invalid, NotFound
from aggregator.store.admin import BY_PERSON, BY_STREAM
from support.api import ApiClient, Reply, user_with_token
from support.app import daemon_url, sql_write, wait_until
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
    assert await store.set_availability(ws, floor.agent_id, "away", now, by=BY_PERSON) is True
    assert await store.set_availability(ws, floor.agent_id, "away", now, by=BY_PERSON) is False
    assert (
        await store.set_availability(ws, floor.agent_id, "offline", now, by=BY_STREAM, only_from=("online",))
        is False
    )
    user = await store.get_user(ws, floor.agent_id)
    assert (user.availability_at, user.availability_by) == (now, BY_PERSON)
    with pytest.raises(Invalid, match="'busy' is not one of online, away, offline"):
        await store.set_availability(ws, floor.agent_id, "busy", now, by=BY_PERSON)
    with pytest.raises(Invalid, match="'robot' is not one of stream, person"):
        await store.set_availability(ws, floor.agent_id, "online", now, by="robot")
    with pytest.raises(NotFound):
        await store.set_availability(ws, "no-such-user", "online", now, by=BY_PERSON)


async def test_store_presence_lease(floor: Floor) -> None:
    store, ws = floor.daemon.store, floor.workspace_id
    old = utcnow() - timedelta(hours=1)
    assert await store.set_availability(ws, floor.agent_id, "online", old, by=BY_STREAM)
    assert await store.set_availability(ws, floor.admin_id, "online", old, by=BY_PERSON)
    # Renewing touches the stream's online only.
    renewed = old + timedelta(minutes=30)
    assert await store.renew_presence(ws, floor.agent_id, renewed) == "renewed"
    assert await store.renew_presence(ws, floor.admin_id, renewed) is None
    assert await store.renew_presence(ws, floor.seller_id, renewed) is None  # offline, not by the stream
    assert (await store.get_user(ws, floor.agent_id)).availability_at == renewed
    assert (await store.get_user(ws, floor.admin_id)).availability_at == old

    assert await store.expire_presence(renewed) == []  # not renewed before `renewed`: kept
    now = utcnow()
    assert await store.expire_presence(renewed + timedelta(seconds=1), now=now) == [(ws, floor.agent_id)]
    agent = await store.get_user(ws, floor.agent_id)
    assert (agent.availability, agent.availability_at, agent.availability_by) == ("offline", now, BY_STREAM)
    assert await store.expire_presence(utcnow() + timedelta(days=1)) == []  # the person's never expires
    assert await floor.availability(floor.admin_id) == "online"
    # A stream still open brings the expired one back; a person's offline it leaves alone.
    assert await store.renew_presence(ws, floor.agent_id, now) == "resumed"
    assert await floor.availability(floor.agent_id) == "online"
    assert await store.set_availability(ws, floor.agent_id, "offline", now, by=BY_PERSON)
    assert await store.renew_presence(ws, floor.agent_id, now) is None
    assert await floor.availability(floor.agent_id) == "offline"

    # A person confirming the online the stream set takes it over: it no longer expires.
    assert await store.set_availability(ws, floor.agent_id, "online", old, by=BY_STREAM)
    assert await store.set_availability(ws, floor.agent_id, "online", now, by=BY_PERSON) is False
    agent = await store.get_user(ws, floor.agent_id)
    assert (agent.availability_at, agent.availability_by) == (old, BY_PERSON)
    assert await store.expire_presence(utcnow()) == []


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


async def age_presence(floor: Floor, user_id: str, seconds: float) -> None:
    """Date the user's availability back, as a killed process leaves it: never renewed again."""
    await sql_write(
        floor.daemon.store,
        "UPDATE users SET availability_at = :at WHERE id = :id",
        at=(utcnow() - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        id=user_id,
    )


async def test_a_dead_processs_stream_online_expires_at_the_sweep(floor: Floor) -> None:
    # What a killed process leaves: the agent online by its stream, the lease renewed no more.
    store, ws = floor.daemon.store, floor.workspace_id
    assert await store.set_availability(ws, floor.agent_id, "online", utcnow(), by=BY_STREAM)
    await age_presence(floor, floor.agent_id, PRESENCE_LEASE - 10)
    await floor.daemon.routing.sweep()
    assert await floor.availability(floor.agent_id) == "online"  # the lease has not run out yet
    assert floor.availability_events() == []

    await age_presence(floor, floor.agent_id, PRESENCE_LEASE + 1)
    await floor.daemon.routing.sweep()
    assert await floor.availability(floor.agent_id) == "offline"
    assert floor.availability_events() == [
        {
            "user_id": floor.agent_id,
            "availability": "offline",
            "previous": "online",
            "workspace_id": floor.workspace_id,
        }
    ]
    await floor.daemon.routing.sweep()
    assert len(floor.availability_events()) == 1  # once


async def test_an_online_set_by_hand_never_expires(floor: Floor) -> None:
    await floor.agent.call("PUT", "/me/availability", json_body={"availability": "online"})
    await floor.admin.patch(f"/users/{floor.admin_id}", {"availability": "online"})
    for user_id in (floor.agent_id, floor.admin_id):
        assert (await floor.daemon.store.get_user(floor.workspace_id, user_id)).availability_by == BY_PERSON
        await age_presence(floor, user_id, 30 * 24 * 3600)
    floor.heard.clear()
    await floor.daemon.routing.sweep()
    assert await floor.availability(floor.agent_id) == "online"
    assert await floor.availability(floor.admin_id) == "online"
    assert floor.availability_events() == []


async def test_an_open_stream_keeps_its_lease(floor: Floor) -> None:
    floor.daemon.live.presence_refresh = 0.05
    floor.daemon.routing.presence_lease = 0.5
    async with open_ws(floor.http, floor.base, floor.agent_token) as ws:
        await ws.live()
        # A second stream of the same user shares the one renewer.
        async with open_sse(floor.http, floor.base, floor.agent_token):
            lease = presence_lease(floor.daemon.live, floor.workspace_id, floor.agent_id)
            assert lease is not None
            opened = (await floor.daemon.store.get_user(floor.workspace_id, floor.agent_id)).availability_at
            assert opened is not None

            async def renewed_twice() -> bool:
                return lease.renewals >= 2

            await wait_until(renewed_twice, what="the lease to be renewed")
            renewed = (await floor.daemon.store.get_user(floor.workspace_id, floor.agent_id)).availability_at
            assert renewed is not None and renewed > opened
            # Longer than the lease since the stream opened: still online, it was renewed.
            await asyncio.sleep(0.7)
            await floor.daemon.routing.sweep()
            assert await floor.availability(floor.agent_id) == "online"
        assert presence_lease(floor.daemon.live, floor.workspace_id, floor.agent_id) is lease

        # The renewer stops (as in a process that froze): the next sweep after the lease ends it.
        lease.stop()
        await asyncio.sleep(0.7)
        await floor.daemon.routing.sweep()
        assert await floor.availability(floor.agent_id) == "offline"
    await closed_streams(floor, floor.agent_id)
    await asyncio.sleep(0)
    assert lease.task.done()
    assert presence_lease(floor.daemon.live, floor.workspace_id, floor.agent_id) is None
    assert [e["availability"] for e in floor.availability_events()] == ["online", "offline"]


async def test_an_open_stream_brings_back_a_lapsed_lease_but_not_a_persons_offline(floor: Floor) -> None:
    floor.daemon.live.presence_refresh = 0.05
    store = floor.daemon.store
    async with open_sse(floor.http, floor.base, floor.agent_token):
        assert await floor.availability(floor.agent_id) == "online"
        # The lease lapsed (say the database was out of reach for minutes): the sweep set them
        # offline, or the last stream in another process closed. The stream open here is still
        # there: its renewer makes them online again.
        await store.set_availability(
            floor.workspace_id, floor.agent_id, "offline", utcnow(), by=BY_STREAM
        )

        async def online() -> bool:
            return await floor.availability(floor.agent_id) == "online"

        await wait_until(online, what="the renewer to make the user online again")
        assert [e["availability"] for e in floor.availability_events()][-1] == "online"
        # A person sets them offline: the open stream does not override it.
        reply = await floor.agent.call("PUT", "/me/availability", json_body={"availability": "offline"})
        assert reply.status == 200
        lease = presence_lease(floor.daemon.live, floor.workspace_id, floor.agent_id)
        assert lease is not None
        renewals = lease.renewals
        await asyncio.sleep(0.3)
        assert await floor.availability(floor.agent_id) == "offline"
        assert lease.renewals == renewals
    await closed_streams(floor, floor.agent_id)


async def test_closing_the_last_stream_stops_its_renewer(floor: Floor) -> None:
    floor.daemon.live.presence_refresh = 0.05
    async with open_sse(floor.http, floor.base, floor.agent_token):
        lease = presence_lease(floor.daemon.live, floor.workspace_id, floor.agent_id)
        assert lease is not None
    await closed_streams(floor, floor.agent_id)

    async def ended() -> bool:
        return lease.task.done()

    await wait_until(ended, what="the renewer to end")
    assert not lease.task.cancelled() and lease.task.exception() is None
    assert presence_lease(floor.daemon.live, floor.workspace_id, floor.agent_id) is None
    assert await floor.availability(floor.agent_id) == "offline"


async def test_a_store_error_does_not_break_the_stream(
    floor: Floor, caplog: pytest.LogCaptureFixture
) -> None:
    floor.daemon.live.presence_refresh = 0.05
    store = floor.daemon.store
    async with open_ws(floor.http, floor.base, floor.agent_token) as ws:
        await ws.live()
        lease = presence_lease(floor.daemon.live, floor.workspace_id, floor.agent_id)
        assert lease is not None
        # Every renewal fails in SQL for a while.
        await sql_write(
            store,
            "CREATE TRIGGER no_renewal BEFORE UPDATE OF availability_at ON users "
            "BEGIN SELECT RAISE(ABORT, 'no renewal'); END",
        )
        try:

            async def warned() -> bool:
                return any("presence lease" in r.getMessage() for r in caplog.records)

            await wait_until(warned, what="the renewal to fail")
            # The socket still answers.
            await ws.socket.send_str("not json")
            assert (await ws.until("error"))["error"]["code"] == "invalid_json"
        finally:
            await sql_write(store, "DROP TRIGGER no_renewal")
        assert not lease.task.done()
        before = lease.renewals

        async def renewed() -> bool:
            return lease.renewals > before

        await wait_until(renewed, what="the renewals to resume")
