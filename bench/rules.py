"""The automation rules engine's cost per event (aggregator/automation.py RuleEngine) on SQLite.

    python -m bench.rules [--rules 50] [--matching 3] [--events 1000] [--rule-events 100] [--lookups 1000]

A workspace on a real SQLite file (in-process writer, as bench/routing.py opens it) with channel
accounts shop, amazon, ebay and web; conversations come in on shop (or web) in one of six languages or
none, with one customer message of ~300 bytes each (bench/_common.py's texts), made in bulk with SQL.
Each event row handles its own fresh conversations, one event each, in sequence, with
`RuleEngine.handle` as the daemon's ConversationEngine calls it (the conversation.updated a firing
publishes goes nowhere: what rules on it would cost is not counted). The default run takes ~45 s.
Rows:

- no rules: the floor, what an event costs when the workspace has no rule for it (one rules query),
  for --events events.
- --rules rules, --matching firing: that many enabled rules listen to the event (message.received and
  conversation.created have --rules each), for --rule-events events. The --matching ones fire on
  every event (channel is shop and the conversation lacks the rule's label -> add_label); the others
  never match: a channel (amazon, ebay, telegram), a language nobody writes in, text_contains and
  text_matches of words the texts never have, a label nobody has; a third of them first pass
  `channel = shop`, then fail on the second condition.
- --rules rules, none firing (web): the same rules on conversations of the web channel, where none
  holds; the difference to the row above, over the firings, is what one firing costs.
- the parts, per call (--lookups calls each): `Store.list_rules` with --rules rules (once an event);
  `_parse`, the pydantic validation of one stored rule; `Store.conversation_facts` (the conversation
  with its channel, contact and team, then its latest customer message: two queries);
  `Store.inbound_text` (message.received only); and of a firing, `claim_rule_firing` (a write
  transaction, fsync'd: synchronous=FULL) and `update_conversation` adding a label. The engine reads
  the facts and the text once per event, and again after each firing (the next rules see its changes),
  so an event costs about list_rules + facts [+ inbound_text] + R x parse + firings x (claim + update +
  audit + facts again).

What dominates (at bc89338 plus the reader-thread change, 2 cores): an event with 50 rules that fires
nothing costs ~1.7-2.1 ms (55-80 ms when every rule read the conversation again through aiosqlite);
each firing ~6-7 ms, its three write transactions (claim, change, audit) each fsync'd. The rules query
(~0.9 ms at 50 rules, one hand-off to a reader thread) is the whole floor when no rule applies (~0.3
ms at none).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import func, insert, select

from aggregator.automation import RuleDefinition, RuleEngine, _parse
from aggregator.daemon import open_store
from aggregator.model import Event, new_id
from aggregator.store import Store
from aggregator.store import schema as t
from aggregator.store.inbox import ConversationChange
from aggregator.workspace import SettingsCache
from bench._common import MessageFactory, in_process_settings, print_table
from bench.routing import add_conversations
from channels.base import Registry

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
CHANNEL = "shop"
# No rule names "web": its conversations are where no rule fires.
QUIET_CHANNEL = "web"
OTHER_CHANNELS = ("amazon", "ebay", QUIET_CHANNEL)
EVENTS = ("message.received", "conversation.created")

# Conditions that never hold on the bench's conversations (bench/routing.py's languages, no labels,
# bench/_common.py's texts), one kind after another.
MISSES: tuple[dict[str, Any], ...] = (
    {"type": "channel", "channel": "amazon"},
    {"type": "language", "language": "ja"},
    {"type": "text_contains", "text": "chargeback"},
    {"type": "text_matches", "pattern": r"\b(?:unsubscribe|abmelden|leiratkoz\w*)\b"},
    {"type": "label", "label": "vip"},
    {"type": "channel", "channel": "telegram"},
    {"type": "language", "language": "pt-BR"},
    {"type": "text_contains", "text": "cancel my subscription"},
    {"type": "text_matches", "pattern": r"invoice\s+INV-\d{4,}"},
    {"type": "label", "label": "spam", "has": True},
    {"type": "channel", "channel": "ebay"},
    {"type": "text_matches", "pattern": r"\b(?:lawyer|lawsuit|anwalt|ügyvéd)\b"},
)


def rule_mix(count: int, matching: int, event: str) -> list[dict[str, Any]]:
    """`count` rule definitions (validated, as stored) on `event`, `matching` of them firing on every
    conversation of the shop channel, spread over the positions."""
    matching = min(matching, count)
    hits = {int((k + 0.5) * count / matching) for k in range(matching)} if matching else set()
    definitions = []
    missed = 0
    for n in range(count):
        if n in hits:
            label = f"auto-{event}-{n}"
            conditions: list[dict[str, Any]] = [
                {"type": "channel", "channel": CHANNEL},
                {"type": "label", "label": label, "has": False},
            ]
            actions = [{"type": "add_label", "label": label}]
        else:
            miss = MISSES[missed % len(MISSES)]
            conditions = [{"type": "channel", "channel": CHANNEL}, miss] if missed % 3 == 2 else [miss]
            actions = [{"type": "add_label", "label": f"never-{n}"}]
            missed += 1
        definition = RuleDefinition.model_validate(
            {
                "name": f"{event} {n:03d}",
                "position": n,
                "event": event,
                "conditions": conditions,
                "actions": actions,
            }
        )
        definitions.append(definition.stored())
    return definitions


async def add_messages(store: Store, ws: str, conversation_ids: Sequence[str], seed: int) -> list[str]:
    """One inbound message on each conversation (its channel and contact); their ids, in order."""
    c = t.conversations
    async with store.read() as conn:
        rows = (
            await conn.execute(
                select(c.c.id, c.c.channel_account_id, c.c.contact_id, c.c.created_at).where(
                    c.c.id.in_(list(conversation_ids))
                )
            )
        ).all()
    by_id = {row.id: row for row in rows}
    texts = MessageFactory("rules", seed=seed)
    messages = []
    for conversation_id in conversation_ids:
        row = by_id[conversation_id]
        messages.append(
            {
                "id": new_id(),
                "workspace_id": ws,
                "conversation_id": conversation_id,
                "channel_account_id": row.channel_account_id,
                "direction": "in",
                "kind": "message",
                "sender_contact_id": row.contact_id,
                "text": texts.text(),
                "external_id": new_id(),
                "flags": [],
                "extra": {},
                "created_at": row.created_at,
            }
        )
    async with store.write() as conn:
        await conn.execute(insert(t.messages), messages)
    return [m["id"] for m in messages]


def make_event(kind: str, ws: str, conversation_id: str, message_id: str) -> Event:
    """The event ingest publishes (aggregator/store/ingest_batch.py)."""
    if kind == "message.received":
        data = {"message_id": message_id, "conversation_id": conversation_id, "direction": "in"}
        return Event("message.created", ws, data, conversation_id)
    return Event("conversation.created", ws, {"conversation_id": conversation_id}, conversation_id)


@dataclass
class Bench:
    store: Store
    ws: str
    accounts: dict[str, str]  # name -> id
    engine: RuleEngine
    seed: int = 0

    async def conversations(self, count: int, channel: str = CHANNEL) -> tuple[list[str], list[str]]:
        """`count` new conversations on `channel` with one customer message each: their ids and the
        messages'."""
        self.seed += 1
        rng = random.Random(self.seed)
        accounts = (self.accounts[channel],)
        conversation_ids = await add_conversations(self.store, self.ws, accounts, rng, count)
        return conversation_ids, await add_messages(self.store, self.ws, conversation_ids, self.seed)

    async def firings(self) -> int:
        async with self.store.read() as conn:
            count = (await conn.execute(select(func.count()).select_from(t.rule_firings))).scalar_one()
        return int(count)

    async def events_row(self, kind: str, count: int, label: str, channel: str = CHANNEL) -> list[str]:
        conversation_ids, message_ids = await self.conversations(count, channel)
        events = [
            make_event(kind, self.ws, conversation_id, message_id)
            for conversation_id, message_id in zip(conversation_ids, message_ids, strict=True)
        ]
        before = await self.firings()
        start = time.perf_counter()
        for event in events:
            await self.engine.handle(event)
        took = time.perf_counter() - start
        fired = await self.firings() - before
        return [
            f"{kind}, {label} ({fired:,} firings / {count:,} events)",
            f"{count / took:,.0f}",
            f"{1e3 * took / count:,.2f} ms",
        ]


