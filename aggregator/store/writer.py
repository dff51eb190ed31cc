"""Where ingest batches are written: a thread of this process, or a writer process of its own.

With SQLite a batch runs whole on one synchronous connection: aiosqlite would hand every call (cursor,
execute, fetch, close) to its thread and back, 3-4 hand-offs per statement. In a thread the batch still
shares the interpreter lock with the HTTP side, which caps the daemon near one core; in a writer
process (the daemon's default) SQLAlchemy's per-row work runs on the other core.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime

from sqlalchemy import Engine

from aggregator.attachments import write_files
from aggregator.store.engine import WRITE_OPTION, create_sqlite_writer
from aggregator.store.ingest_batch import BatchOutcome, PreparedInbound, detect_languages, ingest_batch

PR_SET_PDEATHSIG = 1


def write_batch(
    engine: Engine, items: Sequence[PreparedInbound], now: datetime, files_root: str | None = None
) -> BatchOutcome:
    """The batch's languages detected and its files made durable, then its rows in one transaction
    (rows never name a missing file)."""
    detect_languages(items)
    if files_root is not None:
        files = [f for item in items for f in item.files]
        if files:
            write_files(files_root, files)
    with engine.connect() as conn:
        conn = conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            return ingest_batch(conn, items, now)


# The writer process's own engine, set by its initializer (state of that child process only).
_process_engine: Engine | None = None


def _init_process(url: str, parent: int) -> None:
    global _process_engine
    # Die with the daemon: after a kill -9 an orphaned writer must not linger with the database open.
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # Linux only
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _process_engine = create_sqlite_writer(url)


def _ready() -> bool:
    return _process_engine is not None


def _write_in_process(
    items: Sequence[PreparedInbound], now: datetime, files_root: str | None
) -> BatchOutcome:
    assert _process_engine is not None, "writer process not initialised"
    return write_batch(_process_engine, items, now, files_root)


class BatchWriter:
    """Writes ingest batches for one SQLite database, in a thread or in a writer process."""

    def __init__(self, url: str, *, process: bool) -> None:
        self.url = url
        self.process = process
        self._engine: Engine | None = None
        self._executor: Executor | None = None

    def _start(self) -> Executor:
        if self.process:
            context = multiprocessing.get_context("spawn")
            return ProcessPoolExecutor(
                1, mp_context=context, initializer=_init_process, initargs=(self.url, os.getpid())
            )
        self._engine = create_sqlite_writer(self.url)
        return ThreadPoolExecutor(1, "sqlite-writer")

    async def start(self) -> None:
        """Start the writer now rather than on the first batch (a process takes about a second)."""
        if self._executor is None:
            self._executor = self._start()
        if self.process:
            await asyncio.get_running_loop().run_in_executor(self._executor, _ready)

    async def write(
        self, items: Sequence[PreparedInbound], now: datetime, files_root: str | None = None
    ) -> BatchOutcome:
        if self._executor is None:
            self._executor = self._start()
        loop = asyncio.get_running_loop()
        if not self.process:
            assert self._engine is not None
            return await loop.run_in_executor(
                self._executor, write_batch, self._engine, items, now, files_root
            )
        try:
            return await loop.run_in_executor(self._executor, _write_in_process, items, now, files_root)
        except BrokenProcessPool:
            # The writer process died (killed, out of memory): this batch's fate is unknown to us, but
            # the caller retries it and dedup makes that safe. The next batch gets a new process.
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
