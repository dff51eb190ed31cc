"""Shared fixtures."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from aggregator.config import Settings
from aggregator.daemon import Daemon
from fakes.callback import CallbackServer
from support.app import SECRET, Core, make_settings, open_core, running_daemon
from support.dovecot import Dovecot, running_dovecot
from support.redis_server import RedisServer
from support.smtp_server import SmtpServer, running_smtp_server


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A real redis-server on a free loopback port, stopped at teardown."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run the tests with `make test`, which installs it")
    server = RedisServer(tmp_path / "redis")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def app_settings(tmp_path: Path) -> Settings:
    """Settings with data under tmp_path, an ephemeral HTTP port and a fast outbox."""
    return make_settings(tmp_path)


@pytest.fixture
async def core(app_settings: Settings) -> AsyncIterator[Core]:
    """The inbound pipeline (store, in-process bus, ingestor, channel manager), closed at teardown."""
    async with open_core(app_settings) as opened:
        yield opened


@pytest.fixture
async def daemon(app_settings: Settings) -> AsyncIterator[Daemon]:
    """A whole running daemon on an ephemeral port (`daemon.port`), stopped at teardown."""
    async with running_daemon(app_settings) as running:
        yield running


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def callback_server() -> AsyncIterator[CallbackServer]:
    """The shop's callback endpoint for API channel replies, verifying signatures made with SECRET."""
    server = CallbackServer(SECRET)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def dovecot(tmp_path: Path) -> AsyncIterator[Dovecot]:
    """A real Dovecot (IMAP) on a free loopback port; any user logs in with "secret"."""
    async with running_dovecot(tmp_path) as server:
        yield server


@pytest.fixture
async def smtp(tmp_path: Path) -> AsyncIterator[SmtpServer]:
    """A real SMTP server on a free loopback port taking support@shop.test / "secret"."""
    async with running_smtp_server(tmp_path, security="none", auth=("support@shop.test", "secret")) as server:
        yield server
