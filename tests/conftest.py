"""Shared fixtures."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from support.redis_server import RedisServer


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
