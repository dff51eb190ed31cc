"""The receiving end of the API channel: the shop's callback URL that replies are POSTed to.

It verifies X-Aggregator-Signature on the raw body, records what it accepted, answers
`{"external_id": ...}`, and can be told to answer an error status, or to hang, for the next requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

SIGNATURE_HEADER = "X-Aggregator-Signature"


@dataclass(frozen=True, slots=True)
class Delivery:
    message_id: str
    body: dict[str, Any]
    idempotency_key: str | None
    external_id: str


@dataclass(frozen=True, slots=True)
class _Plan:
    status: int
    retry_after: str | None = None
    hang: bool = False


class CallbackServer:
    """A shop's callback endpoint at `url`; HEAD on it answers 200 (what `check()` probes)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.deliveries: list[Delivery] = []
        self.attempts: list[dict[str, Any]] = []
        self.rejected_signatures = 0
        self._plans: deque[_Plan] = deque()
        self._ids = itertools.count(1)
        self._release = asyncio.Event()
        self._arrived = asyncio.Condition()
        app = web.Application()
        app.router.add_route("*", "/hook", self._handle)
        self._server = TestServer(app, host="127.0.0.1")

    async def start(self) -> None:
        await self._server.start_server()

    async def close(self) -> None:
        self._release.set()
        await self._server.close()

    @property
    def url(self) -> str:
        return str(self._server.make_url("/hook"))

    def fail_next(self, status: int, times: int = 1, retry_after: str | None = None) -> None:
        """Answer `status` (with Retry-After when given) to the next `times` requests."""
        self._plans.extend(_Plan(status, retry_after) for _ in range(times))

    def hang_next(self, times: int = 1) -> None:
        """Do not answer the next `times` requests until the server closes (the sender must time out)."""
        self._plans.extend(_Plan(0, hang=True) for _ in range(times))

    def delivered_texts(self) -> list[str]:
        return [str(d.body["text"]) for d in self.deliveries]

    async def wait_for_deliveries(self, count: int, within: float = 10.0) -> list[Delivery]:
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: len(self.deliveries) >= count)
        return self.deliveries

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(status=200)
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST", "HEAD"])
        raw = await request.read()
        expected = "sha256=" + hmac.new(self.secret.encode(), raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, "").encode(), expected.encode()):
            self.rejected_signatures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        body = json.loads(raw)
        self.attempts.append(body)
        plan = self._plans.popleft() if self._plans else None
        if plan is not None and plan.hang:
            await self._release.wait()
            return web.json_response({"error": "too late"}, status=503)
        if plan is not None:
            headers = {"Retry-After": plan.retry_after} if plan.retry_after is not None else None
            return web.json_response(
                {"error": f"told to answer {plan.status}"}, status=plan.status, headers=headers
            )
        external_id = f"cb-{next(self._ids)}"
        async with self._arrived:
            self.deliveries.append(
                Delivery(body["message_id"], body, request.headers.get("Idempotency-Key"), external_id)
            )
            self._arrived.notify_all()
        return web.json_response({"external_id": external_id})
