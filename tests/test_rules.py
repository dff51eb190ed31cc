"""Automation rules through a real daemon on a controlled clock: every condition and action, the
order rules run in, the loop guard, the issue's seed rules, the time-based no_reply rules, recovery at
start, rules from the config file, and the /api/v1/rules endpoints (validation, permissions)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aggregator.config import ConfigError, load_settings
from aggregator.daemon import Daemon
from aggregator.model import Event, MessageFlags, Role, new_id
from aggregator.workspace import WorkspaceSettings
from support.api import ApiClient, user_with_token
from support.app import (
    SECRET,
    add_channel,
    daemon_url,
    inbound,
    make_settings,
    sql,
    sql_write,
    subscribed,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

TUESDAY_10_BUDAPEST = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
SATURDAY_NOON_BUDAPEST = datetime(2026, 12, 12, 11, 0, tzinfo=UTC)
HUNGARIAN_REFUND = (
    "Jó napot kívánok! Szeretnék REFUND-ot kérni az Order #12345 rendelésemre, mert a termék sajnos "
    "hibás volt, és egyáltalán nem működik. Köszönöm szépen a segítségüket."
)
BUDAPEST_HOURS = {
    "timezone": "Europe/Budapest",
    "weekly": {d: ["08:00-16:00"] for d in ("mon", "tue", "wed", "thu", "fri")},
}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Site:
    daemon: Daemon
    clock: Clock
    workspace_id: str
    channel: str  # an API channel account named "shop"
    amazon: str  # an API channel account named "amazon"
    admin: ApiClient
    agent: ApiClient
    agent_id: str
    _n: int = field(default=0)

    async def rule(self, **body: Any) -> dict[str, Any]:
        self._n += 1
        body.setdefault("name", f"rule {self._n}")
        reply = await self.admin.post("/rules", body)
        assert reply.status == 201, reply.body
        return dict(reply.body)

    async def settle(self) -> None:
        """Every committed message published, and every event (and those it caused) handled."""
        assert self.daemon.engine is not None
        for _ in range(3):
            await self.daemon.ingestor._events.join()
            await self.daemon.engine.idle()

    async def message(
        self, text: str = "hello", *, channel: str | None = None, sender: str | None = None, **fields: Any
    ) -> str:
        """A customer message; the id of its conversation, once every rule has run."""
        result = await self.daemon.ingestor(
            inbound(
                channel or self.channel, new_id(), sender=sender or new_id()[-10:], text_body=text, **fields
            )
        )
        await self.settle()
        return result.conversation_id

    async def answer(self, conversation_id: str, text: str) -> None:
        """An agent's reply at the daemon's time (the API stamps the real time)."""
        await self.daemon.store.create_message(
            self.workspace_id, conversation_id, text, user_id=self.agent_id, private=False, now=self.clock()
        )

    async def conversation(self, conversation_id: str) -> Any:
        rows = await sql(self.daemon.store, "SELECT * FROM conversations WHERE id = :id", id=conversation_id)
        return rows[0]

    async def labels(self, conversation_id: str) -> set[str]:
        row = await self.conversation(conversation_id)
        return set(json.loads(row.labels) if isinstance(row.labels, str) else row.labels)

    async def firings(self, conversation_id: str) -> list[dict[str, Any]]:
        rows = await sql(
            self.daemon.store,
            "SELECT actor, data FROM audit_events WHERE conversation_id = :c AND type = 'rule.fired' ORDER BY id",
            c=conversation_id,
        )
        return [{"actor": r.actor, **json.loads(r.data)} for r in rows]

    async def configure(self, **changes: Any) -> None:
        current = await self.daemon.store.workspace_settings(self.workspace_id)
        settings = WorkspaceSettings.model_validate({**current, **changes})
        await self.daemon.store.update_workspace(self.workspace_id, settings=settings.model_dump(mode="json"))
        self.daemon.workspace_settings.forget(self.workspace_id)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    clock = Clock(TUESDAY_10_BUDAPEST)
    daemon = Daemon(make_settings(tmp_path), clock=clock)
    await daemon.start()
    try:
        async with aiohttp.ClientSession() as http:
            assert daemon.bootstrap is not None
            ws = daemon.bootstrap.workspace.id
            shop = await add_channel(daemon.store, ws, {"secret": SECRET}, name="shop")
            amazon = await add_channel(daemon.store, ws, {"secret": SECRET}, name="amazon")
            _, admin_token = await user_with_token(daemon.store, ws, Role.ADMIN)
            agent_id, agent_token = await user_with_token(daemon.store, ws, Role.AGENT)
            base = daemon_url(daemon)
            yield Site(
                daemon,
                clock,
                ws,
                shop,
                amazon,
                ApiClient(http, base, admin_token),
                ApiClient(http, base, agent_token),
                agent_id,
            )
    finally:
        await daemon.stop()


# Conditions ---------------------------------------------------------------------------------------


async def test_channel_language_and_text_conditions(site: Site) -> None:
    def label(name: str) -> list[dict[str, Any]]:
        return [{"type": "add_label", "label": name}]

    await site.rule(
        event="message.received",
        conditions=[{"type": "channel", "channel": "amazon"}],
        actions=label("by-name"),
    )
    await site.rule(
        event="message.received",
        conditions=[{"type": "channel", "channel": site.amazon}],
        actions=label("by-id"),
    )
    await site.rule(
        event="message.received", conditions=[{"type": "channel", "channel": "api"}], actions=label("by-kind")
    )
    await site.rule(
        event="message.received", conditions=[{"type": "language", "language": "hu"}], actions=label("hu")
    )
    await site.rule(
        event="message.received",
        conditions=[{"type": "text_contains", "text": "REFUND"}],
        actions=label("refund"),
    )
    await site.rule(
        event="message.received",
        conditions=[{"type": "text_matches", "pattern": r"order\s*#?\d{5}\b"}],
        actions=label("order"),
    )

    plain = await site.message("Hello, where is my parcel?", language_hint="en")
    assert await site.labels(plain) == {"by-kind"}
    amazon = await site.message(HUNGARIAN_REFUND, channel=site.amazon, language_hint="hu-HU")
    assert await site.labels(amazon) == {"by-name", "by-id", "by-kind", "hu", "refund", "order"}


async def test_label_priority_assignee_and_contact_conditions(site: Site) -> None:
    rules = [
        ([{"type": "label", "label": "vip"}], "has-vip"),
        ([{"type": "label", "label": "vip", "has": False}], "no-vip"),
        ([{"type": "priority", "priority": "urgent"}], "urgent"),
        ([{"type": "assignee", "assignee": "none"}], "unassigned"),
        ([{"type": "assignee", "assignee": "any"}], "assigned"),
        ([{"type": "assignee", "assignee": site.agent_id}], "to-agent"),
        ([{"type": "contact_field", "field": "name", "equals": "anna kovács"}], "anna"),
        ([{"type": "contact_field", "field": "tier", "contains": "gold"}], "gold"),
    ]
    for conditions, name in rules:
        await site.rule(
            event="message.received", conditions=conditions, actions=[{"type": "add_label", "label": name}]
        )

    first = await site.message("hi", sender="anna", name="Anna Kovács")
    assert await site.labels(first) == {"no-vip", "unassigned", "anna"}

    # The same customer writes again after an agent took it, made it urgent and marked it vip.
    reply = await site.agent.patch(
        f"/conversations/{first}", {"labels": ["vip"], "priority": "urgent", "assignee_id": site.agent_id}
    )
    assert reply.status == 200, reply.body
    row = await site.conversation(first)
    await sql_write(
        site.daemon.store,
        "UPDATE contacts SET attributes = :a WHERE id = :id",
        a='{"tier": "Gold plus"}',
        id=row.contact_id,
    )
    again = await site.message("hi again", sender="anna", name="Anna Kovács")
    assert again == first
    assert await site.labels(first) == {
        "vip",
        "anna",
        "has-vip",
        "urgent",
        "assigned",
        "to-agent",
        "gold",
    }


async def test_business_hours_condition_workspace_and_calendar(site: Site) -> None:
    await site.configure(hours=BUDAPEST_HOURS)
    night_calendar = new_id()
    await sql_write(
        site.daemon.store,
        "INSERT INTO calendars (id, workspace_id, name, hours, created_at, updated_at) "
        "VALUES (:id, :ws, 'nights', :hours, '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')",
        id=night_calendar,
        ws=site.workspace_id,
        hours=json.dumps(
            {
                "timezone": "Europe/Budapest",
                "weekly": {d: ["20:00-08:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
            }
        ),
    )
    for when in ("inside", "outside"):
        await site.rule(
            event="conversation.created",
            conditions=[{"type": "business_hours", "when": when}],
            actions=[{"type": "add_label", "label": when}],
        )
    await site.rule(
        event="conversation.created",
        conditions=[{"type": "business_hours", "when": "inside", "calendar_id": night_calendar}],
        actions=[{"type": "add_label", "label": "night-shift"}],
    )
    assert await site.labels(await site.message()) == {"inside"}
    site.clock.now = SATURDAY_NOON_BUDAPEST
    assert await site.labels(await site.message()) == {"outside"}
    site.clock.now = SATURDAY_NOON_BUDAPEST + timedelta(hours=11)  # 23:00 in Budapest
    assert await site.labels(await site.message()) == {"outside", "night-shift"}
    # A team with a calendar (every channel account in it: the night shift's): its conversations are
    # judged by that calendar, others by the workspace's hours.
    await site.daemon.store.create_team(
        site.workspace_id, "Nights", [], [], channel_account_ids=[site.channel], calendar_id=night_calendar
    )
    assert await site.labels(await site.message()) == {"inside", "night-shift"}


# Actions ------------------------------------------------------------------------------------------


async def test_conversation_actions_and_the_event_they_publish(site: Site) -> None:
    team = await site.daemon.store.create_team(site.workspace_id, "Budapest", [], [])
    await site.rule(
        event="conversation.created",
        actions=[
            {"type": "assign_team", "team_id": "Budapest"},
            {"type": "assign_agent", "user_id": site.agent_id},
            {"type": "add_label", "label": "new"},
            {"type": "add_label", "label": "drop-me"},
            {"type": "remove_label", "label": "drop-me"},
            {"type": "set_priority", "priority": "high"},
            {"type": "add_note", "text": "Assigned by the intake rule"},
            {"type": "snooze", "hours": 2},
        ],
    )
    async with subscribed(site.daemon.bus, site.workspace_id) as events:
        conversation_id = await site.message()
        seen = []
        while True:
            event = await anext(events)
            seen.append(event)
            if event.type == "conversation.updated":
                break
    row = await site.conversation(conversation_id)
    assert (row.team_id, row.assignee_id, row.assigned_by, row.priority, row.status) == (
        team.id,
        site.agent_id,
        "rule",
        "high",
        "snoozed",
    )
    assert row.snoozed_until.startswith("2026-12-08T11:00:00")
    assert await site.labels(conversation_id) == {"new"}
    notes = await sql(
        site.daemon.store,
        "SELECT text, kind FROM messages WHERE conversation_id = :c AND kind = 'note'",
        c=conversation_id,
    )
    assert [n.text for n in notes] == ["Assigned by the intake rule"]
    updated = seen[-1]
    (rule,) = (await site.admin.get("/rules")).body["items"]
    assert updated.data["by"] == f"rule:{rule['id']}"
    assert updated.data["rule_chain"] == [rule["id"]]
    assert set(updated.data["changed"]) >= {
        "team_id",
        "assignee_id",
        "labels",
        "priority",
        "status",
        "snoozed_until",
    }
    (fired,) = await site.firings(conversation_id)
    assert fired["actor"] == f"rule:{rule['id']}"
    assert fired["event"] == "conversation.created"
    assert [a["type"] for a in fired["actions"]] == [a["type"] for a in rule["actions"]]
    audit = await sql(
        site.daemon.store,
        "SELECT actor FROM audit_events WHERE conversation_id = :c AND type = 'conversation.updated'",
        c=conversation_id,
    )
    assert {a.actor for a in audit} == {f"rule:{rule['id']}"}


async def test_resolve_and_sla_policy_actions(site: Site) -> None:
    policy = new_id()
    await sql_write(
        site.daemon.store,
        "INSERT INTO sla_policies (id, workspace_id, name, position, enabled, conditions, first_response_seconds, "
        "mode, created_at, updated_at) VALUES (:id, :ws, 'Amazon 24h', 0, 1, '{}', 86400, 'around_the_clock', "
        "'2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')",
        id=policy,
        ws=site.workspace_id,
    )
    await site.rule(
        event="message.received",
        conditions=[{"type": "text_contains", "text": "thanks, solved"}],
        actions=[{"type": "resolve"}],
    )
    await site.rule(event="message.received", actions=[{"type": "set_sla_policy", "policy_id": policy}])
    conversation_id = await site.message("ok, thanks, solved!")
    row = await site.conversation(conversation_id)
    assert (row.status, row.sla_policy_id) == ("resolved", policy)


async def test_reply_template_is_automatic_and_queued(site: Site) -> None:
    await site.daemon.store.create_template(
        site.workspace_id,
        "Got it",
        [{"language": "en", "subject": None, "body": "Hello {{ contact.name }}, we have your message."}],
        shortcode="got-it",
    )
    await site.rule(event="conversation.created", actions=[{"type": "reply_template", "template": "got-it"}])
    conversation_id = await site.message("where is my order?", name="Bob", language_hint="en")
    rows = await sql(
        site.daemon.store,
        "SELECT m.text, m.flags, o.id AS outbox_id FROM messages m JOIN outbox o ON o.message_id = m.id "
        "WHERE m.conversation_id = :c AND m.direction = 'out'",
        c=conversation_id,
    )
    assert [(r.text, json.loads(r.flags)) for r in rows] == [
        ("Hello Bob, we have your message.", ["automatic"])
    ]
    row = await site.conversation(conversation_id)
    assert row.first_response_at is None
    outbox_id = rows[0].outbox_id
    await wait_until(lambda: _outbox_left_queue(site, outbox_id), what="the outbox to take the rule's reply")

    # An auto-responder gets no automatic answer (two of them would answer each other forever).
    robot = await site.message("I am out of office", flags=MessageFlags(auto_submitted=True))
    (fired,) = await site.firings(robot)
    assert fired["actions"][0]["result"].startswith("skipped:")
    assert (
        await sql(
            site.daemon.store,
            "SELECT id FROM messages WHERE conversation_id = :c AND direction = 'out'",
            c=robot,
        )
        == []
    )


async def _outbox_left_queue(site: Site, outbox_id: str) -> bool:
    rows = await sql(site.daemon.store, "SELECT status, attempts FROM outbox WHERE id = :id", id=outbox_id)
    return bool(rows[0].attempts) or rows[0].status != "queued"


@dataclass
class Hook:
    """A webhook receiver: records each request's body and signature header."""

    received: list[tuple[dict[str, Any], str | None]] = field(default_factory=list)
    status: int = 200
    # Per request: whether it was signed with "hook-secret".
    signed: list[bool] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.received.append((json.loads(raw), request.headers.get("X-Aggregator-Signature")))
        expected = "sha256=" + hmac.new(b"hook-secret", raw, hashlib.sha256).hexdigest()
        self.valid = request.headers.get("X-Aggregator-Signature") == expected
        self.signed.append(self.valid)
        return web.json_response({}, status=self.status)


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    receiver = Hook()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield receiver, str(server.make_url("/hook"))
    finally:
        await server.close()


