"""The live stream on real daemons: SSE and WebSocket, workspaces kept apart, resume, presence, delivery
status, snooze wake-ups, slow clients, shutdown, and several daemons sharing one Redis."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from aggregator.daemon import Daemon
from aggregator.model import Event, Role, utcnow
from fakes.callback import CallbackServer
from support.api import ApiClient, user_with_token
from support.app import (
    SECRET,
    add_channel,
    daemon_url,
    inbound,
    make_settings,
    running_daemon,
    wait_until,
)
from support.redis_server import RedisServer
from support.stream import open_sse, open_ws

pytestmark = pytest.mark.timeout(60)


# --- a daemon with two workspaces -------------------------------------------------------------------


@dataclass
class Site:
    daemon: Daemon
    http: aiohttp.ClientSession
    channel_id: str
    agent_id: str
    agent_token: str
    seller_token: str
    other_channel_id: str
    other_token: str  # an agent of another workspace

    @property
    def base(self) -> str:
        return daemon_url(self.daemon)

    @property
    def workspace_id(self) -> str:
        assert self.daemon.bootstrap is not None
        return self.daemon.bootstrap.workspace.id

    @property
    def agent(self) -> ApiClient:
        return ApiClient(self.http, self.base, self.agent_token)

    async def customer_writes(
        self, external_id: str, *, sender: str = "c1", other: bool = False
    ) -> tuple[str, str]:
        """(conversation id, message id) of a message ingested into this (or the other) workspace."""
        result = await self.daemon.ingestor(
            inbound(self.other_channel_id if other else self.channel_id, external_id, sender=sender)
        )
        return result.conversation_id, result.message_id


async def make_site(daemon: Daemon, http: aiohttp.ClientSession, channel_values: dict[str, Any]) -> Site:
    assert daemon.bootstrap is not None
    ws = daemon.bootstrap.workspace.id
    channel_id = await add_channel(daemon.store, ws, channel_values)
    other = await daemon.store.create_workspace(f"other shop {channel_id[-6:]}")
    other_channel_id = await add_channel(daemon.store, other.id, {"secret": SECRET})
    agent_id, agent_token = await user_with_token(daemon.store, ws, Role.AGENT)
    _, seller_token = await user_with_token(daemon.store, ws, Role.SELLER)
    _, other_token = await user_with_token(daemon.store, other.id, Role.AGENT)
    return Site(daemon, http, channel_id, agent_id, agent_token, seller_token, other_channel_id, other_token)


@pytest.fixture
async def site(tmp_path: Path, callback_server: CallbackServer) -> AsyncIterator[Site]:
    async with running_daemon(make_settings(tmp_path)) as daemon, aiohttp.ClientSession() as http:
        yield await make_site(daemon, http, {"secret": SECRET, "callback_url": callback_server.url})


@pytest.fixture(params=["inprocess", "redis"])
def redis_url(request: pytest.FixtureRequest) -> str | None:
    """None for the in-process bus, else the URL of a fresh redis-server."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    return None


@pytest.fixture
async def either_site(redis_url: str | None, tmp_path: Path) -> AsyncIterator[Site]:
    """A site on the in-process bus, or on a real Redis."""
    settings = make_settings(tmp_path, redis_url=redis_url)
    async with running_daemon(settings) as daemon, aiohttp.ClientSession() as http:
        yield await make_site(daemon, http, {"secret": SECRET})


# --- delivery, workspaces, authentication -----------------------------------------------------------


