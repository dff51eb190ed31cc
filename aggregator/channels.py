"""Running channel accounts: builds each adapter with its context, starts and stops it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiohttp

from aggregator.bus import Bus, BusUnavailable
from aggregator.model import ConnectionState, Identity, Reachability
from aggregator.store import ChannelAccount, NotFound, Store
from channels.base import AdapterContext, ChannelAccountRef, ChannelAdapter, InboundSink, Registry

log = logging.getLogger(__name__)

LEASE_SECONDS = 30.0


class _Checkpoints:
    def __init__(self, store: Store, account_id: str) -> None:
        self._store = store
        self._account_id = account_id

    async def get(self, key: str) -> Any:
        return await self._store.get_checkpoint(self._account_id, key)

    async def set(self, key: str, value: Any) -> None:
        await self._store.set_checkpoint(self._account_id, key, value)

    async def delete(self, key: str) -> None:
        await self._store.delete_checkpoint(self._account_id, key)


def _version(account: ChannelAccount) -> str:
    """A digest of what an adapter is built from; secrets enter only hashed, never kept in clear."""
    built = [account.kind, account.name, account.workspace_id, account.config, account.secrets]
    return hashlib.sha256(json.dumps(built, sort_keys=True, default=str).encode()).hexdigest()


class ChannelManager:
    """The adapters of all enabled channel accounts in this process."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        registry: Registry,
        sink: InboundSink,
        http: aiohttp.ClientSession,
        *,
        clock: Callable[[], datetime],
        node_id: str,
        max_body_bytes: int,
        max_attachment_bytes: int,
    ) -> None:
        self.store = store
        self.bus = bus
        self.registry = registry
        self.sink = sink
        self.http = http
        self.clock = clock
        self.node_id = node_id
        self.max_body_bytes = max_body_bytes
        self.max_attachment_bytes = max_attachment_bytes
        self.adapters: dict[str, ChannelAdapter[Any]] = {}
        self.lease_seconds = LEASE_SECONDS
        self._leases: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self._lease_task: asyncio.Task[None] | None = None
        # What each running adapter was built from (a digest), to restart it when the record changes.
        self._versions: dict[str, str] = {}

    def build(self, account: ChannelAccount) -> ChannelAdapter[Any]:
        """An adapter for the account (not started); raises ConfigInvalid or UnknownChannelKind."""
        adapter_class = self.registry.get(account.kind)
        config = adapter_class.config_model.parse(account.kind, {**account.config, **account.secrets})
        logger = logging.getLogger(f"channels.{account.kind}.{account.id}")

        async def report_state(state: ConnectionState, detail: str | None) -> None:
            try:
                await self.store.set_channel_state(account.id, state, detail)
            except Exception:
                logger.exception("could not record connection state %s", state)

        async def report_reachability(identity: Identity, reachability: Reachability) -> None:
            try:
                await self.store.set_reachability(account.id, identity, reachability)
            except Exception:
                logger.exception("could not record that %s is %s", identity.address, reachability)

        context = AdapterContext(
            sink=self.sink,
            checkpoints=_Checkpoints(self.store, account.id),
            bus=self.bus,
            http=self.http,
            clock=self.clock,
            logger=logger,
            report_state=report_state,
            max_body_bytes=self.max_body_bytes,
            max_attachment_bytes=self.max_attachment_bytes,
            node_id=self.node_id,
            sink_many=getattr(self.sink, "ingest_many", None),
            report_reachability=report_reachability,
        )
        ref = ChannelAccountRef(account.id, account.workspace_id, account.kind, account.name)
        return adapter_class(ref, config, context)

    async def start_all(self) -> None:
        for account in await self.store.list_channel_accounts(enabled_only=True):
            async with self._lock:
                await self._start(account)
        self._lease_task = asyncio.create_task(self._renew_leases(), name="channel-leases")

    async def refresh(self) -> None:
        """Catch up with changes made elsewhere (the CLI, another process): start, restart or stop."""
        # One pass under the lock: a change applied meanwhile by this process (apply()) is then either
        # seen by this pass or applied after it, never overwritten by a stale read.
        async with self._lock:
            accounts = await self.store.list_channel_accounts(enabled_only=True)
            wanted = {account.id for account in accounts}
            for account_id in [a for a in self.adapters if a not in wanted]:
                await self._stop_one(account_id, release=True)
            for account in accounts:
                await self._apply(account)

    async def apply(self, account_id: str) -> ChannelAdapter[Any] | None:
        """Start, restart (settings changed) or stop (disabled, deleted) the account's adapter, at once."""
        async with self._lock:
            return await self._apply(await self._load(account_id))

    async def start_account(self, account_id: str) -> ChannelAdapter[Any] | None:
        """Start the account's adapter unless it runs already; None when disabled or not started."""
        async with self._lock:
            account = await self._load(account_id)
            if account is None or not account.enabled:
                return None
            return await self._start(account)

    async def restart_account(self, account_id: str) -> ChannelAdapter[Any] | None:
        """Stop the account's adapter and start it again from the stored record (unless disabled)."""
        async with self._lock:
            account = await self._load(account_id)
            await self._stop_one(account_id, release=account is None or not account.enabled)
            if account is None or not account.enabled:
                return None
            return await self._start(account)

    async def stop_account(self, account_id: str) -> None:
        """Stop the account's adapter here and give up its lease (e.g. it was disabled or deleted)."""
        async with self._lock:
            await self._stop_one(account_id, release=True)

    async def _load(self, account_id: str) -> ChannelAccount | None:
        try:
            return await self.store.get_channel_account(account_id)
        except NotFound:
            return None

    async def _apply(self, account: ChannelAccount | None) -> ChannelAdapter[Any] | None:
        """With the lock held: start, restart or stop as the account's record says."""
        if account is None:
            return None
        if not account.enabled:
            await self._stop_one(account.id, release=True)
            return None
        running = self.adapters.get(account.id)
        if running is not None and self._versions.get(account.id) == _version(account):
            return running
        if running is not None:
            log.info("channel %s (%s, %s) changed: restarting", account.name, account.kind, account.id)
            # The lease is kept: no other process should take the account over during a restart.
            await self._stop_one(account.id, release=False)
        return await self._start(account)

    async def _start(self, account: ChannelAccount) -> ChannelAdapter[Any] | None:
        """With the lock held: build and start the account's adapter unless it runs already."""
        if account.id in self.adapters:
            return self.adapters[account.id]
        try:
            adapter = self.build(account)
            if adapter.exclusive and not await self._take_lease(account.id):
                return None
            await adapter.start()
        except Exception as exc:
            log.error("channel %s (%s, %s) not started: %s", account.name, account.kind, account.id, exc)
            await self.store.set_channel_state(account.id, ConnectionState.UNKNOWN_ERROR, str(exc))
            return None
        self.adapters[account.id] = adapter
        self._versions[account.id] = _version(account)
        log.info("channel %s (%s, %s) started", account.name, account.kind, account.id)
        return adapter

    async def get(self, account_id: str) -> ChannelAdapter[Any] | None:
        """The running adapter, starting it first when the account exists but is not running yet."""
        adapter = self.adapters.get(account_id)
        if adapter is not None:
            return adapter
        # Read under the lock: a record read before a concurrent stop must not start the adapter again.
        return await self.start_account(account_id)

    def running(self, account_id: str) -> ChannelAdapter[Any] | None:
        return self.adapters.get(account_id)

    def _lease_name(self, account_id: str) -> str:
        return f"channel:{account_id}"

    async def _take_lease(self, account_id: str) -> bool:
        """Whether this process may poll the account now (another one holds it otherwise)."""
        try:
            held = await self.bus.acquire_lease(
                self._lease_name(account_id), self.node_id, self.lease_seconds
            )
        except BusUnavailable as exc:
            log.warning("channel %s not started: cannot take its lease: %s", account_id, exc)
            return False
        if held:
            self._leases[account_id] = asyncio.get_running_loop().time()
        else:
            log.info("channel %s is polled by another process", account_id)
        return held

    async def _renew_leases(self) -> None:
        """Keep our leases; stop an adapter whose lease is lost or could not be renewed in time."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            for account_id, renewed_at in list(self._leases.items()):
                try:
                    held = await self.bus.acquire_lease(
                        self._lease_name(account_id), self.node_id, self.lease_seconds
                    )
                except BusUnavailable:
                    held = loop.time() - renewed_at < self.lease_seconds * 0.8
                else:
                    if held:
                        self._leases[account_id] = loop.time()
                if not held:
                    log.warning(
                        "channel %s: lease lost; stopping here so that one process polls it", account_id
                    )
                    async with self._lock:
                        await self._stop_one(account_id)

    async def _stop_one(self, account_id: str, *, release: bool = False) -> None:
        held = self._leases.pop(account_id, None) is not None
        self._versions.pop(account_id, None)
        adapter = self.adapters.pop(account_id, None)
        if adapter is not None:
            try:
                await adapter.stop()
            except Exception:
                log.exception("channel %s did not stop cleanly", account_id)
            log.info("channel %s stopped", account_id)
        if release and held:
            with contextlib.suppress(BusUnavailable):
                await self.bus.release_lease(self._lease_name(account_id), self.node_id)

    async def stop_all(self) -> None:
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
            self._lease_task = None
        leases = list(self._leases)
        self._leases.clear()
        adapters = list(self.adapters.values())
        self.adapters.clear()
        self._versions.clear()
        results = await asyncio.gather(*(a.stop() for a in adapters), return_exceptions=True)
        for adapter, result in zip(adapters, results, strict=True):
            if isinstance(result, BaseException):
                log.error("channel %s did not stop cleanly: %r", adapter.account.id, result)
        for account_id in leases:
            with contextlib.suppress(BusUnavailable):
                await self.bus.release_lease(self._lease_name(account_id), self.node_id)
