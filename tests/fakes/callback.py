"""The receiving end of the API channel: the shop's callback URL that replies are POSTed to.

It verifies X-Aggregator-Signature on the raw body, records every attempt and what it accepted (per
message_id too), answers `{"external_id": ...}`, and can be told to answer an error status, or to
hang, for the next requests, to keep answering an error status, or to answer slowly.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
from collections import Counter, deque
from collections.abc import Callable
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
    """A shop's callback endpoint at `url`; HEAD on it answers 200 (what `check()` probes).

    `status` is what it answers when nothing is scripted with `fail_next`/`hang_next` (set it to 500 to
    keep replies in retry, back to 200 to let them through); `delay` slows every answer (so a daemon
    can be killed with sends in flight); `external_id_format` makes the external_id of an accepted
    reply from `n` (1, 2, ... in order of acceptance) and `message_id`.
    """

    def __init__(
        self,
        secret: str,
        *,
        status: int = 200,
        delay: float = 0.0,
        external_id_format: str = "cb-{n}",
    ) -> None:
        self.secret = secret
        self.status = status
        self.delay = delay
        self.external_id_format = external_id_format
        self.deliveries: list[Delivery] = []
        self.attempts: list[dict[str, Any]] = []
        self.rejected_signatures = 0
        self.malformed = 0
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

    def counts(self, *, accepted_only: bool = True) -> Counter[str]:
        """Requests per message_id (by default only those this endpoint answered with a 2xx)."""
        if accepted_only:
            return Counter(d.message_id for d in self.deliveries)
        return Counter(str(a["message_id"]) for a in self.attempts)

    async def wait_for(self, predicate: Callable[[CallbackServer], bool], within: float) -> bool:
        """Wait until predicate(self) is true; False on timeout."""
        try:
            async with asyncio.timeout(within), self._arrived:
                await self._arrived.wait_for(lambda: predicate(self))
        except TimeoutError:
            return False
        return True

    async def wait_for_deliveries(self, count: int, within: float = 10.0) -> list[Delivery]:
        if not await self.wait_for(lambda server: len(server.deliveries) >= count, within):
            raise TimeoutError(f"{len(self.deliveries)} of {count} deliveries arrived within {within}s")
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
        try:
            body = json.loads(raw)
            message_id = str(body["message_id"])
        except (ValueError, KeyError, TypeError):
            self.malformed += 1
            return web.json_response({"error": "malformed"}, status=400)
        plan = self._plans.popleft() if self._plans else _Plan(self.status)
        delivery: Delivery | None = None
        # Recorded on arrival: a sender killed while the answer is delayed has still delivered.
        async with self._arrived:
            self.attempts.append(body)
            if not plan.hang and 200 <= plan.status < 300:
                external_id = self.external_id_format.format(n=next(self._ids), message_id=message_id)
                delivery = Delivery(message_id, body, request.headers.get("Idempotency-Key"), external_id)
                self.deliveries.append(delivery)
            self._arrived.notify_all()
        if plan.hang:
            await self._release.wait()
            return web.json_response({"error": "too late"}, status=503)
        if self.delay:
            await asyncio.sleep(self.delay)
        if delivery is None:
            headers = {"Retry-After": plan.retry_after} if plan.retry_after is not None else None
            return web.json_response(
                {"error": f"told to answer {plan.status}"}, status=plan.status, headers=headers
            )
        return web.json_response({"external_id": delivery.external_id}, status=plan.status)