async def test_events_reach_sse_and_websocket_of_their_workspace_only(site: Site) -> None:
    async with (
        open_sse(site.http, site.base, site.agent_token) as sse,
        open_ws(site.http, site.base, site.agent_token) as ws,
        open_sse(site.http, site.base, site.other_token) as other,
    ):
        assert await ws.live() == []
        conversation_id, message_id = await site.customer_writes("m1")

        created = await sse.next()
        assert (created.event, created.data) == (
            "conversation.created",
            {"type": "conversation.created", "id": created.id, "conversation_id": conversation_id},
        )
        message = await sse.next()
        assert message.event == "message.created"
        assert message.id is not None and message.id != created.id
        assert message.data == {
            "type": "message.created",
            "id": message.id,
            "conversation_id": conversation_id,
            "message_id": message_id,
            "direction": "in",
        }
        assert await ws.next() == created.data
        assert await ws.next() == message.data

        other_conversation, _ = await site.customer_writes("o1", other=True)
        assert (await other.next()).data["conversation_id"] == other_conversation
        assert (await other.next()).data["type"] == "message.created"
        # The other workspace's events went to its client only: this one's next event is its own.
        assert (await site.agent.post(f"/conversations/{conversation_id}/read")).status == 204
        read = await sse.next()
        assert read.data == {
            "type": "conversation.read",
            "id": read.id,
            "conversation_id": conversation_id,
            "user_id": site.agent_id,
        }
        assert (await ws.next())["type"] == "conversation.read"
        await other.nothing_more()


async def test_access_token_query_parameter_authenticates_and_bad_tokens_are_401(site: Site) -> None:
    async with open_sse(site.http, site.base, site.seller_token, query_token=True) as sse:
        conversation_id, _ = await site.customer_writes("m1")
        assert (await sse.next()).data["conversation_id"] == conversation_id

    url = f"{site.base}/api/v1/stream"
    for params, headers in [
        ({}, {}),
        ({"access_token": "agg_wrong"}, {}),
        ({}, {"Authorization": "Bearer agg_wrong"}),
    ]:
        async with site.http.get(url, params=params, headers=headers) as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] in ("token_missing", "token_invalid")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await site.http.ws_connect(url, params={"access_token": "agg_wrong"})
    assert refused.value.status == 401
    async with site.http.get(url, params={"access_token": site.agent_token, "bogus": "1"}) as response:
        assert response.status == 400


# --- resume -----------------------------------------------------------------------------------------


async def test_last_event_id_resumes_without_loss_or_duplicates(site: Site) -> None:
    async with open_sse(site.http, site.base, site.agent_token) as sse:
        conversation_id, _ = await site.customer_writes("m1")
        seen = [await sse.next(), await sse.next()]
    last_id = seen[-1].id
    assert last_id is not None
    # While disconnected: a second message in the conversation, a note and a new conversation.
    await site.customer_writes("m2")
    assert (
        await site.agent.post(f"/conversations/{conversation_id}/messages", {"text": "n", "private": True})
    ).status == 202
    await site.customer_writes("m3", sender="c2")
    missed = ["message.created", "message.created", "conversation.created", "message.created"]

    async with open_sse(
        site.http, site.base, site.agent_token, last_event_id=last_id, wait_ready=False
    ) as sse:
        replay = await sse.live()
        assert [e.data["type"] for e in replay] == missed
        assert all(e.id == e.data["id"] for e in replay)
        assert len({e.id for e in replay} | {last_id}) == 5
        live_conversation, _ = await site.customer_writes("m4", sender="c3")
        assert (await sse.next()).data == {
            "type": "conversation.created",
            "id": (sse.seen[-1].id),
            "conversation_id": live_conversation,
        }
        assert (await sse.next()).data["type"] == "message.created"
        await sse.nothing_more()
    # The query parameter does the same, for WebSocket clients too; resuming from the newest is empty.
    async with open_ws(site.http, site.base, site.agent_token, last_event_id=replay[0].id) as ws:
        assert [e["id"] for e in await ws.live()] == [e.id for e in replay[1:]] + [
            e.id for e in sse.seen[-2:]
        ]
    newest = sse.seen[-1].id
    assert newest is not None
    async with open_sse(
        site.http, site.base, site.agent_token, last_event_id=newest, query_last_id=True, wait_ready=False
    ) as sse:
        assert await sse.live() == []


