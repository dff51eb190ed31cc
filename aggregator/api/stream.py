"""The live stream (Server-Sent Events or WebSocket) and presence: who is viewing or typing where."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

from aiohttp import WSMsgType, web
from aiohttp_sse import EventSourceResponse
from pydantic import Field, ValidationError

from aggregator.api.admin import change_availability, tell_listeners
from aggregator.api.framework import (
    ALL_ROLES,
    STAFF,
    Api,
    ApiError,
    ApiModel,
    Call,
    OutModel,
    json_response,
)
from aggregator.api.keys import LIVE
from aggregator.bus import Bus, BusUnavailable
from aggregator.live import READY_ITEM, RESYNC_ITEM, LiveHub, StreamItem, stream_item
from aggregator.model import Event, utcnow
from aggregator.store import NotFound, Store
from aggregator.store.admin import BY_STREAM

log = logging.getLogger(__name__)

api = Api()

Id = Annotated[str, Field(min_length=1, max_length=64)]
PresenceState = Literal["viewing", "typing", "left"]
# Closing a socket whose peer does not answer the close frame should not hold a shutdown up.
WS_CLOSE_TIMEOUT = 2.0
WS_MAX_MESSAGE = 16 * 1024
DISCONNECT_CHECK_SECONDS = 0.5
# A client that went away shows up as one of these when written to; nothing to log.
_GONE = (ConnectionError, TimeoutError)

STREAM_DESCRIPTION = """\
Live events of the caller's workspace, as **Server-Sent Events** (the default: `text/event-stream`),
or as a **WebSocket** when the request is a WebSocket upgrade (each event a JSON text frame).
Browsers, whose EventSource and WebSocket cannot set headers, pass the token as `access_token`.

Every event is a JSON object with its `type`, its `id` (except `ready`, `resync` marks of a local
gap, and `presence`) and the ids it concerns (`conversation_id`, `message_id`). In SSE, `id:` is the
event id, `event:` its type and `data:` the JSON object.

After the optional replay the stream sends `{"type": "ready"}`: from then on events are live.
To resume after a reconnect, send the last id received as the `Last-Event-ID` header (browsers do so
by themselves; it takes precedence) or the `last_event_id` query parameter: the events after it are
replayed first, then the live ones, none twice. When that id is too old or unknown (the log keeps
about the last 1000 events of a workspace), `resync` comes first instead.

Event types (clients ignore types they do not know):

- `resync` `{}`: events may have been missed (resume id too old or unknown, the bus was unavailable,
  or this client fell too far behind): refetch what you show.
- `ready` `{}`: the stream is live.
- `conversation.created` `{conversation_id}`: a new conversation (a customer wrote first).
- `conversation.reopened` `{conversation_id, from}`: a customer message reopened it; `from` is the
  status it had.
- `conversation.updated` `{conversation_id, changed, by}`: status, priority, assignee, team, labels,
  language, SLA policy or snooze changed; `changed` lists the fields, `by` the user id, `routing`
  (routing assigned or queued it), `rule:<rule id>` (an automation rule), or null when the daemon did
  it otherwise (a snooze that ran out).
- `sla.warning` / `sla.breached` `{conversation_id, metric, due_at, policy_id, late}`: the conversation's
  `metric` (`first_response`, `next_response` or `resolution`) is about to fall due / fell due at
  `due_at`. Each fires once; `late` is true when it fired at start-up, after the daemon was down.
- `notification` `{conversation_id, user_ids, text, rule_chain}`: an automation rule asks these users
  to look at the conversation (clients show it to the users named).
- `conversation.read` `{conversation_id, user_id}`: that user marked it read.
- `message.created` `{conversation_id, message_id, direction, kind?}`: a message (`direction` in|out),
  a reply or a note (`kind` message|note) was added.
- `message.delivery` `{conversation_id, message_id, delivery_status, error}`: a reply's delivery
  status changed: `sent`, `failed` (for good; `error` says why) or `queued` (an attempt failed and it
  will be retried; `error` says why).
