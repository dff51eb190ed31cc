"""The live event hub of one process: one bus subscription per workspace that has stream clients here,
fanned out to them, so fifty agents cost one Redis connection, not fifty.

Each client has a bounded buffer of its own: the hub never waits for a client, so a slow or abandoned
one holds nobody up; when its buffer overflows, what it holds is dropped and it is told to resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aggregator.bus import EPHEMERAL_TYPES, RESYNC, Bus, BusUnavailable, Subscription
from aggregator.model import Event

log = logging.getLogger(__name__)

PRESENCE_STATES = ("viewing", "typing", "left")
# How often a user's open live stream renews the lease of the `online` it set (see api/stream.py).
PRESENCE_REFRESH = 60.0


@dataclass(frozen=True, slots=True)
class StreamItem:
    """One event as a stream sends it: the id to resume after (None: not resumable), type, JSON text."""

    id: str | None
    type: str
    payload: str


def _item(event_type: str, obj: dict[str, Any], resumable_id: str | None) -> StreamItem:
    return StreamItem(resumable_id, event_type, json.dumps(obj, separators=(",", ":"), default=str))


RESYNC_ITEM = _item(RESYNC, {"type": RESYNC}, None)
READY_ITEM = _item("ready", {"type": "ready"}, None)


def stream_object(event: Event) -> dict[str, Any]:
    """The JSON object clients get: type, id (for logged events), conversation_id, then the event's data."""
    obj: dict[str, Any] = {"type": event.type}
    if event.id and event.type not in EPHEMERAL_TYPES:
        obj["id"] = event.id
    if event.conversation_id is not None:
        obj["conversation_id"] = event.conversation_id
    for key, value in event.data.items():
        obj.setdefault(key, value)
    return obj


def stream_item(event: Event) -> StreamItem:
    """The event encoded once, for every client of its workspace."""
    obj = stream_object(event)
    resumable = obj.get("id")
    return _item(event.type, obj, resumable if isinstance(resumable, str) else None)


class LiveClient:
    """One stream connection's bounded buffer of its workspace's events."""

    def __init__(self, workspace_id: str, user_id: str, limit: int) -> None:
        self.workspace_id = workspace_id
        self.user_id = user_id
        self.limit = max(1, limit)
        # False when the bus subscription was not confirmed in time: events may be missed.
        self.live = True
        self.overflows = 0
        self.closed = False
        self._items: deque[StreamItem] = deque()
        self._resync = False
        self._wake = asyncio.Event()

    @property
    def buffered(self) -> int:
        """Events waiting to be sent."""
        return len(self._items)

    def push(self, item: StreamItem) -> None:
        """Buffer an item; on overflow drop the buffer and owe the client a resync instead."""
        if self.closed:
            return
        if len(self._items) >= self.limit:
            self._items.clear()
            self._resync = True
            self.overflows += 1
        else:
            self._items.append(item)
        self._wake.set()

    def close(self) -> None:
        """End the stream: next() returns None from now on."""
        self.closed = True
        self._wake.set()

    async def next(self) -> StreamItem | None:
        """The next item to send, waiting for one; None once the client is closed."""
        while True:
            if self.closed:
                return None
            if self._resync:
                self._resync = False
                return RESYNC_ITEM
            if self._items:
                return self._items.popleft()
            self._wake.clear()
            await self._wake.wait()


