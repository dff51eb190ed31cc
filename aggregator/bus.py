"""Events and work queues between processes: Redis, or in-process when no Redis is configured.

Nothing here is the record: SQL is. The outbound queue carries outbox ids only; the outbox worker claims
the SQL row atomically, so a job delivered twice is harmless, and a sweeper re-enqueues from SQL what
Redis lost (flushed, restarted). Live events are also kept (about the last thousand per workspace) so
that a stream client can resume after a reconnect; when they are lost, resuming says so (None), and the
client refetches from SQL. Presence (who is viewing or typing) lives only here, and expires.
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


# An event of this type says "events may have been lost here": whoever shows live state refetches it.
RESYNC = "resync"
# Live-only events: not kept in the resume log (they would crowd real changes out of it), not resumable.
EPHEMERAL_TYPES = frozenset({"presence"})
EVENT_LOG_LENGTH = 1000


def gap_event(workspace_id: str) -> Event:
    """A `resync` marker of a gap seen by one subscriber only: its empty id is in no log."""
    return Event(RESYNC, workspace_id, {}, id="")


@dataclass(frozen=True, slots=True)
class Presence:
    """One user's presence on a conversation: its state and the seconds until it expires."""

    user_id: str
    state: str
    expires_in: float


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of queued work. `delivery_id` identifies this delivery for ack/retry."""

    queue: str
    payload: str
    delivery_id: str
    deliveries: int


EventListener = Callable[[Event], None]


def _tell(listeners: Sequence[EventListener], events: Sequence[Event]) -> None:
    """This process's own reactions (routing, SLA, rules) hear every event it publishes, Redis or not."""
    for listener in listeners:
        for event in events:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed on %s", event.type)


