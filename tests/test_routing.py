"""Routing: the pure decisions (a table of languages x capacity x availability, team choice, round robin)
and the engine through a running daemon (its ingest pipeline hands each event to the RoutingEngine):
the Budapest team's Hungarian agent gets a conversation in Hungarian; nobody fits -> the team's queue,
then the agent comes online -> assigned; manual assignment is never overridden; an agent going offline
keeps or hands back conversations as the workspace says; the queue is routed at restart.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aggregator.daemon import Daemon, open_store
from aggregator.model import Event, Role, utcnow
from aggregator.routing import PRESENCE_LEASE, ConversationFacts, choose_agent, choose_team, speaks
from aggregator.store.admin import BY_PERSON, BY_STREAM
from aggregator.store.inbox import ConversationChange
from aggregator.store.routing import RoutingAgent, RoutingTeam
from aggregator.workspace import WorkspaceSettings
from support.api import ApiClient, user_with_token
from support.app import SECRET, add_channel, daemon_url, inbound, make_settings, sql, sql_write

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
HUNGARIAN = (
    "Jó napot kívánok! Két hete rendeltem Önöktől egy kávéfőzőt, de még mindig nem érkezett meg. "
    "Meg tudnák mondani, hol van most a csomagom, és mikor fogják kiszállítani?"
)
GERMAN = (
    "Guten Tag, ich habe vor zwei Wochen eine Kaffeemaschine bei Ihnen bestellt und sie ist immer noch "
    "nicht angekommen. Können Sie mir bitte sagen, wo mein Paket gerade ist und wann es kommt?"
)


def agent(
    agent_id: str = "a",
    languages: tuple[str, ...] = ("hu",),
    *,
    capacity: int = 5,
    availability: str = "online",
    open_count: int = 0,
    last_assigned_at: datetime | None = None,
) -> RoutingAgent:
    return RoutingAgent(agent_id, languages, capacity, availability, open_count, last_assigned_at)


def team(
    team_id: str,
    languages: tuple[str, ...] = (),
    accounts: tuple[str, ...] = (),
    *,
    position: int = 0,
    name: str | None = None,
) -> RoutingTeam:
    return RoutingTeam(team_id, name or team_id, languages, accounts, position, ())


# --------------------------------------------------------------------------------------------------
# The decisions


@pytest.mark.parametrize(
    ("conversation", "languages", "capacity", "open_count", "availability", "fits"),
    [
        ("hu", ("hu",), 5, 0, "online", True),
        ("hu", ("de", "hu", "en"), 5, 4, "online", True),
        ("hu", ("hu",), 5, 5, "online", False),  # full
        ("hu", ("hu",), 0, 0, "online", False),  # takes nothing
        ("hu", ("hu",), 5, 0, "away", False),
        ("hu", ("hu",), 5, 0, "offline", False),
        ("hu", ("de",), 5, 0, "online", False),  # does not speak it
        ("hu", (), 5, 0, "online", False),  # no languages listed: speaks none
        ("de-AT", ("de",), 5, 0, "online", True),  # base language
        ("de", ("de-CH",), 5, 0, "online", True),
        ("DE", ("de",), 5, 0, "online", True),
        (None, ("de",), 5, 0, "online", True),  # unknown language: anyone
        (None, (), 5, 0, "online", True),
        (None, (), 5, 5, "online", False),
        (None, ("de",), 5, 0, "away", False),
        ("und", (), 5, 0, "online", True),  # "undetermined" is no language
    ],
)
def test_routing_table(
    conversation: str | None,
    languages: tuple[str, ...],
    capacity: int,
    open_count: int,
    availability: str,
    fits: bool,
) -> None:
    candidate = agent(
        languages=languages, capacity=capacity, availability=availability, open_count=open_count
    )
    assert (choose_agent(conversation, [candidate]) == candidate) is fits


def test_least_loaded_first_then_longest_since_assigned_then_id() -> None:
    busy = agent("a", open_count=3)
    idle = agent("b", open_count=1, last_assigned_at=T0)
    idle_longer = agent("c", open_count=1, last_assigned_at=T0 - timedelta(hours=1))
    never = agent("d", open_count=1)
    assert choose_agent("hu", [busy, idle]) == idle
    assert choose_agent("hu", [busy, idle, idle_longer]) == idle_longer
    assert choose_agent("hu", [idle_longer, never, idle]) == never
    assert choose_agent("hu", [agent("y"), agent("x")]) == agent("x")
    # A more loaded speaker still beats a less loaded agent who does not speak the language.
    assert choose_agent("hu", [agent("e", ("de",)), busy]) == busy
    # Who gave the conversation back does not get it again, however idle.
    assert choose_agent("hu", [busy, idle], exclude="b") == busy
    assert choose_agent("hu", [idle], exclude="b") is None


def test_round_robin_on_ties() -> None:
    """Equally loaded agents take turns: each assignment makes its agent the most recent one."""
    agents = [agent(name, open_count=2) for name in ("p", "q", "r")]
    order = []
    now = T0
    for _ in range(6):
        chosen = choose_agent("hu", agents)
        assert chosen is not None
        order.append(chosen.id)
        now += timedelta(seconds=1)
        # The conversation is resolved at once, so the load stays equal.
        agents = [replace(a, last_assigned_at=now) if a.id == chosen.id else a for a in agents]
    assert order == ["p", "q", "r", "p", "q", "r"]


def test_speaks() -> None:
    assert speaks(agent(languages=("pt-BR",)), "pt")
    assert not speaks(agent(languages=("pt",)), "es")


AMAZON, SHOP = "acct-amazon", "acct-shop"


@pytest.mark.parametrize(
    ("facts", "teams", "chosen"),
    [
        # Both matched beats the account only, which beats the language only.
        (
            ConversationFacts(AMAZON, "hu"),
            [
                team("any"),
                team("lang", ("hu",)),
                team("acct", (), (AMAZON,)),
                team("both", ("hu",), (AMAZON,)),
            ],
            "both",
        ),
        (
            ConversationFacts(AMAZON, "hu"),
            [team("any"), team("lang", ("hu",)), team("acct", (), (AMAZON,))],
            "acct",
        ),
        (ConversationFacts(AMAZON, "hu"), [team("any"), team("lang", ("hu",))], "lang"),
        # A team that names neither accounts nor languages is no routing target.
        (ConversationFacts(AMAZON, "hu"), [team("any")], None),
        (ConversationFacts(AMAZON, None), [team("any")], None),
        # A team of other accounts or other languages never takes it.
        (ConversationFacts(SHOP, "hu"), [team("acct", ("hu",), (AMAZON,)), team("de", ("de",))], None),
        # Unknown language: only a team of the account that takes any language.
        (ConversationFacts(SHOP, None), [team("hu", ("hu",)), team("shop", (), (SHOP,))], "shop"),
        (ConversationFacts(SHOP, None), [team("hu", ("hu",))], None),
        # Base language.
        (ConversationFacts(SHOP, "de-AT"), [team("de", ("de",))], "de"),
        # Ties: position, then name.
        (
            ConversationFacts(SHOP, "de"),
            [team("b", ("de",), position=1), team("c", ("de",), position=0, name="Zeta"), team("a", ("de",))],
            "a",
        ),
        # A conversation already in a team (a rule put it there) keeps it.
        (ConversationFacts(SHOP, "de", team_id="hu"), [team("hu", ("hu",)), team("de", ("de",))], "hu"),
    ],
)
def test_choose_team(facts: ConversationFacts, teams: list[RoutingTeam], chosen: str | None) -> None:
    found = choose_team(facts, teams)
    assert (found.id if found else None) == chosen


# --------------------------------------------------------------------------------------------------
# Through a running daemon


@dataclass
class Site:
    daemon: Daemon
    workspace_id: str
    channel: str
    budapest: str
    berlin: str
    anna: str  # Budapest, speaks hu and en
    bela: str  # Budapest, speaks hu
    dora: str  # Berlin, speaks de
    _n: int = 0

    @property
    def store(self) -> Any:
        return self.daemon.store

    async def settle(self) -> None:
        """Every committed message published, and every event (and those it caused) handled."""
        await self.daemon.ingestor._events.join()
        assert self.daemon.engine is not None
        await self.daemon.engine.idle()

    async def write(self, text: str, sender: str, *, hint: str | None = None) -> str:
        self._n += 1
        result = await self.daemon.ingestor(
            inbound(self.channel, f"m{self._n}", sender=sender, text_body=text, language_hint=hint)
        )
        await self.settle()
        return result.conversation_id

    async def set_availability(self, user_id: str, availability: str) -> None:
        await sql_write(
            self.store, "UPDATE users SET availability = :a WHERE id = :id", a=availability, id=user_id
        )
        await self.daemon.bus.publish(
            Event("user.availability", self.workspace_id, {"user_id": user_id, "availability": availability})
        )
        await self.settle()

    async def assignment(self, conversation_id: str) -> tuple[str | None, str | None, str | None]:
        rows = await sql(
            self.store,
            "SELECT assignee_id, team_id, assigned_by FROM conversations WHERE id = :id",
            id=conversation_id,
        )
        return rows[0].assignee_id, rows[0].team_id, rows[0].assigned_by

    async def configure(self, **routing: Any) -> None:
        current = await self.store.workspace_settings(self.workspace_id)
        settings = WorkspaceSettings.model_validate({**current, "routing": routing})
        await self.store.update_workspace(self.workspace_id, settings=settings.model_dump(mode="json"))
        self.daemon.workspace_settings.forget(self.workspace_id)

    async def change(self, conversation_id: str, by: str, **fields: Any) -> None:
        """Change a conversation as the API does: the store's update, then its event."""
        changed = await self.store.update_conversation(
            self.workspace_id,
            conversation_id,
            ConversationChange(fields=set(fields), **fields),
            f"user:{by}",
            T0,
        )
        await self.daemon.bus.publish(
            Event(
                "conversation.updated",
                self.workspace_id,
                {"conversation_id": conversation_id, "changed": sorted(changed), "by": by},
                conversation_id,
            )
        )
        await self.settle()


