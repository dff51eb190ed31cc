"""The bus, in-process and on a real redis-server: both must behave the same."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from aggregator.bus import (
    RESYNC,
    Bus,
    BusUnavailable,
    InProcessBus,
    Job,
    RedisBus,
    Subscription,
    create_bus,
)
from aggregator.model import Event
from support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(30)

MakeBus = Callable[..., Awaitable[Bus]]


@pytest.fixture(params=["inprocess", "redis"])
def bus_url(request: pytest.FixtureRequest) -> str | None:
    """None for the in-process bus, else the URL of a fresh redis-server."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    return None


@pytest.fixture
async def make_bus(bus_url: str | None) -> AsyncIterator[MakeBus]:
    """Factory of started buses of the parametrised kind, closed at teardown."""
    buses: list[Bus] = []

    async def make(visibility_timeout: float = 30.0) -> Bus:
        bus = create_bus(bus_url, visibility_timeout=visibility_timeout)
        await bus.start()
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


@pytest.fixture
async def bus(make_bus: MakeBus) -> Bus:
    return await make_bus()


@pytest.fixture
async def redis_bus(redis_server: RedisServer) -> AsyncIterator[RedisBus]:
    bus = RedisBus(redis_server.url, prefix="t", visibility_timeout=0.3)
    await bus.start()
    yield bus
    await bus.close()


async def subscribed(bus: Bus, workspace_id: str | None = None) -> Subscription:
    sub = bus.subscribe(workspace_id)
    assert isinstance(sub, Subscription)
    await asyncio.wait_for(sub.ready(), 3)
    return sub


async def next_event(sub: Subscription, within: float = 3.0) -> Event:
    return await asyncio.wait_for(anext(sub), within)


async def take_all(bus: Bus, queue: str, consumer: str = "c1", block: float = 0.0) -> list[Job]:
    return await bus.take(queue, consumer, count=100, block=block)


# --- events ---------------------------------------------------------------------------------------


async def test_create_bus_picks_the_implementation(bus_url: str | None, bus: Bus) -> None:
    assert isinstance(bus, RedisBus if bus_url else InProcessBus)


async def test_subscribers_get_their_workspace_or_all(bus: Bus) -> None:
    sub_a = await subscribed(bus, "ws-a")
    sub_all = await subscribed(bus)
    ev_b = Event(type="message.created", workspace_id="ws-b", data={"n": 1, "t": ["x"]}, conversation_id="c")
    ev_a = Event(type="conversation.updated", workspace_id="ws-a", data={"status": "open"})

    await bus.publish(ev_b)
    await bus.publish(ev_a)

    assert await next_event(sub_a) == ev_a
    assert await next_event(sub_all) == ev_b
    assert await next_event(sub_all) == ev_a
    await sub_a.aclose()
    await sub_all.aclose()


async def test_publish_many_keeps_order_and_workspaces(bus: Bus) -> None:
    sub_a = await subscribed(bus, "ws-a")
    events = [Event(type="message.created", workspace_id=ws, data={"n": n}) for n, ws in enumerate("abab")]
    events = [Event(type=e.type, workspace_id=f"ws-{e.workspace_id}", data=e.data) for e in events]

    await bus.publish_many(events)
    await bus.publish_many([])

    assert [await next_event(sub_a), await next_event(sub_a)] == [events[0], events[2]]
    await sub_a.aclose()


async def test_subscription_ends_when_bus_closes(bus: Bus) -> None:
    sub = await subscribed(bus, "ws-a")
    received: list[Event] = []

    async def consume() -> None:
        async for event in sub:
            received.append(event)

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    await bus.close()
    await asyncio.wait_for(consumer, 3)
    assert received == []


