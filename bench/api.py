"""The inbox API under load: GET /api/v1/conversations (first, filtered and deep pages) and q= search.

    python -m bench.api [--messages 1000000] [--conversations 100000] [--data-dir DIR]
                        [--duration 5] [--concurrency 16] [--deep-pages 60] [--only NAME,...]

1. Fill: the schema comes from the real migrations (`aggregator migrate`); workspaces, channel accounts
   (API channels through the Store, so their secrets are encrypted as the daemon expects), users and an
   admin token through the Store; then contacts, identities, conversations (with their denormalised
   counters and previews), messages, labels, read marks and the FTS5 rows are written with sqlite3
   executemany, one transaction per --batch messages, in time order (FTS5 rowid order is newest-last, as
   the daemon's search relies on), PRAGMA synchronous=OFF for the fill only.  A second, small workspace
   holds 1% more.  With --data-dir the filled directory is kept and a later run with the same sizes
   reuses it (bench-api.json in it is the marker).
   The data: 4 channel accounts (2 API, 2 email, the latter disabled: no adapter is installed), 20 users,
   4 teams; ~10 messages a conversation over a year, ~60% inbound; statuses by age as in a real inbox (30%
   not resolved: 60% of the newest 40%, 10% of the older ones), all resolved and 70% of the others
   assigned, labels `shipping` on ~30%
   and `legal-hold` on 0.1% of the conversations, languages en/de/fr/es/hu/it/nl; the word `warranty` in
   ~10% of the messages, `chargeback` in 20.  Not written: thread_keys and audit_events (neither the
   list nor the search reads them).  Every conversation's counters and preview are checked against its
   messages after the fill.
2. Serve: the real daemon on that data dir, as a subprocess; waits for /readyz.
3. Measure each scenario with aiohttp clients on loopback: sequentially (the service time) and with
   --concurrency clients at once (p50/p95/p99, requests/s, the daemon's CPU); the items each answer
   holds show that the filter matched something.
4. EXPLAIN QUERY PLAN of the SQL the Store really runs for each scenario (captured in-process from
   SQLAlchemy), with the time SQLite alone takes for it; flags full scans and temporary sorts.

Targets (issue 3): list p99 < 20 ms, search p95 < 50 ms under concurrent load on this machine; the
table marks each scenario's figure under --concurrency clients against them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from sqlalchemy import event

from aggregator.config import load_settings
from aggregator.daemon import FIRST_ADMIN_EMAIL, new_token, open_store
from aggregator.model import Role
from aggregator.store.inbox import ConversationFilter
from aggregator.store.ingest_batch import preview
from aggregator.store.schema import TIME_FORMAT
from bench._common import (
    CITIES,
    DAYS,
    FIRST_NAMES,
    ITEMS,
    LAST_NAMES,
    SECRET,
    SENTENCES,
    DaemonProcess,
    aggregator_command,
    db_files_size,
    db_path,
    free_port,
    mib,
    print_table,
    write_config,
)
from channels.base import Registry

MARKER = "bench-api.json"
MARKER_VERSION = 2

COMMON_WORD = "warranty"  # in ~10% of the messages
RARE_WORD = "chargeback"  # in RARE_MESSAGES messages of the big workspace
RARE_MESSAGES = 20
COMMON_WORD_SHARE = 0.10
COMMON_LABEL = "shipping"  # on ~30% of the conversations
RARE_LABEL = "legal-hold"  # on ~0.1%
OTHER_LABELS = (("refund", 0.10), ("vip", 0.03))
LANGUAGES = (("en", 50), ("de", 20), ("fr", 10), ("es", 8), ("hu", 5), ("it", 4), ("nl", 3))
PRIORITIES = (("normal", 80), ("high", 12), ("low", 5), ("urgent", 3))
# name, kind, share of the big workspace's conversations
CHANNELS = (("shop-api", "api", 55), ("app-api", "api", 25), ("support-email", "email", 15),
            ("billing-email", "email", 5))
TEAMS = ("Billing", "Shipping", "Technical", "DACH")
AGENTS = 19  # plus the admin: 20 users in the big workspace
SPAN_DAYS = 365
MEAN_GAP_HOURS = 3.0

LIST_P99_TARGET_MS = 20.0
SEARCH_P95_TARGET_MS = 50.0

AGENT_SENTENCES = (
    "Thanks for getting in touch, I am sorry to hear about the trouble with your {item}.",
    "I have checked order #{order}: it left our warehouse in {city} on {day}.",
    "A replacement {item} is on its way, you should have it within {days} days.",
    "I have issued a refund for order #{order}; it takes 3 to 5 working days to show up.",
    "Could you send us a photo of the label on the parcel?",
    "I updated the delivery address to {city} for you.",
    "Your discount code is now applied and the difference was refunded.",
    "Is there anything else I can help you with?",
    "Kind regards, the customer care team.",
)
COMMON_SENTENCES = (
    "Is the {item} still under " + COMMON_WORD + "?",
    "The " + COMMON_WORD + " card for the {item} was missing from the box.",
    "Your {item} is covered by our two-year " + COMMON_WORD + ", so the repair is free.",
    "Does the " + COMMON_WORD + " cover the {item} when it was bought in {city}?",
)
RARE_SENTENCE = "If order #{order} is not refunded by {day} I will file a " + RARE_WORD + " with my bank."


# --------------------------------------------------------------------------------------------------
# Fill


@dataclass(frozen=True)
class FillSpec:
    messages: int
    conversations: int
    seed: int
    batch: int

    @property
    def second_conversations(self) -> int:
        return max(5, self.conversations // 100)

    @property
    def second_messages(self) -> int:
        return max(self.second_conversations, self.messages // 100)

    def key(self) -> dict[str, int]:
        return {"messages": self.messages, "conversations": self.conversations, "seed": self.seed}


@dataclass
class Channel:
    id: str
    workspace_id: str
    kind: str
    name: str
    share: int
    contacts: int = 0  # size of its pool of customers


@dataclass(slots=True)
class Conv:
    ws: str
    channel: Channel
    customer: int  # number within the channel's customer pool
    first: int  # first message, microseconds since the epoch
    last: int
    count: int
    id: str = ""
    status: str = "open"
    priority: str = "normal"
    assignee: str | None = None
    team: str | None = None
    language: str = "en"
    subject: str | None = None
    labels: list[str] = field(default_factory=list)
    contact_id: str = ""
    identity_id: str = ""
    seen: int = 0
    inbound: int = 0
    last_in: int | None = None
    first_out: int | None = None
    last_text: str = ""
    last_direction: str = "in"


def fmt_time(us: int) -> str:
    """schema.UTCDateTime's text: fixed width, so text order is time order."""
    seconds, micro = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micro:06d}Z"


def weighted(rng: random.Random, choices: Sequence[tuple[str, int]]) -> Callable[[], str]:
    values = [value for value, _ in choices]
    cum: list[float] = []
    total = 0.0
    for _, weight in choices:
        total += weight
        cum.append(total)

    def pick() -> str:
        return rng.choices(values, cum_weights=cum)[0]

    return pick


def _sentences(rng: random.Random, templates: Sequence[str], n: int) -> list[str]:
    return [
        rng.choice(templates).format(
            item=rng.choice(ITEMS),
            day=rng.choice(DAYS),
            order=rng.randint(100000, 999999),
            city=rng.choice(CITIES),
            days=rng.randint(2, 40),
        )
        for _ in range(n)
    ]


def _check_vocabulary() -> None:
    for sentence in (*SENTENCES, *AGENT_SENTENCES, *ITEMS, *CITIES, *DAYS):
        for word in (COMMON_WORD, RARE_WORD):
            if word in sentence.lower():
                raise RuntimeError(f"the vocabulary contains {word!r}: the match counts would be off")


def migrate(config: Path) -> None:
    done = subprocess.run(
        [*aggregator_command(), "--config", str(config), "migrate"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"`aggregator migrate` failed ({done.returncode}):\n{done.stderr}")


async def _setup_records(config: Path) -> dict[str, Any]:
    """Workspaces, channel accounts, users and the admin token through the Store (the daemon's code)."""
    settings = load_settings(config)
    store = open_store(settings)
    try:
        big, _ = await store.ensure_workspace(settings.default_workspace)
        small = await store.create_workspace("bench-second")
        registry = Registry()
        api_plain, api_secrets = registry.parse_config("api", {"secret": SECRET}).split_secrets()
        channels: list[dict[str, Any]] = []
        for ws, specs in ((big.id, CHANNELS), (small.id, (("second-api", "api", 100),))):
            for name, kind, share in specs:
                if kind == "api":
                    channel_id = await store.create_channel_account(ws, kind, name, api_plain, api_secrets)
                else:
                    # No email adapter is installed here: the account exists (for the channel filter)
                    # but is disabled, so the daemon does not try to start it.
                    channel_id = await store.create_channel_account(
                        ws, kind, name, {"address": f"{name}@shop.example"}, {}
                    )
                channels.append({"id": channel_id, "workspace_id": ws, "kind": kind, "name": name,
                                 "share": share})
        users: dict[str, list[str]] = {big.id: [], small.id: []}
        admin = await store.create_user(big.id, "Administrator", FIRST_ADMIN_EMAIL, Role.ADMIN, ["en"])
        users[big.id].append(admin)
        for n in range(AGENTS):
            name = f"{FIRST_NAMES[n % len(FIRST_NAMES)]} Agent{n}"
            languages = [LANGUAGES[n % len(LANGUAGES)][0], "en"]
            users[big.id].append(
                await store.create_user(big.id, name, f"agent{n}@shop.example", Role.AGENT, languages)
            )
        for n in range(2):
            users[small.id].append(
                await store.create_user(small.id, f"Second Agent{n}", f"agent{n}@second.example", Role.AGENT)
            )
        token = new_token()
        await store.create_token(big.id, Role.ADMIN, token, user_id=admin, name="bench.api")
    finally:
        await store.close()
    return {
        "workspace_id": big.id,
        "second_workspace_id": small.id,
        "channels": channels,
        "users": users,
        "admin_id": admin,
        "token": token,
    }


class Ids:
    """Time-ordered ids as aggregator.model.new_id makes them, but for a given time (and seeded)."""

    def __init__(self, rng: random.Random) -> None:
        self.bits = rng.getrandbits

    def at(self, us: int) -> str:
        return f"{us // 1000:012x}{self.bits(80):020x}"


def _plan_workspace(
    rng: random.Random, ws: str, channels: list[Channel], n_conv: int, n_msg: int, start: int, end: int
) -> list[Conv]:
    """Conversations with their message counts and times; nothing but numbers yet."""
    n_conv = min(n_conv, n_msg)
    mean_extra = max(0.0, n_msg / n_conv - 1)
    counts = [1 + (int(rng.expovariate(1 / mean_extra)) if mean_extra else 0) for _ in range(n_conv)]
    diff = n_msg - sum(counts)
    while diff > 0:
        counts[rng.randrange(n_conv)] += 1
        diff -= 1
    while diff < 0:
        i = rng.randrange(n_conv)
        if counts[i] > 1:
            counts[i] -= 1
            diff += 1
    by_channel = weighted(rng, [(str(i), c.share) for i, c in enumerate(channels)])
    picks = [channels[int(by_channel())] for _ in range(n_conv)]
    for channel in channels:
        channel.contacts = max(1, int(sum(1 for p in picks if p is channel) * 0.7))
    convs: list[Conv] = []
    for count, channel in zip(counts, picks, strict=True):
        first = rng.randrange(start, end)
        convs.append(Conv(ws, channel, int(channel.contacts * rng.random() ** 1.5), first, first, count))
    return convs


def _times(rng: random.Random, conv: Conv, end: int) -> list[int]:
    """The conversation's message times: gaps of MEAN_GAP_HOURS on average, squeezed into [first, end]
    when they would run past the end."""
    times = [conv.first]
    mean_gap = MEAN_GAP_HOURS * 3600e6
    for _ in range(conv.count - 1):
        times.append(times[-1] + 1000 + int(rng.expovariate(1 / mean_gap)))
    if times[-1] > end:
        span, room = times[-1] - conv.first, end - conv.first
        times = [conv.first + (t - conv.first) * room // span for t in times]
        for i in range(1, len(times)):  # strictly increasing after the squeeze
            if times[i] <= times[i - 1]:
                times[i] = times[i - 1] + 1
    return times


def _assign(rng: random.Random, convs: list[Conv], agents: list[str], teams: list[str]) -> None:
    """Status by age (the newest conversations are the open ones, as in a real inbox), people, labels."""
    order = sorted(range(len(convs)), key=lambda i: -convs[i].last)
    pick_language = weighted(rng, LANGUAGES)
    pick_priority = weighted(rng, PRIORITIES)
    n = len(convs)
    for rank, i in enumerate(order):
        conv = convs[i]
        # 30% not resolved overall: 60% of the newest 40%, 10% of the rest (the stale backlog).
        unresolved = rng.random() < (0.6 if rank < 0.4 * n else 0.1)
        if unresolved:
            r = rng.random()
            conv.status = "open" if r < 2 / 3 else ("pending" if r < 5 / 6 else "snoozed")
        else:
            conv.status = "resolved"
        conv.priority = pick_priority()
        conv.language = pick_language()
        if conv.status == "resolved" or rng.random() < 0.7:
            conv.assignee = agents[int(len(agents) * rng.random() ** 1.3)]
        if teams and rng.random() < 0.6:
            conv.team = rng.choice(teams)
        if conv.channel.kind == "email" or rng.random() < 0.1:
            conv.subject = f"Question about order #{rng.randint(100000, 999999)}"
        labels = []
        if rng.random() < 0.30:
            labels.append(COMMON_LABEL)
        for label, share in OTHER_LABELS:
            if rng.random() < share:
                labels.append(label)
        conv.labels = labels
    rare = max(3, n // 1000)
    for i in rng.sample(range(n), min(rare, n)):
        convs[i].labels.append(RARE_LABEL)
    for conv in convs:
        conv.labels.sort()


MESSAGE_INSERT = (
    "INSERT INTO messages (id, workspace_id, conversation_id, channel_account_id, direction, kind, "
    "sender_contact_id, sender_user_id, subject, text, html, external_id, delivery_status, delivery_error, "
    "raw_ref, flags, extra, language, sent_at, created_at) "
    "VALUES (?, ?, ?, ?, ?, 'message', ?, ?, ?, ?, NULL, ?, ?, NULL, NULL, '[]', '{}', ?, NULL, ?)"
)
SEARCH_INSERT = "INSERT INTO search_index (body, workspace_id, conversation_id, ref_id, kind) VALUES (?, ?, ?, ?, ?)"
CONTACT_INSERT = (
    "INSERT INTO contacts (id, workspace_id, name, email, language, attributes, merged_into, created_at, "
    "updated_at) VALUES (?, ?, ?, ?, ?, '{}', NULL, ?, ?)"
)
IDENTITY_INSERT = (
    "INSERT INTO identities (id, workspace_id, contact_id, kind, address, display_name, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
CONVERSATION_INSERT = (
    "INSERT INTO conversations (id, workspace_id, channel_account_id, contact_id, identity_id, status, priority, "
    "assignee_id, team_id, labels, language, subject, thread_ref, last_activity_at, last_inbound_at, "
    "first_response_at, resolved_at, snoozed_until, created_at, updated_at, message_count, inbound_count, "
    "last_message_preview, last_message_direction, sla_due_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _bulk_fill(db: Path, setup: dict[str, Any], spec: FillSpec, say: Callable[..., None]) -> dict[str, Any]:
    rng = random.Random(spec.seed)
    ids = Ids(random.Random(spec.seed + 1))
    end = int(time.time() * 1e6) - 3600 * 1_000_000  # an hour ago: nothing in the daemon's future
    start = end - SPAN_DAYS * 86400 * 1_000_000
    big, small = setup["workspace_id"], setup["second_workspace_id"]
    channels = [Channel(**c) for c in setup["channels"]]
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")  # this connection only: the daemon's own stay FULL
    con.execute("PRAGMA foreign_keys=OFF")
    con.execute("PRAGMA cache_size=-1000000")
    con.execute("PRAGMA temp_store=MEMORY")

    team_ids: dict[str, list[str]] = {big: [], small: []}
    users = setup["users"]
    con.execute("BEGIN")
    now_text = fmt_time(start)
    for ws, names in ((big, TEAMS), (small, TEAMS[:1])):
        for n, name in enumerate(names):
            team_id = ids.at(start)
            team_ids[ws].append(team_id)
            con.execute(
                "INSERT INTO teams (id, workspace_id, name, languages, created_at) VALUES (?, ?, ?, ?, ?)",
                (team_id, ws, name, json.dumps([LANGUAGES[n % len(LANGUAGES)][0]]), now_text),
            )
            members = users[ws][n::len(names)]
            con.executemany(
                "INSERT INTO team_members (team_id, user_id) VALUES (?, ?)", [(team_id, u) for u in members]
            )
    # Email accounts: disabled (no adapter here), so the daemon leaves them alone.
    con.execute("UPDATE channel_accounts SET enabled = 0 WHERE kind != 'api'")
    con.execute("COMMIT")

    convs = _plan_workspace(rng, big, [c for c in channels if c.workspace_id == big],
                            spec.conversations, spec.messages, start, end)
    convs += _plan_workspace(rng, small, [c for c in channels if c.workspace_id == small],
                             spec.second_conversations, spec.second_messages, start, end)
    events: list[int] = []
    bits = max(1, (len(convs) - 1).bit_length())
    for index, conv in enumerate(convs):
        times = _times(rng, conv, end)
        conv.first, conv.last = times[0], times[-1]
        events.extend((t << bits) | index for t in times)
    events.sort()
    mask = (1 << bits) - 1
    for ws in (big, small):
        mine = [c for c in convs if c.ws == ws]
        agents = [u for u in users[ws] if u != setup["admin_id"]] or users[ws]
        _assign(rng, mine, agents, team_ids[ws])

    customer_pool = _sentences(rng, SENTENCES, 20000)
    agent_pool = _sentences(rng, AGENT_SENTENCES, 5000)
    common_pool = _sentences(rng, COMMON_SENTENCES, 2000)
    big_total = spec.messages
    rare_at = set(rng.sample(range(big_total), min(RARE_MESSAGES, big_total)))
    second_rare = set(rng.sample(range(spec.second_messages), min(5, spec.second_messages)))

    contacts: dict[tuple[str, int], tuple[str, str]] = {}  # (channel id, customer) -> (contact, identity)
    messages: list[tuple[Any, ...]] = []
    search: list[tuple[Any, ...]] = []
    new_contacts: list[tuple[Any, ...]] = []
    new_identities: list[tuple[Any, ...]] = []
    counter = {big: 0, small: 0}
    common_hits = rare_hits = 0
    total = len(events)
    step = max(1, total // 10)
    started = time.perf_counter()

    def flush() -> None:
        con.execute("BEGIN")
        if new_contacts:
            con.executemany(CONTACT_INSERT, new_contacts)
            con.executemany(IDENTITY_INSERT, new_identities)
        con.executemany(MESSAGE_INSERT, messages)
        con.executemany(SEARCH_INSERT, search)
        con.execute("COMMIT")
        for rows in (messages, search, new_contacts, new_identities):
            rows.clear()

    rand = rng.random
    choice = rng.choice
    randint = rng.randint
    for done, key in enumerate(events, 1):
        conv = convs[key & mask]
        at = key >> bits
        at_text = fmt_time(at)
        ws = conv.ws
        channel = conv.channel
        seq = conv.seen
        conv.seen += 1
        if seq == 0:
            conv.id = ids.at(at)
            who = (channel.id, conv.customer)
            known = contacts.get(who)
            if known is None:
                number = len(contacts)
                name = f"{FIRST_NAMES[number * 7 % len(FIRST_NAMES)]} {LAST_NAMES[number * 13 % len(LAST_NAMES)]}"
                email = f"customer{number}@example.com" if channel.kind == "email" or number % 3 == 0 else None
                known = (ids.at(at), ids.at(at))
                contacts[who] = known
                new_contacts.append((known[0], ws, name, email, conv.language, at_text, at_text))
                address = email if channel.kind == "email" else f"{channel.id}/cust-{number}"
                new_identities.append((known[1], ws, known[0], channel.kind, address, name, at_text))
                search.append((name, ws, None, known[0], "contact"))
                if email:
                    search.append((email, ws, None, known[0], "contact"))
            conv.contact_id, conv.identity_id = known
            if conv.subject:
                search.append((conv.subject, ws, conv.id, conv.id, "subject"))
        inbound = seq == 0 or rand() < 0.55
        pool = customer_pool if inbound else agent_pool
        target = randint(150, 450)
        parts = []
        size = 0
        while size < target:
            sentence = choice(pool)
            parts.append(sentence)
            size += len(sentence) + 1
        if rand() < COMMON_WORD_SHARE:
            parts.insert(randint(0, len(parts)), choice(common_pool))
            if ws == big:
                common_hits += 1
        n = counter[ws]
        counter[ws] += 1
        if (ws == big and n in rare_at) or (ws == small and n in second_rare):
            parts.append(RARE_SENTENCE.format(order=randint(100000, 999999), day=choice(DAYS)))
            if ws == big:
                rare_hits += 1
        text = " ".join(parts)
        message_id = ids.at(at)
        if inbound:
            conv.inbound += 1
            conv.last_in = at
            external = f"bench-{ws[-6:]}-{n}" if channel.kind == "api" else f"<bench-{n}@mail.example>"
            messages.append((message_id, ws, conv.id, channel.id, "in", conv.contact_id, None,
                             conv.subject if seq == 0 else None, text, external, None, conv.language, at_text))
        else:
            if conv.first_out is None:
                conv.first_out = at
            sender = conv.assignee or users[ws][1 % len(users[ws])]
            messages.append((message_id, ws, conv.id, channel.id, "out", None, sender, None, text, None,
                             "delivered", None, at_text))
        conv.last_text = text
        conv.last_direction = "in" if inbound else "out"
        search.append((text, ws, conv.id, message_id, "message"))
        if len(messages) >= spec.batch:
            flush()
        if done % step == 0 or done == total:
            rate = done / (time.perf_counter() - started)
            say(f"   fill {done:>9}/{total} messages  {rate:7.0f} msgs/s  DB {mib(db_files_size(db.parent))}",
                flush=True)
    if messages:
        flush()

    # Conversations last, with their final counters (the ingest inserts then updates them).
    admin = setup["admin_id"]
    snooze_until = fmt_time(end + 30 * 86400 * 1_000_000)
    rows = []
    label_rows = []
    reads = []
    for conv in sorted(convs, key=lambda c: c.first):
        last_text = fmt_time(conv.last)
        resolved = conv.status == "resolved"
        sla = None
        if conv.status == "open" and conv.last_direction == "in" and conv.last_in is not None:
            sla = fmt_time(conv.last_in + 8 * 3600 * 1_000_000)
        rows.append((
            conv.id, conv.ws, conv.channel.id, conv.contact_id, conv.identity_id, conv.status, conv.priority,
            conv.assignee, conv.team, json.dumps(conv.labels), conv.language, conv.subject, last_text,
            fmt_time(conv.last_in) if conv.last_in is not None else None,
            fmt_time(conv.first_out) if conv.first_out is not None else None,
            last_text if resolved else None,
            snooze_until if conv.status == "snoozed" else None,
            fmt_time(conv.first), last_text, conv.count, conv.inbound, preview(conv.last_text),
            conv.last_direction, sla,
        ))
        label_rows.extend((conv.id, label, conv.ws) for label in conv.labels)
        if conv.ws == big and rand() < 0.4:
            read = conv.inbound if rand() < 0.8 else max(0, conv.inbound - 1)
            reads.append((conv.id, admin, read, last_text))
    con.execute("BEGIN")
    con.executemany(CONVERSATION_INSERT, rows)
    con.executemany("INSERT INTO conversation_labels (conversation_id, label, workspace_id) VALUES (?, ?, ?)",
                    label_rows)
    con.executemany("INSERT INTO conversation_reads (conversation_id, user_id, read_count, read_at) "
                    "VALUES (?, ?, ?, ?)", reads)
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()

    big_convs = [c for c in convs if c.ws == big]
    assignee_counts: dict[str, int] = {}
    for conv in big_convs:
        if conv.assignee is not None:
            assignee_counts[conv.assignee] = assignee_counts.get(conv.assignee, 0) + 1
    # The filter values the scenarios use: a mid-sized agent, the first team.
    agent = sorted(assignee_counts, key=lambda u: assignee_counts[u])[len(assignee_counts) // 2]
    return {
        "agent_id": agent,
        "team_id": team_ids[big][0],
        "contacts": len(contacts),
        "common_word_messages": common_hits,
        "rare_word_messages": rare_hits,
        "label_counts": {
            label: sum(1 for c in big_convs if label in c.labels) for label in (COMMON_LABEL, RARE_LABEL)
        },
        "status_counts": {
            s: sum(1 for c in big_convs if c.status == s) for s in ("open", "pending", "snoozed", "resolved")
        },
    }


def verify(db: Path) -> list[str]:
    """The denormalised counters agree with the messages; every message is in the search index."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        problems = []
        bad = con.execute(
            "SELECT count(*) FROM conversations c WHERE "
            "message_count != (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) OR "
            "inbound_count != (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id "
            "AND m.direction = 'in') OR "
            "last_activity_at != (SELECT max(created_at) FROM messages m WHERE m.conversation_id = c.id) OR "
            "last_message_preview IS NOT (SELECT substr(m.text, 1, 200) FROM messages m "
            "WHERE m.conversation_id = c.id ORDER BY m.created_at DESC, m.id DESC LIMIT 1)"
        ).fetchone()[0]
        if bad:
            problems.append(f"{bad} conversations whose counters or preview disagree with their messages")
        messages = con.execute("SELECT count(*) FROM messages").fetchone()[0]
        indexed = con.execute("SELECT count(*) FROM search_index WHERE kind = 'message'").fetchone()[0]
        if messages != indexed:
            problems.append(f"{indexed} message rows in search_index for {messages} messages")
        labels = con.execute(
            "SELECT count(*) FROM conversations c, json_each(c.labels) j WHERE NOT EXISTS "
            "(SELECT 1 FROM conversation_labels l WHERE l.conversation_id = c.id AND l.label = j.value)"
        ).fetchone()[0]
        if labels:
            problems.append(f"{labels} labels in conversations.labels missing from conversation_labels")
        return problems
    finally:
        con.close()


def fill(data_dir: Path, config: Path, spec: FillSpec, say: Callable[..., None] = print) -> dict[str, Any]:
    """Fill an empty data dir (or reuse one this benchmark filled with the same sizes)."""
    marker = data_dir / MARKER
    if marker.exists() and db_path(data_dir).exists():
        meta: dict[str, Any] = json.loads(marker.read_text())
        if meta.get("version") == MARKER_VERSION and meta.get("spec") == spec.key():
            say(f"   reusing the filled data dir {data_dir} (filled in {meta['fill_seconds']:.0f}s)")
            meta["reused"] = True
            return meta
        if meta.get("version") != MARKER_VERSION:
            raise SystemExit(f"{data_dir} was filled by an older version of this benchmark: delete it or use "
                             "another --data-dir")
        raise SystemExit(f"{data_dir} was filled with {meta.get('spec')}, not {spec.key()}: use another --data-dir")
    if db_path(data_dir).exists():
        raise SystemExit(f"{data_dir} holds a database this benchmark did not fill: use an empty --data-dir")
    _check_vocabulary()
    started = time.perf_counter()
    migrate(config)
    setup = asyncio.run(_setup_records(config))
    say(f"   schema migrated, records set up in {time.perf_counter() - started:.1f}s; writing "
        f"{spec.messages} + {spec.second_messages} messages in {spec.conversations} + "
        f"{spec.second_conversations} conversations ...", flush=True)
    bulk = _bulk_fill(db_path(data_dir), setup, spec, say)
    fill_seconds = time.perf_counter() - started
    check_started = time.perf_counter()
    problems = verify(db_path(data_dir))
    if problems:
        raise RuntimeError("the fill is inconsistent:\n  " + "\n  ".join(problems))
    meta = {
        "version": MARKER_VERSION,
        "spec": spec.key(),
        **{k: v for k, v in setup.items() if k != "users"},
        "users": setup["users"],
        **bulk,
        "fill_seconds": fill_seconds,
        "db_bytes": db_files_size(data_dir),
        "reused": False,
    }
    marker.write_text(json.dumps(meta, indent=1))
    say(f"   filled in {fill_seconds:.0f}s ({spec.messages / fill_seconds:.0f} msgs/s), DB {mib(meta['db_bytes'])}; "
        f"counters verified in {time.perf_counter() - check_started:.1f}s")
    return meta


# --------------------------------------------------------------------------------------------------
# Load


@dataclass
class Scenario:
    name: str
    kind: str  # "list" or "search"
    urls: list[str]
    items: int = 0
    has_next: bool = False
    seq: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    load_seconds: float = 0.0
    errors: int = 0
    daemon_cores: float = 0.0
    client_cores: float = 0.0
    other_cores: float = 0.0  # busy cores outside the daemon and this client: another load skews it

    def pct(self, q: float, concurrent: bool = True) -> float:
        values = self.load if concurrent else self.seq
        return percentile(values, q) * 1000

    @property
    def rps(self) -> float:
        return len(self.load) / self.load_seconds if self.load_seconds else 0.0

    @property
    def target(self) -> tuple[str, bool]:
        if self.kind == "list":
            return f"p99 < {LIST_P99_TARGET_MS:g} ms", self.pct(0.99) < LIST_P99_TARGET_MS
        return f"p95 < {SEARCH_P95_TARGET_MS:g} ms", self.pct(0.95) < SEARCH_P95_TARGET_MS


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]  # nearest rank


class Client:
    def __init__(self, base: str, token: str, concurrency: int) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}
        self.concurrency = concurrency
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency + 4), headers=self.headers
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.session is not None:
            await self.session.close()

    def url(self, **params: Any) -> str:
        clean = {k: v for k, v in params.items() if v is not None}
        return f"{self.base}/api/v1/conversations" + (f"?{urlencode(clean)}" if clean else "")

    async def get(self, url: str) -> dict[str, Any]:
        assert self.session is not None
        async with self.session.get(url) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {url} answered {response.status}: {body[:300]!r}")
            result: dict[str, Any] = json.loads(body)
            return result

    async def pages(self, first: str, n: int) -> list[str | None]:
        """The cursors of pages 2..n+1 reached by following next_cursor from `first`."""
        cursors: list[str | None] = []
        url = first
        for _ in range(n):
            page = await self.get(url)
            cursor = page["next_cursor"]
            cursors.append(cursor)
            if cursor is None:
                break
            url = _with_cursor(first, cursor)
        return cursors

    async def drive(self, urls: list[str], seconds: float, concurrency: int) -> tuple[list[float], int, float]:
        """GETs of `urls` (round robin) from `concurrency` clients for `seconds`: latencies, errors."""
        assert self.session is not None
        session = self.session
        latencies: list[float] = []
        errors = 0
        started = time.perf_counter()
        deadline = started + seconds

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < deadline:
                url = urls[i % len(urls)]
                i += concurrency
                t0 = time.perf_counter()
                try:
                    async with session.get(url) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return latencies, errors, time.perf_counter() - started


def _with_cursor(url: str, cursor: str) -> str:
    return url + ("&" if "?" in url else "?") + urlencode({"cursor": cursor})


async def build_scenarios(client: Client, meta: dict[str, Any], deep_pages: int, say: Callable[..., None]) -> list[Scenario]:
    url = client.url
    scenarios = [
        Scenario("first page (default: not resolved)", "list", [url()]),
        Scenario("first page, status=all", "list", [url(status="all")]),
        Scenario("first page, limit=100", "list", [url(limit=100)]),
        Scenario("status=open&language=de", "list", [url(status="open", language="de")]),
        Scenario("assignee=<agent>", "list", [url(assignee=meta["agent_id"])]),
        Scenario("assignee=none", "list", [url(assignee="none")]),
        Scenario("team=<team>", "list", [url(team=meta["team_id"])]),
        Scenario(f"label={COMMON_LABEL} (~30%)", "list", [url(label=COMMON_LABEL)]),
        Scenario(f"label={RARE_LABEL} (~0.1%)", "list", [url(label=RARE_LABEL)]),
        Scenario(f"label={RARE_LABEL}&status=all", "list", [url(label=RARE_LABEL, status="all")]),
        Scenario("channel=email (kind)", "list", [url(channel="email")]),
    ]
    # Deep cursors: follow next_cursor `deep_pages` pages, then time the next 10 pages from there.
    for name, first in (("default", url()), ("status=all", url(status="all"))):
        cursors = [c for c in await client.pages(first, deep_pages + 10) if c is not None]
        deep = cursors[deep_pages - 1:] if len(cursors) >= deep_pages else cursors[-10:]
        if deep:
            scenarios.append(Scenario(f"deep cursor, {name}, pages {len(cursors) - len(deep) + 2}+", "list",
                                      [_with_cursor(first, c) for c in deep]))
    # The last page of the default view: it reads to the end of the index to find there is no more.
    first = url(limit=100)
    cursors = await client.pages(first, 100_000)
    tail = [c for c in cursors if c is not None]
    if tail:
        scenarios.append(Scenario(f"last page, default (page {len(tail) + 1} at limit=100)", "list",
                                  [_with_cursor(first, tail[-1])]))
    scenarios += [
        Scenario(f"q={RARE_WORD} (~{RARE_MESSAGES} msgs), status=all", "search", [url(q=RARE_WORD, status="all")]),
        Scenario(f"q={RARE_WORD}, default status", "search", [url(q=RARE_WORD)]),
        Scenario(f"q={COMMON_WORD} (~10% of msgs), status=all", "search", [url(q=COMMON_WORD, status="all")]),
        Scenario(f"q={COMMON_WORD}, default status", "search", [url(q=COMMON_WORD)]),
    ]
    first = url(q=COMMON_WORD, status="all")
    page = await client.get(first)
    if page["next_cursor"]:
        scenarios.append(Scenario(f"q={COMMON_WORD}, status=all, page 2", "search",
                                  [_with_cursor(first, page["next_cursor"])]))
    # What each answers: the number of items proves the filter matched something.
    for scenario in scenarios:
        answer = await client.get(scenario.urls[0])
        scenario.items = len(answer["items"])
        scenario.has_next = answer["next_cursor"] is not None
    say(f"   {len(scenarios)} scenarios; deep cursors reached by following next_cursor {deep_pages} pages")
    return scenarios


async def measure(
    client: Client,
    scenarios: list[Scenario],
    daemon: DaemonProcess,
    *,
    duration: float,
    seq_duration: float,
    concurrency: int,
    say: Callable[..., None],
) -> None:
    for scenario in scenarios:
        await client.drive(scenario.urls, min(0.5, duration), concurrency)  # warm the caches
        scenario.seq, errors, _ = await client.drive(scenario.urls, seq_duration, 1)
        cpu = daemon.cpu_seconds()
        mine = resource.getrusage(resource.RUSAGE_SELF)
        machine = machine_cpu()
        scenario.load, load_errors, scenario.load_seconds = await client.drive(scenario.urls, duration, concurrency)
        machine_after = machine_cpu()
        after = resource.getrusage(resource.RUSAGE_SELF)
        seconds = scenario.load_seconds
        scenario.daemon_cores = (daemon.cpu_seconds() - cpu) / seconds
        scenario.client_cores = (after.ru_utime + after.ru_stime - mine.ru_utime - mine.ru_stime) / seconds
        busy, total = machine_after[0] - machine[0], machine_after[1] - machine[1]
        cores = (busy / total * (os.cpu_count() or 1)) if total else 0.0
        scenario.other_cores = max(0.0, cores - scenario.daemon_cores - scenario.client_cores)
        scenario.errors = errors + load_errors
        say(f"   {scenario.name:<52} seq p50 {scenario.pct(0.5, False):6.1f} ms   x{concurrency}: "
            f"p50 {scenario.pct(0.5):6.1f}  p99 {scenario.pct(0.99):6.1f} ms  {scenario.rps:6.0f}/s"
            + (f"  (!) other processes busy {scenario.other_cores:.1f} cores" if scenario.other_cores > 0.2 else ""),
            flush=True)


# --------------------------------------------------------------------------------------------------
# Query plans


@dataclass
class Plan:
    name: str
    statements: list[tuple[str, Any]]


async def capture_statements(config: Path, meta: dict[str, Any], deep_pages: int) -> list[Plan]:
    """The SQL the Store runs for the main scenarios (SQLAlchemy's own rendering, captured)."""
    store = open_store(load_settings(config))
    captured: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and statement.strip() != "SELECT 1":
            captured.append((statement, parameters))

    event.listen(store.engine.sync_engine, "before_cursor_execute", grab)
    ws, user = meta["workspace_id"], meta["admin_id"]
    default = ("open", "pending", "snoozed")
    email_ids = tuple(c["id"] for c in meta["channels"] if c["kind"] == "email" and c["workspace_id"] == ws)
    plans: list[Plan] = []

    async def case(name: str, call: Callable[[], Awaitable[Any]]) -> Any:
        captured.clear()
        result = await call()
        plans.append(Plan(name, [s for s in captured if "api_tokens" not in s[0]]))
        return result

    try:
        def lister(f: ConversationFilter, after: tuple[datetime, str] | None = None) -> Callable[[], Awaitable[Any]]:
            return lambda: store.list_conversations(ws, user, f, limit=25, after=after)

        page = await store.list_conversations(ws, user, ConversationFilter(statuses=default), limit=25)
        after = page.next_cursor
        for _ in range(deep_pages - 1):
            if after is None:
                break
            page = await store.list_conversations(ws, user, ConversationFilter(statuses=default), limit=25,
                                                  after=after)
            after = page.next_cursor if page.next_cursor is not None else after
        await case("first page (default: status IN open,pending,snoozed)", lister(ConversationFilter(statuses=default)))
        await case("first page, status=all", lister(ConversationFilter()))
        await case("status=open&language=de", lister(ConversationFilter(statuses=("open",), language="de")))
        await case("assignee=<agent>", lister(ConversationFilter(statuses=default, assignee_id=meta["agent_id"])))
        await case("team=<team>", lister(ConversationFilter(statuses=default, team_id=meta["team_id"])))
        await case(f"label={COMMON_LABEL}", lister(ConversationFilter(statuses=default, label=COMMON_LABEL)))
        await case(f"label={RARE_LABEL}", lister(ConversationFilter(statuses=default, label=RARE_LABEL)))
        await case("channel=email", lister(ConversationFilter(statuses=default, channel_account_ids=email_ids)))
        await case(f"deep cursor, default (page {deep_pages + 1})",
                   lister(ConversationFilter(statuses=default), after))
        await case(f"q={RARE_WORD}, status=all", lambda: store.search_conversations(
            ws, user, ConversationFilter(), RARE_WORD, limit=25))
        await case(f"q={COMMON_WORD}, default status", lambda: store.search_conversations(
            ws, user, ConversationFilter(statuses=default), COMMON_WORD, limit=25))
        first = await case(f"q={COMMON_WORD}, status=all", lambda: store.search_conversations(
            ws, user, ConversationFilter(), COMMON_WORD, limit=25))
        if first.next_cursor is not None:
            (before,) = first.next_cursor
            await case(f"q={COMMON_WORD}, status=all, page 2", lambda: store.search_conversations(
                ws, user, ConversationFilter(), COMMON_WORD, limit=25, before_rowid=before))
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", grab)
        await store.close()
    return plans


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime(TIME_FORMAT)
    return value


SLOW_SQL_MS = 5.0
_COLUMNS = re.compile(r"^SELECT (.{120,}?) FROM ", re.S)


def _short_sql(statement: str) -> str:
    """One line; a long column list shortened to `…`, and a long IN list to its length."""
    compact = " ".join(statement.split())
    compact = _COLUMNS.sub("SELECT … FROM ", compact, count=1)
    return re.sub(r"IN \((\?, ){8,}\?\)", lambda m: f"IN (<{m.group(0).count('?')} values>)", compact)


def explain(db: Path, plans: list[Plan], say: Callable[..., None], show_sql: bool) -> list[str]:
    """Print each statement's plan and SQLite's own time for it; returns warnings."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    warnings: list[str] = []
    try:
        for plan in plans:
            say(f"   -- {plan.name}")
            seen: set[str] = set()
            for statement, parameters in plan.statements:
                if statement in seen:
                    continue  # search runs the same statement once per chunk
                seen.add(statement)
                params = tuple(_plain(p) for p in parameters) if isinstance(parameters, tuple | list) else parameters
                runs = []
                rows = 0
                for _ in range(5):
                    t0 = time.perf_counter()
                    rows = len(con.execute(statement, params).fetchall())
                    runs.append(time.perf_counter() - t0)
                took = statistics.median(runs) * 1000
                if "DISTINCT" in statement:
                    label = "FTS: conversations shown on earlier pages"
                elif "search_index" in statement:
                    label = "FTS: a chunk of matches, newest first"
                else:
                    label = "conversations"
                say(f"      [{label}] SQLite alone {took:.2f} ms (median of 5), {rows} rows")
                if show_sql:
                    say(f"      SQL: {_short_sql(statement)}")
                tree = con.execute("EXPLAIN QUERY PLAN " + statement, params).fetchall()
                depth: dict[int, int] = {0: 0}
                for node, parent, _, detail in tree:
                    depth[node] = depth.get(parent, 0) + 1
                    say("      " + "  " * depth[node] + detail)
                    upper = detail.upper()
                    full_scan = (upper.startswith("SCAN ") and " USING " not in upper
                                 and "VIRTUAL TABLE" not in upper and "CONSTANT ROW" not in upper)
                    if "TEMP B-TREE" in upper or full_scan:
                        warnings.append(f"{plan.name} [{label}]: {detail}")
                if took > SLOW_SQL_MS:
                    warnings.append(f"{plan.name} [{label}]: SQLite alone takes {took:.1f} ms for {rows} rows: "
                                    "the plan reads far more rows than it returns")
    finally:
        con.close()
    return warnings


# --------------------------------------------------------------------------------------------------
# Run


def wait_ready(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/readyz"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {timeout}s")
        time.sleep(0.1)


def run(
    *,
    messages: int = 1_000_000,
    conversations: int = 100_000,
    data_dir: Path | None = None,
    seed: int = 3,
    batch: int = 500,
    duration: float = 5.0,
    seq_duration: float = 2.0,
    concurrency: int = 16,
    deep_pages: int = 60,
    only: Sequence[str] = (),
    plans: bool = True,
    show_sql: bool = True,
    keep: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    say = (lambda *a, **k: None) if quiet else print
    workdir = Path(tempfile.mkdtemp(prefix="aggregator-bench-api-"))
    own_data = data_dir is None
    data = workdir / "data" if data_dir is None else data_dir.resolve()
    port = free_port()
    config = write_config(workdir / "aggregator.toml", data, port)
    spec = FillSpec(messages, conversations, seed, batch)
    daemon: DaemonProcess | None = None
    values: dict[str, Any] = {"messages": messages, "conversations": conversations, "concurrency": concurrency}
    try:
        say(f"== api: {messages} messages in {conversations} conversations; data dir {data}")
        meta = fill(data, config, spec, say)
        values.update(fill_seconds=meta["fill_seconds"], reused=meta["reused"], db_bytes=db_files_size(data))
        say(f"   statuses {meta['status_counts']}, labels {meta['label_counts']}, contacts {meta['contacts']}, "
            f"'{COMMON_WORD}' in {meta['common_word_messages']} messages, '{RARE_WORD}' in "
            f"{meta['rare_word_messages']}")

        daemon = DaemonProcess(config, port, workdir / "daemon.log")
        started = time.perf_counter()
        daemon.start(timeout=120)
        wait_ready(port)
        values["start_seconds"] = time.perf_counter() - started
        say(f"   daemon ready in {values['start_seconds']:.1f}s (pid {daemon.pid}); RSS {mib(daemon.status()['VmRSS'])}")

        async def drive() -> list[Scenario]:
            async with Client(f"http://127.0.0.1:{port}", meta["token"], concurrency) as client:
                scenarios = await build_scenarios(client, meta, deep_pages, say)
                if only:
                    scenarios = [s for s in scenarios if any(o.lower() in s.name.lower() for o in only)]
                say(f"   each: {seq_duration:g}s sequential, then {duration:g}s with {concurrency} concurrent clients")
                await measure(client, scenarios, daemon, duration=duration, seq_duration=seq_duration,
                              concurrency=concurrency, say=say)
                return scenarios

        scenarios = asyncio.run(drive())
        values["rss_end"] = daemon.status()["VmRSS"]
        daemon.stop()
        daemon = None
        values["scenarios"] = [
            {
                "name": s.name, "kind": s.kind, "items": s.items, "has_next": s.has_next,
                "seq_p50_ms": s.pct(0.5, False), "seq_p99_ms": s.pct(0.99, False),
                "p50_ms": s.pct(0.5), "p95_ms": s.pct(0.95), "p99_ms": s.pct(0.99), "rps": s.rps,
                "errors": s.errors, "daemon_cores": s.daemon_cores, "client_cores": s.client_cores,
                "other_cores": s.other_cores, "target": s.target[0], "met": s.target[1],
            }
            for s in scenarios
        ]
        if not quiet:
            _print(values, scenarios, concurrency)
        if plans:
            say("\n   -- query plans (EXPLAIN QUERY PLAN of the Store's own SQL, run on the filled DB)")
            captured = asyncio.run(capture_statements(config, meta, deep_pages))
            warnings = explain(db_path(data), captured, say, show_sql)
            values["plan_warnings"] = warnings
            if warnings:
                say("   plan warnings (temporary sorts, full scans):")
                for warning in warnings:
                    say(f"     - {warning}")
            else:
                say("   plans: no full scan and no temporary sort")
        return values
    finally:
        if daemon is not None:
            daemon.stop()
        if keep or not own_data:
            say(f"   kept {workdir}" + ("" if own_data else f" (config, log); data dir {data} kept for reuse"))
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _print(values: dict[str, Any], scenarios: list[Scenario], concurrency: int) -> None:
    print(f"\n   -- result, api ({values['messages']} messages, {values['conversations']} conversations; "
          f"DB {mib(values['db_bytes'])}; fill {values['fill_seconds']:.0f}s"
          + (" earlier, reused" if values["reused"] else "") + ")")
    rows = []
    for s in scenarios:
        target, met = s.target
        rows.append([
            s.name,
            f"{s.items}{'+' if s.has_next else ''}",
            f"{s.pct(0.5, False):.1f}",
            f"{s.pct(0.99, False):.1f}",
            f"{s.pct(0.5):.1f}",
            f"{s.pct(0.95):.1f}",
            f"{s.pct(0.99):.1f}",
            f"{s.rps:.0f}",
            f"{s.daemon_cores:.2f} / {s.client_cores:.2f} / {s.other_cores:.2f}",
            f"{s.errors}",
            f"{target}: {'met' if met else 'MISSED'}",
        ])
    print_table(rows, header=["scenario", "items", "seq p50", "seq p99", f"x{concurrency} p50", "p95", "p99",
                              "req/s", "CPU daemon/client/other", "errors", "target"])
    print("   (ms; items: in the first answer, + when it has a next_cursor; CPU in cores during the concurrent "
          "load: the daemon with its writer process, this client, everything else on the machine)")
    busy = [s for s in scenarios if s.other_cores > 0.2]
    if busy:
        print(f"   (!) other processes used > 0.2 cores during {len(busy)} of {len(scenarios)} scenarios: "
              "not a quiet machine, the figures are pessimistic")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=1_000_000, help="messages in the big workspace (default 1000000)")
    p.add_argument("--conversations", type=int, default=100_000, help="conversations in it (default 100000)")
    p.add_argument("--data-dir", type=Path, help="fill this directory (kept), or reuse it when this benchmark "
                   "filled it with the same sizes before")
    p.add_argument("--seed", type=int, default=3, help="random seed of the fill (default 3)")
    p.add_argument("--batch", type=int, default=500, help="messages per fill transaction (default 500, as ingest)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of concurrent load per scenario (default 5)")
    p.add_argument("--seq-duration", type=float, default=2.0, help="seconds of sequential requests per scenario "
                   "(default 2)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--deep-pages", type=int, default=60, help="pages followed before the deep-cursor timing "
                   "(default 60)")
    p.add_argument("--only", help="comma-separated substrings: run only the scenarios whose name has one")
    p.add_argument("--no-plans", action="store_true", help="skip EXPLAIN QUERY PLAN")
    p.add_argument("--no-sql", action="store_true", help="print plans without the SQL text")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory (and its data)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    values = run(
        messages=args.messages,
        conversations=args.conversations,
        data_dir=args.data_dir,
        seed=args.seed,
        batch=args.batch,
        duration=args.duration,
        seq_duration=args.seq_duration,
        concurrency=args.concurrency,
        deep_pages=args.deep_pages,
        only=[o.strip() for o in args.only.split(",") if o.strip()] if args.only else (),
        plans=not args.no_plans,
        show_sql=not args.no_sql,
        keep=args.keep,
    )
    return 0 if all(s["errors"] == 0 for s in values.get("scenarios", [])) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
