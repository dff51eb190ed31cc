"""Failure behaviour of the real daemon (a subprocess): kill -9, SIGTERM, Redis down or flushed, hostile input.

Every test runs `python -m aggregator serve` with its own data dir and port, drives it over HTTP as a
shop would (signed POSTs in, a callback server for replies out), and checks the outcome in the SQLite
file. The guarantee under test (DESIGN.md): a message acknowledged to its source is stored exactly
once, a reply is never lost and never sent twice except the one in flight at a crash, and nothing that
matters lives only in Redis.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from aggregator.secrets import SecretBox
from aggregator.store import Store
from channels.api import sign
from channels.api.adapter import SIGNATURE_HEADER
from fakes.callback import CallbackServer
from support.daemon_process import DaemonProcess
from support.redis_server import RedisServer

SECRET = "failure-tests-secret-0123456789"
CONNECTION_ERRORS = (aiohttp.ClientConnectionError, asyncio.TimeoutError)

MakeDaemon = Callable[..., Awaitable[DaemonProcess]]
MakeCallback = Callable[..., Awaitable[CallbackServer]]


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
async def make_daemon(tmp_path: Path) -> AsyncIterator[MakeDaemon]:
    """Factory of daemon installations; killed at teardown, their log tails printed (shown on failure)."""
    daemons: list[DaemonProcess] = []

    async def make(**options: Any) -> DaemonProcess:
        daemon = DaemonProcess(tmp_path / f"daemon{len(daemons)}", **options)
        daemons.append(daemon)
        return daemon

    yield make
    for daemon in daemons:
        await daemon.close()
        print(daemon.log_tail(8000))


@pytest.fixture
async def make_callback() -> AsyncIterator[MakeCallback]:
    """Factory of started callback servers, closed at teardown."""
    callbacks: list[CallbackServer] = []

    async def make(**options: Any) -> CallbackServer:
        callback = CallbackServer(SECRET, external_id_format="shop-{message_id}", **options)
        await callback.start()
        callbacks.append(callback)
        return callback

    yield make
    for callback in callbacks:
        await callback.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


# --------------------------------------------------------------------------------------------------
# The shop's side: signed messages in, with a record of what was acknowledged


def message_body(external_id: str, sender: str, text: str | None = None, **extra: Any) -> bytes:
    payload = {"external_id": external_id, "sender": {"id": sender, "name": f"Customer {sender}"}}
    payload["text"] = text if text is not None else f"message {external_id}"
    payload.update(extra)
    return json.dumps(payload).encode()


@dataclass
class Outcome:
    """What the client saw for each external_id it sent."""

    acked: dict[str, dict[str, Any]] = field(default_factory=dict)
    acked_status: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def unacked(self) -> set[str]:
        return set(self.refused) - set(self.acked)


async def post_signed(
    http: aiohttp.ClientSession, url: str, body: bytes, seconds: float = 15.0
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(SECRET, body)}
    async with http.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=seconds)) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


async def flood(
    http: aiohttp.ClientSession,
    url: str,
    messages: Iterable[tuple[str, bytes]],
    outcome: Outcome,
    *,
    concurrency: int = 8,
) -> Outcome:
    """Send every (external_id, body) with `concurrency` clients; record 2xx answers and everything else."""
    pending = iter(list(messages))

    async def client() -> None:
        for external_id, body in pending:
            try:
                status, answer = await post_signed(http, url, body)
            except CONNECTION_ERRORS as exc:
                outcome.errors[type(exc).__name__] += 1
                outcome.refused[external_id] = type(exc).__name__
                continue
            outcome.statuses[status] += 1
            if 200 <= status < 300:
                outcome.acked[external_id] = answer
                outcome.acked_status[external_id] = status
                outcome.refused.pop(external_id, None)
            else:
                outcome.refused[external_id] = f"HTTP {status}: {str(answer)[:200]}"

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return outcome


async def wait_until(predicate: Callable[[], bool], within: float, interval: float = 0.05) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


def inbound_by_external_id(daemon: DaemonProcess, channel_id: str) -> dict[str, list[str]]:
    """external_id -> the ids of the inbound messages stored under it (one, when all is well)."""
    stored: dict[str, list[str]] = {}
    for external_id, message_id in daemon.query(
        "SELECT external_id, id FROM messages WHERE channel_account_id = ? AND direction = 'in'", channel_id
    ):
        stored.setdefault(external_id, []).append(message_id)
    return stored


def outbox_status(daemon: DaemonProcess) -> dict[str, str]:
    """message_id -> outbox status, for every reply."""
    return dict(daemon.query("SELECT message_id, status FROM outbox"))


def workspace_id(daemon: DaemonProcess) -> str:
    return str(daemon.scalar("SELECT id FROM workspaces WHERE name = 'default'"))


def open_store(daemon: DaemonProcess) -> Store:
    """The daemon's own database, opened from the test process (SQLite WAL: both may write)."""
    return Store.open(daemon.database_url, SecretBox.load(daemon.data_dir, None))