async def test_webhook_signed_and_failures_in_the_audit_trail(site: Site, hook: tuple[Hook, str]) -> None:
    receiver, url = hook
    rule = await site.rule(
        event="message.received", actions=[{"type": "webhook", "url": url, "secret": "hook-secret"}]
    )
    conversation_id = await site.message("hello there")
    ((body, signature),) = receiver.received
    assert signature is not None and receiver.valid
    assert body["rule"] == {"id": rule["id"], "name": rule["name"]}
    assert body["event"]["type"] == "message.received"
    assert body["conversation"]["id"] == conversation_id
    assert body["conversation"]["channel"]["name"] == "shop"

    receiver.status = 500
    await site.message("hello again", sender="other")
    assert len(receiver.received) == 2
    failed = await sql(
        site.daemon.store, "SELECT data FROM audit_events WHERE type = 'rule.fired' ORDER BY id DESC LIMIT 1"
    )
    (action,) = json.loads(failed[0].data)["actions"]
    assert action["result"].startswith("failed:") and "500" in action["result"]

    # Nobody listening: logged in the audit trail as well, the next actions still run.
    await site.admin.patch(
        f"/rules/{rule['id']}",
        {
            "actions": [
                {"type": "webhook", "url": "http://127.0.0.1:9/nothing"},
                {"type": "add_label", "label": "after"},
            ]
        },
    )
    third = await site.message("and again", sender="third")
    (fired,) = await site.firings(third)
    assert fired["actions"][0]["result"].startswith("failed:")
    assert await site.labels(third) == {"after"}