async def _site(daemon: Daemon, *, online: tuple[str, ...] = ("anna", "bela", "dora")) -> Site:
    store = daemon.store
    assert daemon.bootstrap is not None
    ws = daemon.bootstrap.workspace.id
    channel = await add_channel(store, ws, {"secret": SECRET}, name="shop")
    users = {}
    for name, languages in (("anna", ("hu", "en")), ("bela", ("hu",)), ("dora", ("de",))):
        users[name] = await store.create_user(
            ws, name, f"{name}@example.com", Role.AGENT, languages, capacity=2
        )
        if name in online:
            await sql_write(store, "UPDATE users SET availability = 'online' WHERE id = :id", id=users[name])
    budapest = (await store.create_team(ws, "Budapest", ["hu"], [users["anna"], users["bela"]])).id
    berlin = (await store.create_team(ws, "Berlin", ["de"], [users["dora"]])).id
    await sql_write(
        store,
        "UPDATE teams SET channel_account_ids = :accounts, position = 1 WHERE id = :id",
        accounts=f'["{channel}"]',
        id=budapest,
    )
    return Site(daemon, ws, channel, budapest, berlin, users["anna"], users["bela"], users["dora"])


@pytest.fixture
async def site(daemon: Daemon) -> Site:
    return await _site(daemon)