async def test_unknown_last_event_id_gets_resync_first(site: Site) -> None:
    await site.customer_writes("m1")
    for last_id in ("0" * 32, "x" * 300):
        async with open_sse(
            site.http, site.base, site.agent_token, last_event_id=last_id, wait_ready=False
        ) as sse:
            before = await sse.live()
            assert [(e.event, e.id, e.data) for e in before] == [("resync", None, {"type": "resync"})]
    async with open_ws(site.http, site.base, site.agent_token, last_event_id="unknown") as ws:
        assert await ws.live() == [{"type": "resync"}]
    # Another workspace's event id is unknown here too.
    async with open_sse(site.http, site.base, site.other_token) as other:
        await site.customer_writes("o1", other=True)
        foreign = (await other.next()).id
    assert foreign is not None
    async with open_sse(
        site.http, site.base, site.agent_token, last_event_id=foreign, wait_ready=False
    ) as sse:
        assert [e.data["type"] for e in await sse.live()] == ["resync"]


async def test_resume_while_events_keep_coming_loses_and_repeats_nothing(either_site: Site) -> None:
    site = either_site
    bus = site.daemon.bus
    ws_id = site.workspace_id
    first = Event("test.tick", ws_id, {"n": 0})
    await bus.publish(first)
    published = [first]

    async def publish_more(count: int) -> None:
        for n in range(1, count + 1):
            event = Event("test.tick", ws_id, {"n": n})
            await bus.publish(event)
            published.append(event)
            await asyncio.sleep(0.001)

    publisher = asyncio.create_task(publish_more(300))
    received: list[str] = []
    async with open_sse(
        site.http, site.base, site.agent_token, last_event_id=first.id, wait_ready=False
    ) as sse:
        while len(received) < 300:
            event = await sse.next()
            if event.data["type"] == "test.tick":
                assert event.id is not None
                received.append(event.id)
            else:
                assert event.data["type"] == "ready"
    await publisher
    assert received == [e.id for e in published[1:]]


async def test_events_both_replayed_and_live_are_sent_once(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = site.daemon.bus
    first = Event("test.tick", site.workspace_id, {"n": 0})
    await bus.publish(first)
    during = [Event("test.tick", site.workspace_id, {"n": n}) for n in range(1, 6)]
    read_log = bus.recent_events

    async def published_meanwhile(workspace_id: str, after_id: str) -> list[Event] | None:
        # Published after the stream subscribed and before it read the log: live and replayed.
        await bus.publish_many(during)
        return await read_log(workspace_id, after_id)

    monkeypatch.setattr(bus, "recent_events", published_meanwhile)
    async with open_sse(
        site.http, site.base, site.agent_token, last_event_id=first.id, wait_ready=False
    ) as sse:
        assert [e.id for e in await sse.live()] == [e.id for e in during]
        last = Event("test.tick", site.workspace_id, {"n": 6})
        await bus.publish(last)
        assert (await sse.next()).id == last.id, "the live copies of the replayed events were dropped"


# --- keep-alive, subscriptions, slow clients, shutdown ---------------------------------------------


async def test_keep_alive_pings_on_sse_and_websocket(site: Site) -> None:
    site.daemon.live.ping_interval = 0.2
    async with open_sse(site.http, site.base, site.agent_token) as sse:
        await sse.nothing_more(0.7)
        assert sse.pings >= 2
    async with open_ws(site.http, site.base, site.agent_token, autoping=False) as ws:
        assert await ws.live() == []
        message = await ws.socket.receive(timeout=2)
        assert message.type is aiohttp.WSMsgType.PING
        await ws.socket.pong(message.data)


async def test_one_subscription_per_workspace_closed_with_its_last_client(site: Site) -> None:
    hub = site.daemon.live
    async with AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(open_sse(site.http, site.base, site.agent_token))
            for _ in range(3)
        ]
        await stack.enter_async_context(open_sse(site.http, site.base, site.other_token))
        assert hub.subscriptions == 2
        assert len(hub.clients(site.workspace_id)) == 3
        conversation_id, _ = await site.customer_writes("m1")
        for sse in streams:
            assert (await sse.next()).data["conversation_id"] == conversation_id
    await wait_until(lambda: _is(hub.subscriptions, 0), within=5, what="subscriptions closed")


async def _is(value: int, expected: int) -> bool:
    return value == expected