@dataclass(eq=False)
class _Feed:
    workspace_id: str
    subscription: Subscription
    clients: set[LiveClient] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class LiveHub:
    """Fans the bus's events out to this process's stream clients, one subscription per workspace."""

    def __init__(
        self,
        bus: Bus,
        *,
        client_buffer: int = 500,
        ping_interval: float = 15.0,
        send_timeout: float = 30.0,
        presence_ttl: float = 30.0,
        ready_timeout: float = 5.0,
        presence_refresh: float = PRESENCE_REFRESH,
    ) -> None:
        self.bus = bus
        self.client_buffer = client_buffer
        self.ping_interval = ping_interval
        self.send_timeout = send_timeout
        self.presence_ttl = presence_ttl
        self.ready_timeout = ready_timeout
        # Seconds between renewals of a streaming user's availability lease.
        self.presence_refresh = presence_refresh
        self._feeds: dict[str, _Feed] = {}
        self._closed = False

    @property
    def subscriptions(self) -> int:
        """Bus subscriptions held: one per workspace with clients here."""
        return len(self._feeds)

    def clients(self, workspace_id: str | None = None) -> list[LiveClient]:
        """The connected clients (of one workspace, or all)."""
        feeds = self._feeds.values() if workspace_id is None else [self._feeds.get(workspace_id)]
        return [client for feed in feeds if feed is not None for client in feed.clients]

    async def join(self, workspace_id: str, user_id: str) -> LiveClient:
        """A new client of the workspace, receiving its events once the subscription is ready."""
        client = LiveClient(workspace_id, user_id, self.client_buffer)
        if self._closed:
            client.close()
            return client
        feed = self._feeds.get(workspace_id)
        if feed is None:
            feed = _Feed(workspace_id, self.bus.subscribe(workspace_id, mark_gaps=True))
            self._feeds[workspace_id] = feed
            feed.task = asyncio.create_task(self._pump(feed), name=f"live-{workspace_id}")
        feed.clients.add(client)
        try:
            await asyncio.wait_for(feed.subscription.ready(), self.ready_timeout)
        except TimeoutError:
            client.live = False
        except BaseException:
            self.leave(client)
            raise
        return client

    def leave(self, client: LiveClient) -> None:
        """Detach a client; the workspace's subscription closes with its last client."""
        client.close()
        feed = self._feeds.get(client.workspace_id)
        if feed is None:
            return
        feed.clients.discard(client)
        if not feed.clients:
            del self._feeds[client.workspace_id]
            if feed.task is not None:
                feed.task.cancel()

    async def _pump(self, feed: _Feed) -> None:
        try:
            async for event in feed.subscription:
                item = RESYNC_ITEM if event.type == RESYNC and not event.id else stream_item(event)
                for client in list(feed.clients):
                    client.push(item)
        except Exception:
            log.exception("live events of workspace %s failed", feed.workspace_id)
        finally:
            await feed.subscription.aclose()
            # The bus closed under the clients (or this failed): they end, and reconnect elsewhere.
            if self._feeds.get(feed.workspace_id) is feed:
                del self._feeds[feed.workspace_id]
            for client in list(feed.clients):
                client.close()

    async def replay(self, workspace_id: str, after_id: str) -> list[Event] | None:
        """The events logged after `after_id`; None when the client must resync instead."""
        try:
            return await self.bus.recent_events(workspace_id, after_id)
        except BusUnavailable as exc:
            log.info("cannot resume after %s, the bus is unavailable: %s", after_id, exc)
            return None

    async def announce(self, workspace_id: str, conversation_id: str, user_id: str, state: str) -> Event:
        """Record a user's presence (BusUnavailable when it cannot be) and publish it, best effort."""
        ttl = self.presence_ttl
        await self.bus.set_presence(
            workspace_id, conversation_id, user_id, None if state == "left" else state, ttl
        )
        expires_in: float = 0 if state == "left" else (int(ttl) if float(ttl).is_integer() else ttl)
        event = Event(
            "presence",
            workspace_id,
            {
                "conversation_id": conversation_id,
                "user_id": user_id,
                "state": state,
                "expires_in": expires_in,
            },
            conversation_id,
        )
        with contextlib.suppress(BusUnavailable):
            await self.bus.publish(event)
        return event

    async def close(self) -> None:
        """End every stream and subscription; clients joining later end at once."""
        self._closed = True
        feeds = list(self._feeds.values())
        self._feeds.clear()
        tasks = []
        for feed in feeds:
            for client in list(feed.clients):
                client.close()
            if feed.task is not None:
                feed.task.cancel()
                tasks.append(feed.task)
        await asyncio.gather(*tasks, return_exceptions=True)