async def test_hungarian_goes_to_the_budapest_team_least_loaded_in_turn(site: Site) -> None:
    first = await site.write(HUNGARIAN, "c1", hint="hu")
    assert (await site.assignment(first))[1:] == (site.budapest, "routing")
    second = await site.write(HUNGARIAN, "c2", hint="hu")
    third = await site.write(HUNGARIAN, "c3", hint="hu")
    assignees = [(await site.assignment(c))[0] for c in (first, second, third)]
    # Anna and Béla take turns (both start with none), and nobody gets a third before the other a second.
    assert sorted(assignees[:2]) == sorted([site.anna, site.bela])
    assert assignees[2] == assignees[0]
    german = await site.write(GERMAN, "c4", hint="de")
    assert await site.assignment(german) == (site.dora, site.berlin, "routing")
    audit = await sql(
        site.store,
        "SELECT actor, data FROM audit_events WHERE conversation_id = :id AND type = 'conversation.assigned'",
        id=german,
    )
    assert [row.actor for row in audit] == ["routing"]


async def test_nobody_fits_then_the_agent_comes_online(daemon: Daemon) -> None:
    site = await _site(daemon, online=("dora",))
    conversation = await site.write(HUNGARIAN, "c1", hint="hu")
    # Queued in the Budapest team, unassigned.
    assert await site.assignment(conversation) == (None, site.budapest, None)
    await site.set_availability(site.dora, "online")  # not a Budapest member: nothing happens
    assert (await site.assignment(conversation))[0] is None
    await site.set_availability(site.bela, "online")
    assert await site.assignment(conversation) == (site.bela, site.budapest, "routing")
    rows = await sql(site.store, "SELECT last_assigned_at FROM users WHERE id = :id", id=site.bela)
    assert rows[0].last_assigned_at is not None