async def _stored_actions(daemon: Daemon, rule_id: str) -> str:
    """The rules row's actions as the database holds them (JSON text)."""
    (row,) = await sql(daemon.store, "SELECT actions FROM rules WHERE id = :id", id=rule_id)
    return row.actions if isinstance(row.actions, str) else json.dumps(row.actions)


def _database_bytes(daemon: Daemon) -> bytes:
    """The database file and its journal, as they are on disk."""
    data_dir = daemon.settings.data_dir
    return b"".join(path.read_bytes() for path in sorted(data_dir.glob("aggregator.db*")))


async def test_webhook_secret_is_write_only_and_stored_encrypted(site: Site, hook: tuple[Hook, str]) -> None:
    receiver, url = hook
    rule = await site.rule(
        event="message.received", actions=[{"type": "webhook", "url": url, "secret": "hook-secret"}]
    )
    assert rule["actions"] == [{"type": "webhook", "url": url, "secret_set": True}]
    answers = [
        rule,
        (await site.admin.get(f"/rules/{rule['id']}")).body,
        (await site.admin.get("/rules")).body,
    ]
    for answer in answers:
        assert "hook-secret" not in json.dumps(answer) and '"secret"' not in json.dumps(answer)
    stored = await _stored_actions(site.daemon, rule["id"])
    assert "hook-secret" not in stored and "secret_encrypted" in stored
    assert b"hook-secret" not in _database_bytes(site.daemon)
    await site.message("hello there")
    assert receiver.signed == [True]

    # A PATCH of the actions that leaves the secret out keeps it (same url).
    kept = await site.admin.patch(
        f"/rules/{rule['id']}",
        {"actions": [{"type": "add_label", "label": "hooked"}, {"type": "webhook", "url": url}]},
    )
    assert kept.status == 200, kept.body
    assert kept.body["actions"][1] == {"type": "webhook", "url": url, "secret_set": True}
    assert "hook-secret" not in await _stored_actions(site.daemon, rule["id"])
    await site.message("hello again", sender="other")
    assert receiver.signed == [True, True]

    # What an answer shows is not a body: secret_set is refused, naming it.
    echoed = await site.admin.patch(f"/rules/{rule['id']}", {"actions": kept.body["actions"]})
    assert (echoed.status, echoed.error_code) == (400, "unknown_field")
    assert echoed.body["error"]["field"] == "actions.1.webhook.secret_set"

    # Another url does not inherit the secret; null removes it; a new rule without one has none.
    moved = await site.admin.patch(
        f"/rules/{rule['id']}", {"actions": [{"type": "webhook", "url": url + "?moved"}]}
    )
    assert moved.body["actions"] == [{"type": "webhook", "url": url + "?moved", "secret_set": False}]
    await site.admin.patch(
        f"/rules/{rule['id']}", {"actions": [{"type": "webhook", "url": url, "secret": "hook-secret"}]}
    )
    removed = await site.admin.patch(
        f"/rules/{rule['id']}", {"actions": [{"type": "webhook", "url": url, "secret": None}]}
    )
    assert removed.body["actions"] == [{"type": "webhook", "url": url, "secret_set": False}]
    await site.message("unsigned now", sender="third")
    assert receiver.received[-1][1] is None
    bare = await site.rule(event="conversation.created", actions=[{"type": "webhook", "url": url}])
    assert bare["actions"] == [{"type": "webhook", "url": url, "secret_set": False}]
    assert "secret" not in await _stored_actions(site.daemon, bare["id"])


