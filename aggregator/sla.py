"""SLA policies and timers, and the scheduler that fires warnings and breaches.

The timers are computed from facts kept in SQL by the transactions that change them
(conversations.awaiting_since, first_response_at, status, status_changed_at): `refresh` recomputes a
conversation's timers from those facts, so it is idempotent and a missed event is caught up at start
(every conversation whose updated_at is newer than its sla_checked_at). The scheduler reads the timers
whose next_fire_at has come, through its index, and claims each warning and breach with a conditional
update: it fires once, late after downtime, whichever process gets there first.

Clock rules: a response timer (first_response while no agent has answered yet, then next_response)
starts at the first unanswered customer message and stops on an agent's reply (an automatic reply
does not count); the resolution timer starts when the conversation is created and stops when it is
resolved. All pause while the conversation is pending on the customer and go on from what was left
when it opens again. Business-hours mode counts only the calendar's open time (the policy's calendar,
else the team's, else the workspace's hours; with none, around the clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from aggregator.hours import BusinessHours
from aggregator.model import ConversationStatus, Event, utcnow
from aggregator.store import Store
from aggregator.store.sla import FiredTimer, SlaFacts, SlaPlan, SlaPolicyRecord, TimerRow
from aggregator.workspace import SettingsCache

log = logging.getLogger(__name__)

FIRE_LIMIT = 500
CATCH_UP_BATCH = 500
MAX_SLEEP_SECONDS = 1.0
REFRESH_EVENTS = frozenset(
    {"message.created", "conversation.created", "conversation.reopened", "conversation.updated"}
)
# Published by the policy API: the engine retimes the workspace's conversations.
POLICIES_CHANGED = "sla_policies.changed"
AROUND_THE_CLOCK = "around_the_clock"
BUSINESS_HOURS = "business_hours"
CONDITION_KEYS = ("channel_account_ids", "channel_kinds", "priorities", "labels")


def matches(policy: SlaPolicyRecord, facts: SlaFacts) -> bool:
    """Every condition list given holds (any of its values); an empty or missing list is any."""
    have = {
        "channel_account_ids": {facts.channel_account_id},
        "channel_kinds": {facts.channel_kind},
        "priorities": {facts.priority},
        "labels": set(facts.labels),
    }
    for key in CONDITION_KEYS:
        wanted = policy.conditions.get(key) or []
        if wanted and not have[key].intersection(wanted):
            return False
    return True


def choose_policy(facts: SlaFacts) -> SlaPolicyRecord | None:
    """The policy the conversation names, else the first enabled one whose conditions match."""
    if facts.sla_policy_id is not None:
        for policy in facts.policies:
            if policy.id == facts.sla_policy_id:
                return policy
    for policy in facts.policies:
        if policy.enabled and matches(policy, facts):
            return policy
    return None


class _Clock:
    """Adds and measures target time in the policy's mode."""

    def __init__(self, hours: BusinessHours | None) -> None:
        self.hours = hours

    def add(self, start: datetime, seconds: float) -> datetime | None:
        if self.hours is None:
            return start + timedelta(seconds=max(0.0, seconds))
        return self.hours.add_open_seconds(start, seconds)

    def between(self, start: datetime, end: datetime) -> float:
        if self.hours is None:
            return (end - start).total_seconds()
        return self.hours.open_seconds_between(start, end)


def _hours_of(raw: Any) -> BusinessHours | None:
    if raw is None:
        return None
    try:
        return BusinessHours.model_validate(raw)
    except ValidationError as exc:
        log.error("a calendar's hours do not validate, counting around the clock: %s", exc)
        return None


def hours_for(
    policy: SlaPolicyRecord, facts: SlaFacts, workspace_hours: BusinessHours | None
) -> BusinessHours | None:
    """None: around the clock."""
    if policy.mode != BUSINESS_HOURS:
        return None
    if policy.calendar_id is not None and policy.calendar_id in facts.calendars:
        return _hours_of(facts.calendars[policy.calendar_id])
    if facts.team_calendar is not None:
        return _hours_of(facts.team_calendar)
    return workspace_hours