async def test_capacity_freed_by_resolving_takes_the_next_from_the_queue(daemon: Daemon) -> None:
    site = await _site(daemon, online=("bela",))
    first, second, third = [await site.write(HUNGARIAN, f"c{n}", hint="hu") for n in range(3)]
    assert [(await site.assignment(c))[0] for c in (first, second, third)] == [site.bela, site.bela, None]
    await site.change(first, site.bela, status="resolved")
    assert (await site.assignment(third))[0] == site.bela


async def test_a_burst_is_routed_together_within_capacity(daemon: Daemon) -> None:
    site = await _site(daemon, online=("anna", "bela"))
    await site.configure(enabled=False)
    burst = [await site.write(HUNGARIAN, f"c{n}", hint="hu") for n in range(6)]
    manual = burst.pop()
    await site.change(manual, site.anna, assignee_id=site.anna)  # a person's, meanwhile
    await site.configure(enabled=True)
    events = [
        Event(kind, site.workspace_id, {"conversation_id": c, "direction": "in"}, c)
        for c in [*burst, manual]
        for kind in ("conversation.created", "message.created")
    ]
    await site.daemon.routing.handle_batch(events)
    assigned = [(await site.assignment(c))[0] for c in burst]
    # Capacity 2 each, and Anna has the one a person gave her: Béla two, Anna one, two wait.
    assert sorted(a for a in assigned if a) == sorted([site.anna, site.bela, site.bela])
    assert [await site.assignment(c) for c in burst if (await site.assignment(c))[0] is None] == [
        (None, site.budapest, None)
    ] * 2
    assert await site.assignment(manual) == (site.anna, None, "manual")  # a person's: left alone
    # Each decision is its own audit event, the batch notwithstanding.
    rows = await sql(
        site.store, "SELECT count(*) AS n FROM audit_events WHERE type = 'conversation.assigned'"
    )
    assert rows[0].n == 3


async def test_manual_assignment_is_never_overridden(site: Site) -> None:
    conversation = await site.write(HUNGARIAN, "c1", hint="hu")
    assert (await site.assignment(conversation))[0] is not None
    # A person gives it to Dora, who does not speak Hungarian and is in another team.
    await site.change(conversation, site.anna, assignee_id=site.dora)
    assert await site.assignment(conversation) == (site.dora, site.budapest, "manual")
    await site.change(conversation, site.anna, language="de")
    assert (await site.daemon.routing.sweep()) == 0
    assert (await site.assignment(conversation))[0] == site.dora
    # Going offline does not take it away even when the workspace reassigns: a person chose Dora.
    await site.configure(reassign_offline=True)
    await site.set_availability(site.dora, "offline")
    assert (await site.assignment(conversation))[0] == site.dora


async def test_a_persons_assignment_counts_before_its_event_is_handled(site: Site) -> None:
    # The person's write itself records who assigned: an offline take-back racing the
    # conversation.updated event cannot take away what a person just gave.
    conversation = await site.write(HUNGARIAN, "c1", hint="hu")
    routed_to = (await site.assignment(conversation))[0]
    other = site.bela if routed_to == site.anna else site.anna
    await site.store.update_conversation(
        site.workspace_id,
        conversation,
        ConversationChange(fields={"assignee_id"}, assignee_id=other),
        f"user:{site.anna}",
        T0,
    )
    assert await site.assignment(conversation) == (other, site.budapest, "manual")
    assert await site.store.unassign_routed(site.workspace_id, other, T0) == []
    await site.change(conversation, site.anna, assignee_id=None)
    assert (await site.assignment(conversation))[2] in (None, "routing")