async def create_replies(
    daemon: DaemonProcess, conversations: Sequence[str], per_conversation: int
) -> list[str]:
    """Write replies (message + outbox row, as the API does) into the daemon's database, running or not."""
    store = open_store(daemon)
    try:
        workspace = workspace_id(daemon)
        replies = []
        for number in range(per_conversation):
            for conversation in conversations:
                message_id, _ = await store.create_reply(workspace, conversation, f"reply {number}")
                replies.append(message_id)
        return replies
    finally:
        await store.close()


async def inbound_conversations(
    http: aiohttp.ClientSession, daemon: DaemonProcess, channel_id: str, count: int, prefix: str
) -> list[str]:
    """`count` customers write in; the ids of their conversations."""
    conversations = []
    for number in range(count):
        status, answer = await post_signed(
            http,
            daemon.api_url(channel_id),
            message_body(f"{prefix}-{number}", f"{prefix}-customer-{number}"),
        )
        assert status == 202, f"inbound message answered {status}: {answer}\n{daemon.log_tail()}"
        conversations.append(answer["conversation_id"])
    return conversations


# --------------------------------------------------------------------------------------------------
# 1. kill -9 during an inbound flood


@pytest.mark.timeout(150)
async def test_kill9_during_inbound_flood_stores_every_acknowledged_message_exactly_once(
    make_daemon: MakeDaemon, http: aiohttp.ClientSession
) -> None:
    total, kill_after, senders = 3000, 1000, 50
    daemon = await make_daemon()
    channel = await daemon.add_api_channel("shop", SECRET)
    await daemon.start()
    url = daemon.api_url(channel)
    bodies = {f"flood-{n}": message_body(f"flood-{n}", f"customer-{n % senders}") for n in range(total)}

    first = Outcome()
    flooding = asyncio.create_task(flood(http, url, bodies.items(), first))
    landed = await wait_until(lambda: len(first.acked) >= kill_after or flooding.done(), within=60)
    await daemon.kill()
    acked_at_kill = len(first.acked)
    await flooding
    assert landed and acked_at_kill < total, f"the kill did not land mid-flood ({acked_at_kill} acked)"
    assert first.unacked, "every message was acknowledged: the kill did not interrupt the flood"
    assert set(first.statuses) <= {202}, f"unexpected answers before the kill: {first.statuses}"

    await daemon.restart()
    # The client retries everything unacknowledged, and re-sends a sample of what was acknowledged.
    unacked = sorted(first.unacked)
    sample = random.Random(1).sample(sorted(first.acked), min(300, len(first.acked)))
    retry = await flood(http, url, [(x, bodies[x]) for x in unacked + sample], Outcome())
    assert not retry.refused, f"retries after the restart refused: {list(retry.refused.items())[:5]}"

    stored = inbound_by_external_id(daemon, channel)
    doubled = {x: ids for x, ids in stored.items() if len(ids) != 1}
    assert not doubled, f"{len(doubled)} external ids stored more than once, e.g. {list(doubled.items())[:3]}"
    assert set(stored) == set(bodies), (
        f"missing: {sorted(set(bodies) - set(stored))[:5]}, unexpected: {sorted(set(stored) - set(bodies))[:5]}"
    )
    assert daemon.scalar(
        "SELECT COUNT(*) FROM messages WHERE channel_account_id = ? AND direction = 'in'", channel
    ) == len(bodies)
    for external_id, answer in first.acked.items():
        assert stored[external_id] == [answer["message_id"]], f"{external_id}: acked id is not the stored one"
    for external_id in sample:
        assert retry.acked_status[external_id] == 200, f"re-sent {external_id} was not answered as a repeat"
        assert retry.acked[external_id]["message_id"] == first.acked[external_id]["message_id"]
        assert retry.acked[external_id]["conversation_id"] == first.acked[external_id]["conversation_id"]
    for external_id in unacked:
        assert stored[external_id] == [retry.acked[external_id]["message_id"]]
    # One contact per customer, whatever was interrupted.
    identities = daemon.scalar("SELECT COUNT(*) FROM identities WHERE kind = 'api'")
    assert identities == senders, f"{identities} identities for {senders} customers"
    assert daemon.scalar("SELECT COUNT(*) FROM contacts") == senders


