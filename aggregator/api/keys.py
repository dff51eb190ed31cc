"""Typed application state shared by the HTTP handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from aggregator.attachments import AttachmentStore
from aggregator.bus import Bus
from aggregator.channels import ChannelManager
from aggregator.live import LiveHub
from aggregator.metrics import Metrics
from aggregator.store import Store
from aggregator.workspace import SettingsCache

STORE = web.AppKey("store", Store)
BUS = web.AppKey("bus", Bus)
METRICS = web.AppKey("metrics", Metrics)
CHANNELS = web.AppKey("channels", ChannelManager)
ATTACHMENTS = web.AppKey("attachments", AttachmentStore)
# The process's live event hub: /stream clients and presence.
LIVE = web.AppKey("live", LiveHub)
# Hands a new outbox row to the outbox workers at once (the sweeper finds it from SQL otherwise).
ENQUEUE_OUTBOX: web.AppKey[Callable[[str], Awaitable[None]]] = web.AppKey("enqueue_outbox")

# The process's cache of workspace settings: a PATCH /workspace clears its entry at once.
SETTINGS = web.AppKey("workspace_settings", SettingsCache)

PREFIX = "/api/v1"