async def test_slow_client_is_resynced_and_does_not_stall_others(site: Site) -> None:
    hub = site.daemon.live
    hub.client_buffer = 20
    assert site.daemon.port is not None
    # A client that stops reading: a tiny receive buffer, and it never reads until the end.
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(slow, ("127.0.0.1", site.daemon.port))
    reader, writer = await asyncio.open_connection(sock=slow)
    try:
        writer.write(
            f"GET /api/v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {site.agent_token}\r\n\r\n".encode()
        )
        await writer.drain()
        async with open_sse(site.http, site.base, site.agent_token) as fast:
            await wait_until(lambda: _is(len(hub.clients(site.workspace_id)), 2), what="both clients")
            events = [Event("test.bulk", site.workspace_id, {"n": n, "pad": "x" * 16000}) for n in range(400)]
            started = loop.time()
            for event in events:
                await site.daemon.bus.publish(event)
                # The fast client keeps up, a little behind, as a live browser would.
                while len(fast.seen) < event.data["n"] - 10:
                    await fast.next()
            while len(fast.seen) < 400:
                await fast.next()
            assert [e.data.get("n") for e in fast.seen] == list(range(400)), "every event, in order"
            assert loop.time() - started < 20
            (slow_client,) = [c for c in hub.clients(site.workspace_id) if c.overflows]
            assert slow_client.buffered <= 20
        # Once the slow client reads, it is told to resync.
        received = b""
        async with asyncio.timeout(10):
            while b"event: resync" not in received:
                chunk = await reader.read(1 << 20)
                assert chunk, "the slow stream ended without a resync"
                received += chunk
    finally:
        writer.close()


async def test_shutdown_ends_open_streams_promptly(tmp_path: Path) -> None:
    daemon = Daemon(make_settings(tmp_path))
    await daemon.start()
    stopped = False
    try:
        assert daemon.bootstrap is not None
        _, token = await user_with_token(daemon.store, daemon.bootstrap.workspace.id, Role.AGENT)
        async with (
            aiohttp.ClientSession() as http,
            open_sse(http, daemon_url(daemon), token) as sse,
            open_ws(http, daemon_url(daemon), token) as ws,
        ):
            assert await ws.live() == []
            loop = asyncio.get_running_loop()
            started = loop.time()
            await daemon.stop()
            stopped = True
            assert loop.time() - started < 5, "the drain did not wait for the streams"
            with pytest.raises(EOFError):
                await sse.next(2)
            message = await ws.socket.receive(timeout=2)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    finally:
        if not stopped:
            await daemon.stop()


# --- presence ---------------------------------------------------------------------------------------


async def test_presence_is_published_listed_and_expires(site: Site) -> None:
    site.daemon.live.presence_ttl = 0.6
    conversation_id, _ = await site.customer_writes("m1")
    path = f"/conversations/{conversation_id}/presence"
    async with open_sse(site.http, site.base, site.seller_token) as sse:
        assert (await site.agent.post(path, {"state": "typing"})).status == 204
        event = await sse.next()
        assert (event.event, event.id) == ("presence", None), "presence is live only: no id to resume from"
        assert event.data == {
            "type": "presence",
            "conversation_id": conversation_id,
            "user_id": site.agent_id,
            "state": "typing",
            "expires_in": 0.6,
        }
        listed = await site.agent.get(path)
        assert listed.status == 200
        [entry] = listed.body["items"]
        assert (entry["user_id"], entry["state"]) == (site.agent_id, "typing")
        assert 0 < entry["expires_in"] <= 0.6

        await asyncio.sleep(0.8)
        assert (await site.agent.get(path)).body == {"items": []}, "expired"

        assert (await site.agent.post(path, {"state": "viewing"})).status == 204
        assert [e["state"] for e in (await site.agent.get(path)).body["items"]] == ["viewing"]
        assert (await site.agent.post(path, {"state": "left"})).status == 204
        assert (await site.agent.get(path)).body == {"items": []}
        assert [((await sse.next()).data["state"]) for _ in range(2)] == ["viewing", "left"]

    other = ApiClient(site.http, site.base, site.other_token)
    assert (await other.post(path, {"state": "viewing"})).status == 404
    assert (await other.get(path)).status == 404
    seller = ApiClient(site.http, site.base, site.seller_token)
    assert (await seller.post(path, {"state": "viewing"})).status == 403
    assert (await seller.get(path)).status == 200
    reply = await site.agent.post(path, {"state": "dancing"})
    assert (reply.status, reply.body["error"]["field"]) == (400, "state")