def _fire_time(row: TimerRow) -> datetime | None:
    if row.stopped_at is not None or row.paused_at is not None:
        return None
    times = []
    if row.warn_at is not None and row.warned_at is None:
        times.append(row.warn_at)
    if row.due_at is not None and row.breached_at is None:
        times.append(row.due_at)
    return min(times) if times else None


def _run(row: TimerRow, clock: _Clock, base: datetime, left: float, warn_before: int | None) -> None:
    row.due_at = clock.add(base, left)
    row.warn_at = clock.add(base, max(0.0, left - warn_before)) if warn_before and row.due_at else None
    row.paused_at = None
    row.remaining_seconds = None


def _pause(row: TimerRow, clock: _Clock, at: datetime, left: float) -> None:
    row.paused_at = at
    row.remaining_seconds = max(0.0, left)
    row.due_at = None
    row.warn_at = None


def _track(
    old: TimerRow | None,
    metric: str,
    policy: SlaPolicyRecord,
    clock: _Clock,
    *,
    start: datetime,
    target: int,
    paused: bool,
    stopped: bool,
    changed_at: datetime,
    now: datetime,
    retarget: bool,
) -> TimerRow:
    same = old is not None and old.started_at == start and old.policy_id == policy.id
    if same and retarget:
        # The policy's targets changed: counted again from the start; what already fired and still
        # holds under the new target is not fired again.
        assert old is not None
        row = _track(
            None,
            metric,
            policy,
            clock,
            start=start,
            target=target,
            paused=paused,
            stopped=stopped,
            changed_at=changed_at,
            now=now,
            retarget=False,
        )
        if old.warned_at is not None and (
            row.paused_at is not None or (row.warn_at is not None and row.warn_at <= now)
        ):
            row.warned_at = old.warned_at
        if old.breached_at is not None and (
            row.paused_at is not None or (row.due_at is not None and row.due_at <= now)
        ):
            row.breached_at = old.breached_at
        row.next_fire_at = _fire_time(row)
        return row
    if same:
        assert old is not None
        row = dataclasses.replace(old)
        if row.paused_at is not None:
            if not paused:
                _run(
                    row,
                    clock,
                    max(changed_at, row.paused_at),
                    row.remaining_seconds or 0.0,
                    policy.warn_before_seconds,
                )
        elif paused:
            at = max(changed_at, row.started_at)
            left = clock.between(at, row.due_at) if row.due_at is not None else 0.0
            if row.due_at is not None and row.due_at < at:
                left = 0.0
            _pause(row, clock, at, left)
    else:
        row = TimerRow(metric=metric, policy_id=policy.id, started_at=start)
        _run(row, clock, start, float(target), policy.warn_before_seconds)
        if paused:
            at = max(changed_at, start)
            _pause(row, clock, at, target - clock.between(start, at))
    if stopped:
        row.stopped_at = row.stopped_at or changed_at or now
    else:
        row.stopped_at = None
    row.next_fire_at = _fire_time(row)
    return row


