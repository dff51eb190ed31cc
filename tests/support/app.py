"""Real aggregator components wired together for tests: the core pipeline, a running daemon, an API client."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import text

from aggregator.api.app import create_app
from aggregator.attachments import AttachmentStore
from aggregator.bus import Bus, Subscription, create_bus
from aggregator.channels import ChannelManager
from aggregator.config import Settings
from aggregator.daemon import Daemon, open_store
from aggregator.ingest import Ingestor
from aggregator.metrics import Metrics
from aggregator.model import Event, Identity, InboundMessage, IngestResult, new_id, utcnow
from aggregator.store import Store, Workspace
from channels.api import sign
from channels.base import ChannelAdapter, Registry

SECRET = "shared-secret-0123456789"

FAST_OUTBOX = {
    "backoff_base_seconds": 0.05,
    "backoff_max_seconds": 0.5,
    "send_timeout_seconds": 5.0,
    "claim_seconds": 10.0,
    "sweep_interval_seconds": 0.1,
    "workers": 2,
}


def clear_aggregator_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AGGREGATOR_* variable from the machine running the tests reaches the code under test."""
    for name in list(os.environ):
        if name.startswith("AGGREGATOR_"):
            monkeypatch.delenv(name)


def make_settings(tmp_path: Path, **values: Any) -> Settings:
    """Settings for a test: data under tmp_path, an ephemeral port, a fast outbox; nested dicts merge."""
    merged: dict[str, Any] = {
        # Given explicitly, so that AGGREGATOR_* variables of the machine running the tests do not apply.
        "redis_url": None,
        "database_url": None,
        "secret_key": None,
        "data_dir": tmp_path / "data",
        "http": {"host": "127.0.0.1", "port": 0},
        "outbox": dict(FAST_OUTBOX),
        # In-process tests write in a thread; a writer process costs a second to start. The daemon
        # run as a subprocess (test_failures.py) keeps the default, the writer process.
        "ingest": {"writer_process": False},
    }
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return Settings(**merged)


async def wait_until(condition: Callable[[], Awaitable[bool]], within: float = 10.0, what: str = "") -> None:
    """Poll `condition` until it holds; fail the test after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or condition}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def subscribed(bus: Bus, workspace_id: str | None = None) -> AsyncIterator[Subscription]:
    """A live subscription that is ready to receive, closed on exit."""
    subscription = bus.subscribe(workspace_id)
    assert isinstance(subscription, Subscription)
    await asyncio.wait_for(subscription.ready(), 5.0)
    try:
        yield subscription
    finally:
        await subscription.aclose()


async def next_event(subscription: Subscription, within: float = 5.0) -> Event:
    return await asyncio.wait_for(anext(subscription), within)


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def sql(store: Store, statement: str, **params: Any) -> list[Any]:
    """Rows of a read-only SQL statement."""
    async with store.read() as conn:
        return list((await conn.execute(text(statement), params)).all())


async def sql_write(store: Store, statement: str, **params: Any) -> None:
    async with store.write() as conn:
        await conn.execute(text(statement), params)


async def add_channel(
    store: Store,
    workspace_id: str,
    values: Mapping[str, Any],
    *,
    kind: str = "api",
    name: str | None = None,
    registry: Registry | None = None,
) -> str:
    """Create a channel account the way the CLI does: validate, split the secrets out, store."""
    config = (registry or Registry()).parse_config(kind, values)
    plain, secrets = config.split_secrets()
    return await store.create_channel_account(
        workspace_id, kind, name or f"{kind}-{new_id()}", plain, secrets
    )


def inbound(
    channel_account_id: str,
    external_id: str,
    *,
    sender: str = "customer-1",
    name: str | None = None,
    text_body: str = "hello",
    kind: str = "api",
    **fields: Any,
) -> InboundMessage:
    return InboundMessage(
        channel_account_id=channel_account_id,
        external_id=external_id,
        sender=Identity(kind, sender, name),
        text=text_body,
        **fields,
    )


class _RecordingSink:
    """The core's ingestor as adapters see it (one message, or many in order), recording what it is given."""

    def __init__(self, core: Callable[[], Core]) -> None:
        self._core = core

    async def __call__(self, message: InboundMessage) -> IngestResult:
        return await self._core().sink(message)

    async def ingest_many(
        self, messages: Sequence[InboundMessage], *, queued: asyncio.Event | None = None
    ) -> list[IngestResult | Exception]:
        core = self._core()
        core.received.extend(messages)
        return await core.ingestor.ingest_many(messages, queued=queued)


