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
  uvloop       run the daemon on uvloop (not a dependency: install it outside the venv, e.g.
               `pip install --target /tmp/bench-extra uvloop`, and run with PYTHONPATH=/tmp/bench-extra).
  switch-1ms   sys.setswitchinterval(0.001): a thread waiting for the GIL asks for it after 1 ms, not 5.
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


def _sync_normal() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    done: set[int] = set()

    def normal(conn: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        if dbapi is None or id(dbapi) in done or conn.dialect.name != "sqlite":
            return
        done.add(id(dbapi))
        cursor = dbapi.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(Engine, "engine_connect", normal)


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


def _null_sink() -> None:
    from aggregator.ingest import Ingestor
    from aggregator.model import InboundMessage, IngestResult, new_id

    async def call(self: Ingestor, message: InboundMessage) -> IngestResult:
        return IngestResult(new_id(), new_id(), created=True)

    Ingestor.__call__ = call  # type: ignore[method-assign]


PATCHES: dict[str, Callable[[], None]] = {
    "null-sink": _null_sink,
    "index-in": _index_in,
    "sync-normal": _sync_normal,
    "uvloop": _uvloop,
    "switch-1ms": _switch_1ms,
}


def apply(names: str) -> list[str]:
    applied = []
    for name in filter(None, (n.strip() for n in names.split(","))):
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
