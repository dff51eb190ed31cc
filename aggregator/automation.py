"""Automation rules: event + conditions -> actions, in a defined order, without loops (SKELETON)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

import aiohttp

from aggregator.model import Event, utcnow
from aggregator.store import Store
from aggregator.workspace import SettingsCache
from channels.base import Registry

Enqueue = Callable[[str], Awaitable[None]]


class RuleEngine:
    name = "automation"

    def __init__(
        self,
        store: Store,
        settings: SettingsCache,
        registry: Registry,
        enqueue_outbox: Enqueue,
        http: aiohttp.ClientSession,
        *,
        clock: Callable[[], datetime] = utcnow,
        publish: Callable[[Event], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.registry = registry
        self.enqueue_outbox = enqueue_outbox
        self.http = http
        self.clock = clock
        self.publish = publish

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def handle(self, event: Event) -> None:
        return None
