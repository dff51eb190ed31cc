"""Micro-benchmarks behind the ingest findings: lookups, inserts and per-request CPU, each in isolation.

    python -m bench.micro [--rows 200000] [--batch 500]

1. Lookups as ingest_batch makes them (500 keys against a messages table of --rows rows), in the SQL
   SQLAlchemy renders for tuple_(...).in_(...) on SQLite and in index-friendly alternatives.
2. Inserting a batch of message rows: SQLAlchemy Core executemany with dicts (as ingest_batch does) vs
   sqlite3 executemany with tuples, and the FTS5 index insert.
3. Per-request CPU of the API channel's own work: HMAC check, json.loads, pydantic validation.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, create_engine, insert, select, text, tuple_

from aggregator.model import new_id
from aggregator.store import schema as t
from bench._common import SECRET, MessageFactory, aggregator_command, encode, print_table, write_config
from channels.api import sign
from channels.api.adapter import _Payload


def best_of(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Fastest of `repeat` runs, seconds."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def make_db(workdir: Path) -> Path:
    config = write_config(workdir / "aggregator.toml", workdir / "data", 0)
    subprocess.run([*aggregator_command(), "--config", str(config), "migrate"], check=True, capture_output=True)
    return workdir / "data" / "aggregator.db"


def seed_messages(db: Path, rows: int, account: str, workspace: str) -> None:
    con = sqlite3.connect(db)
    con.execute("PRAGMA foreign_keys=OFF")
    body = "x" * 300
    now = "2026-01-01T00:00:00.000000Z"
    con.executemany(
        "INSERT INTO messages (id, workspace_id, conversation_id, channel_account_id, direction, kind, text, "
        "external_id, flags, extra, created_at) VALUES (?, ?, 'c', ?, 'in', 'message', ?, ?, '[]', '{}', ?)",
        ((new_id(), workspace, account, body, f"ext-{i}", now) for i in range(rows)),
    )
    con.commit()
    con.close()


def lookups(db: Path, rows: int, batch: int) -> list[list[str]]:
    engine = create_engine(f"sqlite:///{db}")
    m = t.messages
    account = "acct"
    keys = [(account, f"ext-{i * (rows // batch)}") for i in range(batch)]  # all hits
    forms: dict[str, Any] = {
        "tuple_(a, b).in_(keys)  [ingest_batch today]": select(m.c.id, m.c.conversation_id).where(
            tuple_(m.c.channel_account_id, m.c.external_id).in_(keys)
        ),
        "a == acct AND b.in_(ids)": select(m.c.id, m.c.conversation_id).where(
            and_(m.c.channel_account_id == account, m.c.external_id.in_([k[1] for k in keys]))
        ),
    }
    out = []
    with engine.connect() as conn:
        for name, statement in forms.items():
            seconds = best_of(lambda s=statement: conn.execute(s).all(), 3)
            out.append([name, f"{seconds * 1000:.2f} ms", _plan(conn, statement)])
        values = ", ".join(["(?, ?)"] * batch)
        flat = [x for k in keys for x in k]
        raw = {
            "(a, b) IN (SELECT * FROM (VALUES ...))": f"SELECT id, conversation_id FROM messages WHERE "
            f"(channel_account_id, external_id) IN (SELECT * FROM (VALUES {values}))",
            "JOIN (VALUES ...) v ON a = v.column1 AND b = v.column2": f"SELECT m.id, m.conversation_id "
            f"FROM (VALUES {values}) AS v JOIN messages m ON m.channel_account_id = v.column1 "
            "AND m.external_id = v.column2",
        }
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        for name, sql in raw.items():
            seconds = best_of(lambda q=sql: dbapi.execute(q, flat).fetchall(), 3)
            plan = "; ".join(r[3] for r in dbapi.execute("EXPLAIN QUERY PLAN " + sql, flat))
            out.append([name, f"{seconds * 1000:.2f} ms", plan[:70]])
    engine.dispose()
    return out


def _plan(conn: Any, statement: Any) -> str:
    compiled = statement.compile(conn, compile_kwargs={"literal_binds": True})
    rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
    return "; ".join(r[3] for r in rows)[:70]


def inserts(db: Path, batch: int) -> list[list[str]]:
    engine = create_engine(f"sqlite:///{db}")
    now = datetime.now(UTC)
    factory = MessageFactory(tag="micro", seed=3)
    texts = [p["text"] for p in factory.payloads(batch)]

    def dict_rows() -> list[dict[str, Any]]:
        return [
            {
                "id": new_id(), "workspace_id": "w", "conversation_id": "c", "channel_account_id": "acct",
                "direction": "in", "kind": "message", "sender_contact_id": None, "subject": None,
                "text": body, "html": None, "external_id": new_id(), "raw_ref": None, "flags": [],
                "extra": {}, "language": None, "sent_at": None, "created_at": now,
            }
            for body in texts
        ]

    stamp = t.format_time(now)
    columns = ("id", "workspace_id", "conversation_id", "channel_account_id", "direction", "kind", "text",
               "external_id", "flags", "extra", "created_at")
    raw_sql = f"INSERT INTO messages ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    fts_sql = ("INSERT INTO search_index (body, workspace_id, conversation_id, ref_id, kind) "
               "VALUES (?, 'w', 'c', ?, 'message')")
    out = []
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None

        def sa_insert() -> None:
            conn.execute(insert(t.messages), dict_rows())

        def raw_insert() -> None:
            dbapi.executemany(
                raw_sql,
                [(new_id(), "w", "c", "acct", "in", "message", body, new_id(), "[]", "{}", stamp) for body in texts],
            )

        def fts_insert() -> None:
            conn.execute(
                text("INSERT INTO search_index (body, workspace_id, conversation_id, ref_id, kind) "
                     "VALUES (:body, 'w', 'c', :ref, 'message')"),
                [{"body": body, "ref": new_id()} for body in texts],
            )

        def fts_raw() -> None:
            dbapi.executemany(fts_sql, [(body, new_id()) for body in texts])

        for name, fn in [
            ("messages: SQLAlchemy insert(), list of dicts  [ingest_batch today]", sa_insert),
            ("messages: sqlite3 executemany, tuples", raw_insert),
            ("search_index (FTS5): SQLAlchemy text(), dicts  [today]", fts_insert),
            ("search_index (FTS5): sqlite3 executemany, tuples", fts_raw),
        ]:
            seconds = best_of(fn, 5)
            out.append([name, f"{seconds * 1000:.2f} ms", f"{seconds / batch * 1e6:.1f} us/row"])
        conn.rollback()
    engine.dispose()
    return out


def per_request() -> list[list[str]]:
    factory = MessageFactory(tag="req", seed=5)
    bodies = [encode(p) for p in factory.payloads(2000)]
    signatures = [sign(SECRET, b) for b in bodies]
    n = len(bodies)

    def check() -> None:
        for body, given in zip(bodies, signatures, strict=True):
            hmac.compare_digest(given.encode(), sign(SECRET, body).encode())

    def loads() -> None:
        for body in bodies:
            json.loads(body)

    decoded = [json.loads(b) for b in bodies]

    def validate() -> None:
        for data in decoded:
            _Payload.model_validate(data)

    def ids() -> None:
        for _ in range(n):
            new_id()

    out = []
    for name, fn in [("HMAC-SHA256 check", check), ("json.loads", loads),
                     ("pydantic _Payload.model_validate", validate), ("new_id()", ids)]:
        seconds = best_of(fn, 5)
        out.append([name, f"{seconds / n * 1e6:.1f} us/request"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000, help="messages in the table for the lookups")
    p.add_argument("--batch", type=int, default=500, help="keys / rows per batch (default 500)")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="aggregator-bench-micro-"))
    try:
        db = make_db(workdir)
        print(f"== lookups: {args.batch} keys, all present, in a messages table of {args.rows} rows")
        seed_messages(db, args.rows, "acct", "w")
        print_table(lookups(db, args.rows, args.batch), header=["query", "time", "plan"])
        print(f"\n== inserts: {args.batch} rows of ~300-byte texts, one transaction")
        print_table(inserts(db, args.batch), header=["insert", "batch", "per row"])
        print("\n== per-request CPU of the API channel's own checks (~450-byte bodies)")
        print_table(per_request())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
