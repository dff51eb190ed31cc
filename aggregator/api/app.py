"""The aiohttp application: channel endpoints, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from aggregator.api.keys import ATTACHMENTS, BUS, CHANNELS, ENQUEUE_OUTBOX, LIVE, METRICS, SETTINGS, STORE
from aggregator.api.v1 import build_api
from aggregator.attachments import AttachmentStore
from aggregator.bus import Bus, BusUnavailable
from aggregator.channels import ChannelManager
from aggregator.ingest import IngestClosed
from aggregator.live import LiveHub
from aggregator.metrics import CONTENT_TYPE, Metrics
from aggregator.store import Store
from aggregator.workspace import SettingsCache

log = logging.getLogger(__name__)


class Drain:
    """Counts requests in flight, so a shutdown can refuse new ones and wait for those running.

    aiohttp's own graceful shutdown drops the bytes of bodies still arriving, so a handler reading a
    slow upload would wait out the shutdown timeout and be cancelled; waiting here, before the
    connections are shut down, lets it finish.
    """

    def __init__(self) -> None:
        self.draining = False
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.draining:
            response = error_response(503, "shutting_down", "the daemon is shutting down; retry later")
            response.force_close()
            return response
        self._count += 1
        self._idle.clear()
        try:
            result: web.StreamResponse = await handler(request)
            return result
        finally:
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    async def drain(self, within: float) -> bool:
        """Refuse new requests; True when those in flight finished within `within` seconds."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True


def error_response(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return web.json_response({"error": body}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error is JSON with a stable code; no traceback reaches a client."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return error_response(exc.status, code, exc.text or exc.reason)
    except IngestClosed as exc:
        return error_response(503, "shutting_down", str(exc))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; the server log has the details")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        await request.app[STORE].ping()
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = f"unavailable: {exc}"
    try:
        await request.app[BUS].ping()
        checks["bus"] = "ok"
    except BusUnavailable as exc:
        checks["bus"] = f"unavailable: {exc}"
    ready = all(value == "ok" for value in checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})


async def channel_endpoint(request: web.Request) -> web.StreamResponse:
    kind = request.match_info["kind"]
    channel_id = request.match_info["channel_id"]
    adapter = await request.app[CHANNELS].get(channel_id)
    if adapter is None or adapter.kind != kind:
        return error_response(404, "unknown_channel", f"no {kind} channel with id {channel_id!r}")
    return await adapter.handle_request(request.match_info["path"], request)


def create_app(
    store: Store,
    bus: Bus,
    metrics_: Metrics,
    channels: ChannelManager,
    max_body_bytes: int,
    drain: Drain | None = None,
    *,
    attachments: AttachmentStore,
    enqueue_outbox: Callable[[str], Awaitable[None]] | None = None,
    live: LiveHub | None = None,
    settings: SettingsCache | None = None,
) -> web.Application:
    # Bodies are read by the handlers themselves, each against its own limit; this bound only keeps
    # aiohttp's own buffering (request.read/json) from taking more.
    middlewares = [json_errors] if drain is None else [drain.middleware, json_errors]
    app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
    app[STORE] = store
    app[BUS] = bus
    app[METRICS] = metrics_
    app[CHANNELS] = channels
    app[ATTACHMENTS] = attachments
    if enqueue_outbox is not None:
        app[ENQUEUE_OUTBOX] = enqueue_outbox
    if settings is not None:
        app[SETTINGS] = settings
    hub = app[LIVE] = live if live is not None else LiveHub(bus)

    async def end_streams(app: web.Application) -> None:
        await hub.close()

    # Streams never finish by themselves: they are ended before the server waits for requests to finish.
    app.on_shutdown.append(end_streams)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/channels/{kind}/{channel_id}/{path:.*}", channel_endpoint)
    build_api().install(app)
    return app