async def test_a_conversation_given_back_goes_to_someone_else(site: Site) -> None:
    conversation = await site.write(HUNGARIAN, "c1", hint="hu")
    first = (await site.assignment(conversation))[0]
    assert first in (site.anna, site.bela)
    other = site.bela if first == site.anna else site.anna
    # The agent gives it back: the other Hungarian speaker gets it, though the first is idler now.
    await site.change(conversation, first, assignee_id=None)
    assert await site.assignment(conversation) == (other, site.budapest, "routing")
    # The other one gives it back too, while the first is away: it waits in the queue, the sweep
    # does not hand it back to them.
    await site.set_availability(first, "away")
    await site.change(conversation, other, assignee_id=None)
    assert await site.assignment(conversation) == (None, site.budapest, None)
    await site.set_availability(first, "online")
    assert await site.assignment(conversation) == (first, site.budapest, "routing")
    [row] = await sql(site.store, "SELECT handed_back_by FROM conversations WHERE id = :id", id=conversation)
    assert row.handed_back_by is None
    # A person may still give it to whoever they like.
    await site.change(conversation, site.anna, assignee_id=None)
    await site.change(conversation, site.anna, assignee_id=first)
    assert await site.assignment(conversation) == (first, site.budapest, "manual")


async def test_offline_agent_keeps_conversations_unless_the_workspace_reassigns(site: Site) -> None:
    first = await site.write(HUNGARIAN, "c1", hint="hu")
    second = await site.write(HUNGARIAN, "c2", hint="hu")
    by = {(await site.assignment(c))[0]: c for c in (first, second)}
    assert set(by) == {site.anna, site.bela}
    await site.set_availability(site.anna, "offline")
    assert (await site.assignment(by[site.anna]))[0] == site.anna
    await site.set_availability(site.anna, "online")
    await site.configure(reassign_offline=True)
    await site.set_availability(site.anna, "offline")
    assert await site.assignment(by[site.anna]) == (site.bela, site.budapest, "routing")


async def test_routing_switched_off(site: Site) -> None:
    await site.configure(enabled=False)
    conversation = await site.write(HUNGARIAN, "c1", hint="hu")
    assert await site.assignment(conversation) == (None, None, None)
    await site.configure(enabled=True)
    assert await site.daemon.routing.sweep() == 1
    assert (await site.assignment(conversation))[1] == site.budapest


