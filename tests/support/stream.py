"""Live stream clients for tests: an EventSource read line by line, and a WebSocket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest


@dataclass
class SseEvent:
    id: str | None
    event: str | None
    data: dict[str, Any]


@dataclass
class Sse:
    """An EventSource, read line by line off a plain aiohttp response."""

    response: aiohttp.ClientResponse
    pings: int = 0
    seen: list[SseEvent] = field(default_factory=list)

    async def next(self, within: float = 5.0) -> SseEvent:
        async with asyncio.timeout(within):
            fields: dict[str, str] = {}
            data: list[str] = []
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\r\n")
                if line == "":
                    if data:
                        event = SseEvent(fields.get("id"), fields.get("event"), json.loads("\n".join(data)))
                        self.seen.append(event)
                        return event
                    continue
                if line.startswith(":"):
                    self.pings += 1
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                else:
                    fields[name] = value

    async def until(self, event_type: str, within: float = 5.0) -> SseEvent:
        """Skip to the next event of that type."""
        async with asyncio.timeout(within):
            while True:
                event = await self.next(within)
                if event.data["type"] == event_type:
                    return event

    async def live(self) -> list[SseEvent]:
        """Read up to `ready`; what came before it (replay, resync)."""
        before: list[SseEvent] = []
        while (event := await self.next()).data["type"] != "ready":
            before.append(event)
        self.seen.clear()
        return before

    async def nothing_more(self, within: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            event = await self.next(within)
            raise AssertionError(f"unexpected event {event}")


@asynccontextmanager
async def open_sse(
    http: aiohttp.ClientSession,
    base: str,
    token: str | None,
    *,
    last_event_id: str | None = None,
    query_token: bool = False,
    query_last_id: bool = False,
    wait_ready: bool = True,
) -> AsyncIterator[Sse]:
    headers: dict[str, str] = {}
    params: dict[str, str] = {}
    if token is not None:
        if query_token:
            params["access_token"] = token
        else:
            headers["Authorization"] = f"Bearer {token}"
    if last_event_id is not None:
        if query_last_id:
            params["last_event_id"] = last_event_id
        else:
            headers["Last-Event-ID"] = last_event_id
    async with http.get(f"{base}/api/v1/stream", headers=headers, params=params) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        sse = Sse(response)
        if wait_ready:
            await sse.live()
        yield sse


@dataclass
class Ws:
    socket: aiohttp.ClientWebSocketResponse

    async def next(self, within: float = 5.0) -> dict[str, Any]:
        message = await self.socket.receive(timeout=within)
        assert message.type is aiohttp.WSMsgType.TEXT, message
        data: dict[str, Any] = json.loads(message.data)
        return data

    async def until(self, event_type: str, within: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while (data := await self.next(within))["type"] != event_type:
                pass
            return data

    async def live(self) -> list[dict[str, Any]]:
        before: list[dict[str, Any]] = []
        while (data := await self.next())["type"] != "ready":
            before.append(data)
        return before


@asynccontextmanager
async def open_ws(
    http: aiohttp.ClientSession, base: str, token: str, *, last_event_id: str | None = None, **options: Any
) -> AsyncIterator[Ws]:
    params = {"access_token": token}
    if last_event_id is not None:
        params["last_event_id"] = last_event_id
    async with http.ws_connect(f"{base}/api/v1/stream", params=params, **options) as socket_:
        ws = Ws(socket_)
        yield ws


