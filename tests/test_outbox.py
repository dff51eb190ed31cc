"""The outbox: replies sent through the API channel to a real callback server, with retries, back-off,
Retry-After, permanent failures, claims, crashed workers, and a bus that goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aggregator.bus import BusUnavailable, InProcessBus
from aggregator.config import OutboxSettings, Settings
from aggregator.daemon import Daemon
from aggregator.model import Event, OutboxStatus, ThreadHints, utcnow
from aggregator.outbound import OutboxWorker
from aggregator.store.schema import format_time
from channels.api import ApiChannel
from channels.base import Capabilities, Registry
from fakes.callback import CallbackServer
from support.app import (
    FAST_OUTBOX,
    SECRET,
    ApiSender,
    Core,
    add_channel,
    daemon_url,
    inbound,
    make_settings,
    next_event,
    open_core,
    running_daemon,
    sql,
    subscribed,
    wait_until,
)
from support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)


@dataclass
class Outbox:
    core: Core
    worker: OutboxWorker
    channel_id: str
    conversation_id: str

    async def reply(self, text_body: str = "Your parcel ships today") -> tuple[str, str]:
        return await self.core.store.create_reply(self.core.workspace.id, self.conversation_id, text_body)

    async def row(self, outbox_id: str) -> Any:
        rows = await sql(
            self.core.store,
            "SELECT status, attempts, last_error, next_attempt_at, claimed_until FROM outbox WHERE id = :id",
            id=outbox_id,
        )
        return rows[0]

    async def message(self, message_id: str) -> dict[str, Any]:
        return await self.core.store.get_message(message_id, self.core.workspace.id)


def make_worker(core: Core, **settings: Any) -> OutboxWorker:
    return OutboxWorker(
        core.store,
        core.bus,
        core.channels.running,
        core.metrics,
        OutboxSettings(**{**FAST_OUTBOX, **settings}),
        node_id="test",
    )


@pytest.fixture
async def outbox(core: Core, callback_server: CallbackServer) -> Outbox:
    channel_id = await core.add_channel(
        {"secret": SECRET, "callback_url": callback_server.url, "timeout_seconds": 5}
    )
    await core.adapter(channel_id)
    first = await core.ingest(
        inbound(
            channel_id, "in-1", sender="cust-9", thread=ThreadHints(by_contact=False, thread_ref="order-77")
        )
    )
    return Outbox(core, make_worker(core), channel_id, first.conversation_id)


async def test_reply_is_sent_signed_and_recorded_as_sent(
    outbox: Outbox, callback_server: CallbackServer
) -> None:
    message_id, outbox_id = await outbox.reply("Your parcel ships today")

    assert await outbox.worker.process(outbox_id) is OutboxStatus.SENT

    [delivery] = callback_server.deliveries
    assert callback_server.rejected_signatures == 0
    assert delivery.body == {
        "message_id": message_id,
        "conversation_id": outbox.conversation_id,
        "thread_id": "order-77",
        "recipient": {"id": "cust-9"},
        "text": "Your parcel ships today",
    }
    message = await outbox.message(message_id)
    assert (message["delivery_status"], message["external_id"], message["delivery_error"]) == (
        "sent",
        "cb-1",
        None,
    )
    assert message["sent_at"] is not None
    row = await outbox.row(outbox_id)
    assert (row.status, row.attempts, row.claimed_until) == ("sent", 1, None)
    sent = outbox.core.metrics.registry.get_sample_value("aggregator_messages_out_total", {"channel": "api"})
    assert sent == 1.0
    # Sent is final: the same id handed out again sends nothing.
    assert await outbox.worker.process(outbox_id) is None
    assert len(callback_server.attempts) == 1


async def test_server_error_is_retried_with_back_off_then_sent(
    outbox: Outbox, callback_server: CallbackServer
) -> None:
    message_id, outbox_id = await outbox.reply()
    callback_server.fail_next(500)
    before = utcnow()

    assert await outbox.worker.process(outbox_id) is OutboxStatus.QUEUED

    row = await outbox.row(outbox_id)
    assert (row.status, row.attempts) == ("queued", 1)
    assert "500" in row.last_error
    assert row.next_attempt_at >= format_time(before + timedelta(seconds=0.04))
    message = await outbox.message(message_id)
    assert message["delivery_status"] == "queued"
    assert "500" in message["delivery_error"]
    assert await outbox.worker.process(outbox_id) is None  # not due yet

    await asyncio.sleep(0.1)
    assert await outbox.worker.process(outbox_id) is OutboxStatus.SENT
    assert [a["message_id"] for a in callback_server.attempts] == [message_id, message_id]
    message = await outbox.message(message_id)
    assert (message["delivery_status"], message["delivery_error"]) == ("sent", None)
    assert (await outbox.row(outbox_id)).attempts == 2


async def test_retry_after_of_a_429_is_honoured(outbox: Outbox, callback_server: CallbackServer) -> None:
    _, outbox_id = await outbox.reply()
    callback_server.fail_next(429, retry_after="30")
    before = utcnow()

    assert await outbox.worker.process(outbox_id) is OutboxStatus.QUEUED

    row = await outbox.row(outbox_id)
    assert row.status == "queued"
    assert row.next_attempt_at >= format_time(before + timedelta(seconds=30))
    assert await outbox.worker.process(outbox_id) is None
    assert len(callback_server.attempts) == 1


async def test_client_error_fails_for_good_with_the_error_kept(
    outbox: Outbox, callback_server: CallbackServer
) -> None:
    message_id, outbox_id = await outbox.reply()
    callback_server.fail_next(400)

    assert await outbox.worker.process(outbox_id) is OutboxStatus.FAILED

    message = await outbox.message(message_id)
    assert message["delivery_status"] == "failed"
    assert "400" in message["delivery_error"]
    assert "told to answer 400" in message["delivery_error"]
    row = await outbox.row(outbox_id)
    assert (row.status, row.attempts) == ("failed", 1)
    assert await outbox.worker.process(outbox_id) is None
    assert await outbox.core.store.due_outbox(utcnow() + timedelta(days=1)) == []


async def test_gives_up_after_max_attempts_with_the_error_kept(
    outbox: Outbox, callback_server: CallbackServer
) -> None:
    worker = make_worker(outbox.core, max_attempts=3, backoff_base_seconds=0.01, backoff_max_seconds=0.02)
    message_id, outbox_id = await outbox.reply()
    callback_server.fail_next(503, times=10)

    outcomes = []
    while not outcomes or outcomes[-1] is not OutboxStatus.FAILED:
        assert len(outcomes) < 10, outcomes
        outcome = await worker.process(outbox_id)
        if outcome is None:
            await asyncio.sleep(0.01)
            continue
        outcomes.append(outcome)

    assert outcomes == [OutboxStatus.QUEUED, OutboxStatus.QUEUED, OutboxStatus.FAILED]
    assert len(callback_server.attempts) == 3
    message = await outbox.message(message_id)
    assert message["delivery_status"] == "failed"
    assert "gave up after 3 attempts" in message["delivery_error"]
    assert "503" in message["delivery_error"]


async def test_send_that_hangs_times_out_and_is_retried(
    outbox: Outbox, callback_server: CallbackServer
) -> None:
    worker = make_worker(outbox.core, send_timeout_seconds=0.3)
    message_id, outbox_id = await outbox.reply()
    callback_server.hang_next()

    assert await worker.process(outbox_id) is OutboxStatus.QUEUED

    assert "timed out" in (await outbox.row(outbox_id)).last_error
    await asyncio.sleep(0.1)
    assert await worker.process(outbox_id) is OutboxStatus.SENT
    assert [d.message_id for d in callback_server.deliveries] == [message_id]


async def test_a_claimed_row_is_sent_once_by_concurrent_workers(
    outbox: Outbox, callback_server: CallbackServer
) -> None:
    other = make_worker(outbox.core)
    _, outbox_id = await outbox.reply()

    outcomes = await asyncio.gather(outbox.worker.process(outbox_id), other.process(outbox_id))

    assert outcomes.count(OutboxStatus.SENT) == 1
    assert outcomes.count(None) == 1
    assert len(callback_server.attempts) == 1


async def test_row_left_sending_by_a_crashed_worker_is_sent_again_by_the_sweeper(
    outbox: Outbox, callback_server: CallbackServer
) -> None:
    message_id, outbox_id = await outbox.reply()
    now = utcnow()
    # A worker claims the row and dies before sending.
    assert await outbox.core.store.claim_outbox(outbox_id, now, now + timedelta(seconds=0.3)) is not None
    assert await outbox.worker.process(outbox_id) is None  # the claim still holds

    await outbox.worker.start()
    try:
        await callback_server.wait_for_deliveries(1, within=10)
        await wait_until(
            lambda: _status_is(outbox, message_id, "sent"), what="the message to be recorded as sent"
        )
    finally:
        await outbox.worker.stop()

    assert [d.message_id for d in callback_server.deliveries] == [message_id]
    row = await outbox.row(outbox_id)
    assert (row.status, row.attempts) == ("sent", 2)


async def _status_is(outbox: Outbox, message_id: str, status: str) -> bool:
    return (await outbox.message(message_id))["delivery_status"] == status


async def test_reply_on_a_channel_that_is_not_running_waits(
    outbox: Outbox, callback_server: CallbackServer
) -> None:
    _, outbox_id = await outbox.reply()
    await outbox.core.channels.stop_all()

    assert await outbox.worker.process(outbox_id) is OutboxStatus.QUEUED

    assert "not running" in (await outbox.row(outbox_id)).last_error
    assert callback_server.attempts == []


# The running daemon, end to end


@dataclass
class Shop:
    daemon: Daemon
    api: ApiSender

    @property
    def workspace_id(self) -> str:
        assert self.daemon.bootstrap is not None
        return self.daemon.bootstrap.workspace.id

    async def customer_writes(self, external_id: str) -> str:
        answer = await self.api.post(
            {"external_id": external_id, "sender": {"id": "cust-1"}, "text": "hello?"}
        )
        assert answer.status == 202, answer
        conversation_id: str = answer.body["conversation_id"]
        return conversation_id

    async def delivery_status(self, message_id: str) -> str:
        status: str = (await self.daemon.store.get_message(message_id, self.workspace_id))["delivery_status"]
        return status


@pytest.fixture
async def shop(
    tmp_path: Path, callback_server: CallbackServer, http_session: aiohttp.ClientSession
) -> AsyncIterator[Shop]:
    async with running_daemon(make_settings(tmp_path)) as daemon:
        assert daemon.bootstrap is not None
        channel_id = await add_channel(
            daemon.store,
            daemon.bootstrap.workspace.id,
            {"secret": SECRET, "callback_url": callback_server.url},
        )
        yield Shop(daemon, ApiSender(http_session, daemon_url(daemon), channel_id))


async def test_daemon_sends_a_reply_after_a_failed_attempt(
    shop: Shop, callback_server: CallbackServer
) -> None:
    conversation_id = await shop.customer_writes("in-1")
    callback_server.fail_next(502)

    message_id, _ = await shop.daemon.store.create_reply(
        shop.workspace_id, conversation_id, "Sorry for the wait"
    )

    deliveries = await callback_server.wait_for_deliveries(1, within=10)
    assert [(d.message_id, d.body["text"]) for d in deliveries] == [(message_id, "Sorry for the wait")]
    assert len(callback_server.attempts) == 2
    await wait_until(lambda: _is_sent(shop, message_id), what="delivery status sent")


async def _is_sent(shop: Shop, message_id: str) -> bool:
    return await shop.delivery_status(message_id) == "sent"


async def test_reply_created_while_the_bus_is_down_is_sent_when_it_is_back(
    tmp_path: Path,
    redis_server: RedisServer,
    callback_server: CallbackServer,
    http_session: aiohttp.ClientSession,
) -> None:
    settings = make_settings(tmp_path, redis_url=redis_server.url)
    async with running_daemon(settings) as daemon:
        assert daemon.bootstrap is not None
        channel_id = await add_channel(
            daemon.store,
            daemon.bootstrap.workspace.id,
            {"secret": SECRET, "callback_url": callback_server.url},
        )
        shop = Shop(daemon, ApiSender(http_session, daemon_url(daemon), channel_id))
        conversation_id = await shop.customer_writes("in-1")

        await redis_server.stop()
        message_id, _ = await daemon.store.create_reply(
            shop.workspace_id, conversation_id, "Written while Redis is down"
        )
        await asyncio.sleep(0.5)
        assert callback_server.attempts == []
        assert await shop.delivery_status(message_id) == "queued"

        await redis_server.start()
        deliveries = await callback_server.wait_for_deliveries(1, within=20)
        assert [d.message_id for d in deliveries] == [message_id]
        await wait_until(lambda: _is_sent(shop, message_id), what="delivery status sent")


class SlowApiChannel(ApiChannel):
    """The API channel as a service that allows one send per 1000 s, to exercise the outbox's rate limit."""

    capabilities = Capabilities(send_rate=0.001, send_burst=1)


