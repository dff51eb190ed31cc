"""SLA policies, the facts a conversation's timers are computed from, the timers, and their firing.

Each firing (warning, breach) is claimed with a conditional update, so two processes running the
scheduler over one database fire it once between them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, literal, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from aggregator.model import ConversationStatus, new_id, utcnow
from aggregator.store import schema as t
from aggregator.store.base import Conflict, Invalid, NotFound, StoreBase

METRICS = ("first_response", "next_response", "resolution")
POLICY_FIELDS = (
    "name",
    "position",
    "enabled",
    "conditions",
    "first_response_seconds",
    "next_response_seconds",
    "resolution_seconds",
    "mode",
    "calendar_id",
    "warn_before_seconds",
)


@dataclass(frozen=True, slots=True)
class SlaPolicyRecord:
    id: str
    workspace_id: str
    name: str
    position: int
    enabled: bool
    conditions: dict[str, list[str]]
    first_response_seconds: int | None
    next_response_seconds: int | None
    resolution_seconds: int | None
    mode: str
    calendar_id: str | None
    warn_before_seconds: int | None
    created_at: datetime
    updated_at: datetime


def _policy(row: Any) -> SlaPolicyRecord:
    return SlaPolicyRecord(
        id=row.id,
        workspace_id=row.workspace_id,
        name=row.name,
        position=row.position,
        enabled=bool(row.enabled),
        conditions={k: list(v or []) for k, v in dict(row.conditions or {}).items()},
        first_response_seconds=row.first_response_seconds,
        next_response_seconds=row.next_response_seconds,
        resolution_seconds=row.resolution_seconds,
        mode=row.mode,
        calendar_id=row.calendar_id,
        warn_before_seconds=row.warn_before_seconds,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


@dataclass(slots=True)
class TimerRow:
    """One sla_timers row (the planner's input and output)."""

    metric: str
    policy_id: str | None
    started_at: datetime
    due_at: datetime | None = None
    warn_at: datetime | None = None
    paused_at: datetime | None = None
    remaining_seconds: float | None = None
    stopped_at: datetime | None = None
    warned_at: datetime | None = None
    breached_at: datetime | None = None
    next_fire_at: datetime | None = None


def _timer(row: Any) -> TimerRow:
    return TimerRow(
        metric=row.metric,
        policy_id=row.policy_id,
        started_at=row.started_at,
        due_at=row.due_at,
        warn_at=row.warn_at,
        paused_at=row.paused_at,
        remaining_seconds=row.remaining_seconds,
        stopped_at=row.stopped_at,
        warned_at=row.warned_at,
        breached_at=row.breached_at,
        next_fire_at=row.next_fire_at,
    )


@dataclass(frozen=True, slots=True)
class SlaFacts:
    """What a conversation's timers are computed from, read in the transaction that writes them."""

    conversation_id: str
    workspace_id: str
    channel_account_id: str
    channel_kind: str
    status: str
    priority: str
    labels: list[str]
    team_calendar: dict[str, Any] | None
    awaiting_since: datetime | None
    first_response_at: datetime | None
    status_changed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    sla_policy_id: str | None
    policies: list[SlaPolicyRecord]  # the workspace's, in position order
    calendars: dict[str, dict[str, Any]]  # calendar id -> hours (JSON)
    timers: dict[str, TimerRow]
    # The summary as stored, and the updated_at it was computed at.
    sla_due_at: datetime | None = None
    sla_state: str | None = None
    sla_breached_at: datetime | None = None
    sla_checked_at: datetime | None = None

    def unchanged_by(self, plan: SlaPlan) -> bool:
        """Whether `plan` is what is stored already."""
        return sorted(self.timers.values(), key=lambda r: r.metric) == sorted(
            plan.timers, key=lambda r: r.metric
        ) and (self.sla_due_at, self.sla_state, self.sla_breached_at) == (
            plan.due_at,
            plan.state,
            plan.breached_at,
        )


@dataclass(frozen=True, slots=True)
class SlaPlan:
    timers: list[TimerRow]
    due_at: datetime | None
    state: str | None
    breached_at: datetime | None


@dataclass(frozen=True, slots=True)
class FiredTimer:
    workspace_id: str
    conversation_id: str
    metric: str
    kind: str  # "warning" | "breach"
    due_at: datetime | None
    policy_id: str | None
    late: bool


class SlaQueries(StoreBase):
    async def _get_sla_policy(
        self, conn: AsyncConnection, workspace_id: str, policy_id: str
    ) -> SlaPolicyRecord:
        p = t.sla_policies
        row = (
            await conn.execute(select(p).where(p.c.workspace_id == workspace_id, p.c.id == policy_id))
        ).first()
        if row is None:
            raise NotFound(f"no SLA policy with id {policy_id!r}")
        return _policy(row)

    async def get_sla_policy(self, workspace_id: str, policy_id: str) -> SlaPolicyRecord:
        async with self.read() as conn:
            return await self._get_sla_policy(conn, workspace_id, policy_id)

    async def list_sla_policies(self, workspace_id: str) -> list[SlaPolicyRecord]:
        """In the order they are tried: position, then name."""
        p = t.sla_policies
        async with self.read() as conn:
            rows = await conn.execute(
                select(p).where(p.c.workspace_id == workspace_id).order_by(p.c.position, p.c.name, p.c.id)
            )
            return [_policy(row) for row in rows]

    async def _check_calendar(
        self, conn: AsyncConnection, workspace_id: str, calendar_id: str | None
    ) -> None:
        if calendar_id is None:
            return
        cal = t.calendars
        found = await conn.execute(
            select(cal.c.id).where(cal.c.id == calendar_id, cal.c.workspace_id == workspace_id)
        )
        if found.first() is None:
            raise Invalid("calendar_id", f"no calendar with id {calendar_id!r} in this workspace")

    async def create_sla_policy(self, workspace_id: str, values: dict[str, Any]) -> SlaPolicyRecord:
        policy_id = new_id()
        now = utcnow()
        row = {k: v for k, v in values.items() if k in POLICY_FIELDS}
        row["enabled"] = int(bool(row.get("enabled", True)))
        try:
            async with self.write() as conn:
                await self._check_calendar(conn, workspace_id, row.get("calendar_id"))
                await conn.execute(
                    insert(t.sla_policies).values(
                        id=policy_id, workspace_id=workspace_id, created_at=now, updated_at=now, **row
                    )
                )
                return await self._get_sla_policy(conn, workspace_id, policy_id)
        except IntegrityError as exc:
            raise Conflict(f"another SLA policy of this workspace is named {values.get('name')!r}") from exc

    async def update_sla_policy(
        self, workspace_id: str, policy_id: str, values: dict[str, Any]
    ) -> SlaPolicyRecord:
        p = t.sla_policies
        row = {k: v for k, v in values.items() if k in POLICY_FIELDS}
        if "enabled" in row:
            row["enabled"] = int(bool(row["enabled"]))
        try:
            async with self.write() as conn:
                await self._get_sla_policy(conn, workspace_id, policy_id)
                if "calendar_id" in row:
                    await self._check_calendar(conn, workspace_id, row["calendar_id"])
                if row:
                    await conn.execute(
                        update(p).where(p.c.id == policy_id).values(updated_at=utcnow(), **row)
                    )
                return await self._get_sla_policy(conn, workspace_id, policy_id)
        except IntegrityError as exc:
            raise Conflict(f"another SLA policy of this workspace is named {values.get('name')!r}") from exc

    async def sla_retime_ids(self, workspace_id: str, after_id: str, limit: int) -> list[str]:
        """Conversations a policy change may retime, by id after `after_id`: every one not resolved,
        and resolved ones with a timer left."""
        c = t.conversations
        async with self.read() as conn:
            rows = await conn.execute(
                select(c.c.id)
                .where(
                    c.c.workspace_id == workspace_id,
                    c.c.id > after_id,
                    (c.c.status != ConversationStatus.RESOLVED.value) | c.c.sla_state.is_not(None),
                )
                .order_by(c.c.id)
                .limit(limit)
            )
            return [row.id for row in rows]

    async def delete_sla_policy(self, workspace_id: str, policy_id: str) -> None:
        """Delete it; conversations that named it fall back to the matching policies."""
        c, st = t.conversations, t.sla_timers
        async with self.write() as conn:
            await self._get_sla_policy(conn, workspace_id, policy_id)
            await conn.execute(update(c).where(c.c.sla_policy_id == policy_id).values(sla_policy_id=None))
            await conn.execute(update(st).where(st.c.policy_id == policy_id).values(policy_id=None))
            await conn.execute(delete(t.sla_policies).where(t.sla_policies.c.id == policy_id))

    async def sla_workspace_of(self, conversation_id: str) -> str | None:
        c = t.conversations
        async with self.read() as conn:
            return (await conn.execute(select(c.c.workspace_id).where(c.c.id == conversation_id))).scalar()

    async def refresh_sla(
        self, conversation_id: str, planner: Callable[[SlaFacts], SlaPlan]
    ) -> tuple[SlaPlan, SlaFacts] | None:
        """Recompute a conversation's timers from its facts (never bumps updated_at): (the plan, the facts
        it was made from); None when it does not exist. See refresh_sla_many."""
        return (await self.refresh_sla_many([conversation_id], lambda _ws, facts: planner(facts)))[0]

    async def refresh_sla_many(
        self, conversation_ids: Sequence[str], planner: Callable[[str, SlaFacts], SlaPlan]
    ) -> list[tuple[SlaPlan, SlaFacts] | None]:
        """Recompute the timers of these conversations (each as refresh_sla does) in one read and at
        most one write transaction; `planner(workspace id, facts)`. Planned on a read first: most
        messages change nothing (no policy applies, or the customer writes again while waiting), and
        then nothing is written, not even sla_checked_at (`mark_sla_checked` does that in bulk for the
        catch-up). Those that change are read again, planned and written in the write transaction."""
        ids = list(conversation_ids)
        read = await self.read_sync(lambda conn: _sla_facts(conn, ids))
        results: list[tuple[SlaPlan, SlaFacts] | None] = [None] * len(ids)
        stale: list[str] = []
        for index, conversation_id in enumerate(ids):
            facts = read.get(conversation_id)
            if facts is None:
                continue
            plan = planner(facts.workspace_id, facts)
            results[index] = (plan, facts)
            if not facts.unchanged_by(plan) and conversation_id not in stale:
                stale.append(conversation_id)
        if not stale:
            return results
        async with self.write() as conn:
            written = await conn.run_sync(lambda sync: _write_sla(sync, stale, planner))
        return [
            written.get(cid, None if cid in stale else result)
            for cid, result in zip(ids, results, strict=True)
        ]

    async def mark_sla_checked(self, checked: Sequence[tuple[str, datetime]]) -> None:
        """Record that the timers of these (conversation id, updated_at) are computed, unless the
        conversation changed since."""
        if not checked:
            return
        c = t.conversations
        async with self.write() as conn:
            await conn.execute(
                update(c)
                .where(
                    c.c.id == bindparam("b_id"), c.c.updated_at == bindparam("b_at", type_=t.UTCDateTime())
                )
                .values(sla_checked_at=bindparam("b_at", type_=t.UTCDateTime())),
                [{"b_id": cid, "b_at": at} for cid, at in checked],
            )

    async def sla_stale(self, after_id: str, limit: int) -> list[tuple[str, str]]:
        """(workspace id, conversation id) of conversations changed since their timers were computed,
        by id after `after_id`: every one not resolved, and resolved ones that still have a timer."""
        c = t.conversations
        async with self.read() as conn:
            rows = await conn.execute(
                select(c.c.workspace_id, c.c.id)
                .where(
                    c.c.id > after_id,
                    (c.c.status != ConversationStatus.RESOLVED.value) | c.c.sla_state.is_not(None),
                    c.c.sla_checked_at.is_(None) | (c.c.sla_checked_at < c.c.updated_at),
                )
                .order_by(c.c.id)
                .limit(limit)
            )
            return [(row.workspace_id, row.id) for row in rows]

    async def next_sla_fire_at(self) -> datetime | None:
        st = t.sla_timers
        async with self.read() as conn:
            value: datetime | None = (await conn.execute(select(func.min(st.c.next_fire_at)))).scalar()
            return value

    async def fire_sla_timers(self, now: datetime, limit: int = 500) -> list[FiredTimer]:
        """Claim the warnings and breaches due at `now` (each once, whoever else runs this) with their
        audit events; what was claimed."""
        st, c = t.sla_timers, t.conversations
        due_query = (
            select(st)
            .where(st.c.next_fire_at <= now)
            .order_by(st.c.next_fire_at)
            .limit(limit)
            .with_hint(st, "INDEXED BY ix_sla_timers_next_fire_at", "sqlite")
        )
        # A read first: this runs every second, and a write would take the lock from ingest each time.
        async with self.read() as conn:
            if (await conn.execute(due_query)).first() is None:
                return []
        fired: list[FiredTimer] = []
        stamp = literal(now, t.UTCDateTime())
        async with self.write() as conn:
            rows = (await conn.execute(due_query)).all()
            audit: list[dict[str, Any]] = []
            for row in rows:
                key = (st.c.conversation_id == row.conversation_id, st.c.metric == row.metric)
                same = (*key, st.c.started_at == row.started_at)
                if row.breached_at is None and row.due_at is not None and row.due_at <= now:
                    kind = "breach"
                    # A warning due at the same time (after downtime) is passed over: the breach says it.
                    claimed = await conn.execute(
                        update(st)
                        .where(*same, st.c.breached_at.is_(None))
                        .values(
                            breached_at=now, warned_at=func.coalesce(st.c.warned_at, stamp), next_fire_at=None
                        )
                    )
                    if claimed.rowcount:
                        await conn.execute(
                            update(c)
                            .where(c.c.id == row.conversation_id)
                            .values(
                                sla_state="breached",
                                sla_breached_at=func.coalesce(c.c.sla_breached_at, stamp),
                            )
                        )
                elif row.warned_at is None and row.warn_at is not None and row.warn_at <= now:
                    kind = "warning"
                    after = row.due_at if row.breached_at is None else None
                    claimed = await conn.execute(
                        update(st)
                        .where(*same, st.c.warned_at.is_(None))
                        .values(warned_at=now, next_fire_at=after)
                    )
                else:
                    # Nothing left to fire (a stale next_fire_at): leave the index.
                    await conn.execute(update(st).where(*same).values(next_fire_at=None))
                    continue
                if not claimed.rowcount:
                    continue
                event_type = "sla.breached" if kind == "breach" else "sla.warning"
                late = row.due_at is not None and kind == "breach" and (now - row.due_at).total_seconds() > 60
                fired.append(
                    FiredTimer(
                        row.workspace_id,
                        row.conversation_id,
                        row.metric,
                        kind,
                        row.due_at,
                        row.policy_id,
                        late,
                    )
                )
                audit.append(
                    {
                        "id": new_id(),
                        "workspace_id": row.workspace_id,
                        "conversation_id": row.conversation_id,
                        "actor": "system",
                        "type": event_type,
                        "data": {
                            "metric": row.metric,
                            "due_at": row.due_at.isoformat() if row.due_at is not None else None,
                            "policy_id": row.policy_id,
                            "late": late,
                        },
                        "created_at": now,
                    }
                )
            if audit:
                await conn.execute(insert(t.audit_events), audit)
        return fired

    async def sla_summaries(self, conversation_ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """conversation id -> (metric, policy id) of its timer due first (running before paused)."""
        st = t.sla_timers
        if not conversation_ids:
            return {}
        async with self.read() as conn:
            rows = await conn.execute(
                select(
                    st.c.conversation_id,
                    st.c.metric,
                    st.c.policy_id,
                    st.c.due_at,
                    st.c.paused_at,
                    st.c.started_at,
                ).where(st.c.conversation_id.in_(list(conversation_ids)), st.c.stopped_at.is_(None))
            )
            best: dict[str, tuple[Any, ...]] = {}
            for row in rows:
                rank = (row.due_at is None, row.due_at or row.paused_at or row.started_at)
                if row.conversation_id not in best or rank < best[row.conversation_id][0]:
                    best[row.conversation_id] = (rank, row.metric, row.policy_id)
            return {cid: (value[1], value[2]) for cid, value in best.items()}


def _sla_facts(conn: Connection, conversation_ids: Sequence[str]) -> dict[str, SlaFacts]:
    """The SLA facts of these conversations (those that exist), by id, in a handful of queries."""
    c, ca, tm, cal, p, st = (
        t.conversations,
        t.channel_accounts,
        t.teams,
        t.calendars,
        t.sla_policies,
        t.sla_timers,
    )
    ids = list(dict.fromkeys(conversation_ids))
    if not ids:
        return {}
    rows = conn.execute(
        select(c, ca.c.kind.label("channel_kind"), tm.c.calendar_id.label("team_calendar_id"))
        .join(ca, ca.c.id == c.c.channel_account_id)
        .outerjoin(tm, tm.c.id == c.c.team_id)
        .where(c.c.id.in_(ids))
    ).all()
    if not rows:
        return {}
    workspaces = sorted({row.workspace_id for row in rows})
    policies: dict[str, list[SlaPolicyRecord]] = {ws: [] for ws in workspaces}
    for r in conn.execute(
        select(p).where(p.c.workspace_id.in_(workspaces)).order_by(p.c.position, p.c.name, p.c.id)
    ):
        policies[r.workspace_id].append(_policy(r))
    calendars: dict[str, dict[str, dict[str, Any]]] = {ws: {} for ws in workspaces}
    for r in conn.execute(
        select(cal.c.id, cal.c.workspace_id, cal.c.hours).where(cal.c.workspace_id.in_(workspaces))
    ):
        calendars[r.workspace_id][r.id] = dict(r.hours)
    timers: dict[str, dict[str, TimerRow]] = {row.id: {} for row in rows}
    for r in conn.execute(select(st).where(st.c.conversation_id.in_(list(timers)))):
        timers[r.conversation_id][r.metric] = _timer(r)
    found: dict[str, SlaFacts] = {}
    for row in rows:
        known = calendars[row.workspace_id]
        found[row.id] = SlaFacts(
            conversation_id=row.id,
            workspace_id=row.workspace_id,
            channel_account_id=row.channel_account_id,
            channel_kind=row.channel_kind,
            status=row.status,
            priority=row.priority,
            labels=list(row.labels or []),
            team_calendar=known.get(row.team_calendar_id) if row.team_calendar_id else None,
            awaiting_since=row.awaiting_since,
            first_response_at=row.first_response_at,
            status_changed_at=row.status_changed_at,
            created_at=row.created_at,
            updated_at=row.updated_at,
            sla_policy_id=row.sla_policy_id,
            policies=policies[row.workspace_id],
            calendars=known,
            timers=timers[row.id],
            sla_due_at=row.sla_due_at,
            sla_state=row.sla_state,
            sla_breached_at=row.sla_breached_at,
            sla_checked_at=row.sla_checked_at,
        )
    return found


def _write_sla(
    conn: Connection, conversation_ids: Sequence[str], planner: Callable[[str, SlaFacts], SlaPlan]
) -> dict[str, tuple[SlaPlan, SlaFacts]]:
    """In a write transaction: read these conversations' facts again, plan and store their timers."""
    c, st = t.conversations, t.sla_timers
    written: dict[str, tuple[SlaPlan, SlaFacts]] = {}
    for conversation_id, facts in _sla_facts(conn, conversation_ids).items():
        plan = planner(facts.workspace_id, facts)
        old = sorted(facts.timers.values(), key=lambda r: r.metric)
        new = sorted(plan.timers, key=lambda r: r.metric)
        if old != new:
            conn.execute(delete(st).where(st.c.conversation_id == conversation_id))
            if new:
                conn.execute(
                    insert(st),
                    [
                        {
                            "conversation_id": conversation_id,
                            "workspace_id": facts.workspace_id,
                            "metric": r.metric,
                            "policy_id": r.policy_id,
                            "started_at": r.started_at,
                            "due_at": r.due_at,
                            "warn_at": r.warn_at,
                            "paused_at": r.paused_at,
                            "remaining_seconds": r.remaining_seconds,
                            "stopped_at": r.stopped_at,
                            "warned_at": r.warned_at,
                            "breached_at": r.breached_at,
                            "next_fire_at": r.next_fire_at,
                        }
                        for r in new
                    ],
                )
        conn.execute(
            update(c)
            .where(c.c.id == conversation_id)
            .values(
                sla_due_at=plan.due_at,
                sla_state=plan.state,
                sla_breached_at=plan.breached_at,
                sla_checked_at=facts.updated_at,
            )
        )
        written[conversation_id] = (plan, dataclasses.replace(facts, sla_checked_at=facts.updated_at))
    return written
