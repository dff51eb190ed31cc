"""ChannelManager: adapters built from stored accounts, one poller per account across processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.fernet import Fernet

from aggregator.bus import Bus, InProcessBus, RedisBus
from aggregator.channels import ChannelManager
from aggregator.model import ConnectionState, IngestResult, OutboundMessage, SendResult, utcnow
from aggregator.secrets import SecretBox
from aggregator.store import Store
from aggregator.store.admin import ChannelChange
from channels.base import ChannelAdapter, ChannelConfig, CheckResult, Registry
from support.redis_server import RedisServer


class PollerConfig(ChannelConfig):
    mailbox: str


class Poller(ChannelAdapter[PollerConfig]):
    kind = "poller"
    config_model = PollerConfig
    exclusive = True
    started: list[str] = []

    async def start(self) -> None:
        Poller.started.append(self.context.node_id)
        await self.context.report_state(ConnectionState.CONNECTED, None)

    async def send(self, message: OutboundMessage) -> SendResult:
        return SendResult()

    async def check(self) -> CheckResult:
        return CheckResult(True, "ok")


async def _sink(_: Any) -> IngestResult:
    raise AssertionError("not used")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store.open(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", SecretBox(Fernet.generate_key()))
    await store.migrate()
    yield store
    await store.close()


def _manager(store: Store, bus: Bus, http: aiohttp.ClientSession, node: str) -> ChannelManager:
    manager = ChannelManager(
        store,
        bus,
        Registry({"poller": Poller}),
        _sink,
        http,
        clock=utcnow,
        node_id=node,
        max_body_bytes=1024,
        max_attachment_bytes=1024,
    )
    manager.lease_seconds = 0.6
    return manager


async def test_bad_config_is_recorded_as_the_channel_state(store: Store) -> None:
    workspace, _ = await store.ensure_workspace("w")
    account_id = await store.create_channel_account(workspace.id, "poller", "broken", {}, {})
    async with aiohttp.ClientSession() as http:
        manager = _manager(store, InProcessBus(), http, "a")
        await manager.start_all()
        assert manager.running(account_id) is None
        await manager.stop_all()
    account = await store.get_channel_account(account_id)
    assert account.state == ConnectionState.UNKNOWN_ERROR
    assert account.state_detail is not None and "mailbox" in account.state_detail


async def test_one_process_polls_an_account_and_another_takes_over(
    store: Store, redis_server: RedisServer
) -> None:
    workspace, _ = await store.ensure_workspace("w")
    account_id = await store.create_channel_account(workspace.id, "poller", "inbox", {"mailbox": "INBOX"}, {})
    Poller.started.clear()
    bus_a, bus_b = RedisBus(redis_server.url), RedisBus(redis_server.url)
    await bus_a.start()
    await bus_b.start()
    async with aiohttp.ClientSession() as http:
        first, second = _manager(store, bus_a, http, "a"), _manager(store, bus_b, http, "b")
        await first.start_all()
        await second.start_all()
        assert first.running(account_id) is not None
        assert second.running(account_id) is None
        await second.refresh()
        assert second.running(account_id) is None
        assert Poller.started == ["a"]

        await first.stop_all()  # releases the lease
        await second.refresh()
        assert second.running(account_id) is not None
        assert Poller.started == ["a", "b"]
        await second.stop_all()
    await bus_a.close()
    await bus_b.close()
    assert (await store.get_channel_account(account_id)).state == ConnectionState.STOPPED


async def test_a_lost_lease_stops_the_poller(store: Store, redis_server: RedisServer) -> None:
    workspace, _ = await store.ensure_workspace("w")
    account_id = await store.create_channel_account(workspace.id, "poller", "inbox", {"mailbox": "INBOX"}, {})
    bus = RedisBus(redis_server.url)
    await bus.start()
    async with aiohttp.ClientSession() as http:
        manager = _manager(store, bus, http, "a")
        await manager.start_all()
        assert manager.running(account_id) is not None
        # Another process took the lease (e.g. ours expired during a long pause).
        await bus.release_lease(f"channel:{account_id}", "a")
        assert await bus.acquire_lease(f"channel:{account_id}", "b", 10)
        for _ in range(50):
            if manager.running(account_id) is None:
                break
            await asyncio.sleep(0.05)
        assert manager.running(account_id) is None
        await manager.stop_all()
    await bus.close()


async def test_apply_starts_restarts_and_stops_an_account_at_once(store: Store) -> None:
    workspace, _ = await store.ensure_workspace("w")
    account_id = await store.create_channel_account(workspace.id, "poller", "inbox", {"mailbox": "INBOX"}, {})
    async with aiohttp.ClientSession() as http:
        manager = _manager(store, InProcessBus(), http, "a")
        first = await manager.apply(account_id)
        assert first is not None and manager.running(account_id) is first
        assert await manager.apply(account_id) is first  # nothing changed: not restarted

        await store.update_channel(workspace.id, account_id, ChannelChange(config={"mailbox": "Support"}))
        second = await manager.apply(account_id)
        assert second is not None and second is not first
        assert second.config.mailbox == "Support"  # type: ignore[attr-defined]

        await store.update_channel(workspace.id, account_id, ChannelChange(enabled=False))
        assert await manager.apply(account_id) is None
        assert manager.running(account_id) is None
        assert await manager.get(account_id) is None  # a disabled account is not started on demand
        await manager.stop_all()


async def test_refresh_follows_changes_made_elsewhere(store: Store) -> None:
    workspace, _ = await store.ensure_workspace("w")
    kept = await store.create_channel_account(workspace.id, "poller", "kept", {"mailbox": "A"}, {})
    changed = await store.create_channel_account(workspace.id, "poller", "changed", {"mailbox": "B"}, {})
    disabled = await store.create_channel_account(workspace.id, "poller", "disabled", {"mailbox": "C"}, {})
    deleted = await store.create_channel_account(workspace.id, "poller", "deleted", {"mailbox": "D"}, {})
    async with aiohttp.ClientSession() as http:
        bus = InProcessBus()
        manager = _manager(store, bus, http, "a")
        await manager.start_all()
        before = {account_id: manager.running(account_id) for account_id in (kept, changed)}

        await store.update_channel(workspace.id, changed, ChannelChange(config={"mailbox": "B2"}))
        await store.update_channel(workspace.id, disabled, ChannelChange(enabled=False))
        await store.delete_channel(workspace.id, deleted, utcnow())
        added = await store.create_channel_account(workspace.id, "poller", "added", {"mailbox": "E"}, {})
        await manager.refresh()

        assert manager.running(kept) is before[kept]  # a state report alone restarts nothing
        restarted = manager.running(changed)
        assert restarted is not None and restarted is not before[changed]
        assert restarted.config.mailbox == "B2"  # type: ignore[attr-defined]
        assert manager.running(disabled) is None and manager.running(deleted) is None
        assert manager.running(added) is not None
        # The leases of the stopped accounts are given up: another process may take them at once.
        assert await bus.acquire_lease(f"channel:{disabled}", "b", 10)
        assert await bus.acquire_lease(f"channel:{deleted}", "b", 10)
        assert not await bus.acquire_lease(f"channel:{changed}", "b", 10)
        await manager.stop_all()
    assert (await store.get_channel_account(deleted)).enabled is False
