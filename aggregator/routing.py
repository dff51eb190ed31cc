"""Routing of new and reopened conversations: the team first, then an agent in it (SKELETON)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from aggregator.model import Event, utcnow
from aggregator.store import Store
from aggregator.workspace import SettingsCache


class RoutingEngine:
    name = "routing"

    def __init__(
        self,
        store: Store,
        settings: SettingsCache,
        *,
        clock: Callable[[], datetime] = utcnow,
        publish: Callable[[Event], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.publish = publish

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def handle(self, event: Event) -> None:
        return None
