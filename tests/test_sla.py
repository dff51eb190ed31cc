"""SLA policies and timers through a real daemon on a controlled clock.

Customer messages go through the daemon's ingest pipeline; the SLA engine reacts in the daemon's
reaction pipeline; the scheduler is driven by explicit `fire_due(now)` calls (its loop runs too, on the
same standing clock). Due times: a Friday 17:00 message in company mode (Mon-Fri 8-16 in Budapest,
Monday a holiday) with 8 hours for the first response is due on Tuesday at 16:00; in marketplace mode
with 24 hours, on Saturday at 17:00.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from sqlalchemy import insert

from aggregator.daemon import Daemon
from aggregator.model import Event, MessageFlags, Role, new_id, utcnow
from aggregator.store import schema as t
from aggregator.store.inbox import ConversationChange
from support.api import ApiClient, user_with_token
from support.app import SECRET, add_channel, daemon_url, inbound, make_settings, sql, sql_write

pytestmark = pytest.mark.timeout(60)

BUDAPEST = ZoneInfo("Europe/Budapest")
FRIDAY_17 = datetime(2026, 12, 11, 17, 0, tzinfo=BUDAPEST).astimezone(UTC)
MONDAY = "2026-12-14"
TUESDAY_16 = datetime(2026, 12, 15, 16, 0, tzinfo=BUDAPEST).astimezone(UTC)
SATURDAY_17 = datetime(2026, 12, 12, 17, 0, tzinfo=BUDAPEST).astimezone(UTC)
COMPANY_HOURS = {
    "timezone": "Europe/Budapest",
    "weekly": {d: ["08:00-16:00"] for d in ("mon", "tue", "wed", "thu", "fri")},
    "closed": [MONDAY],
}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Site:
    daemon: Daemon
    clock: Clock
    admin: ApiClient
    agent: ApiClient
    agent_id: str
    workspace_id: str
    channel_id: str

    async def settle(self) -> None:
        await self.daemon.ingestor._events.join()
        assert self.daemon.engine is not None
        await self.daemon.engine.idle()

    async def customer(
        self, text: str = "hello, where is my order?", sender: str = "anna", **fields: Any
    ) -> str:
        result = await self.daemon.ingestor(
            inbound(self.channel_id, new_id(), sender=sender, text_body=text, **fields)
        )
        await self.settle()
        assert result.conversation_id is not None
        return result.conversation_id

    async def policy(self, **body: Any) -> dict[str, Any]:
        reply = await self.admin.post("/sla-policies", {"name": f"policy {new_id()}", **body})
        assert reply.status == 201, reply.body
        await self.settle()
        return dict(reply.body)

    async def calendar(self, hours: dict[str, Any]) -> str:
        calendar_id = new_id()
        now = utcnow()
        async with self.daemon.store.write() as conn:
            await conn.execute(
                insert(t.calendars).values(
                    id=calendar_id,
                    workspace_id=self.workspace_id,
                    name=f"calendar {calendar_id}",
                    hours=hours,
                    created_at=now,
                    updated_at=now,
                )
            )
        return calendar_id

    async def conversation(self, conversation_id: str) -> dict[str, Any]:
        reply = await self.agent.get(f"/conversations/{conversation_id}")
        assert reply.status == 200, reply.body
        return dict(reply.body)

    async def change(self, conversation_id: str, **fields: Any) -> None:
        """A change by an agent at the daemon's clock (the API would stamp it with the real time)."""
        change = ConversationChange(fields=set(fields), **fields)
        changed = await self.daemon.store.update_conversation(
            self.workspace_id, conversation_id, change, "user:test", self.clock()
        )
        await self.daemon._publish(
            Event(
                "conversation.updated",
                self.workspace_id,
                {"conversation_id": conversation_id, "changed": sorted(changed), "by": self.agent_id},
                conversation_id,
            )
        )
        await self.settle()

    async def reply(self, conversation_id: str, *, automatic: bool = False) -> None:
        await self.daemon.store.create_message(
            self.workspace_id,
            conversation_id,
            "We are on it.",
            user_id=None if automatic else self.agent_id,
            private=False,
            automatic=automatic,
            now=self.clock(),
        )
        await self.daemon._publish(
            Event(
                "message.created",
                self.workspace_id,
                {"conversation_id": conversation_id, "direction": "out", "kind": "message"},
                conversation_id,
            )
        )
        await self.settle()

    async def timers(self, conversation_id: str) -> dict[str, Any]:
        rows = await sql(
            self.daemon.store, "SELECT * FROM sla_timers WHERE conversation_id = :c", c=conversation_id
        )
        return {row.metric: row for row in rows}

    async def audit(self, conversation_id: str, kind: str) -> list[Any]:
        return await sql(
            self.daemon.store,
            "SELECT * FROM audit_events WHERE conversation_id = :c AND type = :k",
            c=conversation_id,
            k=kind,
        )