async def per_call(name: str, calls: int, work: Callable[[int], Awaitable[object]]) -> list[str]:
    start = time.perf_counter()
    for n in range(calls):
        await work(n)
    took = time.perf_counter() - start
    return [name, f"{calls / took:,.0f}", f"{1e3 * took / calls:,.3f} ms"]


async def part_rows(bench: Bench, lookups: int) -> list[list[str]]:
    store, ws = bench.store, bench.ws
    conversation_ids, message_ids = await bench.conversations(lookups)
    records = await store.list_rules(ws, event="message.received", enabled_only=True)
    rule_id = records[0].id if records else None

    async def list_rules(_: int) -> object:
        return await store.list_rules(ws, event="message.received", enabled_only=True)

    async def parse(n: int) -> object:
        return _parse(records[n % len(records)]) if records else None

    async def facts(n: int) -> object:
        return await store.conversation_facts(ws, conversation_ids[n])

    async def inbound_text(n: int) -> object:
        return await store.inbound_text(ws, message_ids[n])

    async def add_label(n: int) -> object:
        change = ConversationChange(fields={"labels"}, labels=["bench"])
        return await store.update_conversation(ws, conversation_ids[n], change, "rule:bench", T0)

    async def claim(n: int) -> object:
        if rule_id is None:
            return None
        return await store.claim_rule_firing(ws, rule_id, conversation_ids[n], "bench", T0)

    return [
        await per_call(f"part: list_rules ({len(records)} rules), once an event", lookups, list_rules),
        await per_call("part: parse one rule (pydantic), per rule", lookups * 10, parse),
        await per_call("part: conversation_facts (2 queries), once an event and after each firing", lookups, facts),
        await per_call("part: inbound_text, once a message.received", lookups, inbound_text),
        await per_call("part: claim_rule_firing (a write transaction), per firing", lookups, claim),
        await per_call("part: update_conversation, add a label, per firing", lookups, add_label),
    ]