async def test_slow_subscriber_loses_oldest_events() -> None:
    bus = InProcessBus(subscriber_buffer=2)
    sub = await subscribed(bus, "ws")
    events = [Event(type="e", workspace_id="ws", data={"i": i}) for i in range(5)]
    for event in events:
        await bus.publish(event)
    assert [await next_event(sub), await next_event(sub)] == events[3:]
    assert sub.dropped == 3
    await bus.close()


# --- work queues ----------------------------------------------------------------------------------


async def test_enqueue_take_ack(bus: Bus) -> None:
    for i in range(3):
        await bus.enqueue("out", f"job-{i}")
    assert await bus.queue_depth("out") == 3

    jobs = await bus.take("out", "c1", count=10, block=1.0)

    assert [job.payload for job in jobs] == ["job-0", "job-1", "job-2"]
    assert {job.deliveries for job in jobs} == {1}
    assert {job.queue for job in jobs} == {"out"}
    assert len({job.delivery_id for job in jobs}) == 3
    assert await bus.queue_depth("out") == 3, "taken but unacked jobs still count"
    for job in jobs:
        await bus.ack(job)
    await bus.ack(jobs[0])  # twice is harmless
    assert await bus.queue_depth("out") == 0
    assert await bus.take("out", "c1", block=0.1) == []


async def test_take_respects_count_and_block(bus: Bus) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await bus.take("empty", "c1", block=0.3) == []
    assert 0.25 <= loop.time() - started < 2.0

    for i in range(5):
        await bus.enqueue("q", str(i))
    assert len(await bus.take("q", "c1", count=2, block=0)) == 2
    assert len(await bus.take("q", "c1", count=10, block=0)) == 3


async def test_blocked_take_wakes_on_enqueue(bus: Bus) -> None:
    loop = asyncio.get_running_loop()
    taker = asyncio.create_task(bus.take("q", "c1", block=5.0))
    await asyncio.sleep(0.1)
    started = loop.time()
    await bus.enqueue("q", "hello")
    jobs = await asyncio.wait_for(taker, 5)
    assert [job.payload for job in jobs] == ["hello"]
    assert loop.time() - started < 1.5


async def test_delayed_job_is_invisible_until_due(bus: Bus) -> None:
    loop = asyncio.get_running_loop()
    await bus.enqueue("q", "later", delay=0.5)
    await bus.enqueue("q", "later", delay=0.5)  # identical payloads must not collapse into one
    started = loop.time()
    assert await take_all(bus, "q") == []
    assert await bus.queue_depth("q") == 2

    jobs = await take_all(bus, "q", block=3.0)

    assert [job.payload for job in jobs] == ["later", "later"]
    assert 0.4 <= loop.time() - started < 1.3, "woken when due, not at the next poll"
    assert jobs[0].deliveries == 1


async def test_retry_with_delay(bus: Bus) -> None:
    loop = asyncio.get_running_loop()
    await bus.enqueue("q", "flaky")
    (job,) = await take_all(bus, "q")

    await bus.retry(job, 0.4)
    started = loop.time()

    assert await take_all(bus, "q") == []
    assert await bus.queue_depth("q") == 1
    (again,) = await take_all(bus, "q", block=3.0)
    assert again.payload == "flaky"
    assert again.deliveries == 2
    assert 0.3 <= loop.time() - started < 2.0
    await bus.retry(again, 0)
    (third,) = await take_all(bus, "q")
    assert third.deliveries == 3
    await bus.ack(third)
    assert await bus.queue_depth("q") == 0


async def test_unacked_job_is_redelivered_after_visibility_timeout(make_bus: MakeBus) -> None:
    bus = await make_bus(visibility_timeout=0.3)
    await bus.enqueue("q", "work")
    (first,) = await bus.take("q", "crashing-worker", block=1.0)
    assert first.deliveries == 1

    assert await bus.take("q", "c2", block=0) == [], "still invisible while the first worker holds it"
    (second,) = await bus.take("q", "c2", block=3.0)

    assert second.payload == "work"
    assert second.deliveries == 2
    assert await bus.take("q", "c3", block=0) == []
    await bus.ack(second)
    assert await bus.queue_depth("q") == 0