# --------------------------------------------------------------------------------------------------
# 2. kill -9 while the outbox is sending


@pytest.mark.timeout(120)
async def test_kill9_while_sending_replies_delivers_each_once_except_those_in_flight(
    make_daemon: MakeDaemon, make_callback: MakeCallback, http: aiohttp.ClientSession
) -> None:
    workers = 4
    callback = await make_callback(delay=0.02)
    # A send timeout far above the callback's delay: a retry after a timeout would be a legitimate repeat.
    daemon = await make_daemon(outbox={"workers": workers, "send_timeout_seconds": 2.0})
    channel = await daemon.add_api_channel("shop", SECRET, callback.url)
    await daemon.start()
    conversations = await inbound_conversations(http, daemon, channel, 20, "out")
    # The replies are written while the daemon is down, so that it starts on all 200 at once.
    assert await daemon.terminate() == 0
    replies = await create_replies(daemon, conversations, 10)
    assert len(set(replies)) == 200
    await daemon.restart()

    landed = await callback.wait_for(lambda cb: len(cb.counts(accepted_only=False)) >= 100, within=30)
    await daemon.kill()
    # Requests the daemon wrote just before dying may still be read by the callback (same event loop).
    await asyncio.sleep(0.3)
    arrived_before_kill = set(callback.counts(accepted_only=False))
    at_kill = outbox_status(daemon)
    assert landed, f"only {len(arrived_before_kill)} replies reached the callback\n{daemon.log_tail()}"
    assert len(arrived_before_kill) < len(replies), "every reply was sent before the kill"

    await daemon.restart()
    all_sent = await wait_until(
        lambda: set(outbox_status(daemon).values()) == {"sent"}, within=45, interval=0.2
    )
    final = outbox_status(daemon)
    assert all_sent, f"not all replies sent after the restart: {Counter(final.values())}\n{daemon.log_tail()}"
    await asyncio.sleep(0.5)  # anything still to arrive would be a duplicate

    counts = callback.counts(accepted_only=False)
    assert callback.rejected_signatures == 0 and callback.malformed == 0
    assert set(counts) == set(replies), (
        f"missing: {sorted(set(replies) - set(counts))[:5]}, unknown: {sorted(set(counts) - set(replies))[:5]}"
    )
    duplicates = {m: n for m, n in counts.items() if n > 1}
    in_flight = {m for m, status in at_kill.items() if status == "sending"}
    print(
        f"at the kill: {Counter(at_kill.values())}, {len(arrived_before_kill)} arrived; "
        f"after the restart: {len(duplicates)} delivered twice"
    )
    assert set(duplicates) <= in_flight & arrived_before_kill, (
        f"sent twice though not in flight at the kill: {set(duplicates) - (in_flight & arrived_before_kill)}; "
        f"status at kill: {Counter(at_kill[m] for m in duplicates)}"
    )
    assert all(n == 2 for n in duplicates.values()), f"sent more than twice: {duplicates}"
    assert len(duplicates) <= workers, f"{len(duplicates)} duplicates with {workers} workers"
    sent_at_kill = {m for m, status in at_kill.items() if status == "sent"}
    assert all(counts[m] == 1 for m in sent_at_kill)
    assert set(final) == set(replies)
    rows = daemon.query("SELECT id, delivery_status, external_id FROM messages WHERE direction = 'out'")
    assert {(m, "sent", f"shop-{m}") for m in replies} == set(rows)


