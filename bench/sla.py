"""The SLA scheduler's cost with many open timers (aggregator/sla.py SlaEngine).

    python -m bench.sla [--timers 100000] [--seconds 20] [--downtime-minutes 60]

A fresh SQLite database gets --timers open conversations, each with a running first-response timer
(due times spread evenly over the next 24 hours, a warning 15 minutes before), written with sqlite3
directly. Then, in this process:

- steady state: the scheduler's own loop runs on the real clock for --seconds (it wakes at least once
  a second, fires what came due: about 140 warnings and breaches an hour at 100k timers); its CPU time
  (user + system, this process) is scaled to a minute;
- after downtime: the clock jumps --downtime-minutes ahead and one `fire_due` fires everything that fell
  due meanwhile (each once), as the start-up after an outage does;
- memory: the process's resident set before the timers were loaded, after the steady state, and the
  peak of Python allocations (tracemalloc) during the steady state: the scheduler holds no per-timer
  state, the rows stay in SQL.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sqlite3
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aggregator.config import Settings
from aggregator.daemon import open_store
from aggregator.model import Event, new_id
from aggregator.sla import SlaEngine
from aggregator.store.schema import format_time
from aggregator.workspace import SettingsCache
from bench._common import mib, print_table

WARN_BEFORE = timedelta(minutes=15)
SPREAD = timedelta(hours=24)


def rss() -> float:
    """The resident set now (bytes), from /proc (getrusage only has the peak)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def fill(db: Path, workspace_id: str, timers: int, now: datetime) -> None:
    """Open conversations with one running first-response timer each (foreign keys off: the scheduler
    reads timers and writes conversations by id only)."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA foreign_keys=OFF")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("BEGIN")
    policy_id = new_id()
    stamp = format_time(now)
    con.execute(
        "INSERT INTO sla_policies (id, workspace_id, name, position, enabled, conditions, first_response_seconds, "
        "mode, warn_before_seconds, created_at, updated_at) VALUES (?, ?, 'bench', 0, 1, '{}', 86400, "
        "'around_the_clock', 900, ?, ?)",
        (policy_id, workspace_id, stamp, stamp),
    )
    step = SPREAD / timers
    conversations = []
    rows = []
    for k in range(timers):
        conversation_id = new_id()
        due = now + step * (k + 1)
        warn = due - WARN_BEFORE
        started = format_time(due - SPREAD)
        conversations.append(
            (
                conversation_id,
                workspace_id,
                "ca",
                "co",
                "id",
                "open",
                "normal",
                "[]",
                started,
                started,
                started,
                started,
                started,
                format_time(due),
                "running",
                stamp,
            )
        )
        fire = format_time(warn if warn > now else due)
        warned = stamp if warn <= now else None
        rows.append(
            (
                conversation_id,
                "first_response",
                workspace_id,
                policy_id,
                started,
                format_time(due),
                format_time(warn),
                warned,
                fire,
            )
        )
    con.executemany(
        "INSERT INTO conversations (id, workspace_id, channel_account_id, contact_id, identity_id, status, "
        "priority, labels, last_activity_at, created_at, updated_at, awaiting_since, status_changed_at, "
        "sla_due_at, sla_state, sla_checked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        conversations,
    )
    con.executemany(
        "INSERT INTO sla_timers (conversation_id, metric, workspace_id, policy_id, started_at, due_at, warn_at, "
        "warned_at, next_fire_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    con.execute("UPDATE conversations SET sla_checked_at = updated_at")
    con.execute("COMMIT")
    con.close()


async def run(timers: int, seconds: float, downtime: timedelta) -> list[list[str]]:
    with tempfile.TemporaryDirectory(prefix="bench-sla-") as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", redis_url=None, database_url=None, secret_key=None)
        store = open_store(settings)
        await store.migrate()
        workspace, _ = await store.ensure_workspace("bench")
        before = rss()
        start = datetime.now(UTC)
        db = Path(settings.resolved_database_url.split("///", 1)[1])
        fill(db, workspace.id, timers, start)
        fired: list[Event] = []

        async def publish(event: Event) -> None:
            fired.append(event)

        offset = timedelta(0)

        def clock() -> datetime:
            return datetime.now(UTC) + offset

        engine = SlaEngine(store, SettingsCache(store.workspace_settings), clock=clock, publish=publish)
        await engine.start()  # catch-up finds nothing stale; fires nothing yet
        tracemalloc.start()
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        steady_fired = len(fired)
        after = rss()
        await engine.stop()

        offset = downtime
        fired.clear()
        cpu0, wall0 = time.process_time(), time.monotonic()
        at = clock()
        late = await engine.fire_due(at)
        late_cpu, late_wall = time.process_time() - cpu0, time.monotonic() - wall0
        again = await engine.fire_due(at)
        await store.close()
    per_minute = cpu / wall * 60
    return [
        ["open timers", f"{timers:,}"],
        ["steady state: measured", f"{wall:.1f} s wall, {steady_fired} fired"],
        ["steady state: CPU per minute", f"{per_minute:.3f} s ({per_minute / 60 * 100:.2f}% of a core)"],
        [
            f"after {downtime.total_seconds() / 60:.0f} min down: fired at start",
            f"{late:,} ({again} a second time)",
        ],
        ["after downtime: time to fire", f"{late_wall:.2f} s wall, {late_cpu:.2f} s CPU"],
        ["memory: RSS before timers / after steady state", f"{mib(before)} / {mib(after)}"],
        ["memory: Python peak during steady state", mib(peak)],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timers", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--downtime-minutes", type=float, default=60.0)
    args = parser.parse_args()
    rows = asyncio.run(run(args.timers, args.seconds, timedelta(minutes=args.downtime_minutes)))
    print(f"SLA scheduler, {args.timers:,} open timers")
    print_table(rows, ["what", "figure"])


if __name__ == "__main__":
    main()