async def test_two_consumers_never_hold_the_same_job(bus: Bus) -> None:
    payloads = [f"job-{i}" for i in range(40)]
    for payload in payloads:
        await bus.enqueue("q", payload)

    async def worker(name: str) -> list[Job]:
        got: list[Job] = []
        while jobs := await bus.take("q", name, count=3, block=0.2):
            got.extend(jobs)
            await asyncio.sleep(0)
        return got

    first, second = await asyncio.gather(worker("w1"), worker("w2"))

    taken = [job.payload for job in first + second]
    assert sorted(taken) == sorted(payloads), "every job exactly once"
    assert first and second, "both workers got work"


# --- rate limits and leases -----------------------------------------------------------------------


async def test_rate_limit_allows_burst_then_asks_to_wait(bus: Bus) -> None:
    waits = [await bus.rate_limit("telegram:bot1", rate=5.0, burst=3) for _ in range(4)]

    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0.1 < waits[3] <= 0.2
    assert await bus.rate_limit("telegram:bot2", rate=5.0, burst=3) == 0.0, "keys are independent"
    await asyncio.sleep(waits[3] + 0.02)
    assert await bus.rate_limit("telegram:bot1", rate=5.0, burst=3) == 0.0
    assert await bus.rate_limit("telegram:bot1", rate=5.0, burst=3) > 0.1


async def test_nonsense_arguments_are_rejected(bus: Bus) -> None:
    with pytest.raises(ValueError):
        await bus.rate_limit("k", rate=0, burst=1)
    with pytest.raises(ValueError):
        await bus.take("q", "c1", count=0)


async def test_lease_is_exclusive_renewable_and_releasable(bus: Bus) -> None:
    assert await bus.acquire_lease("imap:box1", "node-a", ttl=5.0)
    assert not await bus.acquire_lease("imap:box1", "node-b", ttl=5.0)
    assert await bus.acquire_lease("imap:box1", "node-a", ttl=5.0), "the owner renews"
    assert await bus.acquire_lease("imap:box2", "node-b", ttl=5.0), "other leases are independent"

    await bus.release_lease("imap:box1", "node-b")  # not the owner: no effect
    assert not await bus.acquire_lease("imap:box1", "node-b", ttl=5.0)
    await bus.release_lease("imap:box1", "node-a")
    assert await bus.acquire_lease("imap:box1", "node-b", ttl=5.0)


async def test_lease_expires_unless_renewed(bus: Bus) -> None:
    assert await bus.acquire_lease("poll", "node-a", ttl=0.3)
    await asyncio.sleep(0.2)
    assert await bus.acquire_lease("poll", "node-a", ttl=0.3)
    await asyncio.sleep(0.2)
    assert not await bus.acquire_lease("poll", "node-b", ttl=0.3), "renewal extended the lease"
    await asyncio.sleep(0.25)
    assert await bus.acquire_lease("poll", "node-b", ttl=0.3), "expired"


# --- Redis outages --------------------------------------------------------------------------------


async def expect_unavailable(call: Awaitable[Any]) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BusUnavailable):
        await asyncio.wait_for(call, 5)
    assert loop.time() - started < 3.0