@pytest.mark.timeout(90)
async def test_sigterm_while_sending_replies_finishes_sends_and_duplicates_nothing(
    make_daemon: MakeDaemon, make_callback: MakeCallback, http: aiohttp.ClientSession
) -> None:
    callback = await make_callback(delay=0.05)
    daemon = await make_daemon(outbox={"send_timeout_seconds": 3.0})
    channel = await daemon.add_api_channel("shop", SECRET, callback.url)
    await daemon.start()
    conversations = await inbound_conversations(http, daemon, channel, 10, "term-out")
    assert await daemon.terminate() == 0
    replies = await create_replies(daemon, conversations, 10)
    await daemon.restart()
    assert await callback.wait_for(lambda cb: len(cb.deliveries) >= 30, within=30), daemon.log_tail()

    started = time.monotonic()
    code = await daemon.terminate(within=20)
    took = time.monotonic() - started
    at_exit = outbox_status(daemon)
    assert code == 0 and took < 10, f"exit {code} after {took:.1f}s\n{daemon.log_tail()}"
    assert "sending" not in at_exit.values(), f"sends left unfinished at exit: {Counter(at_exit.values())}"
    assert len(callback.counts()) < len(replies), "every reply was sent before SIGTERM"

    await daemon.restart()
    assert await wait_until(lambda: set(outbox_status(daemon).values()) == {"sent"}, within=30, interval=0.2)
    await asyncio.sleep(0.3)
    counts = callback.counts(accepted_only=False)
    assert set(counts) == set(replies)
    assert max(counts.values()) == 1, (
        f"sent twice after a clean stop: {[m for m, n in counts.items() if n > 1]}"
    )
    attempts = Counter(n for (n,) in daemon.query("SELECT attempts FROM outbox"))
    assert set(attempts) == {1}, f"attempts per reply: {attempts} (a clean stop should cost no attempt)"


# --------------------------------------------------------------------------------------------------
# 3. Redis stopped mid-run


@pytest.mark.timeout(120)
async def test_redis_down_inbound_still_stored_and_outbound_resumes_when_it_is_back(
    make_daemon: MakeDaemon,
    make_callback: MakeCallback,
    redis_server: RedisServer,
    http: aiohttp.ClientSession,
) -> None:
    callback = await make_callback()
    daemon = await make_daemon(redis_url=redis_server.url)
    channel = await daemon.add_api_channel("shop", SECRET, callback.url)
    await daemon.start()
    url = daemon.api_url(channel)

    # With Redis up: the whole path works.
    conversations = await inbound_conversations(http, daemon, channel, 5, "up")
    first = await create_replies(daemon, conversations[:1], 1)
    assert await callback.wait_for(lambda cb: set(cb.counts()) >= set(first), within=15), daemon.log_tail()
    assert (await daemon.readyz())[0] == 200

    await redis_server.stop()
    status, ready = await daemon.readyz()
    assert status == 503, ready
    assert ready["checks"]["store"] == "ok" and ready["checks"]["bus"].startswith("unavailable"), ready

    started = time.monotonic()
    down = await flood(
        http,
        url,
        [(f"down-{n}", message_body(f"down-{n}", f"down-customer-{n % 10}")) for n in range(100)],
        Outcome(),
    )
    took = time.monotonic() - started
    assert not down.refused, f"inbound refused while Redis is down: {list(down.refused.items())[:5]}"
    assert set(down.acked_status.values()) == {202}
    stored = inbound_by_external_id(daemon, channel)
    assert all(stored.get(x) == [a["message_id"]] for x, a in down.acked.items())
    assert took < 20, f"100 messages took {took:.1f}s with Redis down"

    replies = await create_replies(daemon, conversations, 6)
    await asyncio.sleep(1.0)
    assert "failed" not in outbox_status(daemon).values(), "a reply was given up while Redis was down"

    await redis_server.start()
    delivered = await callback.wait_for(lambda cb: set(cb.counts()) >= set(replies), within=30)
    missing = set(replies) - set(callback.counts())
    assert delivered, (
        f"{len(missing)} of {len(replies)} replies not delivered after Redis came back\n{daemon.log_tail()}"
    )
    assert await wait_until(lambda: set(outbox_status(daemon).values()) == {"sent"}, within=10)
    assert max(callback.counts().values()) == 1, "a reply was delivered twice"

    ready_again = False
    for _ in range(50):
        if (await daemon.readyz())[0] == 200:
            ready_again = True
            break
        await asyncio.sleep(0.1)
    assert ready_again, await daemon.readyz()
    status, answer = await post_signed(http, url, message_body("after-redis", "up-customer-0"))
    assert status == 202, answer