class Bus(Protocol):
    # Called (synchronously, so cheaply: enqueue and return) with every event this process publishes.
    listeners: list[EventListener]

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise BusUnavailable when the bus cannot be used."""

    async def publish(self, event: Event) -> None:
        """Fan an event out to live subscribers (best effort, at most once)."""

    async def publish_many(self, events: Sequence[Event]) -> None:
        """Publish several events at once (one round trip to Redis), in order."""

    def subscribe(self, workspace_id: str | None = None, *, mark_gaps: bool = False) -> Subscription:
        """Live events (of one workspace, or all); ends when the bus closes.

        With `mark_gaps`, a `resync` event (with an empty id) is yielded wherever events may have been
        missed: after the subscriber fell behind, or after a lost connection came back.
        """

    async def recent_events(self, workspace_id: str, after_id: str) -> list[Event] | None:
        """The logged events of the workspace published after event `after_id`, oldest first.

        None when `after_id` is not in the log (too old, unknown, or the log was lost). Ephemeral
        events (EPHEMERAL_TYPES) are not logged.
        """

    async def set_presence(
        self, workspace_id: str, conversation_id: str, user_id: str, state: str | None, ttl: float
    ) -> None:
        """Record the user's presence state on the conversation for `ttl` seconds; None removes it."""

    async def presence(self, workspace_id: str, conversation_id: str) -> list[Presence]:
        """Who is present on the conversation now (expired entries left out), by user id."""

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

    __slots__ = ("dropped", "ended", "gap_pending", "mark_gaps", "queue", "ready", "workspace_id")

    def __init__(self, workspace_id: str | None, maxsize: int, mark_gaps: bool = False) -> None:
        self.workspace_id = workspace_id
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=max(1, maxsize))
        self.ready = asyncio.Event()
        self.ended = False
        self.dropped = 0
        self.mark_gaps = mark_gaps
        # The oldest buffered events were dropped: the next event handed out is a gap marker.
        self.gap_pending = False

    def matches(self, event: Event) -> bool:
        return self.workspace_id is None or self.workspace_id == event.workspace_id

    def _put(self, item: Event | None) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
            self.gap_pending = self.mark_gaps
        self.queue.put_nowait(item)

    def push_gap(self) -> None:
        """Mark, in order, that events may have been missed here (a lost connection came back)."""
        if self.mark_gaps:
            self.push(gap_event(self.workspace_id or ""))

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
        if inbox.gap_pending and not inbox.ended:
            inbox.gap_pending = False
            return gap_event(inbox.workspace_id or "")
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
        event_log: int = EVENT_LOG_LENGTH,
    ) -> None:
        self._visibility_timeout = visibility_timeout
        self._clock = clock
        self._subscriber_buffer = subscriber_buffer
        self._event_log = max(1, event_log)
        self._inboxes: set[_Inbox] = set()
        self._logs: dict[str, deque[Event]] = {}
        # (workspace, conversation) -> user -> (state, expires at on self._clock)
        self._presence: dict[tuple[str, str], dict[str, tuple[str, float]]] = {}
        self._presence_swept = clock()
        self._queues: dict[str, _WorkQueue] = {}
        self._ids = itertools.count(1)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._closed = False
        self.listeners: list[EventListener] = []

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
        """Log the event (unless ephemeral) and hand it to every matching subscriber."""
        _tell(self.listeners, (event,))
        self._deliver(event)

    def _deliver(self, event: Event) -> None:
        if event.type not in EPHEMERAL_TYPES:
            kept = self._logs.get(event.workspace_id)
            if kept is None:
                kept = self._logs[event.workspace_id] = deque(maxlen=self._event_log)
            kept.append(event)
        for inbox in list(self._inboxes):
            if inbox.matches(event):
                inbox.push(event)

    async def publish_many(self, events: Sequence[Event]) -> None:
        """Hand each event, in order, to every matching subscriber."""
        _tell(self.listeners, events)
        for event in events:
            self._deliver(event)

    async def recent_events(self, workspace_id: str, after_id: str) -> list[Event] | None:
        """The logged events after `after_id`, oldest first; None when it is not in the log."""
        kept = self._logs.get(workspace_id)
        if kept is None:
            return None
        after: list[Event] = []
        for event in reversed(kept):
            if event.id == after_id:
                after.reverse()
                return after
            after.append(event)
        return None

    def _sweep_presence(self, now: float) -> None:
        # Conversations nobody looks at again would otherwise keep their expired entries forever.
        self._presence_swept = now
        for key, users in list(self._presence.items()):
            for user_id in [u for u, (_, until) in users.items() if until <= now]:
                del users[user_id]
            if not users:
                del self._presence[key]

    async def set_presence(
        self, workspace_id: str, conversation_id: str, user_id: str, state: str | None, ttl: float
    ) -> None:
        """Record the user's presence state on the conversation for `ttl` seconds; None removes it."""
        now = self._clock()
        if now - self._presence_swept > 60.0:
            self._sweep_presence(now)
        key = (workspace_id, conversation_id)
        users = self._presence.setdefault(key, {})
        if state is None or ttl <= 0:
            users.pop(user_id, None)
        else:
            users[user_id] = (state, now + ttl)
        if not users:
            del self._presence[key]

    async def presence(self, workspace_id: str, conversation_id: str) -> list[Presence]:
        """Who is present on the conversation now, by user id."""
        now = self._clock()
        users = self._presence.get((workspace_id, conversation_id), {})
        return [
            Presence(user_id, state, until - now)
            for user_id, (state, until) in sorted(users.items())
            if until > now
        ]

    def subscribe(self, workspace_id: str | None = None, *, mark_gaps: bool = False) -> Subscription:
        """Live events of one workspace (or all); registered at once, so ready() returns immediately."""
        inbox = _Inbox(workspace_id, self._subscriber_buffer, mark_gaps)
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

# The events logged after the one with id ARGV[1], oldest first, as {1, event1, event2, ...}; {0} when
# that id is not in the log. Scanned newest first: a reconnecting client is usually a few events behind.
_RECENT_EVENTS = """
local key, want = KEYS[1], ARGV[1]
local newer = {}
local upper = '+'
for _ = 1, 100 do
  local entries = redis.call('XREVRANGE', key, upper, '-', 'COUNT', 200)
  if #entries == 0 then return {0} end
  for _, entry in ipairs(entries) do
    local fields, id, data = entry[2], '', ''
    for i = 1, #fields, 2 do
      if fields[i] == 'i' then id = fields[i + 1] elseif fields[i] == 'e' then data = fields[i + 1] end
    end
    if id == want then
      local out = {1}
      for j = #newer, 1, -1 do out[#out + 1] = newer[j] end
      return out
    end
    newer[#newer + 1] = data
  end
  upper = '(' .. entries[#entries][1]
end
return {0}
"""