async def test_redis_down_raises_bus_unavailable_then_recovers(
    redis_server: RedisServer, redis_bus: RedisBus
) -> None:
    await redis_bus.enqueue("q", "before")
    (job,) = await redis_bus.take("q", "c1", block=1.0)
    blocked_take = asyncio.create_task(redis_bus.take("q", "c1", block=10.0))
    await asyncio.sleep(0.1)

    await redis_server.stop()

    await expect_unavailable(blocked_take)
    await expect_unavailable(redis_bus.ping())
    await expect_unavailable(redis_bus.publish(Event(type="e", workspace_id="ws", data={})))
    await expect_unavailable(redis_bus.publish_many([Event(type="e", workspace_id="ws", data={})]))
    await expect_unavailable(redis_bus.enqueue("q", "x"))
    await expect_unavailable(redis_bus.enqueue("q", "x", delay=1.0))
    await expect_unavailable(redis_bus.take("q", "c1", block=5.0))
    await expect_unavailable(redis_bus.ack(job))
    await expect_unavailable(redis_bus.retry(job, 1.0))
    await expect_unavailable(redis_bus.queue_depth("q"))
    await expect_unavailable(redis_bus.rate_limit("k", 1.0, 1))
    await expect_unavailable(redis_bus.acquire_lease("l", "me", 1.0))
    await expect_unavailable(redis_bus.release_lease("l", "me"))

    await redis_server.start()

    await redis_bus.ping()
    await redis_bus.enqueue("q", "after")
    (again,) = await redis_bus.take("q", "c1", block=1.0)
    assert again.payload == "after"
    await redis_bus.ack(again)
    assert await redis_bus.queue_depth("q") == 0
    assert await redis_bus.rate_limit("k", 1.0, 1) == 0.0
    assert await redis_bus.acquire_lease("l", "me", 1.0)


async def test_subscription_survives_redis_restart(redis_server: RedisServer, redis_bus: RedisBus) -> None:
    sub = await subscribed(redis_bus, "ws")
    await redis_server.stop()
    await asyncio.sleep(0.3)
    await redis_server.start()

    event = Event(type="e", workspace_id="ws", data={"after": "restart"})
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 5
    received: Event | None = None
    # The subscription comes back on its own schedule; publish until it hears.
    while received is None and loop.time() < give_up:
        await redis_bus.publish(event)
        try:
            received = await next_event(sub, within=0.2)
        except TimeoutError:
            continue
    assert received == event
    await sub.aclose()


