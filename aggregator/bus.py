"""Events and work queues between processes: Redis, or in-process when no Redis is configured.

Nothing here is the record: SQL is. The outbound queue carries outbox ids only; the outbox worker claims
the SQL row atomically, so a job delivered twice is harmless, and a sweeper re-enqueues from SQL what
Redis lost (flushed, restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from aggregator.model import Event

log = logging.getLogger(__name__)


class BusUnavailable(Exception):
    """The bus (Redis) cannot be reached; the caller keeps going from SQL."""


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of queued work. `delivery_id` identifies this delivery for ack/retry."""

    queue: str
    payload: str
    delivery_id: str
    deliveries: int


class Bus(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise BusUnavailable when the bus cannot be used."""

    async def publish(self, event: Event) -> None:
        """Fan an event out to live subscribers (best effort, at most once)."""

    async def publish_many(self, events: Sequence[Event]) -> None:
        """Publish several events at once (one round trip to Redis), in order."""

    def subscribe(self, workspace_id: str | None = None) -> Subscription:
        """Live events (of one workspace, or all); ends when the bus closes."""

    async def enqueue(self, queue: str, payload: str, delay: float = 0.0) -> None:
        """Add work; with a delay it becomes visible only after `delay` seconds."""

    async def take(self, queue: str, consumer: str, count: int = 10, block: float = 1.0) -> list[Job]:
        """Claim up to `count` jobs, waiting at most `block` seconds for the first.

        Jobs taken but neither acked nor retried within the visibility timeout (a crashed worker) are
        handed out again.
        """

    async def ack(self, job: Job) -> None: ...

    async def retry(self, job: Job, delay: float) -> None:
        """Ack this delivery and enqueue the same payload again after `delay` seconds."""

    async def queue_depth(self, queue: str) -> int: ...

    async def rate_limit(self, key: str, rate: float, burst: int) -> float:
        """Token bucket shared by all processes: 0.0 when a token was taken, else seconds to wait."""

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew the lease `name` for `owner`; False when another owner holds it."""

    async def release_lease(self, name: str, owner: str) -> None: ...


# --------------------------------------------------------------------------------------------------
# Shared pieces


def _encode_event(event: Event) -> str:
    return json.dumps(
        {
            "type": event.type,
            "workspace_id": event.workspace_id,
            "data": event.data,
            "conversation_id": event.conversation_id,
            "id": event.id,
        },
        separators=(",", ":"),
    )


def _decode_event(raw: str) -> Event:
    obj = json.loads(raw)
    return Event(
        type=str(obj["type"]),
        workspace_id=str(obj["workspace_id"]),
        data=dict(obj["data"]),
        conversation_id=None if obj.get("conversation_id") is None else str(obj["conversation_id"]),
        id=str(obj["id"]),
    )


class _Inbox:
    """A subscriber's bounded buffer: when full the oldest event goes, so publishers never wait."""

    __slots__ = ("dropped", "ended", "queue", "ready", "workspace_id")

    def __init__(self, workspace_id: str | None, maxsize: int) -> None:
        self.workspace_id = workspace_id
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=max(1, maxsize))
        self.ready = asyncio.Event()
        self.ended = False
        self.dropped = 0

    def matches(self, event: Event) -> bool:
        return self.workspace_id is None or self.workspace_id == event.workspace_id

    def _put(self, item: Event | None) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(item)

    def push(self, event: Event) -> None:
        if not self.ended:
            self._put(event)

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.ready.set()
            self._put(None)