async def test_a_plain_secret_stored_before_encryption_still_signs(
    site: Site, hook: tuple[Hook, str]
) -> None:
    receiver, url = hook
    rule = await site.rule(event="message.received", actions=[{"type": "webhook", "url": url}])
    legacy = json.dumps([{"type": "webhook", "url": url, "secret": "hook-secret"}])
    await sql_write(
        site.daemon.store, "UPDATE rules SET actions = :a WHERE id = :id", a=legacy, id=rule["id"]
    )
    shown = (await site.admin.get(f"/rules/{rule['id']}")).body
    assert shown["actions"] == [{"type": "webhook", "url": url, "secret_set": True}]
    await site.message("hello")
    assert receiver.signed == [True]
    # A PATCH that leaves it out keeps it, encrypted from then on.
    await site.admin.patch(
        f"/rules/{rule['id']}",
        {"actions": [{"type": "webhook", "url": url}, {"type": "add_label", "label": "x"}]},
    )
    stored = await _stored_actions(site.daemon, rule["id"])
    assert "hook-secret" not in stored and "secret_encrypted" in stored
    await site.message("hello again", sender="other")
    assert receiver.signed == [True, True]


async def test_webhook_secrets_sign_after_a_restart(
    tmp_path: Path, http_session: aiohttp.ClientSession, hook: tuple[Hook, str]
) -> None:
    receiver, url = hook
    settings = make_settings(
        tmp_path,
        rules=[
            {
                "name": "from config",
                "event": "message.received",
                "actions": [{"type": "webhook", "url": url, "secret": "hook-secret"}],
            }
        ],
    )

    async def message(daemon: Daemon, channel: str) -> None:
        await daemon.ingestor(inbound(channel, new_id(), sender=new_id()[-10:], text_body="hi"))
        assert daemon.engine is not None
        for _ in range(3):
            await daemon.ingestor._events.join()
            await daemon.engine.idle()

    daemon = Daemon(settings)
    await daemon.start()
    try:
        assert daemon.bootstrap is not None
        ws = daemon.bootstrap.workspace.id
        channel = await add_channel(daemon.store, ws, {"secret": SECRET}, name="shop")
        _, token = await user_with_token(daemon.store, ws, Role.ADMIN)
        admin = ApiClient(http_session, daemon_url(daemon), token)
        created = await admin.post(
            "/rules",
            {
                "name": "from api",
                "event": "message.received",
                "actions": [{"type": "webhook", "url": url, "secret": "hook-secret"}],
            },
        )
        assert created.status == 201, created.body
        listed = (await admin.get("/rules")).body["items"]
        assert [(r["source"], r["actions"][0]["secret_set"]) for r in listed] == [
            ("api", True),
            ("config", True),
        ]
        assert "hook-secret" not in json.dumps(listed)
        for rule in listed:
            assert "hook-secret" not in await _stored_actions(daemon, rule["id"])
        await message(daemon, channel)
        assert sorted(body["rule"]["name"] for body, _ in receiver.received) == ["from api", "from config"]
        assert receiver.signed == [True, True]
    finally:
        await daemon.stop()

    daemon = Daemon(settings)
    await daemon.start()
    try:
        await message(daemon, channel)
        assert len(receiver.received) == 4 and receiver.signed == [True] * 4
        assert b"hook-secret" not in _database_bytes(daemon)
    finally:
        await daemon.stop()