- `presence` `{conversation_id, user_id, state, expires_in}`: a user is `viewing` or `typing` on the
  conversation for `expires_in` seconds unless renewed, or `left`. Presence is live only: never
  replayed, no `id`. Expiry sends no event.

Availability: a staff user who is `offline` becomes `online` when they open the live stream, and
`offline` again when their last open stream (in this process) closes, unless they set themselves `away`
meanwhile (PUT /me/availability). The daemon's routing hears each change (it is no stream event).
That presence is a lease renewed every 60 seconds while a stream is open: a process that died stops
renewing it, and its users go offline within 3½ minutes (an `online` set by hand never expires);
a stream still open makes its user online again at its next renewal.

Keep-alive: an SSE comment (`: ping`) every 15 seconds; WebSocket pings at the same interval (a
client that does not answer is disconnected). A WebSocket client may send
`{"type": "presence", "conversation_id", "state"}` (admins and agents), as the presence endpoint does;
an invalid one is answered `{"type": "error", "error": {"code", "message", "field"?}}`. Its presence
is withdrawn (`left`) when the socket closes.
"""


# What the document says of each Server-Sent Event (the WebSocket frames carry the same `data`).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "description": "the event's type"},
        "id": {"type": "string", "description": "the id to resume after (Last-Event-ID)"},
        "retry": {"type": "integer", "minimum": 0},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {"type": "string"},
                    "id": {"type": "string"},
                    "conversation_id": {"type": "string"},
                    "message_id": {"type": "string"},
                },
                "additionalProperties": True,
            },
        },
    },
}


class StreamQuery(ApiModel):
    last_event_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="resume after this event id; the Last-Event-ID header, which browsers send when "
        "they reconnect, takes precedence",
    )


@api.endpoint(
    "GET",
    "/stream",
    summary="Live events of the workspace (Server-Sent Events, or a WebSocket)",
    tag="stream",
    roles=ALL_ROLES,
    query=StreamQuery,
    content_type="text/event-stream",
    content_schema=SSE_EVENT_SCHEMA,
    query_token=True,
    description=STREAM_DESCRIPTION,
)
async def get_stream(call: Call) -> web.StreamResponse:
    query = call.query_as(StreamQuery)
    # Not validated like the query: a browser reconnecting with an id we refuse would give up for
    # good, while an id we do not know is simply answered with a resync.
    last_id = call.request.headers.get("Last-Event-ID", "").strip()[:200] or query.last_event_id
    hub = call.request.app[LIVE]
    socket = web.WebSocketResponse(
        heartbeat=hub.ping_interval, timeout=WS_CLOSE_TIMEOUT, max_msg_size=WS_MAX_MESSAGE
    )
    async with _online(call, hub):
        if socket.can_prepare(call.request).ok:
            return await _serve_websocket(call, hub, socket, last_id)
        return await _serve_sse(call, hub, last_id)


# Per hub (one per application), open live streams by (workspace id, user id): the stream's presence
# sets the availability (offline -> online on the first, online -> offline when the last closes).
_streams: weakref.WeakKeyDictionary[LiveHub, dict[tuple[str, str], int]] = weakref.WeakKeyDictionary()
# Per hub, the lease renewer of each user with a stream open; the renewers running (strong references).
_leases: weakref.WeakKeyDictionary[LiveHub, dict[tuple[str, str], _Lease]] = weakref.WeakKeyDictionary()
_renewing: set[asyncio.Task[None]] = set()


def open_streams(hub: LiveHub, workspace_id: str, user_id: str) -> int:
    """How many live streams of `hub` (this process's) the user has open."""
    return _streams.get(hub, {}).get((workspace_id, user_id), 0)


class _Lease:
    """Renews the lease of the `online` a user's live stream set, every `every` seconds until stopped.

    When the user is offline by the stream (the lease lapsed, or their last stream in another process
    closed), it makes them online again; nothing while they are away, or online or offline by hand.
    It is never cancelled in the middle of a write: stopping wakes it, and it ends before the next one.
    """

    def __init__(self, store: Store, bus: Bus, workspace_id: str, user_id: str, every: float) -> None:
        self.store = store
        self.bus = bus
        self.workspace_id = workspace_id
        self.user_id = user_id
        self.every = every
        self.renewals = 0
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"presence-lease-{user_id}")
        _renewing.add(self.task)
        self.task.add_done_callback(_renewing.discard)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every)
            if self._stop.is_set():
                return
            try:
                renewed = await self.store.renew_presence(self.workspace_id, self.user_id, utcnow())
                if renewed is not None:
                    self.renewals += 1
                if renewed == "resumed":
                    # The lease lapsed (this process could not renew it in time) or another process's
                    # last stream closed: the stream open here makes the user online again.
                    data = {"user_id": self.user_id, "availability": "online", "previous": "offline"}
                    tell_listeners(self.bus, Event("user.availability", self.workspace_id, data))
            except Exception:
                # Retried at the next interval; the stream goes on either way.
                log.warning("could not renew user %s's presence lease", self.user_id, exc_info=True)