async def test_presence_over_websocket_and_withdrawn_when_it_closes(site: Site) -> None:
    conversation_id, _ = await site.customer_writes("m1")
    async with open_sse(site.http, site.base, site.agent_token) as watcher:
        async with open_ws(site.http, site.base, site.agent_token) as ws:
            assert await ws.live() == []
            await ws.socket.send_json(
                {"type": "presence", "conversation_id": conversation_id, "state": "viewing"}
            )
            event = await watcher.until("presence")
            assert (event.data["state"], event.data["expires_in"]) == ("viewing", 30)
            assert (await ws.until("presence"))["user_id"] == site.agent_id
            listed = await site.agent.get(f"/conversations/{conversation_id}/presence")
            assert [e["state"] for e in listed.body["items"]] == ["viewing"]

            await ws.socket.send_json({"type": "presence", "conversation_id": "nope", "state": "viewing"})
            assert (await ws.next())["error"]["code"] == "not_found"
            await ws.socket.send_str("not json")
            assert (await ws.next())["error"]["code"] == "invalid_json"
            await ws.socket.send_json({"type": "presence", "conversation_id": conversation_id, "state": "x"})
            error = await ws.next()
            assert (error["type"], error["error"]["field"]) == ("error", "state")
        left = await watcher.until("presence")
        assert (left.data["state"], left.data["user_id"]) == ("left", site.agent_id)
        assert (await site.agent.get(f"/conversations/{conversation_id}/presence")).body == {"items": []}

    async with open_ws(site.http, site.base, site.seller_token) as seller_ws:
        assert await seller_ws.live() == []
        await seller_ws.socket.send_json(
            {"type": "presence", "conversation_id": conversation_id, "state": "typing"}
        )
        assert (await seller_ws.next())["error"]["code"] == "forbidden"


# --- delivery status and snooze ---------------------------------------------------------------------


async def test_delivery_status_changes_reach_the_stream(site: Site, callback_server: CallbackServer) -> None:
    assert site.daemon.channels is not None
    assert await site.daemon.channels.get(site.channel_id) is not None
    conversation_id, _ = await site.customer_writes("m1")
    async with open_sse(site.http, site.base, site.agent_token) as sse:
        callback_server.fail_next(500)
        reply = await site.agent.post(f"/conversations/{conversation_id}/messages", {"text": "On its way"})
        assert reply.status == 202
        message_id = reply.body["id"]
        created = await sse.until("message.created")
        assert (created.data["message_id"], created.data["direction"]) == (message_id, "out")
        queued = await sse.until("message.delivery")
        assert queued.id is not None
        assert {k: queued.data[k] for k in ("conversation_id", "message_id", "delivery_status")} == {
            "conversation_id": conversation_id,
            "message_id": message_id,
            "delivery_status": "queued",
        }
        assert "500" in queued.data["error"]
        sent = await sse.until("message.delivery", within=10)
        assert sent.data == {
            "type": "message.delivery",
            "id": sent.id,
            "conversation_id": conversation_id,
            "message_id": message_id,
            "delivery_status": "sent",
            "error": None,
        }
        assert [d.message_id for d in callback_server.deliveries] == [message_id]

        callback_server.fail_next(400)
        reply = await site.agent.post(f"/conversations/{conversation_id}/messages", {"text": "Sorry"})
        failed = await sse.until("message.delivery", within=10)
        assert (failed.data["message_id"], failed.data["delivery_status"]) == (reply.body["id"], "failed")
        assert "400" in failed.data["error"]


async def test_snoozed_conversation_reopens_by_itself_and_the_stream_says_so(site: Site) -> None:
    conversation_id, _ = await site.customer_writes("m1")
    async with open_sse(site.http, site.base, site.agent_token) as sse:
        until = utcnow() + timedelta(seconds=1.2)
        reply = await site.agent.patch(
            f"/conversations/{conversation_id}", {"snooze_until": until.isoformat()}
        )
        assert (reply.status, reply.body["status"]) == (200, "snoozed")
        snoozed = await sse.next()
        assert (snoozed.data["type"], snoozed.data["by"]) == ("conversation.updated", site.agent_id)

        woke = await sse.next(within=4)
        assert woke.data == {
            "type": "conversation.updated",
            "id": woke.id,
            "conversation_id": conversation_id,
            "changed": ["snoozed_until", "status"],
            "by": None,
        }
        assert utcnow() >= until
    assert (await site.agent.get(f"/conversations/{conversation_id}")).body["status"] == "open"