@dataclass
class Core:
    """The inbound pipeline and channel manager of one process, on a real SQLite file and bus."""

    settings: Settings
    store: Store
    bus: Bus
    metrics: Metrics
    attachments: AttachmentStore
    ingestor: Ingestor
    channels: ChannelManager
    http: aiohttp.ClientSession
    workspace: Workspace
    server: TestServer | None = None
    received: list[InboundMessage] = field(default_factory=list)
    _names: int = 0

    async def sink(self, message: InboundMessage) -> IngestResult:
        """What adapters hand messages to: records each one, then the real ingestor stores it."""
        self.received.append(message)
        return await self.ingestor(message)

    async def add_channel(
        self, values: Mapping[str, Any] | None = None, *, kind: str = "api", workspace_id: str | None = None
    ) -> str:
        self._names += 1
        return await add_channel(
            self.store,
            workspace_id or self.workspace.id,
            {"secret": SECRET} if values is None else values,
            kind=kind,
            name=f"{kind}-{self._names}",
            registry=self.channels.registry,
        )

    async def adapter(self, account_id: str) -> ChannelAdapter[Any]:
        adapter = await self.channels.get(account_id)
        assert adapter is not None, f"channel {account_id} did not start"
        return adapter

    async def ingest(self, message: InboundMessage) -> IngestResult:
        return await self.ingestor(message)

    async def close_server(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None

    async def serve(self) -> str:
        """Serve the HTTP application on loopback; returns its base URL."""
        if self.server is None:
            app = create_app(
                self.store,
                self.bus,
                self.metrics,
                self.channels,
                self.settings.http.max_body_bytes,
                attachments=self.attachments,
            )
            self.server = TestServer(app, host="127.0.0.1")
            await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")


@asynccontextmanager
async def open_core(
    settings: Settings, *, bus: Bus | None = None, registry: Registry | None = None
) -> AsyncIterator[Core]:
    async with AsyncExitStack() as stack:
        store = open_store(settings)
        stack.push_async_callback(store.close)
        await store.migrate()
        workspace, _ = await store.ensure_workspace(settings.default_workspace)
        bus = bus if bus is not None else create_bus(settings.redis_url)
        await bus.start()
        stack.push_async_callback(bus.close)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        metrics = Metrics()
        attachments = AttachmentStore(settings.attachments_dir, settings.max_attachment_bytes)
        ingestor = Ingestor(store, bus, attachments, metrics, max_batch=settings.ingest.max_batch)
        await ingestor.start()
        stack.push_async_callback(ingestor.stop)

        channels = ChannelManager(
            store,
            bus,
            registry if registry is not None else Registry(),
            _RecordingSink(lambda: core),
            http,
            clock=utcnow,
            node_id="test",
            max_body_bytes=settings.http.max_body_bytes,
            max_attachment_bytes=settings.max_attachment_bytes,
        )
        stack.push_async_callback(channels.stop_all)
        core = Core(settings, store, bus, metrics, attachments, ingestor, channels, http, workspace)
        stack.push_async_callback(core.close_server)
        yield core


@asynccontextmanager
async def running_daemon(settings: Settings) -> AsyncIterator[Daemon]:
    daemon = Daemon(settings)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


def daemon_url(daemon: Daemon) -> str:
    assert daemon.port is not None
    return f"http://{daemon.settings.http.host}:{daemon.port}"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]


@dataclass
class ApiSender:
    """Posts signed messages to one API channel, as the shop's backend would."""

    http: aiohttp.ClientSession
    base_url: str
    channel_id: str
    secret: str = SECRET
    kind: str = "api"

    @property
    def url(self) -> str:
        return f"{self.base_url}/channels/{self.kind}/{self.channel_id}/messages"

    async def post(
        self,
        payload: Mapping[str, Any] | bytes,
        *,
        signature: str | None = "valid",
    ) -> Answer:
        """POST the body (a JSON object, or raw bytes), signed unless `signature` says otherwise."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        all_headers = {"Content-Type": "application/json"}
        if signature == "valid":
            all_headers["X-Aggregator-Signature"] = sign(self.secret, body)
        elif signature is not None:
            all_headers["X-Aggregator-Signature"] = signature
        async with self.http.post(self.url, data=body, headers=all_headers) as response:
            raw = await response.read()
            try:
                parsed = json.loads(raw) if raw else {}
            except ValueError:
                parsed = {"raw": raw.decode(errors="replace")}
            return Answer(response.status, parsed)