def presence_lease(hub: LiveHub, workspace_id: str, user_id: str) -> _Lease | None:
    """The running renewer of the user's presence lease on `hub`, if any."""
    lease = _leases.get(hub, {}).get((workspace_id, user_id))
    return None if lease is None or lease.stopped else lease


def _keep_lease(call: Call, hub: LiveHub) -> None:
    leases = _leases.setdefault(hub, {})
    key = (call.workspace_id, call.caller.user_id)
    lease = leases.get(key)
    if lease is None or lease.stopped:
        leases[key] = _Lease(call.store, call.bus, call.workspace_id, call.caller.user_id, hub.presence_refresh)


def _drop_lease(hub: LiveHub, key: tuple[str, str]) -> None:
    lease = _leases.get(hub, {}).pop(key, None)
    if lease is not None:
        lease.stop()


async def _set_presence(call: Call, availability: str, only_from: tuple[str, ...]) -> None:
    try:
        await change_availability(call, call.caller.user_id, availability, by=BY_STREAM, only_from=only_from)
    except NotFound:
        pass  # deactivated meanwhile
    except Exception:
        # The stream works without it (e.g. while the daemon shuts down and the store closes).
        log.warning(
            "could not set user %s %s from the live stream", call.caller.user_id, availability, exc_info=True
        )


@contextlib.asynccontextmanager
async def _online(call: Call, hub: LiveHub) -> AsyncIterator[None]:
    """While the caller (a staff user) has a stream open: online, unless they set themselves away.

    That online is a lease: renewed every `hub.presence_refresh` seconds (60) while the user has a
    stream open here, by one renewer per user, and expired by routing's sweep when nobody renewed it
    for PRESENCE_LEASE (180 s), as when the process serving the stream was killed.
    """
    if call.caller.role not in STAFF:
        yield
        return
    counts = _streams.setdefault(hub, {})
    key = (call.workspace_id, call.caller.user_id)
    counts[key] = counts.get(key, 0) + 1
    try:
        if counts[key] == 1:
            await _set_presence(call, "online", ("offline",))
        _keep_lease(call, hub)
        yield
    finally:
        last = counts[key] == 1
        try:
            if last:
                _drop_lease(hub, key)
                # Counted as open until written, so that a count of 0 means it is recorded. Shielded:
                # a cancelled handler (the client went away) still records that it left.
                await asyncio.shield(_set_presence(call, "offline", ("online",)))
        finally:
            left = counts[key] - 1
            if left:
                counts[key] = left
            else:
                del counts[key]
                # A stream that opened and closed while this one recorded the offline started one.
                _drop_lease(hub, key)
        if last and left:
            # Another stream opened while this one recorded the offline: online again.
            await _set_presence(call, "online", ("offline",))
            _keep_lease(call, hub)