def plan(
    facts: SlaFacts, workspace_hours: BusinessHours | None, now: datetime, *, retarget: bool = False
) -> SlaPlan:
    """The conversation's timers and their summary, from its facts and its timers so far; `retarget`
    after a policy changed (its timers are counted again with the new targets)."""
    policy = choose_policy(facts)
    timers: list[TimerRow] = []
    if policy is not None:
        clock = _Clock(hours_for(policy, facts, workspace_hours))
        status = facts.status
        pending = status == ConversationStatus.PENDING.value
        resolved = status == ConversationStatus.RESOLVED.value
        changed_at = facts.status_changed_at or facts.updated_at
        wanted: set[str] = set()
        if facts.awaiting_since is not None and not resolved:
            metric = "first_response" if facts.first_response_at is None else "next_response"
            target = (
                policy.first_response_seconds if metric == "first_response" else policy.next_response_seconds
            )
            if target is not None:
                wanted.add(metric)
                timers.append(
                    _track(
                        facts.timers.get(metric),
                        metric,
                        policy,
                        clock,
                        start=facts.awaiting_since,
                        target=target,
                        paused=pending,
                        stopped=False,
                        changed_at=changed_at,
                        now=now,
                        retarget=retarget,
                    )
                )
        if policy.resolution_seconds is not None:
            wanted.add("resolution")
            timers.append(
                _track(
                    facts.timers.get("resolution"),
                    "resolution",
                    policy,
                    clock,
                    start=facts.created_at,
                    target=policy.resolution_seconds,
                    # Resolved: paused with what was left, so a reopened conversation goes on from there.
                    paused=pending or resolved,
                    stopped=resolved,
                    changed_at=changed_at,
                    now=now,
                    retarget=retarget,
                )
            )
        for metric, old in facts.timers.items():
            if metric in wanted or old.policy_id != policy.id:
                continue
            # A response timer whose message was answered: kept, stopped, as the record of it.
            row = dataclasses.replace(old, next_fire_at=None)
            row.stopped_at = old.stopped_at or now
            timers.append(row)
    active = [r for r in timers if r.stopped_at is None]
    running = [r for r in active if r.paused_at is None and r.due_at is not None]
    breached = [r.breached_at for r in active if r.breached_at is not None]
    state = "breached" if breached else "running" if running else "paused" if active else None
    return SlaPlan(
        timers=timers,
        due_at=min((r.due_at for r in running if r.due_at is not None), default=None),
        state=state,
        breached_at=min(breached) if breached else None,
    )


