"""Routing of new and reopened conversations: the team first, then an agent in it.

The decisions are pure functions (`choose_team`, `choose_agent`) over facts read from SQL; the
`RoutingEngine` reads the facts, decides, and writes the result with a conditional update.

Team: a conversation already in a team (a rule, a person or routing put it there) keeps it, also when
its language changes later (moving it is a person's or a rule's call). Otherwise a team
takes it when its `channel_account_ids` hold the conversation's channel account (none listed: any
account) and its `languages` hold the conversation's language (none listed: any language; a language
team never takes a conversation whose language is unknown, which waits without a team until its
language is known). Best: a team that names both the account and the language, then the account only,
then the language only; ties by `position`, then name (ignoring case). A team that names neither
accounts nor languages is no routing target (only rules and people give it conversations): teams made
to group people, and those from before routing existed, do not take every conversation.

Agent, among the team's members: online, speaks the language, and has fewer open conversations (open,
pending or snoozed, assigned to them) than their capacity. Language tags match by base language (an
agent with "de" speaks "de-AT", and one with "de-AT" speaks "de"). An agent with no languages listed
speaks none: they take only conversations whose language is unknown, which anyone may take. Least
loaded first; ties go to whoever was given a conversation longest ago (never: first), then by id, which
makes equally loaded agents take turns.

An agent who gives a conversation back (a person unassigns it) does not get it again from routing: it
goes to someone else, or waits in the queue (a person or a rule may still give it to them).

No agent fits: the conversation joins the team's queue (team set, unassigned), and is assigned as soon as
someone fits: an agent comes online, resolves or hands back a conversation, or its language becomes
known. A conversation with an assignee is never touched: manual assignment always wins. An agent who
goes offline (not "away") keeps their conversations unless the workspace's `routing.reassign_offline`
is set; then the unresolved ones routing gave them are taken back and routed again (pending and snoozed
ones when they reopen). Only "online" agents get conversations.

Catch-up: at start and every `SWEEP_SECONDS` the whole queue is routed again, so an event lost in a
crash, a full pipeline or a change made by another process only delays a decision.

Batches: what the engine hands over together (a burst of new conversations), and each page of the
queue, is decided on one read of the teams and agents and written in one transaction, each write still
checking its conversation and agent; a decision the write refuses is made again alone.

Presence lease: the same sweep (whether routing is enabled or not) sets offline every agent the live
stream made online whose lease was not renewed for `PRESENCE_LEASE` seconds: the process serving
their stream died (several processes may share the database, so none can reset all at start). Their
`user.availability` event goes to this process's reactions as an API change does, so
`reassign_offline` applies. An online a person set never expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from aggregator.hours import BusinessHours
from aggregator.language import base_language
from aggregator.live import PRESENCE_REFRESH
from aggregator.model import ConversationStatus, Event, utcnow
from aggregator.store import Store
from aggregator.store.routing import ROUTING, QueueCursor, RoutedConversation, RoutingAgent, RoutingTeam
from aggregator.workspace import SettingsCache

log = logging.getLogger(__name__)

SWEEP_SECONDS = 30.0
# An online the live stream set expires when not renewed for this long (it renews every
# PRESENCE_REFRESH seconds while the stream is open): three renewals missed.
PRESENCE_LEASE = 3 * PRESENCE_REFRESH
ONLINE = "online"
OFFLINE = "offline"
_NEVER = datetime.min.replace(tzinfo=UTC)
# Changes (by others than routing) that call for routing the conversation again.
_REROUTE = frozenset({"language", "team_id", "status", "assignee_id"})


@dataclass(frozen=True, slots=True)
class ConversationFacts:
    """What choosing a team looks at."""

    channel_account_id: str
    language: str | None
    team_id: str | None = None


@lru_cache(maxsize=4096)
def _bases(languages: tuple[str, ...]) -> frozenset[str]:
    # Cached: the same few language lists are looked at for every agent in every decision.
    return frozenset(b for b in (base_language(tag) for tag in languages) if b is not None)


def choose_team(conversation: ConversationFacts, teams: Sequence[RoutingTeam]) -> RoutingTeam | None:
    """The team a conversation goes to (see the module's docstring); None when no team takes it."""
    if conversation.team_id is not None:
        for team in teams:
            if team.id == conversation.team_id:
                return team
    language = base_language(conversation.language)
    best: tuple[int, int, str, str, RoutingTeam] | None = None
    for team in teams:
        if team.channel_account_ids:
            if conversation.channel_account_id not in team.channel_account_ids:
                continue
            account = True
        else:
            account = False
        if team.languages:
            if language is None or language not in _bases(tuple(team.languages)):
                continue
            speaks = True
        else:
            speaks = False
        if not account and not speaks:
            continue  # names neither: only rules and people give it conversations
        rank = (0 if speaks else 1) if account else 2
        key = (rank, team.position, team.name.casefold(), team.id, team)
        if best is None or key[:4] < best[:4]:
            best = key
    return None if best is None else best[4]


def speaks(agent: RoutingAgent, language: str | None) -> bool:
    """Whether the agent can take a conversation in that language (None: unknown, anyone can)."""
    base = base_language(language)
    return base is None or base in _bases(tuple(agent.languages))


def choose_agent(
    language: str | None, agents: Sequence[RoutingAgent], *, exclude: str | None = None
) -> RoutingAgent | None:
    """The agent who gets the conversation (see the module's docstring), never `exclude` (the agent
    who gave it back); None when nobody fits."""
    base = base_language(language)
    best: RoutingAgent | None = None
    best_key: tuple[int, datetime, str] | None = None
    for agent in agents:
        if agent.availability != ONLINE or agent.open_count >= agent.capacity or agent.id == exclude:
            continue
        if base is not None and base not in _bases(tuple(agent.languages)):
            continue
        key = (agent.open_count, agent.last_assigned_at or _NEVER, agent.id)
        if best_key is None or key < best_key:
            best, best_key = agent, key
    return best


async def conversation_hours(
    store: Store,
    settings: SettingsCache,
    workspace_id: str,
    conversation_id: str,
    calendar_id: str | None = None,
) -> BusinessHours | None:
    """The business hours that apply to a conversation: the calendar given, else its team's calendar
    (a conversation without a team yet: of the team routing would give it), else the workspace's
    `hours`; None when none are set (always open). A calendar deleted meanwhile counts as not given."""
    if calendar_id is not None:
        hours = await store.calendar_hours(workspace_id, calendar_id)
        if hours is not None:
            return hours
    conversation = await store.routing_conversation(workspace_id, conversation_id)
    if conversation is not None:
        team = choose_team(
            ConversationFacts(conversation.channel_account_id, conversation.language, conversation.team_id),
            await store.routing_teams(workspace_id),
        )
        if team is not None and team.calendar_id is not None:
            hours = await store.calendar_hours(workspace_id, team.calendar_id)
            if hours is not None:
                return hours
    return (await settings.get(workspace_id)).hours


class _Snapshot:
    """One workspace's teams and agents while a batch of conversations is routed, kept current with
    the batch's own assignments (the write re-checks each agent, so a stale one costs a retry only)."""

    def __init__(self, store: Store, workspace_id: str, teams: list[RoutingTeam]) -> None:
        self.store = store
        self.workspace_id = workspace_id
        self.teams = teams
        self._agents: dict[str, list[RoutingAgent]] = {}

    async def agents(self, team: RoutingTeam) -> list[RoutingAgent]:
        known = self._agents.get(team.id)
        if known is None:
            known = self._agents[team.id] = await self.store.routing_agents(
                self.workspace_id, team.member_ids
            )
        return known

    def assigned(self, agent_id: str, now: datetime) -> None:
        for agents in self._agents.values():
            for index, agent in enumerate(agents):
                if agent.id == agent_id:
                    agents[index] = replace(agent, open_count=agent.open_count + 1, last_assigned_at=now)

    def drop(self, agent_id: str) -> None:
        """Routing thought the agent fitted, the write found otherwise: read them again next time."""
        for team_id in [k for k, v in self._agents.items() if any(a.id == agent_id for a in v)]:
            del self._agents[team_id]


class RoutingEngine:
    name = "routing"

    def __init__(
        self,
        store: Store,
        settings: SettingsCache,
        *,
        clock: Callable[[], datetime] = utcnow,
        publish: Callable[[Event], Awaitable[None]] | None = None,
        tell: Callable[[Event], None] | None = None,
        sweep_seconds: float = SWEEP_SECONDS,
        presence_lease: float = PRESENCE_LEASE,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.publish = publish
        # Hands an event to this process's own reactions only (bus listeners), as the API does with
        # availability changes, which are no live stream events.
        self.tell = tell
        self.sweep_seconds = sweep_seconds
        self.presence_lease = presence_lease
        self._stopping = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Route the queue (what arrived or changed while stopped), then sweep it periodically."""
        self._stopping.clear()
        try:
            await self.sweep()
        except Exception:
            log.exception("routing the queue at start failed")
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="routing-sweep")

    async def stop(self) -> None:
        self._stopping.set()
        if self._sweeper is not None:
            await self._sweeper
            self._sweeper = None

    async def _sweep_loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.sweep_seconds)
            if self._stopping.is_set():
                return
            try:
                await self.sweep()
            except Exception:
                log.exception("routing sweep failed")

    async def sweep(self) -> int:
        """Expire stale presence leases, then route every open unassigned conversation of every
        workspace; how many were assigned."""
        try:
            await self.expire_presence()
        except Exception:
            log.exception("expiring presence leases failed")
        assigned = 0
        for workspace in await self.store.list_workspaces():
            if (await self.settings.get(workspace.id)).routing.enabled:
                assigned += await self.route_queue(workspace.id)
        return assigned

    async def expire_presence(self) -> list[tuple[str, str]]:
        """Set offline the users whose stream-set online was not renewed for `presence_lease` seconds,
        and tell this process's reactions; (workspace id, user id) of each.

        On the wall clock, not `self.clock`: the API and the live stream write availability_at with it.
        """
        now = utcnow()
        expired = await self.store.expire_presence(now - timedelta(seconds=self.presence_lease), now=now)
        for workspace_id, user_id in expired:
            log.info("user %s (workspace %s) is offline: their stream's lease ran out", user_id, workspace_id)
            if self.tell is not None:
                data = {"user_id": user_id, "availability": OFFLINE, "previous": ONLINE}
                self.tell(Event("user.availability", workspace_id, data))
        return expired

    async def route_queue(self, workspace_id: str, team_ids: Sequence[str] | None = None) -> int:
        """Route the workspace's open unassigned conversations (of those teams only, when given)."""
        assigned = 0
        after: QueueCursor | None = None
        snapshot = _Snapshot(self.store, workspace_id, await self.store.routing_teams(workspace_id))
        while True:
            page, after = await self.store.routing_queue(workspace_id, team_ids=team_ids, after=after)
            assigned += await self._route_together(snapshot, page)
            if after is None or self._stopping.is_set():
                return assigned

    async def route(self, workspace_id: str, conversation_id: str) -> bool:
        """Route one conversation; True when it was given to an agent."""
        conversation = await self.store.routing_conversation(workspace_id, conversation_id)
        if conversation is None or conversation.assignee_id is not None:
            return False
        if conversation.status != ConversationStatus.OPEN.value:
            return False
        snapshot = _Snapshot(self.store, workspace_id, await self.store.routing_teams(workspace_id))
        return await self._route_together(snapshot, [conversation], again=False) == 1

    async def handle_batch(self, events: Sequence[Event]) -> None:
        """Events taken together: the conversations to route (new, reopened, a customer's message) are
        decided on one read of the teams and agents and written in one transaction; the others are
        handled one by one, in order, first."""
        wanted: dict[str, dict[str, None]] = {}
        for event in events:
            conversation_id = event.conversation_id or event.data.get("conversation_id")
            routes = event.type in ("conversation.created", "conversation.reopened") or (
                event.type == "message.created"
                and event.data.get("direction") == "in"
                and event.data.get("kind", "message") == "message"
            )
            if routes and isinstance(conversation_id, str):
                wanted.setdefault(event.workspace_id, {})[conversation_id] = None
            else:
                try:
                    await self.handle(event)
                except Exception:
                    log.exception("routing failed on %s %s", event.type, event.conversation_id)
        for workspace_id, ids in wanted.items():
            try:
                if (await self.settings.get(workspace_id)).routing.enabled:
                    await self._route_many(workspace_id, list(ids))
            except Exception:
                log.exception("routing %d conversations of workspace %s failed", len(ids), workspace_id)

    async def _route_many(self, workspace_id: str, conversation_ids: Sequence[str]) -> None:
        waiting = [
            c
            for c in await self.store.routing_conversations(workspace_id, conversation_ids)
            if c.assignee_id is None and c.status == ConversationStatus.OPEN.value
        ]
        if not waiting:
            return
        snapshot = _Snapshot(self.store, workspace_id, await self.store.routing_teams(workspace_id))
        await self._route_together(snapshot, waiting)

    async def _route_together(
        self, snapshot: _Snapshot, waiting: Sequence[RoutedConversation], *, again: bool = True
    ) -> int:
        """Decide for each (open, unassigned) conversation, then write them all in one transaction; how
        many were given to an agent. The write checks each agent's load again (the sweep and the event
        handler, or another process, may have given them one meanwhile); `again`: a conversation whose
        agent no longer fitted is decided once more, alone (else it waits for the next chance)."""
        workspace_id = snapshot.workspace_id
        decisions: list[tuple[RoutedConversation, str, str | None]] = []
        for conversation in waiting:
            team = choose_team(
                ConversationFacts(conversation.channel_account_id, conversation.language, conversation.team_id),
                snapshot.teams,
            )
            if team is None:
                continue
            agent = choose_agent(
                conversation.language, await snapshot.agents(team), exclude=conversation.handed_back_by
            )
            if agent is None and conversation.team_id == team.id:
                continue  # waits in its team's queue already
            if agent is not None:
                snapshot.assigned(agent.id, self.clock())
            decisions.append((conversation, team.id, agent.id if agent else None))
        now = self.clock()
        written = await self.store.route_conversations(
            workspace_id, [(c.id, team_id, agent_id) for c, team_id, agent_id in decisions], now
        )
        assigned = 0
        for (conversation, _, agent_id), changed in zip(decisions, written, strict=True):
            if changed:
                await self._announce(conversation.workspace_id, conversation.id, changed)
            if "assignee_id" in changed:
                assigned += 1
            elif agent_id is not None:
                snapshot.drop(agent_id)
                if again and await self.route(workspace_id, conversation.id):
                    assigned += 1
        return assigned

    async def _announce(self, workspace_id: str, conversation_id: str, changed: list[str]) -> None:
        if self.publish is not None:
            await self.publish(
                Event(
                    "conversation.updated",
                    workspace_id,
                    {"conversation_id": conversation_id, "changed": changed, "by": ROUTING},
                    conversation_id,
                )
            )

    async def handle(self, event: Event) -> None:
        if event.type not in (
            "conversation.created",
            "conversation.reopened",
            "conversation.updated",
            "message.created",
            "user.availability",
        ):
            return
        if not (await self.settings.get(event.workspace_id)).routing.enabled:
            return
        if event.type == "user.availability":
            await self._availability_changed(event)
            return
        conversation_id = event.conversation_id or event.data.get("conversation_id")
        if not isinstance(conversation_id, str):
            return
        if event.type == "message.created":
            # A customer's message may make the language known, which a queued conversation waited for.
            if event.data.get("direction") == "in" and event.data.get("kind", "message") == "message":
                await self.route(event.workspace_id, conversation_id)
            return
        if event.type == "conversation.updated":
            if event.data.get("by") == ROUTING:
                return
            changed = set(event.data.get("changed") or ())
            if changed & _REROUTE:
                await self.route(event.workspace_id, conversation_id)
            if "assignee_id" in changed:
                # Someone's load went down (whose is not said): the whole queue may move.
                await self.route_queue(event.workspace_id)
            elif "status" in changed:
                await self._resolved(event.workspace_id, conversation_id)
            return
        await self.route(event.workspace_id, conversation_id)

    async def _resolved(self, workspace_id: str, conversation_id: str) -> None:
        """A status change frees capacity only when it resolves: then its assignee's teams' queues move."""
        conversation = await self.store.routing_conversation(workspace_id, conversation_id)
        if (
            conversation is None
            or conversation.assignee_id is None
            or conversation.status != ConversationStatus.RESOLVED.value
        ):
            return
        state = await self.store.user_routing_state(workspace_id, conversation.assignee_id)
        if state is not None and state[1]:
            await self.route_queue(workspace_id, state[1])

    async def _availability_changed(self, event: Event) -> None:
        user_id = event.data.get("user_id")
        if not isinstance(user_id, str):
            return
        state = await self.store.user_routing_state(event.workspace_id, user_id)
        if state is None:
            return
        availability, team_ids = state
        if availability == ONLINE:
            if team_ids:
                await self.route_queue(event.workspace_id, team_ids)
        elif (
            availability == OFFLINE and (await self.settings.get(event.workspace_id)).routing.reassign_offline
        ):
            taken = await self.store.unassign_routed(event.workspace_id, user_id, self.clock())
            for conversation_id in taken:
                if self.publish is not None:
                    await self.publish(
                        Event(
                            "conversation.updated",
                            event.workspace_id,
                            {"conversation_id": conversation_id, "changed": ["assignee_id"], "by": ROUTING},
                            conversation_id,
                        )
                    )
                await self.route(event.workspace_id, conversation_id)