@pytest.mark.timeout(90)
async def test_sigterm_while_redis_is_down_exits_promptly_with_everything_stored(
    make_daemon: MakeDaemon, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    daemon = await make_daemon(redis_url=redis_server.url)
    channel = await daemon.add_api_channel("shop", SECRET)
    await daemon.start()
    await redis_server.stop()
    # Each new customer makes two live events (conversation.created, message.created) nobody can receive.
    outcome = await flood(
        http,
        daemon.api_url(channel),
        [(f"d-{n}", message_body(f"d-{n}", f"customer-{n}")) for n in range(500)],
        Outcome(),
    )
    assert not outcome.refused, list(outcome.refused.items())[:5]
    started = time.monotonic()
    code = await daemon.terminate(within=30)
    took = time.monotonic() - started
    assert code == 0, daemon.log_tail()
    assert took < 10, f"SIGTERM took {took:.1f}s with Redis down\n{daemon.log_tail()}"
    assert set(inbound_by_external_id(daemon, channel)) == set(outcome.acked)


# --------------------------------------------------------------------------------------------------
# 4. Redis flushed


@pytest.mark.timeout(120)
async def test_redis_flushall_replies_in_retry_still_delivered_and_inbound_works(
    make_daemon: MakeDaemon,
    make_callback: MakeCallback,
    redis_server: RedisServer,
    http: aiohttp.ClientSession,
) -> None:
    callback = await make_callback(status=500)
    daemon = await make_daemon(
        redis_url=redis_server.url,
        outbox={"backoff_base_seconds": 0.3, "backoff_max_seconds": 1.0, "max_attempts": 10_000},
    )
    channel = await daemon.add_api_channel("shop", SECRET, callback.url)
    await daemon.start()
    conversations = await inbound_conversations(http, daemon, channel, 10, "flush")
    replies = await create_replies(daemon, conversations, 2)

    def attempts() -> list[int]:
        return [int(n) for (n,) in daemon.query("SELECT attempts FROM outbox")]

    in_retry = await wait_until(lambda: len(attempts()) == len(replies) and min(attempts()) >= 2, within=30)
    assert in_retry, f"replies not retried against the failing callback: {attempts()}\n{daemon.log_tail()}"
    assert set(outbox_status(daemon).values()) <= {"queued", "sending"}
    assert not callback.counts(), "a 500 was counted as delivered"

    redis = Redis.from_url(redis_server.url)
    try:
        assert await redis.dbsize() > 0, "the daemon keeps nothing in Redis: the flush would test nothing"
        await redis.flushall()
    finally:
        await redis.aclose()
    callback.status = 200
    flushed_at = time.monotonic()

    delivered = await callback.wait_for(lambda cb: set(cb.counts()) >= set(replies), within=60)
    took = time.monotonic() - flushed_at
    missing = set(replies) - set(callback.counts())
    assert delivered, f"{len(missing)} replies never delivered after FLUSHALL\n{daemon.log_tail()}"
    assert await wait_until(lambda: set(outbox_status(daemon).values()) == {"sent"}, within=10)
    assert max(callback.counts().values()) == 1
    print(f"all replies delivered {took:.1f}s after FLUSHALL")

    status, answer = await post_signed(
        http, daemon.api_url(channel), message_body("after-flush", "new-customer")
    )
    assert status == 202, answer
    assert daemon.scalar("SELECT COUNT(*) FROM messages WHERE external_id = 'after-flush'") == 1


# --------------------------------------------------------------------------------------------------
# 5. SIGTERM during a flood


@pytest.mark.timeout(120)
async def test_sigterm_during_flood_exits_0_and_every_2xx_is_stored(
    make_daemon: MakeDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await make_daemon()
    channel = await daemon.add_api_channel("shop", SECRET)
    await daemon.start()
    url = daemon.api_url(channel)
    bodies = {f"term-{n}": message_body(f"term-{n}", f"customer-{n % 40}") for n in range(3000)}

    outcome = Outcome()
    flooding = asyncio.create_task(flood(http, url, bodies.items(), outcome))
    landed = await wait_until(lambda: len(outcome.acked) >= 500 or flooding.done(), within=60)
    started = time.monotonic()
    code = await daemon.terminate(within=20)
    took = time.monotonic() - started
    await flooding

    print(
        f"SIGTERM: exit {code} after {took:.2f}s; {len(outcome.acked)} acked, {outcome.statuses}, {outcome.errors}"
    )
    assert landed and outcome.unacked, f"SIGTERM did not land mid-flood: {len(outcome.acked)} acked"
    assert code == 0, f"exit code {code} after SIGTERM\n{daemon.log_tail()}"
    assert took < 10, f"took {took:.1f}s to stop"
    assert set(outcome.statuses) <= {202, 503}, f"answers: {outcome.statuses}"
    stored = inbound_by_external_id(daemon, channel)
    not_stored = set(outcome.acked) - set(stored)
    assert not not_stored, f"{len(not_stored)} acknowledged but not stored, e.g. {sorted(not_stored)[:5]}"
    assert all(stored[x] == [a["message_id"]] for x, a in outcome.acked.items())
    assert all(len(ids) == 1 for ids in stored.values())
    log = daemon.log_path.read_text(errors="replace")
    assert "Traceback" not in log, daemon.log_tail()

    # After a restart the refused ones go through.
    await daemon.restart()
    retry = await flood(http, url, [(x, bodies[x]) for x in sorted(outcome.unacked)], Outcome())
    assert not retry.refused
    assert set(inbound_by_external_id(daemon, channel)) == set(bodies)


@pytest.mark.timeout(60)
async def test_sigterm_finishes_a_request_whose_body_is_still_arriving(
    make_daemon: MakeDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await make_daemon()
    channel = await daemon.add_api_channel("shop", SECRET)
    await daemon.start()
    url = daemon.api_url(channel)
    # A mobile client on a slow link: the body arrives over about a second.
    bodies = {f"slow-{n}": message_body(f"slow-{n}", "slow-customer", "s" * 20_000) for n in range(3)}
    uploads = [
        asyncio.create_task(post_signed_stream(http, url, body, piece=1000, pause=0.05))
        for body in bodies.values()
    ]
    await asyncio.sleep(0.3)
    started = time.monotonic()
    try:
        code = await daemon.terminate(within=6)
    finally:
        answers = await asyncio.gather(*uploads, return_exceptions=True)
    assert code == 0 and time.monotonic() - started < 6
    stored = inbound_by_external_id(daemon, channel)
    for external_id, answer in zip(bodies, answers, strict=True):
        assert isinstance(answer, tuple) and answer[0] == 202, (
            f"in flight at SIGTERM, {external_id}: {answer!r}"
        )
        assert stored.get(external_id) == [json.loads(answer[1])["message_id"]]


# --------------------------------------------------------------------------------------------------
# 6. Malformed and hostile input


def hostile_json_bodies() -> list[bytes]:
    """Signed, well-formed HTTP, but not an acceptable message: each must be answered 400."""
    valid = {"external_id": "h", "sender": {"id": "c"}, "text": "t"}

    def variant(**changes: Any) -> bytes:
        return json.dumps({**valid, **changes}).encode()

    return [
        b"",
        b"null",
        b"[]",
        b'"a string"',
        b"1e999999",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"external_id":"h","sender":{"id":"c"},"text":"t","n":' + b"9" * 10_000 + b"}",
        b'{"external_id":"h","sender":{"id":"c"},"text":"t"',
        b'{"external_id":"\xe9","sender":{"id":"c"},"text":"t"}',
        variant(external_id=""),
        variant(external_id="x" * 513),
        variant(external_id=None),
        variant(external_id=["a"]),
        variant(sender="c"),
        variant(sender={"id": ""}),
        variant(sender={"name": "no id"}),
        variant(sender={"id": "c", "name": "n" * 401}),
        variant(text=None),
        variant(text=5),
        variant(text="\ud800"),
        variant(external_id="\udc00"),
        variant(text="x" * 1_000_001),
        variant(thread_id=""),
        variant(sent_at="yesterday"),
        variant(sent_at="2024-01-01T00:00:00"),
        variant(sent_at="0001-01-01T00:00:00+05:00"),
        variant(sent_at="9999-12-31T23:59:59-05:00"),
        variant(attachments="nope"),
        variant(attachments=[{"filename": "a.txt", "data_base64": "not base64!"}]),
        variant(attachments=[{"filename": "", "data_base64": "aGVsbG8="}]),
        variant(attachments=[{"filename": "a.txt"}]),
        variant(attachments=[{"filename": "a", "data_base64": "aGk="}] * 101),
    ]


def junk_signatures(rng: random.Random, body: bytes) -> list[dict[str, str]]:
    right = sign(SECRET, body)
    return [
        {},
        {SIGNATURE_HEADER: ""},
        {SIGNATURE_HEADER: right[7:]},
        {SIGNATURE_HEADER: "sha1=" + right[7:]},
        {SIGNATURE_HEADER: right.upper()},
        {SIGNATURE_HEADER: right[:-1]},
        {SIGNATURE_HEADER: right + "0"},
        {SIGNATURE_HEADER: sign("another-secret-of-enough-length", body)},
        {SIGNATURE_HEADER: sign(SECRET, body + b" ")},
        {SIGNATURE_HEADER: "sha256=" + rng.randbytes(32).hex()},
        {SIGNATURE_HEADER: rng.randbytes(40).hex()},
    ]


@pytest.mark.timeout(120)
async def test_hostile_input_is_refused_without_harm(
    make_daemon: MakeDaemon, http: aiohttp.ClientSession
) -> None:
    limit = 2 * 1024 * 1024
    daemon = await make_daemon(http={"max_body_bytes": limit})
    channel = await daemon.add_api_channel("shop", SECRET)
    await daemon.start()
    url = daemon.api_url(channel)
    rng = random.Random(6)
    answers: Counter[int] = Counter()
    surprises: list[str] = []

    async def send(body: bytes, headers: dict[str, str], expected: set[int], what: str) -> None:
        data = io.BytesIO(body) if len(body) > 1_000_000 else body  # aiohttp warns about big bytes
        async with http.post(url, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as r:
            text = await r.text()
            answers[r.status] += 1
            if r.status not in expected:
                surprises.append(f"{what}: {r.status} {text[:200]}")
            elif r.content_type != "application/json" or "error" not in json.loads(text):
                surprises.append(f"{what}: {r.status} without a JSON error: {text[:200]}")

    jobs: list[tuple[bytes, dict[str, str], set[int], str]] = []
    for n in range(1000):
        body = rng.randbytes(rng.choice([0, 1, 16, 200, 3000, 70_000]))
        if rng.random() < 0.3:  # junk that starts like a message
            body = b'{"external_id": "r' + str(n).encode() + b'", ' + body
        jobs.append((body, {SIGNATURE_HEADER: sign(SECRET, body)}, {400}, f"random bytes #{n} signed"))
        wrong = rng.choice(junk_signatures(rng, body))
        jobs.append((body, wrong, {401}, f"random bytes #{n} with signature {wrong}"))
    for n, body in enumerate(hostile_json_bodies()):
        jobs.append(
            (body, {SIGNATURE_HEADER: sign(SECRET, body)}, {400}, f"hostile json #{n}: {body[:80]!r}")
        )
        for wrong in junk_signatures(rng, body):
            jobs.append((body, wrong, {401}, f"hostile json #{n} with signature {wrong}"))
    over = message_body("too-big", "c", "x" * (limit + 10))
    jobs.append((over, {SIGNATURE_HEADER: sign(SECRET, over)}, {413}, "over the limit, signed"))
    jobs.append((over, {}, {413}, "over the limit, unsigned"))

    queue = iter(jobs)

    async def client() -> None:
        for job in queue:
            await send(*job)

    await asyncio.gather(*(client() for _ in range(8)))
    assert not surprises, f"{len(surprises)} unexpected answers ({answers}):\n" + "\n".join(surprises[:15])
    assert set(answers) <= {400, 401, 413}
    async with http.get(f"{daemon.base_url}/healthz") as r:
        assert r.status == 200
    assert (await daemon.readyz())[0] == 200
    assert daemon.scalar("SELECT COUNT(*) FROM messages") == 0, "a refused request stored something"
    assert "Traceback" not in daemon.log_path.read_text(errors="replace"), daemon.log_tail()

    # A 50 MB body is refused without being buffered: declared (Content-Length) and streamed (chunked).
    before = daemon.rss_kib()
    fifty = b"x" * (50 * 1024 * 1024)
    bodies: list[tuple[str, Any]] = [
        ("50 MB with Content-Length", io.BytesIO(fifty)),
        ("50 MB chunked", stream(fifty, 256 * 1024)),
    ]
    for what, body in bodies:
        headers = {SIGNATURE_HEADER: sign(SECRET, b"whatever")}
        try:
            async with http.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=60)
            ) as r:
                assert r.status == 413, f"{what}: {r.status} {await r.text()}"
        except aiohttp.ClientOSError:
            pass  # the daemon answered 413 and closed the connection while the client was still writing
    grown = (daemon.rss_kib() - before) / 1024
    assert grown < 20, f"the daemon's RSS grew by {grown:.0f} MiB for refused 50 MB bodies"
    del fifty

    # Legitimate messages still go through: a big one arriving in many pieces, and odd but valid ones.
    big = message_body("big", "c", "é" * (limit // 8))  # JSON-escaped: 6 bytes each
    status, answer = await post_signed_stream(http, url, big)
    assert status == 202, f"a valid {len(big)}-byte message sent in pieces: {status} {answer}"
    odd = [
        message_body("nul\u0000id", "c\u0000", "text with \u0000 NUL"),
        message_body("emoji-🙂", "c🙂", "🙂" * 1000, thread_id="🧵"),
        message_body("deep", "c", "t", extra={"x": json.loads("[" * 500 + "]" * 500)}),
        message_body("tz", "c", "t", sent_at="2024-02-29T23:59:59.999999-12:00"),
    ]
    for body in odd:
        status, answer = await post_signed(http, url, body)
        assert status == 202, f"{body[:80]!r}: {status} {answer}"
    store = open_store(daemon)
    try:
        for external_id in ("big", "nul\u0000id", "emoji-🙂", "deep", "tz"):
            (message_id,) = daemon.query("SELECT id FROM messages WHERE external_id = ?", external_id)[0]
            stored = await store.get_message(message_id, workspace_id(daemon))
            assert stored["external_id"] == external_id
    finally:
        await store.close()
    assert (await daemon.readyz())[0] == 200


async def stream(data: bytes, piece: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


async def post_signed_stream(
    http: aiohttp.ClientSession, url: str, body: bytes, piece: int = 16 * 1024, pause: float = 0.001
) -> tuple[int, str]:
    """POST `body` chunked, in small pieces with pauses: the server sees it arrive bit by bit."""

    async def slowly() -> AsyncIterator[bytes]:
        for start in range(0, len(body), piece):
            yield body[start : start + piece]
            await asyncio.sleep(pause)

    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(SECRET, body)}
    async with http.post(url, data=slowly(), headers=headers) as r:
        return r.status, await r.text()


@pytest.mark.timeout(60)
async def test_message_with_an_early_sent_at_is_readable_back(
    make_daemon: MakeDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await make_daemon()
    channel = await daemon.add_api_channel("shop", SECRET)
    await daemon.start()
    status, answer = await post_signed(
        http, daemon.api_url(channel), message_body("early", "c", sent_at="0999-06-01T12:00:00Z")
    )
    assert status in (202, 400), answer
    if status == 400:
        return
    store = open_store(daemon)
    try:
        stored = await store.get_message(answer["message_id"], workspace_id(daemon))
    finally:
        await store.close()
    assert stored["sent_at"].year == 999
