"""A shop's reply endpoint for the API channel: verifies the signature and counts deliveries per message_id."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from channels.api import sign
from channels.api.adapter import SIGNATURE_HEADER


@dataclass(slots=True)
class Delivery:
    message_id: str
    body: dict[str, Any]
    received_at: float
    answered: int


@dataclass
class CountingCallback:
    """Start with `await start()`, stop with `await close()`; `url` is the callback_url to configure.

    `delay` slows every request (so a daemon can be killed with sends in flight); `status` is what it
    answers (set it to 500 to keep replies in retry, back to 200 to let them through).
    """

    secret: str
    delay: float = 0.0
    status: int = 200
    deliveries: list[Delivery] = field(default_factory=list)
    bad_signatures: int = 0
    malformed: int = 0
    _runner: web.AppRunner | None = None
    _port: int | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("the callback server is not started")
        return f"http://127.0.0.1:{self._port}/replies"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/replies", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, ""), sign(self.secret, body)):
            self.bad_signatures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        try:
            data = json.loads(body)
            message_id = str(data["message_id"])
        except (ValueError, KeyError, TypeError):
            self.malformed += 1
            return web.json_response({"error": "malformed"}, status=400)
        status = self.status
        self.deliveries.append(Delivery(message_id, data, time.monotonic(), status))
        self._arrived.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if status >= 300:
            return web.json_response({"error": "try later"}, status=status)
        return web.json_response({"external_id": f"shop-{message_id}"}, status=status)

    def counts(self, *, accepted_only: bool = True) -> Counter[str]:
        """Deliveries per message_id (by default only those this endpoint answered with a 2xx)."""
        return Counter(d.message_id for d in self.deliveries if not accepted_only or 200 <= d.answered < 300)

    async def wait_for(self, predicate: Callable[[CountingCallback], bool], within: float) -> bool:
        """Wait until predicate(self) is true; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not predicate(self):
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.1))
        return True
