"""What every part of the store shares: the engine, transactions and the errors queries raise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from aggregator.secrets import SecretBox
from aggregator.store.engine import WRITE_OPTION
from aggregator.store.writer import BatchWriter


class NotFound(Exception):
    """No such record in this workspace."""


class Conflict(Exception):
    """The record would clash with an existing one (e.g. a name already taken)."""


class Invalid(Exception):
    """A value refers to something that cannot be used (e.g. an assignee of another workspace)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class StoreBase:
    def __init__(self, engine: AsyncEngine, secret_box: SecretBox, writer: BatchWriter | None = None) -> None:
        self.engine = engine
        self.secret_box = secret_box
        self._writer = writer

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, holding SQLite's write lock from its start."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(**{WRITE_OPTION: True})
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn
