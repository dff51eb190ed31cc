"""Routing decisions per second (aggregator/routing.py) with 200 agents in 20 teams.

    python -m bench.routing [--agents 200] [--teams 20] [--conversations 2000] [--seconds 1]

Agents speak one to three of six languages, teams of ten take one or two languages, the first five
teams one channel account each; conversations come in on four channel accounts in those six languages
or none (unknown). Rows:

- decision: `choose_team` over the 20 teams, then `choose_agent` over the chosen team's members (pure,
  no I/O); and `choose_agent` over all agents, the worst case of one team of everyone. Best of three.
- engine, one conversation: what `conversation.created` costs, `RoutingEngine.route` on a real SQLite
  file (read the conversation, the teams and the team's agents with their open load, then the
  conditional assignment with its audit row, in a write transaction), for --conversations new ones.
- engine, sweep: `RoutingEngine.sweep` routing a queue of --conversations at once (teams read once, each
  team's agents once, then one write transaction per page of 500).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, update

from aggregator.daemon import open_store
from aggregator.model import Role, new_id
from aggregator.routing import ConversationFacts, RoutingEngine, choose_agent, choose_team
from aggregator.store import Store
from aggregator.store import schema as t
from aggregator.store.routing import RoutingAgent, RoutingTeam
from aggregator.workspace import SettingsCache
from bench._common import in_process_settings, print_table

LANGUAGES = ("de", "en", "hu", "fr", "it", "pl")
ACCOUNTS = ("amazon", "ebay", "shop", "mail")
T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def rate(work: Callable[[], object], seconds: float) -> float:
    """Calls per second, best of three runs of about `seconds` each."""
    best = 0.0
    for _ in range(3):
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(50):
                work()
            count += 50
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, count / (now - start))
    return best


def population(
    rng: random.Random, agents: int, teams: int, accounts: tuple[str, ...]
) -> tuple[list[RoutingTeam], list[RoutingAgent]]:
    people = [
        RoutingAgent(
            f"agent-{n:04d}",
            tuple(rng.sample(LANGUAGES, rng.randint(1, 3))),
            10,
            rng.choice(("online", "online", "online", "away", "offline")),
            rng.randint(0, 10),
            T0 - timedelta(minutes=rng.randint(0, 600)) if rng.random() < 0.9 else None,
        )
        for n in range(agents)
    ]
    size = max(1, agents // teams)
    groups = [
        RoutingTeam(
            f"team-{n:02d}",
            f"Team {n:02d}",
            tuple(rng.sample(LANGUAGES, rng.randint(1, 2))),
            (accounts[n],) if n < min(5, len(accounts) - 1) else (),
            n % 3,
            tuple(a.id for a in people[n * size : (n + 1) * size]),
        )
        for n in range(teams)
    ]
    return groups, people


def facts(rng: random.Random, accounts: tuple[str, ...], count: int) -> list[ConversationFacts]:
    return [ConversationFacts(rng.choice(accounts), rng.choice((*LANGUAGES, None))) for _ in range(count)]


def pure_rows(agents: int, teams: int, seconds: float) -> list[list[str]]:
    rng = random.Random(7)
    groups, people = population(rng, agents, teams, ACCOUNTS)
    by_id = {a.id: a for a in people}
    members = {g.id: [by_id[m] for m in g.member_ids] for g in groups}
    conversations = facts(rng, ACCOUNTS, 1000)
    index = 0

    def decide() -> object:
        nonlocal index
        index = (index + 1) % len(conversations)
        conversation = conversations[index]
        team = choose_team(conversation, groups)
        return None if team is None else choose_agent(conversation.language, members[team.id])

    def everyone() -> object:
        nonlocal index
        index = (index + 1) % len(conversations)
        return choose_agent(conversations[index].language, people)

    rows = []
    for name, work in (
        (f"decision: team of {teams}, agent of its members", decide),
        (f"decision: agent of all {agents}", everyone),
    ):
        per_second = rate(work, seconds)
        rows.append([name, f"{per_second:,.0f}", f"{1e6 / per_second:,.1f} us"])
    return rows


async def _fill(store: Store, agents: int, teams: int, conversations: int) -> tuple[str, list[str]]:
    """A workspace with the population in SQL and `conversations` open unassigned ones; their ids."""
    rng = random.Random(7)
    await store.migrate()
    workspace, _ = await store.ensure_workspace("bench-routing")
    ws = workspace.id
    accounts = tuple([await store.create_channel_account(ws, "api", name, {}, {}) for name in ACCOUNTS])
    groups, people = population(rng, agents, teams, accounts)
    ids: dict[str, str] = {}
    for person in people:
        ids[person.id] = await store.create_user(
            ws, person.id, f"{person.id}@example.com", Role.AGENT, person.languages, capacity=1_000_000
        )
    async with store.write() as conn:
        for person in people:
            await conn.execute(
                update(t.users)
                .where(t.users.c.id == ids[person.id])
                .values(availability=person.availability, last_assigned_at=person.last_assigned_at)
            )
    for group in groups:
        created = await store.create_team(
            ws, group.name, list(group.languages), [ids[m] for m in group.member_ids]
        )
        async with store.write() as conn:
            await conn.execute(
                update(t.teams)
                .where(t.teams.c.id == created.id)
                .values(channel_account_ids=list(group.channel_account_ids), position=group.position)
            )
    return ws, await add_conversations(store, ws, accounts, rng, conversations)


async def add_conversations(
    store: Store, ws: str, accounts: tuple[str, ...], rng: random.Random, count: int
) -> list[str]:
    contacts, identities, conversations = [], [], []
    for n, fact in enumerate(facts(rng, accounts, count)):
        contact, identity, conversation = new_id(), new_id(), new_id()
        at = T0 + timedelta(seconds=n)
        contacts.append(
            {"id": contact, "workspace_id": ws, "attributes": {}, "created_at": at, "updated_at": at}
        )
        identities.append(
            {
                "id": identity,
                "workspace_id": ws,
                "contact_id": contact,
                "kind": "api",
                "address": identity,
                "created_at": at,
            }
        )
        conversations.append(
            {
                "id": conversation,
                "workspace_id": ws,
                "channel_account_id": fact.channel_account_id,
                "contact_id": contact,
                "identity_id": identity,
                "status": "open",
                "labels": [],
                "language": fact.language,
                "last_activity_at": at,
                "created_at": at,
                "updated_at": at,
            }
        )
    async with store.write() as conn:
        await conn.execute(insert(t.contacts), contacts)
        await conn.execute(insert(t.identities), identities)
        await conn.execute(insert(t.conversations), conversations)
    return [c["id"] for c in conversations]


async def engine_rows(agents: int, teams: int, conversations: int) -> list[list[str]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
        store = open_store(in_process_settings(Path(tmp)))
        try:
            ws, waiting = await _fill(store, agents, teams, conversations)
            engine = RoutingEngine(store, SettingsCache(store.workspace_settings), clock=lambda: T0)
            start = time.perf_counter()
            assigned = 0
            for conversation_id in waiting:
                assigned += await engine.route(ws, conversation_id)
            took = time.perf_counter() - start
            rows.append(
                [
                    f"engine, one conversation ({assigned:,} of {len(waiting):,} assigned)",
                    f"{len(waiting) / took:,.0f}",
                    f"{1e3 * took / len(waiting):,.2f} ms",
                ]
            )
            rng = random.Random(11)
            accounts = tuple(a.id for a in await store.list_channel_accounts(ws))
            queue = await add_conversations(store, ws, accounts, rng, conversations)
            start = time.perf_counter()
            assigned = await engine.sweep()
            took = time.perf_counter() - start
            rows.append(
                [
                    f"engine, sweep of a queue ({assigned:,} of {len(queue):,} assigned)",
                    f"{len(queue) / took:,.0f}",
                    f"{1e3 * took / len(queue):,.2f} ms",
                ]
            )
        finally:
            await store.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=200, help="agents (default 200)")
    parser.add_argument(
        "--teams", type=int, default=20, help="teams, of agents/teams members each (default 20)"
    )
    parser.add_argument(
        "--conversations", type=int, default=2000, help="conversations routed per engine row (default 2000)"
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="time per pure run, best of 3 (default 1)")
    args = parser.parse_args(argv)
    rows = pure_rows(args.agents, args.teams, args.seconds)
    rows += asyncio.run(engine_rows(args.agents, args.teams, args.conversations))
    print(f"routing: {args.agents} agents in {args.teams} teams, {len(LANGUAGES)} languages, SQLite")
    print_table(rows, header=["operation", "decisions per second", "each"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