class Subscription:
    """Live events of one workspace (or all): an AsyncIterator[Event] that also offers ready() and aclose().

    Dropping it without aclose() is tolerated: a finalizer detaches it from the bus when it is collected.
    """

    def __init__(self, inbox: _Inbox, detach: Callable[[_Inbox], None]) -> None:
        self._inbox = inbox
        self._finalizer = weakref.finalize(self, detach, inbox)
        # At interpreter exit the event loop may be gone; there is nothing left to detach from.
        self._finalizer.atexit = False

    @property
    def workspace_id(self) -> str | None:
        """The workspace followed, or None for all of them."""
        return self._inbox.workspace_id

    @property
    def dropped(self) -> int:
        """How many events were discarded because this subscriber fell behind."""
        return self._inbox.dropped

    async def ready(self) -> None:
        """Wait until events published from now on will be received (or the subscription ended)."""
        await self._inbox.ready.wait()

    async def aclose(self) -> None:
        """Stop receiving; iteration ends once the events already buffered are consumed."""
        self._finalizer()
        self._inbox.end()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        inbox = self._inbox
        if inbox.ended and inbox.queue.empty():
            raise StopAsyncIteration
        item = await inbox.queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _check_count(count: int) -> None:
    if count < 1:
        raise ValueError(f"count must be >= 1 (got {count})")


def _check_rate(rate: float, burst: int) -> None:
    if rate <= 0 or burst < 1:
        raise ValueError(f"rate must be > 0 and burst >= 1 (got rate={rate}, burst={burst})")


# --------------------------------------------------------------------------------------------------
# In-process


@dataclass(slots=True, eq=False)
class _Entry:
    id: str
    payload: str
    # Deliveries before this entry was created: a retried job carries its count on.
    prior: int
    delivered: int = 0
    gone: bool = False