async def run(rules: int, matching: int, events: int, rule_events: int, lookups: int) -> list[list[str]]:
    with tempfile.TemporaryDirectory(prefix="bench-rules-") as tmp:
        store = open_store(in_process_settings(Path(tmp)))
        try:
            await store.migrate()
            workspace, _ = await store.ensure_workspace("bench-rules")
            ws = workspace.id
            accounts = {
                name: await store.create_channel_account(ws, "api", name, {}, {})
                for name in (CHANNEL, *OTHER_CHANNELS)
            }

            async def publish(_: Event) -> None:
                return None

            async def enqueue_outbox(_: str) -> None:
                return None

            async with aiohttp.ClientSession() as http:
                engine = RuleEngine(
                    store,
                    SettingsCache(store.workspace_settings),
                    Registry({}),
                    enqueue_outbox,
                    http,
                    clock=lambda: T0,
                    publish=publish,
                )
                bench = Bench(store, ws, accounts, engine)
                rows = [await bench.events_row(kind, events, "no rules") for kind in EVENTS]
                for kind in EVENTS:
                    for definition in rule_mix(rules, matching, kind):
                        await store.create_rule(ws, definition, T0)
                for kind in EVENTS:
                    fire = f"{rules} rules, {min(matching, rules)} firing"
                    quiet = f"{rules} rules, none firing ({QUIET_CHANNEL})"
                    rows.append(await bench.events_row(kind, rule_events, fire))
                    rows.append(await bench.events_row(kind, rule_events, quiet, QUIET_CHANNEL))
                rows += await part_rows(bench, lookups)
        finally:
            await store.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rules",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rules", type=int, default=50, help="rules on each event (default 50)")
    parser.add_argument(
        "--matching", type=int, default=3, help="of them, how many fire on every event (default 3)"
    )
    parser.add_argument(
        "--events",
        type=int,
        default=1000,
        help="events (on as many conversations) per no-rules row (default 1000)",
    )
    parser.add_argument(
        "--rule-events", type=int, default=100, help="events per row with --rules rules (default 100)"
    )
    parser.add_argument("--lookups", type=int, default=1000, help="calls per part row (default 1000)")
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args.rules, args.matching, args.events, args.rule_events, args.lookups))
    print(
        f"automation rules: {args.rules} rules per event ({args.matching} firing), SQLite, sequential events"
    )
    print_table(rows, header=["operation", "per second", "each"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
