"""Database engine set-up and schema migrations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
WRITE_OPTION = "aggregator_write"


def _sqlite_from_hint(self: SQLiteCompiler, table: Any, text: str | None) -> str | None:
    return text


# SQLAlchemy's SQLite dialect drops FROM hints; SQLite's own one is `table INDEXED BY index`, which the
# inbox list needs (see store/inbox.py), so the dialect renders `with_hint(..., "sqlite")` as given.
SQLiteCompiler.get_from_hint_text = _sqlite_from_hint  # type: ignore[method-assign,assignment]


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling is replaced by explicit BEGIN (see below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Connection) -> None:
        # Writers take the write lock at BEGIN: a deferred transaction that reads and then writes
        # fails with SQLITE_BUSY, whatever the busy timeout, when another writer committed between.
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL, foreign keys and a busy timeout on every connection."""
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        _sqlite_setup(engine.sync_engine)
    return engine


def create_sqlite_writer(url: str) -> Engine | None:
    """For SQLite, a synchronous engine for the ingest writer thread; None for other databases.

    aiosqlite hands every call (cursor, execute, fetch, close) to its thread and back, 3-4 hand-offs per
    statement at 60-150 microseconds each; a batch run whole in one writer thread pays one.
    """
    if not url.startswith("sqlite+aiosqlite:"):
        return None
    engine = sa_create_engine(url.replace("sqlite+aiosqlite:", "sqlite:", 1), pool_size=1, max_overflow=0)
    _sqlite_setup(engine)
    return engine


def create_sqlite_reader(url: str) -> Engine | None:
    """For SQLite, a synchronous engine for the reader threads (see StoreBase.read_sync); else None."""
    if not url.startswith("sqlite+aiosqlite:"):
        return None
    sync_url = url.replace("sqlite+aiosqlite:", "sqlite:", 1)
    engine = sa_create_engine(sync_url, pool_size=4, max_overflow=0)
    _sqlite_setup(engine)
    return engine


def alembic_config() -> Config:
    # Alembic is imported when a migration runs, not by every process that opens the store
    # (it is about 10 MiB of a writer process's memory otherwise).
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _upgrade(connection: Connection) -> None:
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def migrate(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """Bring the schema to the newest revision; returns (before, after)."""
    from alembic.script import ScriptDirectory

    async with engine.begin() as conn:
        before = await conn.run_sync(_current)
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        if before != head:
            await conn.run_sync(_upgrade)
    return before, head