@dataclass(slots=True, eq=False)
class _WorkQueue:
    ready: deque[_Entry] = field(default_factory=deque)
    delayed: list[tuple[float, int, _Entry]] = field(default_factory=list)
    inflight: dict[str, tuple[float, _Entry]] = field(default_factory=dict)
    live: dict[str, _Entry] = field(default_factory=dict)
    # Replaced on every change: a taker captures the current one right after finding nothing, so it
    # cannot miss a wake-up that happens before it starts waiting.
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class InProcessBus:
    """The bus for a single process: same behaviour as RedisBus, nothing shared, nothing survives."""

    def __init__(
        self,
        *,
        visibility_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        subscriber_buffer: int = 1000,
    ) -> None:
        self._visibility_timeout = visibility_timeout
        self._clock = clock
        self._subscriber_buffer = subscriber_buffer
        self._inboxes: set[_Inbox] = set()
        self._queues: dict[str, _WorkQueue] = {}
        self._ids = itertools.count(1)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._closed = False

    async def start(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """End all subscriptions and wake blocked takers."""
        self._closed = True
        for inbox in list(self._inboxes):
            inbox.end()
        self._inboxes.clear()
        for queue in self._queues.values():
            queue.notify()

    async def ping(self) -> None:
        """Always usable."""

    async def publish(self, event: Event) -> None:
        """Hand the event to every matching subscriber."""
        for inbox in list(self._inboxes):
            if inbox.matches(event):
                inbox.push(event)

    async def publish_many(self, events: Sequence[Event]) -> None:
        """Hand each event, in order, to every matching subscriber."""
        for event in events:
            await self.publish(event)

    def subscribe(self, workspace_id: str | None = None) -> Subscription:
        """Live events of one workspace (or all); registered at once, so ready() returns immediately."""
        inbox = _Inbox(workspace_id, self._subscriber_buffer)
        if self._closed:
            inbox.end()
        else:
            inbox.ready.set()
            self._inboxes.add(inbox)
        return Subscription(inbox, self._inboxes.discard)

    def _queue(self, name: str) -> _WorkQueue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _WorkQueue()
        return queue

    def _add(self, queue: _WorkQueue, payload: str, delay: float, prior: int) -> None:
        entry = _Entry(id=str(next(self._ids)), payload=payload, prior=prior)
        queue.live[entry.id] = entry
        if delay > 0:
            heapq.heappush(queue.delayed, (self._clock() + delay, int(entry.id), entry))
        else:
            queue.ready.append(entry)
        queue.notify()

    async def enqueue(self, queue: str, payload: str, delay: float = 0.0) -> None:
        """Add work; with a delay it becomes visible only after `delay` seconds."""
        self._add(self._queue(queue), payload, delay, 0)

    def _promote(self, queue: _WorkQueue, now: float) -> None:
        expired = [entry for deadline, entry in queue.inflight.values() if deadline <= now]
        for entry in expired:
            del queue.inflight[entry.id]
        # Reclaimed jobs are the oldest work: they go first.
        queue.ready.extendleft(reversed(expired))
        while queue.delayed and queue.delayed[0][0] <= now:
            queue.ready.append(heapq.heappop(queue.delayed)[2])

    def _next_change(self, queue: _WorkQueue, now: float) -> float | None:
        times = [deadline for deadline, _ in queue.inflight.values()]
        while queue.delayed and queue.delayed[0][2].gone:
            heapq.heappop(queue.delayed)
        if queue.delayed:
            times.append(queue.delayed[0][0])
        return max(0.0, min(times) - now) if times else None

    async def take(self, queue: str, consumer: str, count: int = 10, block: float = 1.0) -> list[Job]:
        """Claim up to `count` jobs, waiting at most `block` seconds for the first."""
        _check_count(count)
        work = self._queue(queue)
        loop = asyncio.get_running_loop()
        # Blocking is measured on the loop's clock: the injected clock may be a frozen test clock.
        give_up = loop.time() + max(0.0, block)
        while not self._closed:
            now = self._clock()
            self._promote(work, now)
            jobs: list[Job] = []
            while work.ready and len(jobs) < count:
                entry = work.ready.popleft()
                if entry.gone:
                    continue
                entry.delivered += 1
                work.inflight[entry.id] = (now + self._visibility_timeout, entry)
                jobs.append(Job(queue, entry.payload, entry.id, entry.prior + entry.delivered))
            if jobs:
                return jobs
            left = give_up - loop.time()
            if left <= 0:
                return []
            changed = work.changed
            wake = self._next_change(work, now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left if wake is None else min(left, wake))
        return []

    def _forget(self, job: Job) -> None:
        work = self._queue(job.queue)
        entry = work.live.pop(job.delivery_id, None)
        if entry is not None:
            # Lazily skipped wherever it still sits (ready deque, delayed heap).
            entry.gone = True
            work.inflight.pop(entry.id, None)

    async def ack(self, job: Job) -> None:
        """Mark the job done; acking twice or a job that is gone is harmless."""
        self._forget(job)

    async def retry(self, job: Job, delay: float) -> None:
        """Ack this delivery and enqueue the same payload again after `delay` seconds."""
        self._forget(job)
        self._add(self._queue(job.queue), job.payload, delay, job.deliveries)

    async def queue_depth(self, queue: str) -> int:
        """Jobs not yet acked: waiting, delayed or taken."""
        work = self._queues.get(queue)
        return 0 if work is None else len(work.live)

    async def rate_limit(self, key: str, rate: float, burst: int) -> float:
        """Token bucket: 0.0 when a token was taken, else seconds to wait."""
        _check_rate(rate, burst)
        now = self._clock()
        tokens, stamp = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + max(0.0, now - stamp) * rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / rate
        self._buckets[key] = (tokens, now)
        return wait

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew the lease `name` for `owner`; False when another owner holds it."""
        now = self._clock()
        held = self._leases.get(name)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._leases[name] = (owner, now + ttl)
        return True

    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up, if `owner` still holds it."""
        held = self._leases.get(name)
        if held is not None and held[0] == owner:
            del self._leases[name]


# --------------------------------------------------------------------------------------------------
# Redis

_GROUP = "workers"

# Moves due delayed jobs into the stream, makes sure the consumer group exists (it vanishes with a
# FLUSHALL or a restart without persistence), then reclaims jobs idle past the visibility timeout.
# Returns {ms until the next delayed job or -1, id1, member1, deliveries1, id2, ...}.
_TAKE_PREPARE = """
local stream, delayed = KEYS[1], KEYS[2]
local group, consumer, min_idle, count = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)
for _, member in ipairs(due) do
  redis.call('XADD', stream, '*', 'm', member)
  redis.call('ZREM', delayed, member)
end
local out = {-1}
local nxt = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
if #nxt > 0 then out[1] = math.max(0, tonumber(nxt[2]) - now) end
redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
local cursor, rounds, claimed = '0-0', 0, 0
repeat
  local res = redis.call('XAUTOCLAIM', stream, group, consumer, min_idle, cursor, 'COUNT', count - claimed)
  cursor = res[1]
  for _, entry in ipairs(res[2]) do
    local id, fields, member = entry[1], entry[2], ''
    for i = 1, #fields, 2 do
      if fields[i] == 'm' then member = fields[i + 1] end
    end
    local pending = redis.call('XPENDING', stream, group, id, id, 1)
    local n = 1
    if #pending > 0 then n = pending[1][4] end
    out[#out + 1] = id
    out[#out + 1] = member
    out[#out + 1] = n
    claimed = claimed + 1
  end
  rounds = rounds + 1
until cursor == '0-0' or claimed >= count or rounds >= 10
return out
"""

# XACK fails with NOGROUP after a FLUSHALL: the job is gone anyway, so that is not an error.
_ACK = """
redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
"""

_RETRY = """
redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local delay = tonumber(ARGV[3])
if delay > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now + delay, ARGV[4])
else
  redis.call('XADD', KEYS[1], '*', 'm', ARGV[4])
end
"""

# Delays are scored on the Redis server's clock so that hosts with skewed clocks agree on due times.
_ENQUEUE_DELAYED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
"""

# Returned as a string: Redis truncates Lua numbers to integers.
_RATE_LIMIT = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil or ts == nil then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return string.format('%.17g', wait)
"""

_LEASE_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_LEASE_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


@contextlib.contextmanager
def _unavailable_as_bus_error() -> Iterator[None]:
    try:
        yield
    except _UNAVAILABLE as exc:
        raise BusUnavailable(f"redis: {exc}") from exc


def _member(payload: str, prior: int, unique: bool) -> str:
    # A sorted set member must be unique, or two identical delayed payloads would collapse into one.
    obj: dict[str, Any] = {"p": payload, "d": prior}
    if unique:
        obj["u"] = uuid.uuid4().hex
    return json.dumps(obj, separators=(",", ":"))


def _job(queue: str, delivery_id: str, member: str, delivered: int) -> Job | None:
    try:
        obj = json.loads(member)
        return Job(queue, str(obj["p"]), delivery_id, int(obj.get("d", 0)) + delivered)
    except (ValueError, KeyError, TypeError):
        log.warning("dropping malformed entry %s on queue %s", delivery_id, queue)
        return None


def _stream_entries(response: Any) -> list[tuple[str, dict[str, str] | None]]:
    # RESP3 answers XREADGROUP with a map, RESP2 with a list of [stream, entries] pairs.
    if not response:
        return []
    pairs = response.items() if isinstance(response, dict) else response
    entries: list[tuple[str, dict[str, str] | None]] = []
    for _stream, items in pairs:
        for entry_id, fields in items:
            entries.append((str(entry_id), fields))
    return entries


class RedisBus:
    """The bus on Redis: pub/sub events, stream work queues, Lua rate limits and leases."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "aggregator",
        visibility_timeout: float = 30.0,
        subscriber_buffer: int = 1000,
        socket_timeout: float = 2.0,
        connect_timeout: float = 1.0,
        poll_interval: float = 1.0,
    ) -> None:
        self._prefix = prefix
        self._visibility_timeout = visibility_timeout
        self._subscriber_buffer = subscriber_buffer
        # A blocking read is cut into slices shorter than the socket timeout, so a dead server is
        # noticed, delayed jobs become visible on time and stale jobs are reclaimed promptly.
        self._poll_interval = max(0.01, min(poll_interval, socket_timeout / 2, visibility_timeout / 2))
        self._client = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            # One quick retry covers a pooled connection that died with a restarted server; more would
            # only delay BusUnavailable while Redis is down.
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), 1),
            health_check_interval=15,
        )
        self._take_prepare = self._client.register_script(_TAKE_PREPARE)
        self._ack = self._client.register_script(_ACK)
        self._retry = self._client.register_script(_RETRY)
        self._enqueue_delayed = self._client.register_script(_ENQUEUE_DELAYED)
        self._rate_limit = self._client.register_script(_RATE_LIMIT)
        self._lease_renew = self._client.register_script(_LEASE_RENEW)
        self._lease_release = self._client.register_script(_LEASE_RELEASE)
        self._pumps: dict[_Inbox, asyncio.Task[None]] = {}
        self._closed = asyncio.Event()

    def _stream(self, queue: str) -> str:
        return f"{self._prefix}:q:{queue}"

    def _delayed(self, queue: str) -> str:
        return f"{self._prefix}:delayed:{queue}"

    def _channel(self, workspace_id: str) -> str:
        return f"{self._prefix}:events:{workspace_id}"

    async def start(self) -> None:
        """Nothing to do up front: connections are made on use, so Redis may come up later."""

    async def close(self) -> None:
        """End all subscriptions and close the connections; safe to call twice."""
        if self._closed.is_set():
            return
        self._closed.set()
        pumps = list(self._pumps.items())
        self._pumps.clear()
        for inbox, task in pumps:
            task.cancel()
            inbox.end()
        await asyncio.gather(*(task for _, task in pumps), return_exceptions=True)
        await self._client.aclose()

    async def ping(self) -> None:
        """Raise BusUnavailable when Redis cannot be reached."""
        with _unavailable_as_bus_error():
            await self._client.ping()

    async def publish(self, event: Event) -> None:
        """Publish on the workspace's channel (at most once; nobody listening means nobody gets it)."""
        message = _encode_event(event)
        with _unavailable_as_bus_error():
            await self._client.publish(self._channel(event.workspace_id), message)

    async def publish_many(self, events: Sequence[Event]) -> None:
        """Publish the events in one pipelined round trip."""
        if not events:
            return
        with _unavailable_as_bus_error():
            async with self._client.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.publish(self._channel(event.workspace_id), _encode_event(event))
                await pipe.execute()

    def subscribe(self, workspace_id: str | None = None) -> Subscription:
        """Live events of one workspace (or all); await ready() before relying on delivery."""
        inbox = _Inbox(workspace_id, self._subscriber_buffer)
        if self._closed.is_set():
            inbox.end()
        else:
            self._pumps[inbox] = asyncio.get_running_loop().create_task(
                self._pump(inbox), name=f"bus-subscription-{workspace_id or '*'}"
            )
        return Subscription(inbox, self._detach)

    def _detach(self, inbox: _Inbox) -> None:
        task = self._pumps.pop(inbox, None)
        if task is not None:
            task.cancel()

    async def _pump(self, inbox: _Inbox) -> None:
        try:
            backoff = 0.1
            while not self._closed.is_set():
                pubsub = self._client.pubsub()
                try:
                    if inbox.workspace_id is None:
                        await pubsub.psubscribe(self._channel("*"))
                    else:
                        await pubsub.subscribe(self._channel(inbox.workspace_id))
                    while True:
                        # A finite wait lets the health check ping a connection that went silent.
                        message = await pubsub.get_message(timeout=10.0)
                        if message is None:
                            continue
                        kind = message.get("type")
                        if kind in ("subscribe", "psubscribe"):
                            inbox.ready.set()
                            backoff = 0.1
                        elif kind in ("message", "pmessage"):
                            try:
                                inbox.push(_decode_event(message["data"]))
                            except (ValueError, KeyError, TypeError):
                                log.warning("ignoring malformed event on %s", message.get("channel"))
                except _UNAVAILABLE as exc:
                    log.warning("event subscription lost (%s); reconnecting in %.1fs", exc, backoff)
                except Exception:
                    # Whatever went wrong, a live subscriber is better served by a retry than a silent end.
                    log.exception("event subscription failed; reconnecting in %.1fs", backoff)
                finally:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            # Detached, closed or cancelled: iteration ends instead of waiting forever.
            inbox.end()

    async def enqueue(self, queue: str, payload: str, delay: float = 0.0) -> None:
        """Add work to the stream, or to the delayed set until it is due."""
        with _unavailable_as_bus_error():
            if delay > 0:
                member = _member(payload, 0, unique=True)
                await self._enqueue_delayed(keys=[self._delayed(queue)], args=[_ms(delay), member])
            else:
                await self._client.xadd(self._stream(queue), {"m": _member(payload, 0, unique=False)})

    async def take(self, queue: str, consumer: str, count: int = 10, block: float = 1.0) -> list[Job]:
        """Claim up to `count` jobs (reclaimed stale ones first), waiting at most `block` seconds."""
        _check_count(count)
        stream, delayed = self._stream(queue), self._delayed(queue)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max(0.0, block)
        with _unavailable_as_bus_error():
            while True:
                prepared = await self._take_prepare(
                    keys=[stream, delayed],
                    args=[_GROUP, consumer, _ms(self._visibility_timeout), count],
                )
                next_due_ms = int(prepared[0])
                jobs: list[Job] = []
                for i in range(1, len(prepared), 3):
                    job = _job(queue, str(prepared[i]), str(prepared[i + 1]), int(prepared[i + 2]))
                    if job is not None:
                        jobs.append(job)
                if len(jobs) < count:
                    wait = 0.0
                    if not jobs:
                        wait = min(give_up - loop.time(), self._poll_interval)
                        if next_due_ms >= 0:
                            wait = min(wait, next_due_ms / 1000)
                    try:
                        response = await self._client.xreadgroup(
                            _GROUP,
                            consumer,
                            {stream: ">"},
                            count=count - len(jobs),
                            # BLOCK 0 would wait forever.
                            block=_ms(wait) if wait >= 0.001 else None,
                        )
                    except redis.exceptions.ResponseError as exc:
                        # NOGROUP: flushed between the script and the read. UNBLOCKED: flushed (or the
                        # stream deleted) while this read was blocked. The next round re-creates both.
                        if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                            raise
                        response = None
                    for entry_id, fields in _stream_entries(response):
                        job = _job(queue, entry_id, (fields or {}).get("m", ""), 1)
                        if job is not None:
                            jobs.append(job)
                if jobs or loop.time() >= give_up:
                    return jobs

    async def ack(self, job: Job) -> None:
        """Remove the job from the stream; harmless if it is already gone."""
        with _unavailable_as_bus_error():
            await self._ack(keys=[self._stream(job.queue)], args=[_GROUP, job.delivery_id])

    async def retry(self, job: Job, delay: float) -> None:
        """Ack this delivery and enqueue the same payload again after `delay` seconds, atomically."""
        member = _member(job.payload, job.deliveries, unique=True)
        with _unavailable_as_bus_error():
            await self._retry(
                keys=[self._stream(job.queue), self._delayed(job.queue)],
                args=[_GROUP, job.delivery_id, _ms(delay) if delay > 0 else 0, member],
            )

    async def queue_depth(self, queue: str) -> int:
        """Jobs not yet acked: in the stream (waiting or taken) plus delayed."""
        with _unavailable_as_bus_error():
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xlen(self._stream(queue))
                pipe.zcard(self._delayed(queue))
                in_stream, in_delayed = await pipe.execute()
        return int(in_stream) + int(in_delayed)

    async def rate_limit(self, key: str, rate: float, burst: int) -> float:
        """Token bucket shared by all processes: 0.0 when a token was taken, else seconds to wait."""
        _check_rate(rate, burst)
        with _unavailable_as_bus_error():
            wait = await self._rate_limit(keys=[f"{self._prefix}:rate:{key}"], args=[repr(rate), burst])
        return float(wait)

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew the lease `name` for `owner`; False when another owner holds it."""
        key = f"{self._prefix}:lease:{name}"
        with _unavailable_as_bus_error():
            if await self._client.set(key, owner, nx=True, px=_ms(ttl)):
                return True
            return bool(await self._lease_renew(keys=[key], args=[owner, _ms(ttl)]))

    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up, if `owner` still holds it."""
        with _unavailable_as_bus_error():
            await self._lease_release(keys=[f"{self._prefix}:lease:{name}"], args=[owner])


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def create_bus(redis_url: str | None, *, visibility_timeout: float = 30.0) -> Bus:
    """RedisBus when a Redis URL is configured, else the single-process InProcessBus."""
    if redis_url:
        return RedisBus(redis_url, visibility_timeout=visibility_timeout)
    return InProcessBus(visibility_timeout=visibility_timeout)
