"""The reactions to a burst of customer messages: rules, routing and SLA timers (aggregator/engine.py).

    python -m bench.reactions [--messages 3000] [--concurrency 100] [--agents 20] [--rules 0]

A daemon in this process (SQLite, no Redis, the ingest writer in a process of its own as by default)
with one API channel account, an SLA policy (first and next response, around the clock), a team of
--agents online agents who speak English (capacity 1,000), and --rules enabled rules on
message.received that never match (a text_contains). --messages customer messages from half as many
senders (the first of each opens a conversation, the second writes again) are ingested --concurrency
at a time. Rows:

- stored: messages/s until the last one is committed (what ingest alone does here);
- reactions done: how long after that the reactions (rules, routing, SLA) were all through;
- end to end: messages/s from the first message in until the last reaction;
- per handler and event type, the time one event took (SLA: per event of its batches).

A reaction that lags is not lost (each handler catches up from SQL), but it is late: a burst of N
messages is routed and timed about N / (end to end) seconds after it began.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import insert, update

from aggregator.config import Settings
from aggregator.daemon import Daemon
from aggregator.model import Event, Identity, InboundMessage, Role, new_id, utcnow
from aggregator.store import schema as t
from bench._common import print_table

TEXT = "Hello, where is my order? It has not arrived yet and I am getting worried about it."


class Timings:
    """Time spent per (handler, event type), wrapped around the engine's handlers."""

    def __init__(self) -> None:
        self.spent: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])

    def add(self, key: tuple[str, str], count: int, seconds: float) -> None:
        entry = self.spent[key]
        entry[0] += count
        entry[1] += seconds

    def wrap(self, handler: Any) -> None:
        name = handler.name
        handle: Callable[[Event], Awaitable[None]] = handler.handle

        async def timed(event: Event) -> None:
            start = time.perf_counter()
            try:
                await handle(event)
            finally:
                self.add((name, event.type), 1, time.perf_counter() - start)

        handler.handle = timed
        batch: Callable[[Sequence[Event]], Awaitable[None]] | None = getattr(handler, "handle_batch", None)
        if batch is not None:

            async def timed_batch(events: Sequence[Event], batch: Any = batch) -> None:
                start = time.perf_counter()
                try:
                    await batch(events)
                finally:
                    self.add((name, "(batches)"), len(events), time.perf_counter() - start)

            handler.handle_batch = timed_batch


async def populate(daemon: Daemon, agents: int, rules: int) -> tuple[str, str]:
    """The workspace's channel account, SLA policy, team and rules: (workspace id, channel id)."""
    assert daemon.bootstrap is not None
    store = daemon.store
    ws = daemon.bootstrap.workspace.id
    channel = await store.create_channel_account(ws, "api", "bench", {}, {"secret": "bench-secret-0123456789"})
    now = utcnow()
    members = [
        await store.create_user(ws, f"agent {n}", f"agent{n}@example.com", Role.AGENT, ["en"], capacity=1000)
        for n in range(agents)
    ]
    async with store.write() as conn:
        await conn.execute(
            insert(t.sla_policies).values(
                id=new_id(),
                workspace_id=ws,
                name="bench",
                conditions={},
                first_response_seconds=3600,
                next_response_seconds=3600,
                mode="around_the_clock",
                created_at=now,
                updated_at=now,
            )
        )
        if members:
            await conn.execute(
                update(t.users).where(t.users.c.id.in_(members)).values(availability="online")
            )
    if members:
        await store.create_team(ws, "Support", ["en"], members)
    for n in range(rules):
        await store.create_rule(
            ws,
            {
                "name": f"rule {n}",
                "position": n,
                "enabled": True,
                "event": "message.received",
                "event_options": {},
                "conditions": [{"type": "text_contains", "text": f"refund number {n}"}],
                "actions": [{"type": "add_label", "label": f"refund-{n}"}],
            },
            now,
        )
    return ws, channel


async def run(messages: int, concurrency: int, agents: int, rules: int) -> list[list[str]]:
    with tempfile.TemporaryDirectory(prefix="bench-reactions-") as tmp:
        settings = Settings(
            data_dir=Path(tmp), redis_url=None, database_url=None, secret_key=None, http={"port": 0}
        )
        daemon = Daemon(settings)
        await daemon.start()
        try:
            _, channel = await populate(daemon, agents, rules)
            assert daemon.engine is not None
            timings = Timings()
            for handler in daemon.engine.handlers:
                timings.wrap(handler)
            senders = max(1, messages // 2)

            def message(n: int) -> InboundMessage:
                return InboundMessage(
                    channel_account_id=channel,
                    external_id=f"m{n}",
                    sender=Identity("api", f"customer-{n % senders}", None),
                    text=TEXT,
                )

            start = time.perf_counter()
            for first in range(0, messages, concurrency):
                await asyncio.gather(
                    *(daemon.ingestor(message(n)) for n in range(first, min(messages, first + concurrency)))
                )
            stored = time.perf_counter()
            await daemon.ingestor._events.join()
            await daemon.engine.idle()
            done = time.perf_counter()
        finally:
            await daemon.stop()
    rows = [
        ["stored", f"{messages / (stored - start):,.0f} messages/s"],
        ["reactions done", f"{done - stored:,.2f} s after the last message was stored"],
        ["end to end", f"{messages / (done - start):,.0f} messages/s"],
    ]
    for (name, kind), (count, seconds) in sorted(timings.spent.items(), key=lambda kv: -kv[1][1]):
        rows.append([f"{name}: {kind}", f"{1e3 * seconds / count:,.2f} ms each ({int(count):,})"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reactions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000, help="customer messages (default 3,000)")
    parser.add_argument("--concurrency", type=int, default=100, help="ingested at a time (default 100)")
    parser.add_argument("--agents", type=int, default=20, help="online agents in the team (default 20)")
    parser.add_argument("--rules", type=int, default=0, help="rules on message.received (default 0)")
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args.messages, args.concurrency, args.agents, args.rules))
    print(
        f"reactions: {args.messages:,} messages, {args.concurrency} at a time, {args.agents} agents, "
        f"{args.rules} rules, SQLite"
    )
    print_table(rows, ["what", "figure"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