async def test_flushall_recreates_the_consumer_group(redis_server: RedisServer, redis_bus: RedisBus) -> None:
    await redis_bus.enqueue("q", "lost")
    (lost,) = await redis_bus.take("q", "c1", block=1.0)
    await redis_bus.enqueue("q", "later", delay=5.0)
    client = Redis.from_url(redis_server.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()

    await redis_bus.ack(lost)  # gone: harmless
    assert await redis_bus.take("q", "c1", block=0.2) == []
    assert await redis_bus.queue_depth("q") == 0
    await redis_bus.enqueue("q", "fresh")
    (fresh,) = await redis_bus.take("q", "c1", block=1.0)
    assert fresh.payload == "fresh"
    assert fresh.deliveries == 1

    async with Redis.from_url(redis_server.url) as client2:
        await client2.flushall()
    await redis_bus.retry(fresh, 0.1)  # the stream vanished under a taken job
    (retried,) = await redis_bus.take("q", "c1", block=2.0)
    assert retried.payload == "fresh"
    assert retried.deliveries == 2
    await redis_bus.ack(retried)
    assert await redis_bus.queue_depth("q") == 0


async def test_redis_keys_use_the_prefix(redis_server: RedisServer, redis_bus: RedisBus) -> None:
    await redis_bus.enqueue("q", "a")
    await redis_bus.enqueue("q", "b", delay=5)
    await redis_bus.acquire_lease("l", "me", 5)
    await redis_bus.rate_limit("r", 1.0, 2)
    async with Redis.from_url(redis_server.url, decode_responses=True) as client:
        keys = sorted(await client.keys("*"))
    assert keys == ["t:delayed:q", "t:lease:l", "t:q:q", "t:rate:r"]


async def test_closed_or_dropped_subscriptions_unsubscribe(
    redis_server: RedisServer, redis_bus: RedisBus
) -> None:
    async with Redis.from_url(redis_server.url, decode_responses=True) as client:

        async def listeners() -> int:
            ((_, n),) = await client.pubsub_numsub("t:events:ws")
            return int(n)

        async def until_no_listeners() -> None:
            while True:
                if not await listeners():
                    return
                await asyncio.sleep(0.02)

        sub = await subscribed(redis_bus, "ws")
        assert await listeners() == 1
        await sub.aclose()
        await asyncio.wait_for(until_no_listeners(), 3)
        with pytest.raises(StopAsyncIteration):
            await next_event(sub)

        sub = await subscribed(redis_bus, "ws")
        assert await listeners() == 1
        del sub
        gc.collect()
        await asyncio.wait_for(until_no_listeners(), 3)


# --- the event log (resume) and presence ----------------------------------------------------------


async def test_recent_events_replays_after_an_id_and_none_when_unknown(bus: Bus) -> None:
    events = [
        Event(type="message.created", workspace_id="ws-a", data={"n": n}, conversation_id="c")
        for n in range(5)
    ]
    await bus.publish(events[0])
    await bus.publish_many(
        [events[1], Event(type="presence", workspace_id="ws-a", data={"state": "typing"}), *events[2:4]]
    )
    await bus.publish(Event(type="message.created", workspace_id="ws-b", data={}))
    await bus.publish(events[4])

    assert await bus.recent_events("ws-a", events[1].id) == events[2:], "presence is not logged"
    assert await bus.recent_events("ws-a", events[0].id) == events[1:]
    assert await bus.recent_events("ws-a", events[4].id) == []
    assert await bus.recent_events("ws-a", "unknown") is None
    assert await bus.recent_events("ws-b", events[0].id) is None, "another workspace's log"
    assert await bus.recent_events("ws-c", events[0].id) is None


async def test_event_log_keeps_only_the_latest(bus_url: str | None) -> None:
    bus: Bus = RedisBus(bus_url, event_log=10) if bus_url else InProcessBus(event_log=10)
    await bus.start()
    try:
        events = [Event(type="e", workspace_id="ws", data={"n": n}) for n in range(400)]
        await bus.publish_many(events)
        # Redis trims approximately (whole stream nodes): the oldest are gone, the latest stay.
        assert await bus.recent_events("ws", events[0].id) is None
        assert await bus.recent_events("ws", events[-5].id) == events[-4:]
    finally:
        await bus.close()


async def test_presence_is_set_replaced_removed_and_expires(bus: Bus) -> None:
    await bus.set_presence("ws", "conv", "ann", "viewing", 5.0)
    await bus.set_presence("ws", "conv", "bob", "viewing", 0.3)
    await bus.set_presence("ws", "conv", "bob", "typing", 0.3)
    await bus.set_presence("ws", "other", "cid", "typing", 5.0)
    await bus.set_presence("ws-2", "conv", "dan", "typing", 5.0)

    now = await bus.presence("ws", "conv")
    assert [(p.user_id, p.state) for p in now] == [("ann", "viewing"), ("bob", "typing")], "one state each"
    assert 4.0 < now[0].expires_in <= 5.0
    assert 0.0 < now[1].expires_in <= 0.3

    await asyncio.sleep(0.4)
    assert [p.user_id for p in await bus.presence("ws", "conv")] == ["ann"], "bob expired"
    await bus.set_presence("ws", "conv", "ann", None, 5.0)
    assert await bus.presence("ws", "conv") == []
    assert [p.user_id for p in await bus.presence("ws", "other")] == ["cid"]
    assert [p.user_id for p in await bus.presence("ws-2", "conv")] == ["dan"]
    assert await bus.presence("ws", "nobody-here") == []


async def test_gap_is_marked_where_a_slow_subscriber_lost_events() -> None:
    bus = InProcessBus(subscriber_buffer=2)
    sub = bus.subscribe("ws", mark_gaps=True)
    plain = bus.subscribe("ws")
    events = [Event(type="e", workspace_id="ws", data={"i": i}) for i in range(5)]
    for event in events:
        await bus.publish(event)
    gap = await next_event(sub)
    assert (gap.type, gap.id, gap.workspace_id) == (RESYNC, "", "ws")
    assert [await next_event(sub), await next_event(sub)] == events[3:]
    assert [await next_event(plain), await next_event(plain)] == events[3:], "no marks unless asked"
    await bus.close()


async def test_resubscription_after_a_redis_restart_is_marked_as_a_gap(
    redis_server: RedisServer, redis_bus: RedisBus
) -> None:
    sub = redis_bus.subscribe("ws", mark_gaps=True)
    await asyncio.wait_for(sub.ready(), 3)
    await redis_server.stop()
    await asyncio.sleep(0.3)
    await redis_server.start()

    event = Event(type="e", workspace_id="ws", data={})
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 10
    received: list[Event] = []
    while event not in received and loop.time() < give_up:
        with contextlib.suppress(BusUnavailable):
            await redis_bus.publish(event)
        with contextlib.suppress(TimeoutError):
            while True:
                received.append(await next_event(sub, within=0.2))
    assert received[0].type == RESYNC and received[0].id == ""
    assert event in received
    await sub.aclose()


async def test_events_lost_while_redis_was_unreachable_leave_a_resync_mark_in_the_log(
    redis_server: RedisServer,
) -> None:
    bus = RedisBus(redis_server.url, prefix="t", socket_timeout=0.3)
    await bus.start()
    try:
        before = Event(type="message.created", workspace_id="ws", data={"n": 1})
        await bus.publish(before)
        async with Redis.from_url(redis_server.url) as control:
            # Redis keeps running (and keeps its log) but answers nobody for a while.
            await control.execute_command("CLIENT", "PAUSE", 1500, "ALL")
            with pytest.raises(BusUnavailable):
                await bus.publish(Event(type="message.created", workspace_id="ws", data={"n": 2}))
            await control.execute_command("CLIENT", "UNPAUSE")

        async def marked() -> bool:
            after = await bus.recent_events("ws", before.id)
            return after is not None and any(e.type == RESYNC and e.id for e in after)

        await wait_for(marked, within=5)
        later = Event(type="message.created", workspace_id="ws", data={"n": 3})
        await bus.publish(later)
        after = await bus.recent_events("ws", before.id)
        assert after is not None and after[-1] == later
        assert [e.type for e in after if e.type == RESYNC] == [RESYNC], "marked once"
    finally:
        await bus.close()


async def wait_for(condition: Callable[[], Awaitable[bool]], within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_flushed_log_means_resume_is_impossible(redis_server: RedisServer, redis_bus: RedisBus) -> None:
    event = Event(type="e", workspace_id="ws", data={})
    await redis_bus.publish(event)
    assert await redis_bus.recent_events("ws", event.id) == []
    async with Redis.from_url(redis_server.url) as client:
        await client.flushall()
    assert await redis_bus.recent_events("ws", event.id) is None
    await redis_server.stop()
    with pytest.raises(BusUnavailable):
        await redis_bus.recent_events("ws", event.id)
    with pytest.raises(BusUnavailable):
        await redis_bus.set_presence("ws", "c", "u", "viewing", 1.0)
    with pytest.raises(BusUnavailable):
        await redis_bus.presence("ws", "c")


async def test_log_and_presence_keys_use_the_prefix(redis_server: RedisServer, redis_bus: RedisBus) -> None:
    await redis_bus.publish(Event(type="e", workspace_id="ws", data={}))
    await redis_bus.publish(Event(type="presence", workspace_id="ws", data={}))
    await redis_bus.set_presence("ws", "conv", "u", "viewing", 5.0)
    async with Redis.from_url(redis_server.url, decode_responses=True) as client:
        keys = sorted(await client.keys("*"))
        assert 0 < await client.pttl("t:presence:ws:conv") <= 5000
    assert keys == ["t:log:ws", "t:presence-state:ws:conv", "t:presence:ws:conv"]