async def test_notify_users_and_the_team_lead(site: Site) -> None:
    team = await site.daemon.store.create_team(site.workspace_id, "Support", [], [])
    lead_id, _ = await user_with_token(site.daemon.store, site.workspace_id, Role.AGENT, name="Lead")
    await sql_write(site.daemon.store, "UPDATE teams SET lead_id = :u WHERE id = :t", u=lead_id, t=team.id)
    await site.rule(event="conversation.created", actions=[{"type": "assign_team", "team_id": team.id}])
    await site.rule(
        event="message.received",
        actions=[{"type": "notify", "users": ["team_lead", site.agent_id], "text": "A new message"}],
    )
    async with subscribed(site.daemon.bus, site.workspace_id) as events:
        conversation_id = await site.message()
        while (event := await anext(events)).type != "notification":
            pass
    assert event.data["user_ids"] == [lead_id, site.agent_id]
    assert event.data["text"] == "A new message"
    assert event.data["conversation_id"] == conversation_id


# Order and loops ----------------------------------------------------------------------------------


async def test_rules_run_by_position_then_name_and_see_each_other(site: Site) -> None:
    await site.rule(
        name="b second",
        position=1,
        event="conversation.created",
        conditions=[{"type": "priority", "priority": "high"}],
        actions=[{"type": "add_label", "label": "saw-high"}],
    )
    await site.rule(
        name="a first",
        position=1,
        event="conversation.created",
        actions=[{"type": "add_label", "label": "a"}],
    )
    await site.rule(
        name="z zeroth",
        position=0,
        event="conversation.created",
        actions=[{"type": "set_priority", "priority": "high"}],
    )
    await site.rule(
        name="c late",
        position=5,
        event="conversation.created",
        conditions=[{"type": "label", "label": "saw-high"}],
        actions=[{"type": "add_label", "label": "saw-label"}],
    )
    conversation_id = await site.message()
    fired = await site.firings(conversation_id)
    assert [f["name"] for f in fired] == ["z zeroth", "a first", "b second", "c late"]
    assert await site.labels(conversation_id) == {"a", "saw-high", "saw-label"}


