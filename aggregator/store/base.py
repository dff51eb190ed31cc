"""What every part of the store shares: the engine, transactions and the errors queries raise."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from aggregator.secrets import SecretBox
from aggregator.store.engine import WRITE_OPTION, create_sqlite_reader
from aggregator.store.writer import BatchWriter

T = TypeVar("T")

READER_THREADS = 2


class NotFound(Exception):
    """No such record in this workspace."""


class Conflict(Exception):
    """The record would clash with an existing one (e.g. a name already taken)."""


class Invalid(Exception):
    """A value refers to something that cannot be used (e.g. an assignee of another workspace)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class ChannelAccount:
    id: str
    workspace_id: str
    kind: str
    name: str
    config: dict[str, Any]
    secrets: dict[str, str] = field(repr=False)
    enabled: bool
    state: str
    state_detail: str | None


class StoreBase:
    def __init__(self, engine: AsyncEngine, secret_box: SecretBox, writer: BatchWriter | None = None) -> None:
        self.engine = engine
        self.secret_box = secret_box
        self._writer = writer
        self._reader: Engine | None = create_sqlite_reader(engine.url.render_as_string(hide_password=False))
        self._reader_threads: ThreadPoolExecutor | None = None

    def _channel_account(self, row: Any) -> ChannelAccount:
        return ChannelAccount(
            id=row.id,
            workspace_id=row.workspace_id,
            kind=row.kind,
            name=row.name,
            config=dict(row.config),
            secrets=self.secret_box.decrypt(row.secrets) if row.secrets else {},
            enabled=bool(row.enabled),
            state=row.state,
            state_detail=row.state_detail,
        )

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

    async def read_sync(self, work: Callable[[Connection], T]) -> T:
        """Run `work` on a synchronous read connection in one hand-off to a reader thread.

        The API's hot reads (authentication, inbox pages, search, messages) run this way: through
        aiosqlite every statement, fetch and close is a hand-off of its own, about 16 for an inbox
        page, which cost more than the queries themselves.
        """
        if self._reader is None:
            async with self.read() as conn:
                return await conn.run_sync(work)
        if self._reader_threads is None:
            self._reader_threads = ThreadPoolExecutor(READER_THREADS, "sqlite-reader")
        reader = self._reader

        def run() -> T:
            with reader.connect() as conn:
                return work(conn)

        return await asyncio.get_running_loop().run_in_executor(self._reader_threads, run)

    async def close_reader(self) -> None:
        threads, self._reader_threads = self._reader_threads, None
        if threads is not None:
            await asyncio.get_running_loop().run_in_executor(None, threads.shutdown)
        if self._reader is not None:
            self._reader.dispose()