async def test_the_queue_is_routed_at_restart(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    daemon = Daemon(settings)
    await daemon.start()
    try:
        site = await _site(daemon, online=())
        waiting = [await site.write(HUNGARIAN, f"c{n}", hint="hu") for n in range(3)]
        assert [(await site.assignment(c))[0] for c in waiting] == [None, None, None]
        anna, bela = site.anna, site.bela
    finally:
        await daemon.stop()
    # While the daemon is down, both come online (nobody tells routing).
    store = open_store(settings)
    try:
        await sql_write(
            store, "UPDATE users SET availability = 'online' WHERE id IN (:a, :b)", a=anna, b=bela
        )
    finally:
        await store.close()
    again = Daemon(settings)
    await again.start()
    try:
        rows = await sql(
            again.store,
            "SELECT assignee_id FROM conversations WHERE id IN (:a, :b, :c)",
            a=waiting[0],
            b=waiting[1],
            c=waiting[2],
        )
        assignees = [row.assignee_id for row in rows]
        assert None not in assignees
        assert sorted(set(assignees)) == sorted({anna, bela})
    finally:
        await again.stop()


async def test_queued_until_the_language_is_known(site: Site) -> None:
    conversation = await site.write("ok", "c1")
    rows = await sql(site.store, "SELECT language FROM conversations WHERE id = :id", id=conversation)
    assert rows[0].language is None
    # No team takes a conversation of unknown language here (both teams name theirs).
    assert await site.assignment(conversation) == (None, None, None)
    assert await site.write(HUNGARIAN, "c1") == conversation
    assert await site.assignment(conversation) == (site.anna, site.budapest, "routing")


async def test_an_agent_setting_the_language_routes_it(site: Site) -> None:
    conversation = await site.write("ok", "c1")
    assert await site.assignment(conversation) == (None, None, None)
    await site.change(conversation, site.dora, language="de")
    assert await site.assignment(conversation) == (site.dora, site.berlin, "routing")


async def test_routing_settings_through_the_api(daemon: Daemon, http_session: aiohttp.ClientSession) -> None:
    assert daemon.bootstrap is not None
    ws = daemon.bootstrap.workspace.id
    _, token = await user_with_token(daemon.store, ws, Role.ADMIN)
    api = ApiClient(http_session, daemon_url(daemon), token)
    got = await api.get("/workspace")
    assert got.body["settings"]["routing"] == {"enabled": True, "reassign_offline": False}
    patched = await api.patch("/workspace", {"routing": {"reassign_offline": True}})
    assert patched.status == 200, patched.body
    assert patched.body["settings"]["routing"] == {"enabled": True, "reassign_offline": True}
    assert (await daemon.workspace_settings.get(ws)).routing.reassign_offline
    wrong = await api.patch("/workspace", {"routing": {"reasign_offline": True}})
    assert (wrong.status, wrong.error_code) == (400, "unknown_field")
    assert "reasign_offline" in wrong.body["error"]["message"]
    null = await api.patch("/workspace", {"routing": None})
    assert (null.status, null.error_code) == (400, "invalid_field")


async def test_a_stream_online_left_by_a_dead_process_expires_and_its_conversations_move(
    daemon: Daemon,
) -> None:
    """The process serving Anna's stream was killed: her online is renewed no more. The sweep sets her
    offline, this process's reactions hear it, and with reassign_offline Béla takes her conversation."""
    site = await _site(daemon, online=("bela", "dora"))
    heard: list[Event] = []
    site.daemon.bus.listeners.append(heard.append)
    try:
        await site.configure(reassign_offline=True)
        await site.store.set_availability(site.workspace_id, site.anna, "online", utcnow(), by=BY_STREAM)
        first = await site.write(HUNGARIAN, "c1", hint="hu")
        second = await site.write(HUNGARIAN, "c2", hint="hu")
        by = {(await site.assignment(c))[0]: c for c in (first, second)}
        assert set(by) == {site.anna, site.bela}
        # Béla's online was set by hand (before availability_by existed: NULL): it never expires.
        old = (utcnow() - timedelta(seconds=PRESENCE_LEASE + 1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        await sql_write(
            site.store,
            "UPDATE users SET availability_at = :at WHERE id IN (:a, :b)",
            at=old,
            a=site.anna,
            b=site.bela,
        )
        await site.daemon.routing.sweep()
        await site.settle()
        assert [(e.data, e.workspace_id) for e in heard if e.type == "user.availability"] == [
            ({"user_id": site.anna, "availability": "offline", "previous": "online"}, site.workspace_id)
        ]
        rows = await sql(
            site.store, "SELECT id, availability FROM users WHERE id IN (:a, :b)", a=site.anna, b=site.bela
        )
        assert {row.id: row.availability for row in rows} == {site.anna: "offline", site.bela: "online"}
        assert await site.assignment(by[site.anna]) == (site.bela, site.budapest, "routing")
    finally:
        site.daemon.bus.listeners.remove(heard.append)


async def test_presence_expires_with_routing_switched_off(site: Site) -> None:
    await site.configure(enabled=False)
    await site.store.set_availability(site.workspace_id, site.dora, "offline", utcnow(), by=BY_PERSON)
    await site.store.set_availability(
        site.workspace_id, site.dora, "online", utcnow() - timedelta(hours=1), by=BY_STREAM
    )
    assert await site.daemon.routing.sweep() == 0
    rows = await sql(site.store, "SELECT availability FROM users WHERE id = :id", id=site.dora)
    assert rows[0].availability == "offline"