Send = Callable[[StreamItem], Awaitable[None]]


async def _session(call: Call, hub: LiveHub, last_id: str | None, send: Send) -> None:
    """Replay (or resync), then `ready`, then live events until the client or the hub ends."""
    client = await hub.join(call.workspace_id, call.caller.user_id)
    try:
        replay = None
        resync = not client.live
        if last_id is not None and not resync:
            replay = await hub.replay(call.workspace_id, last_id)
            resync = replay is None
        if resync:
            await send(RESYNC_ITEM)
        # Live events buffered meanwhile that the replay already carried are not sent twice.
        replayed: set[str] = set()
        for event in replay or ():
            replayed.add(event.id)
            await send(stream_item(event))
        await send(READY_ITEM)
        while (item := await client.next()) is not None:
            if item.id is not None and item.id in replayed:
                continue
            await send(item)
    finally:
        hub.leave(client)


def _log_failure(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, _GONE):
        log.error("live stream failed", exc_info=exc)


async def _serve_sse(call: Call, hub: LiveHub, last_id: str | None) -> web.StreamResponse:
    response = EventSourceResponse(ping_interval=hub.ping_interval, send_timeout=hub.send_timeout)
    await response.prepare(call.request)

    async def send(item: StreamItem) -> None:
        await response.send(item.payload, id=item.id, event=item.type)

    session = asyncio.create_task(_session(call, hub, last_id, send), name="sse-session")
    # The ping task ends when a ping cannot be written: the client has gone.
    pings = asyncio.create_task(response.wait(), name="sse-pings")
    # A client that closed its connection is noticed sooner than the next ping.
    gone = asyncio.create_task(_disconnected(call.request), name="sse-disconnect")
    try:
        await asyncio.wait({session, pings, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        session.cancel()
        gone.cancel()
        response.stop_streaming()
        await asyncio.gather(session, pings, gone, return_exceptions=True)
        _log_failure(session)
    return response


async def _disconnected(request: web.Request) -> None:
    # Polled: aiohttp tells a handler that reads no body nothing when its connection is lost.
    while (transport := request.transport) is not None and not transport.is_closing():  # noqa: ASYNC110
        await asyncio.sleep(DISCONNECT_CHECK_SECONDS)


async def _serve_websocket(
    call: Call, hub: LiveHub, socket: web.WebSocketResponse, last_id: str | None
) -> web.StreamResponse:
    await socket.prepare(call.request)

    async def send(item: StreamItem) -> None:
        try:
            async with asyncio.timeout(hub.send_timeout):
                await socket.send_str(item.payload)
        except TimeoutError:
            # Stalled: a frame cut off half-way leaves nothing to close politely.
            if call.request.transport is not None:
                call.request.transport.abort()
            raise

    async def run() -> None:
        try:
            await _session(call, hub, last_id, send)
        finally:
            with contextlib.suppress(*_GONE):
                await socket.close(code=1001, message=b"stream ended")

    session = asyncio.create_task(run(), name="ws-session")
    # Conversations this socket announced presence on: withdrawn when it closes.
    present: set[str] = set()
    checked: set[str] = set()
    try:
        async for message in socket:
            if message.type is WSMsgType.TEXT:
                reply = await _ws_message(call, hub, str(message.data), present, checked)
                if reply is not None:
                    with contextlib.suppress(*_GONE):
                        await socket.send_str(reply)
            elif message.type is WSMsgType.BINARY:
                with contextlib.suppress(*_GONE):
                    await socket.send_str(_ws_error("invalid_json", "send JSON text frames"))
    finally:
        session.cancel()
        await asyncio.gather(session, return_exceptions=True)
        _log_failure(session)
        for conversation_id in present:
            with contextlib.suppress(BusUnavailable):
                await hub.announce(call.workspace_id, conversation_id, call.caller.user_id, "left")
    return socket


class PresenceMessage(ApiModel):
    type: Literal["presence"]
    conversation_id: Id
    state: PresenceState


def _ws_error(code: str, message: str, field: str | None = None) -> str:
    error: dict[str, str] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return json.dumps({"type": "error", "error": error})


async def _ws_message(
    call: Call, hub: LiveHub, text: str, present: set[str], checked: set[str]
) -> str | None:
    """Act on one client message; the error frame to answer, or None."""
    try:
        payload = json.loads(text)
    except ValueError:
        return _ws_error("invalid_json", "the message is not valid JSON")
    try:
        message = PresenceMessage.model_validate(payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(part) for part in error["loc"]) or "message"
        return _ws_error("invalid_field", f"{name}: {error['msg']}", name)
    if call.caller.role not in STAFF:
        return _ws_error("forbidden", f"presence needs the admin or agent role, not {call.caller.role}")
    conversation_id = message.conversation_id
    # Presence is renewed every few seconds: the conversation is looked up once per socket.
    if conversation_id not in checked:
        try:
            await call.store.get_conversation(call.workspace_id, call.caller.user_id, conversation_id)
        except NotFound:
            return _ws_error("not_found", f"no conversation with id {conversation_id!r}", "conversation_id")
        checked.add(conversation_id)
    try:
        await hub.announce(call.workspace_id, conversation_id, call.caller.user_id, message.state)
    except BusUnavailable:
        return _ws_error("unavailable", "presence is unavailable for now; retry later")
    if message.state == "left":
        present.discard(conversation_id)
    else:
        present.add(conversation_id)
    return None


class PresenceBody(ApiModel):
    state: PresenceState = Field(
        description="`viewing` or `typing` (renew it every 10 to 20 seconds: it expires after 30), or `left`"
    )


class PresenceOut(OutModel):
    user_id: str
    state: Literal["viewing", "typing"]
    expires_in: float = Field(description="seconds until it expires unless renewed")


class PresenceList(OutModel):
    items: list[PresenceOut]


@api.endpoint(
    "POST",
    "/conversations/{id}/presence",
    summary="Say that the calling user is viewing or typing on a conversation, or has left it",
    tag="stream",
    roles=STAFF,
    body=PresenceBody,
    status=204,
    errors=(503,),
    description="Published on the live stream as a `presence` event, and listed by GET on this path "
    "until it expires (30 seconds unless renewed). Not stored in SQL. 503 when the bus (Redis) is "
    "unavailable.",
)
async def post_presence(call: Call) -> web.StreamResponse:
    body = call.body_as(PresenceBody)
    conversation_id = call.path("id")
    await call.store.get_conversation(call.workspace_id, call.caller.user_id, conversation_id)
    try:
        await call.request.app[LIVE].announce(
            call.workspace_id, conversation_id, call.caller.user_id, body.state
        )
    except BusUnavailable as exc:
        raise ApiError(503, "unavailable", "presence is unavailable for now; retry later") from exc
    return web.Response(status=204)


@api.endpoint(
    "GET",
    "/conversations/{id}/presence",
    summary="Who is viewing or typing on a conversation now",
    tag="stream",
    roles=ALL_ROLES,
    response=PresenceList,
    errors=(503,),
    description="Each user once, with the state last announced. 503 when the bus (Redis) is unavailable.",
)
async def get_presence(call: Call) -> web.StreamResponse:
    conversation_id = call.path("id")
    await call.store.get_conversation(call.workspace_id, call.caller.user_id, conversation_id)
    try:
        entries = await call.bus.presence(call.workspace_id, conversation_id)
    except BusUnavailable as exc:
        raise ApiError(503, "unavailable", "presence is unavailable for now; retry later") from exc
    return json_response(
        PresenceList(
            items=[
                PresenceOut.model_validate(
                    {"user_id": e.user_id, "state": e.state, "expires_in": round(e.expires_in, 3)}
                )
                for e in entries
                if e.state in ("viewing", "typing")
            ]
        )
    )