async def test_two_rules_that_trigger_each_other_stop(site: Site) -> None:
    ping = await site.rule(
        name="ping",
        event="conversation.updated",
        actions=[{"type": "add_label", "label": "ping"}, {"type": "remove_label", "label": "pong"}],
    )
    pong = await site.rule(
        name="pong",
        event="conversation.updated",
        actions=[{"type": "add_label", "label": "pong"}, {"type": "remove_label", "label": "ping"}],
    )
    conversation_id = await site.message()
    reply = await site.agent.patch(f"/conversations/{conversation_id}", {"priority": "low"})
    assert reply.status == 200
    await site.settle()
    fired = await site.firings(conversation_id)
    # Each fires on the agent's change, then once on the other's change, then the chain holds both.
    assert sorted(f["name"] for f in fired) == ["ping", "ping", "pong", "pong"]
    assert await site.labels(conversation_id) == {"ping"}
    events = {f["event_id"] for f in fired}
    assert len(events) == 3
    assert {ping["id"], pong["id"]} == {f["actor"].removeprefix("rule:") for f in fired}


async def test_a_long_chain_stops(site: Site) -> None:
    await site.rule(event="conversation.updated", actions=[{"type": "add_label", "label": "fired"}])
    conversation_id = await site.message()
    chain = [new_id() for _ in range(5)]
    await site.daemon.bus.publish(
        Event(
            "conversation.updated",
            site.workspace_id,
            {"conversation_id": conversation_id, "changed": [], "rule_chain": chain},
            conversation_id,
        )
    )
    await site.settle()
    assert await site.labels(conversation_id) == set()
    await site.daemon.bus.publish(
        Event(
            "conversation.updated",
            site.workspace_id,
            {"conversation_id": conversation_id, "changed": [], "rule_chain": chain[:4]},
            conversation_id,
        )
    )
    await site.settle()
    assert await site.labels(conversation_id) == {"fired"}


# Seeds --------------------------------------------------------------------------------------------


async def test_the_seed_rules_of_the_issue(site: Site) -> None:
    policy = new_id()
    await sql_write(
        site.daemon.store,
        "INSERT INTO sla_policies (id, workspace_id, name, position, enabled, conditions, first_response_seconds, "
        "mode, created_at, updated_at) VALUES (:id, :ws, 'Amazon 24h', 0, 1, '{}', 86400, 'around_the_clock', "
        "'2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')",
        id=policy,
        ws=site.workspace_id,
    )
    budapest = await site.daemon.store.create_team(site.workspace_id, "Budapest", ["hu"], [])
    lead_id, _ = await user_with_token(site.daemon.store, site.workspace_id, Role.AGENT, name="Lead")
    await sql_write(
        site.daemon.store, "UPDATE teams SET lead_id = :u WHERE id = :t", u=lead_id, t=budapest.id
    )
    await site.rule(
        name="Amazon buyer message",
        event="message.received",
        conditions=[{"type": "channel", "channel": "amazon"}],
        actions=[{"type": "add_label", "label": "amazon"}, {"type": "set_sla_policy", "policy_id": policy}],
    )
    await site.rule(
        name="No reply for 15 days",
        event="no_reply",
        event_options={"hours": 360, "side": "customer"},
        actions=[{"type": "resolve"}],
    )
    await site.rule(
        name="SLA warning",
        event="sla.warning",
        actions=[
            {"type": "set_priority", "priority": "high"},
            {"type": "notify", "users": ["team_lead"], "text": "SLA soon due"},
        ],
    )
    await site.rule(
        name="Hungarian to Budapest",
        event="conversation.created",
        conditions=[{"type": "language", "language": "hu"}],
        actions=[{"type": "assign_team", "team_id": "Budapest"}],
    )

    amazon = await site.message("Hol van a csomagom?", channel=site.amazon, language_hint="hu")
    row = await site.conversation(amazon)
    assert await site.labels(amazon) == {"amazon"}
    assert (row.sla_policy_id, row.team_id) == (policy, budapest.id)

    async with subscribed(site.daemon.bus, site.workspace_id) as events:
        await site.daemon.bus.publish(
            Event(
                "sla.warning",
                site.workspace_id,
                {
                    "conversation_id": amazon,
                    "metric": "first_response",
                    "due_at": "2026-12-09T09:00:00+00:00",
                    "policy_id": policy,
                },
                amazon,
            )
        )
        await site.settle()
        while (event := await anext(events)).type != "notification":
            pass
    assert event.data["user_ids"] == [lead_id]
    assert (await site.conversation(amazon)).priority == "high"

    await site.answer(amazon, "It is on its way.")
    site.clock.advance(days=14, hours=23)
    assert await site.daemon.rules.check_time_rules(site.clock()) == 0  # type: ignore[union-attr]
    site.clock.advance(days=1)
    print(
        "DEBUG",
        (await site.conversation(amazon)),
        await site.daemon.store.quiet_conversations(
            site.workspace_id, "customer", site.clock() - timedelta(hours=360)
        ),
        await sql(
            site.daemon.store,
            "select direction, kind, flags, created_at from messages where conversation_id=:c",
            c=amazon,
        ),
    )
    assert await site.daemon.rules.check_time_rules(site.clock()) == 1  # type: ignore[union-attr]
    await site.settle()
    assert (await site.conversation(amazon)).status == "resolved"