async def test_rate_limit_deferral_is_not_a_send_attempt(
    app_settings: Settings, callback_server: CallbackServer
) -> None:
    async with open_core(app_settings, registry=Registry({"api": SlowApiChannel})) as core:
        channel_id = await core.add_channel({"secret": SECRET, "callback_url": callback_server.url})
        await core.adapter(channel_id)
        conversation_id = (await core.ingest(inbound(channel_id, "in-1"))).conversation_id
        worker = make_worker(core)
        _, first = await core.store.create_reply(core.workspace.id, conversation_id, "one")
        _, second = await core.store.create_reply(core.workspace.id, conversation_id, "two")

        assert await worker.process(first) is OutboxStatus.SENT
        assert await worker.process(second) is OutboxStatus.QUEUED  # deferred: no token left

        assert len(callback_server.attempts) == 1
        rows = await sql(core.store, "SELECT attempts, last_error FROM outbox WHERE id = :id", id=second)
        assert tuple(rows[0]) == (0, None)


# Delivery status on the live stream


async def test_each_recorded_outcome_is_published_as_message_delivery(
    outbox: Outbox, callback_server: CallbackServer
) -> None:
    workspace_id = outbox.core.workspace.id
    async with subscribed(outbox.core.bus, workspace_id) as events:
        message_id, outbox_id = await outbox.reply()
        callback_server.fail_next(503)
        assert await outbox.worker.process(outbox_id) is OutboxStatus.QUEUED
        queued = await next_event(events)
        assert (queued.type, queued.workspace_id, queued.conversation_id) == (
            "message.delivery",
            workspace_id,
            outbox.conversation_id,
        )
        assert {k: v for k, v in queued.data.items() if k != "error"} == {
            "message_id": message_id,
            "conversation_id": outbox.conversation_id,
            "delivery_status": "queued",
        }
        assert "503" in queued.data["error"]

        await asyncio.sleep(0.1)
        assert await outbox.worker.process(outbox_id) is OutboxStatus.SENT
        sent = await next_event(events)
        assert sent.data == {
            "message_id": message_id,
            "conversation_id": outbox.conversation_id,
            "delivery_status": "sent",
            "error": None,
        }

        failing_id, failing_outbox = await outbox.reply("this one is refused")
        callback_server.fail_next(400)
        assert await outbox.worker.process(failing_outbox) is OutboxStatus.FAILED
        failed = await next_event(events)
        assert (failed.data["message_id"], failed.data["delivery_status"]) == (failing_id, "failed")
        assert "400" in failed.data["error"]

        # Not due, or nothing recorded: nothing published.
        assert await outbox.worker.process(outbox_id) is None
        with pytest.raises(TimeoutError):
            await next_event(events, within=0.2)


class BusThatCannotPublish(InProcessBus):
    """A bus whose events go nowhere (Redis down for publishing), while its queues work."""

    async def publish(self, event: Event) -> None:
        raise BusUnavailable("redis: down for this test")


async def test_delivery_status_is_recorded_when_it_cannot_be_published(
    app_settings: Settings, callback_server: CallbackServer
) -> None:
    async with open_core(app_settings, bus=BusThatCannotPublish()) as core:
        channel_id = await core.add_channel({"secret": SECRET, "callback_url": callback_server.url})
        await core.adapter(channel_id)
        conversation_id = (await core.ingest(inbound(channel_id, "in-1"))).conversation_id
        message_id, outbox_id = await core.store.create_reply(core.workspace.id, conversation_id, "hi")

        assert await make_worker(core).process(outbox_id) is OutboxStatus.SENT

        message = await core.store.get_message(message_id, core.workspace.id)
        assert message["delivery_status"] == "sent"
