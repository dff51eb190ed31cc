"""Starts and supervises everything; stops it in order on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import aiohttp
from aiohttp import web

from aggregator.api.app import Drain, create_app
from aggregator.attachments import AttachmentStore
from aggregator.bus import Bus, create_bus
from aggregator.channels import ChannelManager
from aggregator.config import Settings
from aggregator.ingest import Ingestor
from aggregator.metrics import Metrics
from aggregator.model import Role, utcnow
from aggregator.outbound import OutboxWorker
from aggregator.secrets import SecretBox
from aggregator.store import Store, Workspace
from channels.base import Registry

log = logging.getLogger(__name__)

CHANNEL_REFRESH_SECONDS = 10.0
SHUTDOWN_SECONDS = 30.0
FIRST_ADMIN_EMAIL = "admin@localhost"


def new_token() -> str:
    return "agg_" + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Bootstrap:
    workspace: Workspace
    admin_token: str | None


def open_store(settings: Settings) -> Store:
    # Owner-only: the database holds customers' messages.
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Store.open(
        settings.resolved_database_url,
        SecretBox.load(settings.data_dir, settings.secret_key),
        writer_process=settings.ingest.writer_process,
    )


async def bootstrap(store: Store, settings: Settings) -> Bootstrap:
    """Schema up to date, the default workspace present, and an admin token when it has none."""
    await store.migrate()
    workspace, _ = await store.ensure_workspace(settings.default_workspace)
    token = None
    if await store.count_tokens(workspace.id, Role.ADMIN) == 0:
        token = new_token()
        user_id = await store.find_user_id(workspace.id, FIRST_ADMIN_EMAIL)
        if user_id is None:
            user_id = await store.create_user(workspace.id, "Administrator", FIRST_ADMIN_EMAIL, Role.ADMIN)
        await store.create_token(workspace.id, Role.ADMIN, token, user_id=user_id, name="first admin token")
    return Bootstrap(workspace, token)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: Registry | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else Registry()
        self.clock = clock
        self.node_id = f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = Metrics()
        self.store: Store = open_store(settings)
        self.bus: Bus = create_bus(settings.redis_url)
        self.attachments = AttachmentStore(settings.attachments_dir, settings.max_attachment_bytes)
        self.ingestor = Ingestor(
            self.store,
            self.bus,
            self.attachments,
            self.metrics,
            max_batch=settings.ingest.max_batch,
            clock=clock,
        )
        self.bootstrap: Bootstrap | None = None
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._drain = Drain()
        self._refresher: asyncio.Task[None] | None = None
        self.channels: ChannelManager | None = None
        self.outbox: OutboxWorker | None = None
        self.port: int | None = None

    async def start(self) -> None:
        self.bootstrap = await bootstrap(self.store, self.settings)
        await self.store.start_writer()
        await self.bus.start()
        await self.ingestor.start()
        self._http = aiohttp.ClientSession()
        channels = self.channels = ChannelManager(
            self.store,
            self.bus,
            self.registry,
            self.ingestor,
            self._http,
            clock=self.clock,
            node_id=self.node_id,
            max_body_bytes=self.settings.http.max_body_bytes,
            max_attachment_bytes=self.settings.max_attachment_bytes,
        )
        await channels.start_all()
        self.outbox = OutboxWorker(
            self.store,
            self.bus,
            channels.running,
            self.metrics,
            self.settings.outbox,
            node_id=self.node_id,
            clock=self.clock,
        )
        await self.outbox.start()
        app = create_app(
            self.store,
            self.bus,
            self.metrics,
            channels,
            self.settings.http.max_body_bytes,
            self._drain,
            attachments=self.attachments,
            enqueue_outbox=self.outbox.enqueue,
        )
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http.host, self.settings.http.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.http.port
        self._refresher = asyncio.create_task(self._refresh_loop(), name="channel-refresh")
        log.info("serving on http://%s:%s", self.settings.http.host, self.port)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(CHANNEL_REFRESH_SECONDS)
            try:
                if self.channels is not None:
                    await self.channels.refresh()
            except Exception:
                log.exception("refreshing channels failed")

    async def stop(self) -> None:
        """Stop accepting, finish in-flight work, then close everything."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()
            if not await self._drain.drain(SHUTDOWN_SECONDS):
                log.warning("requests still running after %ss; cutting them off", SHUTDOWN_SECONDS)
            await self._runner.cleanup()
        # The outbox sends through the channel adapters: it stops (finishing its sends) before they do.
        if self.outbox is not None:
            await self.outbox.stop()
        if self.channels is not None:
            await self.channels.stop_all()
        await self.ingestor.stop()
        if self._http is not None:
            await self._http.close()
        await self.bus.close()
        await self.store.close()

    async def serve(self, on_started: Callable[[Daemon], None] | None = None) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            if on_started is not None:
                on_started(self)
            await stop.wait()
            log.info("stopping: finishing in-flight work")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()