async def test_no_reply_fires_once_per_quiet_stretch(site: Site) -> None:
    assert site.daemon.rules is not None
    await site.rule(
        name="nudge",
        event="no_reply",
        event_options={"hours": 24, "side": "agent"},
        actions=[{"type": "add_note", "text": "Nobody answered for a day"}],
    )
    conversation_id = await site.message("anyone there?", sender="waiting")
    site.clock.advance(hours=25)
    check = site.daemon.rules.check_time_rules
    assert await check(site.clock()) == 1
    assert await check(site.clock()) == 0
    # An agent answers; the customer writes again: a new stretch.
    await site.answer(conversation_id, "Sorry, here we are")
    site.clock.advance(hours=1)
    await site.message("thanks, one more question", sender="waiting")
    assert await check(site.clock()) == 0
    site.clock.advance(hours=25)
    assert await check(site.clock()) == 1
    assert len(await site.firings(conversation_id)) == 2


async def test_recovery_fires_created_rules_that_did_not_run(site: Site) -> None:
    assert site.daemon.rules is not None
    conversation_id = await site.message()
    await site.rule(event="conversation.created", actions=[{"type": "add_label", "label": "late"}])
    assert await site.daemon.rules.recover() == 1
    assert await site.daemon.rules.recover() == 0
    await site.settle()
    assert await site.labels(conversation_id) == {"late"}
    site.clock.advance(minutes=11)
    other = await site.message(sender="other")
    assert await site.labels(other) == {"late"}
    assert await site.daemon.rules.recover() == 0


# The API ------------------------------------------------------------------------------------------


async def test_api_crud_validation_and_permissions(site: Site) -> None:
    body = {
        "name": "tag vip",
        "event": "conversation.created",
        "actions": [{"type": "add_label", "label": "vip"}],
    }
    assert (await site.agent.post("/rules", body)).status == 403
    assert (await site.agent.get("/rules")).status == 403
    created = await site.rule(**body)
    assert created["source"] == "api" and created["position"] == 0 and created["enabled"] is True
    assert (await site.admin.post("/rules", body)).status == 409
    assert (await site.agent.get(f"/rules/{created['id']}")).status == 403

    cases = [
        (
            {**body, "name": "x", "conditions": [{"type": "text_matches", "pattern": "(unclosed"}]},
            "conditions.0.text_matches.pattern",
        ),
        (
            {**body, "name": "x", "conditions": [{"type": "text_matches", "pattern": "a" * 501}]},
            "conditions.0.text_matches.pattern",
        ),
        ({**body, "name": "x", "actions": [{"type": "explode"}]}, "actions.0"),
        ({**body, "name": "x", "actions": []}, "actions"),
        ({**body, "name": "x", "event": "no_reply"}, "event_options"),
        (
            {**body, "name": "x", "event": "no_reply", "event_options": {"hours": 0, "side": "customer"}},
            "event_options",
        ),
        ({**body, "name": "x", "event_options": {"hours": 3}}, "event_options"),
        ({**body, "name": "x", "event": "message.sent"}, "event"),
        (
            {**body, "name": "x", "conditions": [{"type": "contact_field", "field": "tier"}]},
            "conditions.0.contact_field",
        ),
        (
            {**body, "name": "x", "actions": [{"type": "assign_team", "team_id": "nope"}]},
            "actions.0.assign_team.team_id",
        ),
        (
            {**body, "name": "x", "actions": [{"type": "reply_template", "template": "nope"}]},
            "actions.0.reply_template.template",
        ),
        (
            {
                **body,
                "name": "x",
                "actions": [{"type": "notify", "users": ["team_lead", "nobody"], "text": "hi"}],
            },
            "actions.0.notify.users.1",
        ),
        ({**body, "name": "x", "actions": [{"type": "webhook", "url": "ftp://x"}]}, "actions.0.webhook.url"),
    ]
    for bad, field_name in cases:
        reply = await site.admin.post("/rules", bad)
        assert reply.status == 400, (bad, reply.body)
        assert reply.body["error"]["field"] == field_name, (bad, reply.body)
    regex = await site.admin.post("/rules", cases[0][0])
    assert "not a valid regular expression" in regex.body["error"]["message"]

    patched = await site.admin.patch(f"/rules/{created['id']}", {"enabled": False, "position": 3})
    assert patched.status == 200 and (patched.body["enabled"], patched.body["position"]) == (False, 3)
    assert (await site.admin.patch(f"/rules/{created['id']}", {"name": None})).status == 400
    assert (await site.admin.patch(f"/rules/{created['id']}", {"event": "no_reply"})).body["error"][
        "field"
    ] == "event_options"
    conversation_id = await site.message()
    assert await site.labels(conversation_id) == set()  # disabled
    listed = await site.admin.get("/rules", event="conversation.created")
    assert [r["id"] for r in listed.body["items"]] == [created["id"]]
    assert (await site.admin.delete(f"/rules/{created['id']}")).status == 204
    assert (await site.admin.get(f"/rules/{created['id']}")).status == 404