class SlaEngine:
    name = "sla"

    def __init__(
        self,
        store: Store,
        settings: SettingsCache,
        *,
        clock: Callable[[], datetime] = utcnow,
        publish: Callable[[Event], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.publish = publish
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._next_fire: datetime | None = None

    async def start(self) -> None:
        """Catch up with what changed while stopped, fire what fell due meanwhile, start the scheduler."""
        after = ""
        while True:
            stale = await self.store.sla_stale(after, CATCH_UP_BATCH)
            unchanged: list[tuple[str, datetime]] = []
            for (_, conversation_id), done in zip(stale, await self._refresh_all(stale), strict=True):
                if done is not None and done[1].sla_checked_at != done[1].updated_at:
                    unchanged.append((conversation_id, done[1].updated_at))
            await self.store.mark_sla_checked(unchanged)
            if len(stale) < CATCH_UP_BATCH:
                break
            after = stale[-1][1]
        await self.fire_due(self.clock())
        self._task = asyncio.create_task(self._loop(), name="sla-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def handle(self, event: Event) -> None:
        await self.handle_batch([event])

    async def handle_batch(self, events: Sequence[Event]) -> None:
        """React to events taken together: each conversation's timers recomputed once, in one read and
        at most one write transaction (a burst of messages costs one commit, not one each)."""
        items: dict[tuple[str, str], None] = {}
        for event in events:
            if event.type in REFRESH_EVENTS and event.conversation_id is not None:
                items[(event.workspace_id, event.conversation_id)] = None
            elif event.type == POLICIES_CHANGED:
                await self.retime(event.workspace_id)
        await self._refresh_all(list(items))

    async def _refresh_all(
        self, items: Sequence[tuple[str, str]], *, retarget: bool = False
    ) -> list[tuple[SlaPlan, SlaFacts] | None]:
        """Refresh (workspace id, conversation id) pairs together, CATCH_UP_BATCH at a time; a batch
        that fails is done again one by one, so that one bad conversation holds up no other."""
        results: list[tuple[SlaPlan, SlaFacts] | None] = []
        for start in range(0, len(items), CATCH_UP_BATCH):
            chunk = items[start : start + CATCH_UP_BATCH]
            try:
                results.extend(await self._refresh_many(chunk, retarget=retarget))
                continue
            except Exception:
                if len(chunk) == 1:
                    log.exception("SLA timers of conversation %s not computed", chunk[0][1])
                    results.append(None)
                    continue
            for workspace_id, conversation_id in chunk:
                try:
                    results.append(await self._refresh(workspace_id, conversation_id, retarget=retarget))
                except Exception:
                    log.exception("SLA timers of conversation %s not computed", conversation_id)
                    results.append(None)
        return results

    async def retime(self, workspace_id: str) -> int:
        """Refresh every conversation of the workspace a policy change may affect; how many."""
        after, count = "", 0
        while True:
            ids = await self.store.sla_retime_ids(workspace_id, after, CATCH_UP_BATCH)
            await self._refresh_all([(workspace_id, conversation_id) for conversation_id in ids], retarget=True)
            count += len(ids)
            if len(ids) < CATCH_UP_BATCH:
                return count
            after = ids[-1]

    async def refresh(self, conversation_id: str) -> SlaPlan | None:
        """Recompute one conversation's timers from SQL (idempotent); None when it does not exist."""
        workspace_id = await self.store.sla_workspace_of(conversation_id)
        if workspace_id is None:
            return None
        done = await self._refresh(workspace_id, conversation_id)
        return None if done is None else done[0]

    async def _refresh(
        self, workspace_id: str, conversation_id: str, *, retarget: bool = False
    ) -> tuple[SlaPlan, SlaFacts] | None:
        return (await self._refresh_many([(workspace_id, conversation_id)], retarget=retarget))[0]

    async def _refresh_many(
        self, items: Sequence[tuple[str, str]], *, retarget: bool = False
    ) -> list[tuple[SlaPlan, SlaFacts] | None]:
        hours = {ws: (await self.settings.get(ws)).hours for ws in dict.fromkeys(ws for ws, _ in items)}
        now = self.clock()

        def planner(workspace_id: str, facts: SlaFacts) -> SlaPlan:
            return plan(facts, hours.get(workspace_id), now, retarget=retarget)

        results = await self.store.refresh_sla_many([cid for _, cid in items], planner)
        soonest = min(
            (
                r.next_fire_at
                for result in results
                if result is not None
                for r in result[0].timers
                if r.next_fire_at is not None
            ),
            default=None,
        )
        if soonest is not None and (self._next_fire is None or soonest < self._next_fire):
            self._next_fire = soonest
            self._wake.set()
        return results

    async def fire_due(self, now: datetime) -> int:
        """Fire every warning and breach due at `now`, each once: how many fired."""
        total = 0
        while True:
            fired = await self.store.fire_sla_timers(now, FIRE_LIMIT)
            total += len(fired)
            for timer in fired:
                await self._announce(timer)
            if len(fired) < FIRE_LIMIT:
                return total

    async def _announce(self, timer: FiredTimer) -> None:
        if timer.late:
            log.info(
                "SLA %s of %s for conversation %s fired late", timer.kind, timer.metric, timer.conversation_id
            )
        if self.publish is None:
            return
        await self.publish(
            Event(
                "sla.breached" if timer.kind == "breach" else "sla.warning",
                timer.workspace_id,
                {
                    "conversation_id": timer.conversation_id,
                    "metric": timer.metric,
                    "due_at": timer.due_at.isoformat() if timer.due_at is not None else None,
                    "policy_id": timer.policy_id,
                    "late": timer.late,
                },
                timer.conversation_id,
            )
        )

    async def _loop(self) -> None:
        while True:
            try:
                await self.fire_due(self.clock())
                self._next_fire = await self.store.next_sla_fire_at()
            except Exception:
                log.exception("firing SLA timers failed")
                self._next_fire = None
            delay = MAX_SLEEP_SECONDS
            if self._next_fire is not None:
                delay = min(delay, max(0.0, (self._next_fire - self.clock()).total_seconds()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