@asynccontextmanager
async def site_at(tmp_path: Path, clock: Clock) -> AsyncIterator[Site]:
    daemon = Daemon(make_settings(tmp_path), clock=clock)
    await daemon.start()
    try:
        assert daemon.bootstrap is not None
        workspace_id = daemon.bootstrap.workspace.id
        rows = await sql(
            daemon.store, "SELECT id FROM channel_accounts WHERE workspace_id = :w", w=workspace_id
        )
        channel_id = rows[0].id if rows else await add_channel(daemon.store, workspace_id, {"secret": SECRET})
        async with aiohttp.ClientSession() as http:
            base = daemon_url(daemon)
            agent_id, agent_token = await user_with_token(daemon.store, workspace_id, Role.AGENT)
            _, admin_token = await user_with_token(daemon.store, workspace_id, Role.ADMIN)
            yield Site(
                daemon,
                clock,
                ApiClient(http, base, admin_token),
                ApiClient(http, base, agent_token),
                agent_id,
                workspace_id,
                channel_id,
            )
    finally:
        await daemon.stop()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with site_at(tmp_path, Clock(FRIDAY_17)) as s:
        yield s


def at(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


async def test_company_mode_counts_business_hours_and_skips_the_holiday(site: Site) -> None:
    calendar_id = await site.calendar(COMPANY_HOURS)
    policy = await site.policy(first_response_minutes=8 * 60, mode="business_hours", calendar_id=calendar_id)
    conversation_id = await site.customer()
    conversation = await site.conversation(conversation_id)
    assert at(conversation["sla_due_at"]) == TUESDAY_16
    assert conversation["sla"]["metric"] == "first_response"
    assert conversation["sla"]["policy_id"] == policy["id"]
    assert conversation["sla"]["state"] == "running"


async def test_company_mode_uses_the_workspace_hours_without_a_calendar(site: Site) -> None:
    reply = await site.admin.patch("/workspace", {"hours": COMPANY_HOURS})
    assert reply.status == 200, reply.body
    site.daemon.workspace_settings.forget(site.workspace_id)
    await site.policy(first_response_minutes=8 * 60, mode="business_hours")
    conversation_id = await site.customer()
    assert at((await site.conversation(conversation_id))["sla_due_at"]) == TUESDAY_16


async def test_marketplace_mode_counts_around_the_clock(site: Site) -> None:
    await site.calendar(COMPANY_HOURS)
    await site.policy(first_response_minutes=24 * 60, mode="around_the_clock")
    conversation_id = await site.customer()
    assert at((await site.conversation(conversation_id))["sla_due_at"]) == SATURDAY_17


async def test_an_agent_reply_stops_the_response_timer_an_automatic_one_does_not(site: Site) -> None:
    await site.policy(first_response_minutes=60, next_response_minutes=30, mode="around_the_clock")
    conversation_id = await site.customer()
    await site.reply(conversation_id, automatic=True)
    conversation = await site.conversation(conversation_id)
    assert conversation["sla"]["state"] == "running"
    assert at(conversation["sla_due_at"]) == FRIDAY_17 + timedelta(minutes=60)

    site.clock.now = FRIDAY_17 + timedelta(minutes=10)
    await site.reply(conversation_id)
    conversation = await site.conversation(conversation_id)
    assert conversation["sla"] is None and conversation["sla_due_at"] is None
    timers = await site.timers(conversation_id)
    assert timers["first_response"].stopped_at is not None
    assert timers["first_response"].next_fire_at is None

    # The customer writes again: the next response is due 30 minutes later.
    site.clock.now = FRIDAY_17 + timedelta(minutes=20)
    await site.customer("and one more question")
    conversation = await site.conversation(conversation_id)
    assert conversation["sla"]["metric"] == "next_response"
    assert at(conversation["sla_due_at"]) == site.clock.now + timedelta(minutes=30)
    # Nothing fires for the answered first response, even long after its due time.
    site.clock.now = FRIDAY_17 + timedelta(minutes=45)
    assert await site.daemon.sla.fire_due(site.clock.now) == 0


async def test_automatic_mail_does_not_start_the_clock(site: Site) -> None:
    await site.policy(first_response_minutes=60, mode="around_the_clock")
    conversation_id = await site.customer("Out of office", flags=MessageFlags(auto_submitted=True))
    conversation = await site.conversation(conversation_id)
    assert conversation["sla"] is None


async def test_pending_pauses_the_resolution_timer_and_the_customer_restarts_it(site: Site) -> None:
    await site.policy(
        first_response_minutes=60,
        next_response_minutes=60,
        resolution_minutes=4 * 60,
        mode="around_the_clock",
    )
    conversation_id = await site.customer()
    site.clock.now = FRIDAY_17 + timedelta(minutes=30)
    await site.reply(conversation_id)
    await site.change(conversation_id, status="pending")
    conversation = await site.conversation(conversation_id)
    assert conversation["sla"]["state"] == "paused"
    assert conversation["sla"]["metric"] == "resolution"
    assert conversation["sla_due_at"] is None
    resolution = (await site.timers(conversation_id))["resolution"]
    assert resolution.remaining_seconds == pytest.approx(3.5 * 3600)
    assert resolution.next_fire_at is None
    # Paused: nothing fires even after the original due time.
    site.clock.now = FRIDAY_17 + timedelta(hours=5)
    assert await site.daemon.sla.fire_due(site.clock.now) == 0

    # Ten hours later the customer answers: the conversation reopens and the rest (3.5 h) counts.
    site.clock.now = FRIDAY_17 + timedelta(hours=10)
    await site.customer("here is the photo you asked for")
    conversation = await site.conversation(conversation_id)
    assert conversation["status"] == "open"
    timers = await site.timers(conversation_id)
    assert at(str(timers["resolution"].due_at)) == site.clock.now + timedelta(hours=3.5)
    assert at(str(timers["next_response"].due_at)) == site.clock.now + timedelta(hours=1)
    assert conversation["sla"]["state"] == "running"

    await site.change(conversation_id, status="resolved")
    conversation = await site.conversation(conversation_id)
    assert conversation["sla"] is None
    site.clock.now = FRIDAY_17 + timedelta(days=3)
    assert await site.daemon.sla.fire_due(site.clock.now) == 0


async def test_warning_then_breach_each_fire_once(site: Site) -> None:
    await site.policy(first_response_minutes=60, warn_before_minutes=15, mode="around_the_clock")
    conversation_id = await site.customer()
    received: list[Event] = []
    site.daemon.bus.listeners.append(received.append)
    site.clock.now = FRIDAY_17 + timedelta(minutes=44)
    assert await site.daemon.sla.fire_due(site.clock.now) == 0
    site.clock.now = FRIDAY_17 + timedelta(minutes=45)
    assert await site.daemon.sla.fire_due(site.clock.now) == 1
    assert await site.daemon.sla.fire_due(site.clock.now) == 0
    site.clock.now = FRIDAY_17 + timedelta(minutes=60)
    assert await site.daemon.sla.fire_due(site.clock.now) == 1
    assert await site.daemon.sla.fire_due(site.clock.now + timedelta(hours=1)) == 0
    await site.settle()
    fired = [e for e in received if e.type.startswith("sla.")]
    assert [e.type for e in fired] == ["sla.warning", "sla.breached"]
    assert fired[1].data["metric"] == "first_response"
    assert [e.data["late"] for e in fired] == [False, False]
    assert fired[1].conversation_id == conversation_id
    conversation = await site.conversation(conversation_id)
    assert conversation["sla"]["state"] == "breached"
    assert at(conversation["sla"]["breached_at"]) == site.clock.now
    assert len(await site.audit(conversation_id, "sla.breached")) == 1
    assert len(await site.audit(conversation_id, "sla.warning")) == 1


async def test_timers_survive_a_restart_and_a_breach_during_downtime_fires_once(tmp_path: Path) -> None:
    clock = Clock(FRIDAY_17)
    async with site_at(tmp_path, clock) as site:
        await site.policy(first_response_minutes=24 * 60, mode="around_the_clock", warn_before_minutes=60)
        conversation_id = await site.customer()
        before = await site.timers(conversation_id)
    # Down for two days: the warning and the breach both fell due.
    clock.now = FRIDAY_17 + timedelta(days=2)
    async with site_at(tmp_path, clock) as site:
        timers = await site.timers(conversation_id)
        assert timers["first_response"].due_at == before["first_response"].due_at
        assert len(await site.audit(conversation_id, "sla.breached")) == 1
        # The breach says it; the warning that came due with it is not sent late.
        assert await site.audit(conversation_id, "sla.warning") == []
        assert await site.daemon.sla.fire_due(clock.now) == 0
        assert (await site.conversation(conversation_id))["sla"]["state"] == "breached"
    async with site_at(tmp_path, clock) as site:
        assert len(await site.audit(conversation_id, "sla.breached")) == 1


async def test_a_change_while_down_is_caught_up_at_start(tmp_path: Path) -> None:
    clock = Clock(FRIDAY_17)
    async with site_at(tmp_path, clock) as site:
        await site.policy(first_response_minutes=60, mode="around_the_clock")
        conversation_id = await site.customer()
        # Answered while the SLA engine does not hear of it (as if its event were lost).
        clock.now = FRIDAY_17 + timedelta(minutes=10)
        await site.daemon.store.create_message(
            site.workspace_id, conversation_id, "hi", user_id=site.agent_id, private=False, now=clock()
        )
    clock.now = FRIDAY_17 + timedelta(hours=2)
    async with site_at(tmp_path, clock) as site:
        assert (await site.conversation(conversation_id))["sla"] is None
        assert await site.audit(conversation_id, "sla.breached") == []


async def test_filters_due_within_and_breached(tmp_path: Path) -> None:
    # The API's filter counts from the real time: the daemon's clock starts there too.
    clock = Clock(utcnow())
    async with site_at(tmp_path, clock) as site:
        await site.policy(first_response_minutes=60, mode="around_the_clock")
        soon = await site.customer(sender="soon")
        clock.now = clock.now - timedelta(hours=3)
        late = await site.customer(sender="late")
        clock.now = utcnow()
        # Fired here, or by the scheduler's own loop woken meanwhile: once either way.
        await site.daemon.sla.fire_due(clock.now)
        assert len(await site.audit(late, "sla.breached")) == 1

        async def listed(**params: str) -> set[str]:
            reply = await site.agent.get("/conversations", **params)
            assert reply.status == 200, reply.body
            return {item["id"] for item in reply.body["items"]}

        assert await listed(sla_due_within="90") == {soon}
        assert await listed(sla_due_within="30") == set()
        assert await listed(sla_breached="true") == {late}
        assert await listed() == {soon, late}


async def test_policy_choice_by_kind_priority_label_and_explicit(site: Site) -> None:
    email = await site.policy(position=0, first_response_minutes=10, conditions={"channel_kinds": ["email"]})
    urgent = await site.policy(position=1, first_response_minutes=20, conditions={"priorities": ["urgent"]})
    amazon = await site.policy(position=2, first_response_minutes=30, conditions={"labels": ["amazon"]})
    by_kind = await site.policy(
        position=3, first_response_minutes=40, conditions={"channel_kinds": ["api"]}, mode="around_the_clock"
    )
    chosen = await site.policy(position=4, first_response_minutes=50, enabled=False)
    conversation_id = await site.customer()

    async def policy_of() -> str:
        return str((await site.conversation(conversation_id))["sla"]["policy_id"])

    assert await policy_of() == by_kind["id"]
    await site.change(conversation_id, labels=["amazon"])
    assert await policy_of() == amazon["id"]
    await site.change(conversation_id, priority="urgent")
    assert await policy_of() == urgent["id"]
    # Explicit through the API (a rule or an agent), even a disabled policy.
    reply = await site.agent.patch(f"/conversations/{conversation_id}", {"sla_policy_id": chosen["id"]})
    assert reply.status == 200, reply.body
    assert reply.body["sla_policy_id"] == chosen["id"]
    await site.settle()
    assert await policy_of() == chosen["id"]
    reply = await site.agent.patch(f"/conversations/{conversation_id}", {"sla_policy_id": None})
    assert reply.status == 200
    await site.settle()
    assert await policy_of() == urgent["id"]
    assert email["id"] != await policy_of()
    reply = await site.agent.patch(f"/conversations/{conversation_id}", {"sla_policy_id": "nope"})
    assert reply.status == 400 and reply.error_code == "invalid_field"


async def test_a_policy_change_retimes_open_conversations(site: Site) -> None:
    policy = await site.policy(first_response_minutes=60, mode="around_the_clock")
    conversation_id = await site.customer()
    reply = await site.admin.patch(f"/sla-policies/{policy['id']}", {"first_response_minutes": 120})
    assert reply.status == 200, reply.body
    await site.settle()
    assert at((await site.conversation(conversation_id))["sla_due_at"]) == FRIDAY_17 + timedelta(hours=2)
    assert (await site.admin.delete(f"/sla-policies/{policy['id']}")).status == 204
    await site.settle()
    assert (await site.conversation(conversation_id))["sla"] is None


async def test_policy_crud_and_its_errors(site: Site) -> None:
    created = await site.policy(
        name="Amazon",
        first_response_minutes=24 * 60,
        mode="around_the_clock",
        conditions={"channel_kinds": ["amazon"], "labels": ["amazon"]},
        warn_before_minutes=60,
    )
    assert created["conditions"] == {
        "channel_account_ids": [],
        "channel_kinds": ["amazon"],
        "priorities": [],
        "labels": ["amazon"],
    }
    assert created["first_response_minutes"] == 24 * 60 and created["resolution_minutes"] is None
    listed = await site.agent.get("/sla-policies")
    assert [p["id"] for p in listed.body["items"]] == [created["id"]]
    assert (await site.agent.get(f"/sla-policies/{created['id']}")).body["name"] == "Amazon"

    twice = await site.admin.post("/sla-policies", {"name": "Amazon", "first_response_minutes": 5})
    assert twice.status == 409
    no_target = await site.admin.post("/sla-policies", {"name": "Empty"})
    assert no_target.status == 400 and "at least one target" in no_target.body["error"]["message"]
    late_warning = await site.admin.post(
        "/sla-policies", {"name": "W", "first_response_minutes": 30, "warn_before_minutes": 30}
    )
    assert late_warning.status == 400 and late_warning.body["error"]["field"] == "warn_before_minutes"
    no_calendar = await site.admin.post(
        "/sla-policies", {"name": "C", "first_response_minutes": 30, "calendar_id": "missing"}
    )
    assert no_calendar.status == 400 and no_calendar.body["error"]["field"] == "calendar_id"
    bad_mode = await site.admin.post(
        "/sla-policies", {"name": "M", "first_response_minutes": 30, "mode": "x"}
    )
    assert bad_mode.status == 400
    by_agent = await site.agent.post("/sla-policies", {"name": "A", "first_response_minutes": 30})
    assert by_agent.status == 403
    assert (await site.admin.get("/sla-policies/missing")).status == 404

    patched = await site.admin.patch(
        f"/sla-policies/{created['id']}", {"name": "Amazon 24h", "enabled": False}
    )
    assert patched.status == 200 and patched.body["name"] == "Amazon 24h" and patched.body["enabled"] is False
    removed = await site.admin.patch(f"/sla-policies/{created['id']}", {"first_response_minutes": None})
    assert removed.status == 400
    null_name = await site.admin.patch(f"/sla-policies/{created['id']}", {"name": None})
    assert null_name.status == 400
    assert (await site.admin.delete(f"/sla-policies/{created['id']}")).status == 204
    assert (await site.admin.delete(f"/sla-policies/{created['id']}")).status == 404


async def test_refresh_is_idempotent_and_leaves_updated_at(site: Site) -> None:
    await site.policy(first_response_minutes=60, resolution_minutes=600, mode="around_the_clock")
    conversation_id = await site.customer()
    before = await sql(site.daemon.store, "SELECT * FROM conversations WHERE id = :c", c=conversation_id)
    timers = await site.timers(conversation_id)
    site.clock.now = FRIDAY_17 + timedelta(minutes=5)
    await site.daemon.sla.refresh(conversation_id)
    await site.daemon.sla.refresh(conversation_id)
    after = await sql(site.daemon.store, "SELECT * FROM conversations WHERE id = :c", c=conversation_id)
    assert after == before
    assert before[0].sla_checked_at == before[0].updated_at
    assert await site.timers(conversation_id) == timers


async def test_a_burst_is_timed_together_and_one_bad_conversation_holds_up_no_other(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    await site.policy(first_response_minutes=60, mode="around_the_clock")
    # Messages of a burst, as the engine takes them from its queue: one batch, one commit.
    ids = [await site.customer(sender=f"burst{n}") for n in range(3)]
    await sql_write(site.daemon.store, "DELETE FROM sla_timers")
    await sql_write(site.daemon.store, "UPDATE conversations SET sla_due_at = NULL, sla_state = NULL")
    events = [
        Event("message.created", site.workspace_id, {"conversation_id": c, "direction": "in"}, c)
        for c in [*ids, ids[0], "no-such-conversation"]
    ]
    # A conversation whose facts cannot be read (its labels are not JSON): its batch fails, and is
    # done again one by one.
    broken = await site.customer(sender="broken")
    await sql_write(site.daemon.store, "UPDATE conversations SET labels = '{not json' WHERE id = :c", c=broken)
    events.insert(1, Event("message.created", site.workspace_id, {"conversation_id": broken}, broken))
    with caplog.at_level(logging.ERROR, logger="aggregator.sla"):
        await site.daemon.sla.handle_batch(events)
    assert [r.getMessage() for r in caplog.records if r.name == "aggregator.sla"] == [
        f"SLA timers of conversation {broken} not computed"
    ]
    for conversation_id in ids:
        timers = await site.timers(conversation_id)
        assert at(timers["first_response"].due_at) == FRIDAY_17 + timedelta(minutes=60)
        assert (await site.conversation(conversation_id))["sla"]["state"] == "running"