# Config -------------------------------------------------------------------------------------------


async def test_rules_from_the_config_file(tmp_path: Path, http_session: aiohttp.ClientSession) -> None:
    config = tmp_path / "aggregator.toml"
    config.write_text(
        'data_dir = "' + str(tmp_path / "data") + '"\n'
        "[[rules]]\n"
        'name = "Close after 15 quiet days"\n'
        'event = "no_reply"\n'
        'event_options = { hours = 360, side = "customer" }\n'
        'actions = [{ type = "resolve" }]\n'
        "[[rules]]\n"
        'name = "Amazon buyer messages"\n'
        'event = "message.received"\n'
        'conditions = [{ type = "channel", channel = "amazon" }]\n'
        'actions = [{ type = "add_label", label = "amazon" }]\n'
        "[[rules]]\n"
        'name = "Other workspace"\n'
        'workspace = "second"\n'
        'event = "conversation.created"\n'
        'actions = [{ type = "resolve" }]\n'
        "[http]\nport = 0\n[ingest]\nwriter_process = false\n",
        encoding="utf-8",
    )
    settings = load_settings(config)
    daemon = Daemon(settings)
    # A workspace a rule names must exist: the start fails naming it and the rule.
    with pytest.raises(ConfigError, match=r"'Other workspace' of .*aggregator\.toml name workspace 'second'"):
        await daemon.start()
    await daemon.stop()
    daemon = Daemon(settings)
    await daemon.store.migrate()
    await daemon.store.create_workspace("second")
    await daemon.start()
    try:
        assert daemon.bootstrap is not None
        ws = daemon.bootstrap.workspace.id
        _, token = await user_with_token(daemon.store, ws, Role.ADMIN)
        admin = ApiClient(http_session, daemon_url(daemon), token)
        listed = (await admin.get("/rules")).body["items"]
        assert [(r["name"], r["source"]) for r in listed] == [
            ("Amazon buyer messages", "config"),
            ("Close after 15 quiet days", "config"),
        ]
        amazon = next(r for r in listed if r["name"] == "Amazon buyer messages")
        refused = await admin.patch(f"/rules/{amazon['id']}", {"enabled": False})
        assert refused.status == 409 and refused.body["error"]["code"] == "rule_from_config"
        assert str(config) in refused.body["error"]["message"]
        assert (await admin.delete(f"/rules/{amazon['id']}")).status == 409
        second = await daemon.store.get_workspace_by_name("second")
        assert [r.name for r in await daemon.store.list_rules(second.id)] == ["Other workspace"]

        channel = await add_channel(daemon.store, ws, {"secret": SECRET}, name="amazon")
        result = await daemon.ingestor(inbound(channel, new_id(), text_body="hi"))
        await daemon.ingestor._events.join()
        assert daemon.engine is not None
        await daemon.engine.idle()
        rows = await sql(
            daemon.store, "SELECT labels FROM conversations WHERE id = :c", c=result.conversation_id
        )
        assert json.loads(rows[0].labels) == ["amazon"]
    finally:
        await daemon.stop()

    # Restarted with one rule dropped: the one kept keeps its id (its firings still count).
    first_rule = (
        '[[rules]]\nname = "Close after 15 quiet days"\nevent = "no_reply"\n'
        'event_options = { hours = 360, side = "customer" }\nactions = [{ type = "resolve" }]\n'
    )
    text = config.read_text(encoding="utf-8")
    assert first_rule in text
    config.write_text(text.replace(first_rule, ""), encoding="utf-8")
    daemon = Daemon(load_settings(config))
    await daemon.start()
    try:
        assert daemon.bootstrap is not None
        rules = await daemon.store.list_rules(daemon.bootstrap.workspace.id)
        assert [(r.id, r.name) for r in rules] == [(amazon["id"], "Amazon buyer messages")]
    finally:
        await daemon.stop()


def test_a_bad_rule_in_the_config_file_names_the_problem(tmp_path: Path) -> None:
    config = tmp_path / "aggregator.toml"
    config.write_text(
        '[[rules]]\nname = "bad"\nevent = "message.received"\n'
        'conditions = [{ type = "text_matches", pattern = "(" }]\nactions = [{ type = "resolve" }]\n',
        encoding="utf-8",
    )
    with pytest.raises(
        ConfigError, match=r"rules\.0\.conditions\.0\.text_matches\.pattern.*not a valid regular"
    ):
        load_settings(config)


def test_the_example_rules_of_the_example_config_load(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "aggregator.example.toml"
    lines = example.read_text(encoding="utf-8").splitlines()
    start = lines.index("#   [[rules]]")
    commented = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        if line.startswith("#   "):
            commented.append(line.removeprefix("#   "))
    rules = "\n".join(commented)
    config = tmp_path / "aggregator.toml"
    config.write_text(rules + "\n", encoding="utf-8")
    settings = load_settings(config)
    assert [r.name for r in settings.rules] == ["Amazon buyer messages", "Close after 15 quiet days"]
    assert settings.rules[1].event_options == {"hours": 360, "side": "customer"}