# Presence: a sorted set of user ids scored by expiry (ms, Redis clock) and a hash of their states.
# ARGV: user, state ('' removes), ttl ms. Both keys expire with their last entry.
_PRESENCE_SET = """
local zkey, hkey = KEYS[1], KEYS[2]
local user, state, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', zkey, '-inf', now)
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now)
  redis.call('HDEL', hkey, unpack(gone))
end
if state == '' then
  redis.call('ZREM', zkey, user)
  redis.call('HDEL', hkey, user)
else
  redis.call('ZADD', zkey, now + ttl, user)
  redis.call('HSET', hkey, user, state)
end
local last = redis.call('ZRANGE', zkey, -1, -1, 'WITHSCORES')
if #last > 0 then
  local left = math.max(1, tonumber(last[2]) - now)
  redis.call('PEXPIRE', zkey, left)
  redis.call('PEXPIRE', hkey, left)
end
"""

# {user1, state1, ms left1, user2, ...} of the entries not expired.
_PRESENCE_GET = """
local zkey, hkey = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', zkey, '(' .. now, '+inf', 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  local state = redis.call('HGET', hkey, live[i])
  if state then
    out[#out + 1] = live[i]
    out[#out + 1] = state
    out[#out + 1] = tostring(tonumber(live[i + 1]) - now)
  end
end
return out
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
        event_log: int = EVENT_LOG_LENGTH,
    ) -> None:
        self._prefix = prefix
        self.listeners: list[EventListener] = []
        self._visibility_timeout = visibility_timeout
        self._subscriber_buffer = subscriber_buffer
        self._event_log = max(1, event_log)
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
        self._recent_events = self._client.register_script(_RECENT_EVENTS)
        self._presence_set = self._client.register_script(_PRESENCE_SET)
        self._presence_get = self._client.register_script(_PRESENCE_GET)
        self._pumps: dict[_Inbox, asyncio.Task[None]] = {}
        self._closed = asyncio.Event()
        # Workspaces with events that could not be logged: a resync marker goes into their log as soon
        # as Redis answers again, so that a client resuming across the loss is told to refetch.
        self._lost: set[str] = set()
        self._flusher: asyncio.Task[None] | None = None

    def _stream(self, queue: str) -> str:
        return f"{self._prefix}:q:{queue}"

    def _delayed(self, queue: str) -> str:
        return f"{self._prefix}:delayed:{queue}"

    def _channel(self, workspace_id: str) -> str:
        return f"{self._prefix}:events:{workspace_id}"

    def _log(self, workspace_id: str) -> str:
        return f"{self._prefix}:log:{workspace_id}"

    def _presence_keys(self, workspace_id: str, conversation_id: str) -> list[str]:
        suffix = f"{workspace_id}:{conversation_id}"
        return [f"{self._prefix}:presence:{suffix}", f"{self._prefix}:presence-state:{suffix}"]

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
        tasks = [task for _, task in pumps]
        if self._flusher is not None:
            self._flusher.cancel()
            tasks.append(self._flusher)
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    async def ping(self) -> None:
        """Raise BusUnavailable when Redis cannot be reached."""
        with _unavailable_as_bus_error():
            await self._client.ping()

    async def publish(self, event: Event) -> None:
        """Log the event (unless ephemeral) and publish it on the workspace's channel (at most once)."""
        _tell(self.listeners, (event,))
        await self._publish([event])

    async def publish_many(self, events: Sequence[Event]) -> None:
        """Log and publish the events in one pipelined round trip."""
        if events:
            _tell(self.listeners, events)
            await self._publish(events)

    async def _publish(self, events: Sequence[Event]) -> None:
        lost = list(self._lost)
        batch = [Event(RESYNC, workspace_id, {}) for workspace_id in lost]
        batch.extend(events)
        try:
            with _unavailable_as_bus_error():
                async with self._client.pipeline(transaction=False) as pipe:
                    for event in batch:
                        message = _encode_event(event)
                        # Logged before it is published, so that whoever hears of it live and then
                        # reads the log finds it there (and can drop the repeat by id).
                        if event.type not in EPHEMERAL_TYPES:
                            pipe.xadd(
                                self._log(event.workspace_id),
                                {"i": event.id, "e": message},
                                maxlen=self._event_log,
                                approximate=True,
                            )
                        pipe.publish(self._channel(event.workspace_id), message)
                    await pipe.execute()
        except BusUnavailable:
            self._mark_lost({e.workspace_id for e in events if e.type not in EPHEMERAL_TYPES})
            raise
        self._lost.difference_update(lost)

    def _mark_lost(self, workspace_ids: set[str]) -> None:
        if not workspace_ids or self._closed.is_set():
            return
        self._lost.update(workspace_ids)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_lost(), name="bus-lost-events")

    async def _flush_lost(self) -> None:
        while self._lost and not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), 0.5)
            if self._closed.is_set() or not self._lost:
                return
            with contextlib.suppress(BusUnavailable):
                await self._publish([])

    async def recent_events(self, workspace_id: str, after_id: str) -> list[Event] | None:
        """The logged events after `after_id`, oldest first; None when it is not in the log."""
        with _unavailable_as_bus_error():
            found = await self._recent_events(keys=[self._log(workspace_id)], args=[after_id])
        if not found or int(found[0]) != 1:
            return None
        events: list[Event] = []
        for raw in found[1:]:
            try:
                events.append(_decode_event(str(raw)))
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a malformed logged event of workspace %s", workspace_id)
        return events

    async def set_presence(
        self, workspace_id: str, conversation_id: str, user_id: str, state: str | None, ttl: float
    ) -> None:
        """Record the user's presence state on the conversation for `ttl` seconds; None removes it."""
        args: list[str | int] = [user_id, "", 0]
        if state is not None and ttl > 0:
            args = [user_id, state, _ms(ttl)]
        with _unavailable_as_bus_error():
            await self._presence_set(keys=self._presence_keys(workspace_id, conversation_id), args=args)

    async def presence(self, workspace_id: str, conversation_id: str) -> list[Presence]:
        """Who is present on the conversation now, by user id."""
        with _unavailable_as_bus_error():
            flat = await self._presence_get(keys=self._presence_keys(workspace_id, conversation_id))
        entries = [
            Presence(str(flat[i]), str(flat[i + 1]), float(flat[i + 2]) / 1000)
            for i in range(0, len(flat) - 2, 3)
        ]
        return sorted(entries, key=lambda entry: entry.user_id)

    def subscribe(self, workspace_id: str | None = None, *, mark_gaps: bool = False) -> Subscription:
        """Live events of one workspace (or all); await ready() before relying on delivery."""
        inbox = _Inbox(workspace_id, self._subscriber_buffer, mark_gaps)
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
            # Events published while the subscription was down were missed: say so once it is back.
            # redis-py may reconnect and subscribe again by itself: a repeated confirmation says so.
            lost = False
            confirmed = False
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
                            if lost or confirmed:
                                inbox.push_gap()
                                lost = False
                            confirmed = True
                            inbox.ready.set()
                            backoff = 0.1
                        elif kind in ("message", "pmessage"):
                            try:
                                inbox.push(_decode_event(message["data"]))
                            except (ValueError, KeyError, TypeError):
                                log.warning("ignoring malformed event on %s", message.get("channel"))
                except _UNAVAILABLE as exc:
                    lost = True
                    log.warning("event subscription lost (%s); reconnecting in %.1fs", exc, backoff)
                except Exception:
                    lost = True
                    # Whatever went wrong, a live subscriber is better served by a retry than a silent end.
                    log.exception("event subscription failed; reconnecting in %.1fs", backoff)
                finally:
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis 8
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