# --- several daemons, one Redis ---------------------------------------------------------------------


async def test_two_daemons_share_live_events_resume_and_presence_through_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    settings = make_settings(tmp_path, redis_url=redis_server.url)
    async with (
        running_daemon(settings) as first,
        running_daemon(settings) as second,
        aiohttp.ClientSession() as http,
        Redis.from_url(redis_server.url, decode_responses=True) as redis,
    ):
        site = await make_site(first, http, {"secret": SECRET})
        channel = f"aggregator:events:{site.workspace_id}"

        async def listeners() -> int:
            ((_, count),) = await redis.pubsub_numsub(channel)
            return int(count)

        other_base = daemon_url(second)
        async with AsyncExitStack() as stack:
            on_first = [
                await stack.enter_async_context(open_sse(http, site.base, site.agent_token)) for _ in range(3)
            ]
            on_second = await stack.enter_async_context(open_sse(http, other_base, site.agent_token))
            assert await listeners() == 2, "one subscription per process, not per client"
            conversation_id, message_id = await site.customer_writes("m1")
            created = await on_second.next()
            assert created.data["conversation_id"] == conversation_id
            assert (await on_second.next()).data["message_id"] == message_id
            for sse in on_first:
                assert [(await sse.next()).id, (await sse.next()).id] == [e.id for e in on_second.seen]

            # Presence announced through one daemon is seen through the other.
            reply = await ApiClient(http, site.base, site.agent_token).post(
                f"/conversations/{conversation_id}/presence", {"state": "viewing"}
            )
            assert reply.status == 204
            assert (await on_second.next()).data["state"] == "viewing"
            listed = await ApiClient(http, other_base, site.agent_token).get(
                f"/conversations/{conversation_id}/presence"
            )
            assert [e["user_id"] for e in listed.body["items"]] == [site.agent_id]
        await wait_until(lambda: _listeners_are(listeners, 0), within=5, what="subscriptions closed")

        # Resume on the second daemon after events published by the first.
        last_id = on_second.seen[-2].id
        assert last_id is not None
        await site.customer_writes("m2")
        await site.customer_writes("m3", sender="c2")
        async with open_sse(
            http, other_base, site.agent_token, last_event_id=last_id, wait_ready=False
        ) as sse:
            replay = await sse.live()
            assert [e.data["type"] for e in replay] == [
                "message.created",
                "conversation.created",
                "message.created",
            ]
            assert len({e.id for e in replay} - {last_id, None}) == 3


async def _listeners_are(listeners: Any, expected: int) -> bool:
    return bool(await listeners() == expected)


async def test_stream_outlives_a_redis_outage_with_a_resync(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        running_daemon(make_settings(tmp_path, redis_url=redis_server.url)) as daemon,
        aiohttp.ClientSession() as http,
    ):
        site = await make_site(daemon, http, {"secret": SECRET})
        async with open_sse(http, site.base, site.agent_token) as sse:
            await site.customer_writes("m1")
            before = [await sse.next(), await sse.next()]
            await redis_server.stop()
            await site.customer_writes("m2")  # stored; its event may be lost with the bus
            await redis_server.start()
            resync = await sse.until("resync", within=15)
            assert resync.id is None
            _, message_id = await site.customer_writes("m3")
            async with asyncio.timeout(5):
                while (await sse.until("message.created")).data["message_id"] != message_id:
                    pass  # m2's, when it was published after Redis came back
        # The log went with the restarted Redis: resuming from before the outage is a resync.
        async with open_sse(
            http, site.base, site.agent_token, last_event_id=before[-1].id, wait_ready=False
        ) as sse:
            assert [e.data["type"] for e in await sse.live()] == ["resync"]
