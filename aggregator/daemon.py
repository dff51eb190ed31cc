"""Starts and supervises everything; stops it in order on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import aiohttp
from aiohttp import web

from aggregator.api.admin import tell_listeners
from aggregator.api.app import Drain, create_app
from aggregator.attachments import AttachmentStore
from aggregator.automation import RuleEngine, load_config_rules
from aggregator.autoreply import AutoReplier
from aggregator.bus import Bus, BusUnavailable, create_bus
from aggregator.channels import ChannelManager
from aggregator.config import Settings
from aggregator.engine import ConversationEngine
from aggregator.ingest import Ingestor
from aggregator.live import LiveHub
from aggregator.metrics import Metrics
from aggregator.model import Event, Role, utcnow
from aggregator.outbound import OutboxWorker
from aggregator.routing import RoutingEngine
from aggregator.secrets import SecretBox
from aggregator.sla import SlaEngine
from aggregator.store import Conflict, Store, Workspace
from aggregator.tokens import new_token
from aggregator.workspace import SettingsCache
from channels.base import Registry

log = logging.getLogger(__name__)

CHANNEL_REFRESH_SECONDS = 10.0
SNOOZE_CHECK_SECONDS = 1.0
SHUTDOWN_SECONDS = 30.0
FIRST_ADMIN_EMAIL = "admin@localhost"


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
            try:
                user_id = await store.create_user(workspace.id, "Administrator", FIRST_ADMIN_EMAIL, Role.ADMIN)
            except Conflict:
                # admin@localhost was deactivated: a new administrator, as the workspace has none left.
                email = FIRST_ADMIN_EMAIL.replace("@", f"+{token[-8:]}@")
                user_id = await store.create_user(workspace.id, "Administrator", email, Role.ADMIN)
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
        self.workspace_settings = SettingsCache(self.store.workspace_settings)
        self.ingestor = Ingestor(
            self.store,
            self.bus,
            self.attachments,
            self.metrics,
            max_batch=settings.ingest.max_batch,
            clock=clock,
            settings=self.workspace_settings,
        )
        self.auto_replies = AutoReplier(
            self.store,
            self.registry,
            self.workspace_settings,
            self._enqueue_outbox,
            clock=clock,
            publish=self._publish,
        )
        self.ingestor.hooks.append(self.auto_replies.hook)
        self.live = LiveHub(self.bus)
        self.bootstrap: Bootstrap | None = None
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._drain = Drain()
        self._refresher: asyncio.Task[None] | None = None
        self._snoozer: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.channels: ChannelManager | None = None
        self.outbox: OutboxWorker | None = None
        self.engine: ConversationEngine | None = None
        self.rules: RuleEngine | None = None
        self.routing = RoutingEngine(
            self.store, self.workspace_settings, clock=clock, publish=self._publish, tell=self._tell
        )
        self.sla = SlaEngine(self.store, self.workspace_settings, clock=clock, publish=self._publish)
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
        await self.auto_replies.start()
        # Rules first (they may choose the team, labels, priority), then routing, then SLA timers.
        await load_config_rules(self.store, self.settings)
        self.rules = RuleEngine(
            self.store,
            self.workspace_settings,
            self.registry,
            self._enqueue_outbox,
            self._http,
            clock=self.clock,
            publish=self._publish,
        )
        self.engine = ConversationEngine([self.rules, self.routing, self.sla])
        self.bus.listeners.append(self.engine.listen)
        await self.engine.start()
        self._recovery = asyncio.create_task(self._recover_auto_replies(), name="auto-reply-recovery")
        app = create_app(
            self.store,
            self.bus,
            self.metrics,
            channels,
            self.settings.http.max_body_bytes,
            self._drain,
            attachments=self.attachments,
            enqueue_outbox=self.outbox.enqueue,
            live=self.live,
            settings=self.workspace_settings,
        )
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http.host, self.settings.http.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.http.port
        self._refresher = asyncio.create_task(self._refresh_loop(), name="channel-refresh")
        self._snoozer = asyncio.create_task(self._snooze_loop(), name="snooze-wake")
        log.info("serving on http://%s:%s", self.settings.http.host, self.port)

    async def _recover_auto_replies(self) -> None:
        try:
            await self.auto_replies.recover()
        except Exception:
            log.exception("looking for automatic replies a stop left out failed")

    async def _publish(self, event: Event) -> None:
        try:
            await self.bus.publish(event)
        except BusUnavailable as exc:
            log.debug("%s not published: %s", event.type, exc)

    def _tell(self, event: Event) -> None:
        # Only this process's reactions (rules, routing, SLA): no live stream event.
        tell_listeners(self.bus, event)

    async def _enqueue_outbox(self, outbox_id: str) -> None:
        # Before the outbox runs (or after it stopped) the row waits in SQL for its sweep.
        if self.outbox is not None:
            await self.outbox.enqueue(outbox_id)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(CHANNEL_REFRESH_SECONDS)
            try:
                if self.channels is not None:
                    await self.channels.refresh()
            except Exception:
                log.exception("refreshing channels failed")

    async def _snooze_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.wake_snoozed()
            except Exception:
                log.exception("waking snoozed conversations failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), SNOOZE_CHECK_SECONDS)

    async def wake_snoozed(self) -> int:
        """Reopen the conversations whose snooze ran out and tell live clients; how many woke."""
        woken = await self.store.wake_snoozed(self.clock())
        events = [
            Event(
                "conversation.updated",
                workspace_id,
                {"conversation_id": conversation_id, "changed": ["snoozed_until", "status"], "by": None},
                conversation_id,
            )
            for workspace_id, conversation_id in woken
        ]
        if events:
            try:
                await self.bus.publish_many(events)
            except BusUnavailable as exc:
                log.debug("%d snooze wake-ups not published: %s", len(events), exc)
        return len(woken)

    async def stop(self) -> None:
        """Stop accepting, finish in-flight work, then close everything."""
        self._stopping.set()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._snoozer is not None:
            # Not cancelled: it may be in the middle of a write, and it stops within a second anyway.
            await self._snoozer
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()
            # Live streams never finish by themselves: end them, or the drain would wait for them.
            await self.live.close()
            if not await self._drain.drain(SHUTDOWN_SECONDS):
                log.warning("requests still running after %ss; cutting them off", SHUTDOWN_SECONDS)
            await self._runner.cleanup()
        # The outbox sends through the channel adapters: it stops (finishing its sends) before they do.
        if self.outbox is not None:
            await self.outbox.stop()
        if self.channels is not None:
            await self.channels.stop_all()
        await self.ingestor.stop()
        if self.engine is not None:
            await self.engine.stop()
            with contextlib.suppress(ValueError):
                self.bus.listeners.remove(self.engine.listen)
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        await self.auto_replies.stop()
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
