"""Start the daemon with experimental patches, to measure a suggested change without editing the code.

    python -m bench.whatif PATCH[,PATCH...] -- --config FILE serve
    python -m bench.ingest --whatif index-in          (the usual way: bench.ingest starts it like this)

Patches (applied in the daemon process before it starts; nothing on disk changes):

  index-in     SQLAlchemy renders tuple_(a, b).in_(...) on SQLite as "(a, b) IN (VALUES (?, ?), ...)", which
               SQLite plans as a full scan of the table.  This rewrites it to
               "(a, b) IN (SELECT * FROM (VALUES (?, ?), ...))", which SQLite answers from the unique
               index.  Same rows, index lookups instead of O(table) per batch.
  sync-normal  PRAGMA synchronous=NORMAL on every SQLite connection (in WAL mode: a commit survives a
               crash of the process, but the last commits may be lost on power failure).
  no-autocheckpoint
               PRAGMA wal_autocheckpoint=0: no WAL checkpoint inside a commit (the WAL just grows during a
               short run), to see what checkpoints cost the latency tail.
  gc-freeze    gc.freeze() once the daemon is up and gc.set_threshold(10000, 50, 1000): fewer and cheaper
               collections, to see what the garbage collector costs the latency tail.
  uvloop       run the daemon on uvloop (not a dependency: install it outside the venv, e.g.
               `pip install --target /tmp/bench-extra uvloop`, and run with PYTHONPATH=/tmp/bench-extra).
  switch-1ms   sys.setswitchinterval(0.001): a thread waiting for the GIL asks for it after 1 ms, not 5.
  writer-process
               run Store.ingest_batch in a separate process (one worker, spawned at start) instead of
               the daemon's writer thread, so the batch's Python work (SQLAlchemy, ingest_batch) does
               not share the GIL with the HTTP side.  Same SQL, same transaction, same durability.
  null-sink    diagnostic, not a suggestion: the ingest pipeline answers "created" at once and stores
               nothing, to measure the HTTP side (aiohttp, HMAC, JSON, pydantic) alone.  The stored-rows
               check of bench.ingest fails by design.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

VALUES_IN = re.compile(r"IN \(VALUES (\((?:\?|, )+\)(?:, \((?:\?|, )+\))*)\)")


def _index_in() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def rewrite(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> tuple[str, Any]:
        if "IN (VALUES" in statement:
            statement = VALUES_IN.sub(r"IN (SELECT * FROM (VALUES \1))", statement)
        return statement, parameters

    event.listen(Engine, "before_cursor_execute", rewrite, retval=True)


def _pragma(statement: str) -> Callable[[], None]:
    """A patch that runs `statement` once on every SQLite connection, after the daemon's own set-up."""

    def patch() -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        done: set[int] = set()

        def run(conn: Any) -> None:
            dbapi = conn.connection.dbapi_connection
            if dbapi is None or id(dbapi) in done or conn.dialect.name != "sqlite":
                return
            done.add(id(dbapi))
            cursor = dbapi.cursor()
            cursor.execute(statement)
            cursor.close()

        event.listen(Engine, "engine_connect", run)

    return patch


def _gc_freeze() -> None:
    import gc

    from aggregator.daemon import Daemon

    original = Daemon.start

    async def start(self: Daemon) -> None:
        await original(self)
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 50, 1000)

    Daemon.start = start  # type: ignore[method-assign]


def _uvloop() -> None:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError as exc:
        raise SystemExit(
            "bench.whatif uvloop: uvloop is not importable; pip install --target /tmp/bench-extra uvloop "
            "and run with PYTHONPATH=/tmp/bench-extra"
        ) from exc
    uvloop.install()


def _switch_1ms() -> None:
    sys.setswitchinterval(0.001)


_child_engine: Any = None


def _child_init(url: str, patches: str) -> None:
    global _child_engine
    from aggregator.store.engine import create_sqlite_writer

    apply(patches)
    _child_engine = create_sqlite_writer(url)


def _child_ingest(items: Any, now: Any) -> Any:
    from aggregator.store.store import Store

    return Store._ingest_batch_sync(_child_engine, items, now)


def _child_ready() -> bool:
    return _child_engine is not None


def _writer_process(child_patches: str) -> None:
    import asyncio
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from aggregator.store.store import Store

    original_open = Store.__dict__["open"].__func__
    original_ingest = Store.ingest_batch
    pools: dict[int, ProcessPoolExecutor] = {}

    def open_(cls: type[Store], url: str, secret_box: Any) -> Store:
        store = original_open(cls, url, secret_box)
        if url.startswith("sqlite+aiosqlite:"):
            pool = ProcessPoolExecutor(
                1, mp_context=get_context("spawn"), initializer=_child_init, initargs=(url, child_patches)
            )
            pool.submit(_child_ready)  # start the worker now, not on the first batch
            pools[id(store)] = pool
        return store

    async def ingest_batch(self: Store, items: Any, now: Any) -> Any:
        pool = pools.get(id(self))
        if pool is None:
            return await original_ingest(self, items, now)
        return await asyncio.get_running_loop().run_in_executor(pool, _child_ingest, list(items), now)

    Store.open = classmethod(open_)  # type: ignore[method-assign,assignment]
    Store.ingest_batch = ingest_batch  # type: ignore[method-assign]


def _null_sink() -> None:
    from aggregator.ingest import Ingestor
    from aggregator.model import InboundMessage, IngestResult, new_id

    async def call(self: Ingestor, message: InboundMessage) -> IngestResult:
        return IngestResult(new_id(), new_id(), created=True)

    Ingestor.__call__ = call  # type: ignore[method-assign]


PATCHES: dict[str, Callable[[], None]] = {
    "writer-process": lambda: None,  # handled in apply()
    "null-sink": _null_sink,
    "index-in": _index_in,
    "sync-normal": _pragma("PRAGMA synchronous=NORMAL"),
    "no-autocheckpoint": _pragma("PRAGMA wal_autocheckpoint=0"),
    "gc-freeze": _gc_freeze,
    "uvloop": _uvloop,
    "switch-1ms": _switch_1ms,
}


def apply(names: str) -> list[str]:
    applied = []
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if "writer-process" in wanted:
        # The other patches apply in the writer process as well (the SQL runs there).
        _writer_process(",".join(n for n in wanted if n != "writer-process"))
        wanted.remove("writer-process")
        applied.append("writer-process")
    for name in wanted:
        if name not in PATCHES:
            raise SystemExit(f"bench.whatif: unknown patch {name!r} (known: {', '.join(PATCHES)})")
        PATCHES[name]()
        applied.append(name)
    return applied


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    apply(args[0])
    from aggregator.cli import main as aggregator_main

    return aggregator_main(args[2:])


if __name__ == "__main__":
    sys.exit(main())
