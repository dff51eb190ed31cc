"""Automatic replies: the acknowledgement of a new conversation and the out-of-hours reply.

Through a real daemon (its ingest pipeline, with language detection, hands every customer message to
its AutoReplier) on a controlled clock: in the customer's language, never to automatic mail, at most
one per contact per period even when messages race, delivered through the outbox, not the first
response; the settings as PATCH /api/v1/workspace checks them; and end to end over email (Dovecot
IMAP in, SMTP out) with real automatic mail from ../shared/corpora.
"""

from __future__ import annotations

import asyncio
import email.policy
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aggregator.autoreply import AutoReplier
from aggregator.daemon import Daemon
from aggregator.hours import BusinessHours
from aggregator.model import Identity, IngestResult, MessageFlags, Reachability, Role, ThreadHints
from aggregator.workspace import WorkspaceSettings
from channels.email.parse import parse_message
from fakes.callback import CallbackServer
from support.api import ApiClient, user_with_token
from support.app import SECRET, add_channel, daemon_url, inbound, make_settings, sql, wait_until
from support.dovecot import Dovecot
from support.smtp_server import SmtpServer

pytestmark = pytest.mark.timeout(60)

CORPUS = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora" / "email-stalwart" / "eml"
).resolve()

SATURDAY_NOON_BERLIN = datetime(2026, 12, 5, 11, 0, tzinfo=UTC)
TUESDAY_10_BERLIN = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
START = TUESDAY_10_BERLIN  # where the daemon's clock starts; without business hours any time would do

GERMAN = (
    "Guten Tag, ich habe vor zwei Wochen eine Kaffeemaschine bei Ihnen bestellt und sie ist immer noch "
    "nicht angekommen. Können Sie mir bitte sagen, wo mein Paket gerade ist und wann es kommt?"
)
ENGLISH = (
    "Hello, I ordered a coffee machine from you two weeks ago and it still has not arrived. Could you "
    "please tell me where my parcel is right now and when it will be delivered to my address?"
)

ACK_VARIANTS = [
    {
        "language": "en",
        "subject": "We have your message",
        "body": "Hello {{ contact.first_name }}, thank you for writing to {{ workspace.name }}. "
        "We answer within a day.",
    },
    {
        "language": "de",
        "subject": "Ihre Nachricht ist angekommen",
        "body": "Hallo {{ contact.first_name }}, danke für Ihre Nachricht an {{ workspace.name }}. "
        "Wir antworten innerhalb eines Tages.",
    },
]
AWAY_VARIANTS = [
    {
        "language": "en",
        "subject": "We are closed",
        "body": "We are closed right now. We are back on {{ workspace.opens_at | datetime('EEEE') }}, "
        "{{ workspace.opens_at | datetime('short') }}.",
    },
    {
        "language": "de",
        "subject": "Wir sind gerade nicht da",
        "body": "Wir sind gerade nicht da. Ab {{ workspace.opens_at | datetime('EEEE') }}, "
        "{{ workspace.opens_at | datetime('short') }} sind wir wieder für Sie da.",
    },
]
BERLIN_HOURS = {
    "timezone": "Europe/Berlin",
    "weekly": {d: ["09:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri")},
}


class Clock:
    """The daemon's clock: stands still until a test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, now: datetime) -> None:
        self.now = now


@asynccontextmanager
async def started(tmp_path: Path, clock: Clock | None = None) -> AsyncIterator[Daemon]:
    daemon = (
        Daemon(make_settings(tmp_path), clock=clock) if clock is not None else Daemon(make_settings(tmp_path))
    )
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


async def settle(daemon: Daemon) -> None:
    """Every committed message handed to the AutoReplier (the ingest publisher runs its hooks), and
    every one considered."""
    await daemon.ingestor._events.join()
    await daemon.auto_replies.idle()


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class Sent:
    id: str
    conversation_id: str
    channel_account_id: str
    contact_id: str
    flags: list[str]
    extra: dict[str, Any]
    text: str
    subject: str | None
    language: str | None


async def outgoing(daemon: Daemon, conversation_id: str | None = None) -> list[Sent]:
    """Every message we sent (or queued), oldest first; in these tests only automatic replies."""
    rows = await sql(
        daemon.store,
        "SELECT m.id, m.conversation_id, m.channel_account_id, c.contact_id, m.flags, m.extra, m.text, "
        "m.subject, m.language FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        "WHERE m.direction = 'out' AND (:conv IS NULL OR m.conversation_id = :conv) ORDER BY m.id",
        conv=conversation_id,
    )
    return [
        Sent(
            r.id,
            r.conversation_id,
            r.channel_account_id,
            r.contact_id,
            list(_json(r.flags) or []),
            dict(_json(r.extra) or {}),
            r.text,
            r.subject,
            r.language,
        )
        for r in rows
    ]


async def contact_of(daemon: Daemon, conversation_id: str) -> str:
    rows = await sql(daemon.store, "SELECT contact_id FROM conversations WHERE id = :id", id=conversation_id)
    return str(rows[0].contact_id)


@dataclass
class Site:
    """A running daemon on a controlled clock, its default workspace, two API channels A and B that
    deliver replies to `callback`, and the templates "ack" and "away"."""

    daemon: Daemon
    clock: Clock
    workspace_id: str
    workspace_name: str
    a: str
    b: str
    callback: CallbackServer
    api: ApiClient
    _n: int = field(default=0)

    async def configure(self, **changes: Any) -> WorkspaceSettings:
        """Store settings directly (validated, so that no typo falls back to the defaults) and make the
        daemon see them at once (its SettingsCache would otherwise keep the old ones for 10 s)."""
        current = await self.daemon.store.workspace_settings(self.workspace_id)
        settings = WorkspaceSettings.model_validate({**current, **changes})
        await self.daemon.store.update_workspace(self.workspace_id, settings=settings.model_dump(mode="json"))
        self.daemon.workspace_settings.forget(self.workspace_id)
        return settings

    async def acknowledge(self, channels: dict[str, bool], *, period_days: float | None = None) -> None:
        rules: dict[str, Any] = {
            "acknowledge": {channel: {"enabled": on, "template": "ack"} for channel, on in channels.items()}
        }
        if period_days is not None:
            rules["period_days"] = period_days
        await self.configure(auto_replies=rules)

    async def say(
        self,
        channel: str,
        sender: str,
        text: str = ENGLISH,
        *,
        new_conversation: bool = False,
        flags: MessageFlags | None = None,
        name: str | None = None,
    ) -> IngestResult:
        """A customer's message, stored and considered for an automatic reply."""
        self._n += 1
        result = await self.daemon.ingestor(
            inbound(
                channel,
                f"m{self._n}",
                sender=sender,
                name=name,
                text_body=text,
                thread=ThreadHints(by_contact=not new_conversation),
                flags=flags or MessageFlags(),
            )
        )
        assert result.created
        await settle(self.daemon)
        return result


@pytest.fixture
async def site(tmp_path: Path, http_session: aiohttp.ClientSession) -> AsyncIterator[Site]:
    callback = CallbackServer(SECRET)
    await callback.start()
    clock = Clock(START)
    try:
        async with started(tmp_path, clock) as daemon:
            assert daemon.bootstrap is not None and daemon.channels is not None
            workspace = daemon.bootstrap.workspace
            channels = []
            for name in ("shop-a", "shop-b"):
                channel_id = await add_channel(
                    daemon.store, workspace.id, {"secret": SECRET, "callback_url": callback.url}, name=name
                )
                assert await daemon.channels.get(channel_id) is not None
                channels.append(channel_id)
            await daemon.store.create_template(workspace.id, "Acknowledgement", ACK_VARIANTS, shortcode="ack")
            await daemon.store.create_template(workspace.id, "Out of hours", AWAY_VARIANTS, shortcode="away")
            _, token = await user_with_token(daemon.store, workspace.id, Role.ADMIN)
            record = await daemon.store.get_workspace(workspace.id)
            yield Site(
                daemon,
                clock,
                workspace.id,
                record.name,
                channels[0],
                channels[1],
                callback,
                ApiClient(http_session, daemon_url(daemon), token),
            )
    finally:
        await callback.close()


async def away_settings(site: Site, *, acknowledge: bool, channels: list[str] | None = None) -> None:
    """Mon-fri 09:00-17:00 in Berlin, the out-of-hours reply on (on `channels`), channel A's
    acknowledgement on or off."""
    await site.configure(
        timezone="Europe/Berlin",
        hours=BERLIN_HOURS,
        auto_replies={
            "acknowledge": {site.a: {"enabled": acknowledge, "template": "ack"}},
            "out_of_hours": {"enabled": True, "template": "away", "channels": channels},
        },
    )


# ------------------------------------------------------------------------------------------------
# 1. The acknowledgement


async def test_a_new_conversation_gets_one_acknowledgement_in_the_customers_language(site: Site) -> None:
    await site.acknowledge({site.a: True})

    first = await site.say(site.a, "anna", GERMAN, name="Anna Schmidt")
    replies = await outgoing(site.daemon)
    assert len(replies) == 1, replies
    reply = replies[0]
    assert reply.conversation_id == first.conversation_id
    assert reply.channel_account_id == site.a
    assert "automatic" in reply.flags
    assert reply.extra["automatic"] == "acknowledge"
    assert reply.language == "de"
    assert reply.text == (
        f"Hallo Anna, danke für Ihre Nachricht an {site.workspace_name}. Wir antworten innerhalb eines Tages."
    )
    assert reply.subject == "Ihre Nachricht ist angekommen"
    assert reply.extra["template"]["language"] == "de"

    # Delivered through the outbox, like any reply.
    outbox = await sql(site.daemon.store, "SELECT status FROM outbox WHERE message_id = :id", id=reply.id)
    assert len(outbox) == 1
    deliveries = await site.callback.wait_for_deliveries(1)
    assert [d.message_id for d in deliveries] == [reply.id]
    assert deliveries[0].body["text"] == reply.text

    async def sent() -> bool:
        rows = await sql(
            site.daemon.store, "SELECT delivery_status FROM messages WHERE id = :id", id=reply.id
        )
        return bool(rows[0].delivery_status == "sent")

    await wait_until(sent, 10, "the acknowledgement marked sent")

    # Not the first response: that is still the team's to give.
    rows = await sql(
        site.daemon.store,
        "SELECT first_response_at FROM conversations WHERE id = :id",
        id=first.conversation_id,
    )
    assert rows[0].first_response_at is None

    # The customer writes again in the same conversation: no second acknowledgement.
    second = await site.say(site.a, "anna", "Hallo? Ist da jemand?")
    assert second.conversation_id == first.conversation_id
    assert len(await outgoing(site.daemon)) == 1

    # An agent's reply is the first response; the automatic one did not take its place.
    await site.daemon.store.create_message(
        site.workspace_id, first.conversation_id, "Ihr Paket kommt morgen.", user_id=None, private=False
    )
    rows = await sql(
        site.daemon.store,
        "SELECT first_response_at FROM conversations WHERE id = :id",
        id=first.conversation_id,
    )
    assert rows[0].first_response_at is not None


async def test_english_customers_get_the_english_variant(site: Site) -> None:
    await site.acknowledge({site.a: True})
    await site.say(site.a, "bob", ENGLISH, name="Bob Miller")
    [reply] = await outgoing(site.daemon)
    assert reply.language == "en"
    assert reply.text.startswith("Hello Bob, thank you for writing to")


async def test_no_acknowledgement_on_a_channel_without_rule_or_with_the_rule_disabled(site: Site) -> None:
    await site.acknowledge({site.a: False})
    await site.say(site.b, "carla", ENGLISH)
    await site.say(site.a, "dora", ENGLISH)
    assert await outgoing(site.daemon) == []

    # The same setup with the rule on does reply: the two above were not quiet by accident.
    await site.acknowledge({site.a: True})
    await site.say(site.a, "emil", ENGLISH)
    await site.say(site.b, "fritz", ENGLISH)
    replies = await outgoing(site.daemon)
    assert [r.channel_account_id for r in replies] == [site.a]


# ------------------------------------------------------------------------------------------------
# 2. Never to automatic messages


@pytest.mark.parametrize(
    "flags",
    [
        MessageFlags(auto_submitted=True),
        MessageFlags(bulk=True),
        MessageFlags(bounce=True),
        MessageFlags(echo=True),
    ],
    ids=["auto_submitted", "bulk", "bounce", "echo"],
)
async def test_no_automatic_reply_to_an_automatic_message(site: Site, flags: MessageFlags) -> None:
    # Saturday, closed: both rules would apply to a customer's message.
    await away_settings(site, acknowledge=True)
    site.clock.set(SATURDAY_NOON_BERLIN)
    automatic = await site.say(site.a, "robot", ENGLISH, flags=flags)
    assert await outgoing(site.daemon) == []
    human = await site.say(site.a, "human", ENGLISH)
    replies = await outgoing(site.daemon)
    assert [r.conversation_id for r in replies] == [human.conversation_id]
    assert automatic.conversation_id != human.conversation_id


# ------------------------------------------------------------------------------------------------
# 3. At most one per contact per period


async def test_once_per_contact_per_period(site: Site) -> None:
    await site.acknowledge({site.a: True})
    first = await site.say(site.a, "gina", new_conversation=True)
    assert len(await outgoing(site.daemon)) == 1

    site.clock.set(START + timedelta(days=1))
    second = await site.say(site.a, "gina", new_conversation=True)
    assert second.conversation_id != first.conversation_id
    assert len(await outgoing(site.daemon)) == 1, "one day later is within the default 4 days"

    # The period counts per contact, not per workspace: someone else is acknowledged meanwhile.
    await site.say(site.a, "hugo", new_conversation=True)
    assert len(await outgoing(site.daemon)) == 2

    # The period is over, but a message in a conversation that has begun is not acknowledged.
    site.clock.set(START + timedelta(days=5))
    follow_up = await site.say(site.a, "gina")
    assert follow_up.conversation_id in (first.conversation_id, second.conversation_id)
    assert len(await outgoing(site.daemon)) == 2
    third = await site.say(site.a, "gina", new_conversation=True)
    replies = await outgoing(site.daemon, third.conversation_id)
    assert len(replies) == 1, "five days later the period is over"

    # A shorter period: a day and an hour later is enough, half a day is not.
    await site.acknowledge({site.a: True}, period_days=1)
    site.clock.set(START + timedelta(days=5, hours=12))
    fourth = await site.say(site.a, "gina", new_conversation=True)
    assert await outgoing(site.daemon, fourth.conversation_id) == []
    site.clock.set(START + timedelta(days=6, hours=1))
    fifth = await site.say(site.a, "gina", new_conversation=True)
    assert len(await outgoing(site.daemon, fifth.conversation_id)) == 1

    log = await sql(
        site.daemon.store,
        "SELECT kind, message_id FROM auto_replies WHERE contact_id = :c",
        c=await contact_of(site.daemon, first.conversation_id),
    )
    assert [(r.kind, r.message_id) for r in log] == [
        ("acknowledge", (await outgoing(site.daemon, fifth.conversation_id))[0].id)
    ]


async def test_two_new_conversations_of_one_new_contact_in_one_batch_get_one_reply(site: Site) -> None:
    await site.acknowledge({site.a: True})
    messages = [
        inbound(
            site.a,
            f"batch-{n}",
            sender="ilse",
            text_body=f"{ENGLISH} ({n})",
            thread=ThreadHints(by_contact=False),
        )
        for n in range(2)
    ]
    results = await site.daemon.ingestor.ingest_many(messages)
    assert all(isinstance(r, IngestResult) and r.created for r in results), results
    conversations = {r.conversation_id for r in results if isinstance(r, IngestResult)}
    assert len(conversations) == 2, "two conversations, each one's first message"
    await settle(site.daemon)
    replies = await outgoing(site.daemon)
    assert len(replies) == 1
    assert replies[0].conversation_id in conversations


async def test_two_auto_repliers_racing_on_one_contact_send_one_reply(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stored while no rule applies (the daemon's own AutoReplier passes them over), then considered by
    # two AutoRepliers at once, as two daemon processes would.
    first = await site.say(site.a, "jonas", new_conversation=True)
    second = await site.say(site.a, "jonas", new_conversation=True)
    assert first.conversation_id != second.conversation_id
    await site.acknowledge({site.a: True})
    other = AutoReplier(
        site.daemon.store,
        site.daemon.registry,
        site.daemon.workspace_settings,
        site.daemon.auto_replies.enqueue_outbox,
        clock=site.clock,
    )
    # Both get past the early look at the log before either queues its reply: only the claim in the
    # transaction can keep them from both sending.
    barrier = asyncio.Barrier(2)
    looked = site.daemon.store.last_auto_reply

    async def last_auto_reply(workspace_id: str, contact_id: str) -> tuple[str, datetime] | None:
        found = await looked(workspace_id, contact_id)
        await asyncio.wait_for(barrier.wait(), 5)
        return found

    monkeypatch.setattr(site.daemon.store, "last_auto_reply", last_auto_reply)
    results = await asyncio.gather(
        site.daemon.auto_replies.consider(first.message_id), other.consider(second.message_id)
    )
    assert sum(r is not None for r in results) == 1, results
    replies = await outgoing(site.daemon)
    assert [r.id for r in replies] == [r for r in results if r is not None]


# ------------------------------------------------------------------------------------------------
# 4. Out of hours


async def test_out_of_hours_reply_names_the_next_opening_in_the_customers_language(site: Site) -> None:
    await away_settings(site, acknowledge=True)
    site.clock.set(SATURDAY_NOON_BERLIN)
    german = await site.say(site.a, "karl", GERMAN)
    english = await site.say(site.a, "liam", ENGLISH)

    [de] = await outgoing(site.daemon, german.conversation_id)
    assert de.extra["automatic"] == "out_of_hours"
    assert "automatic" in de.flags
    assert de.language == "de"
    # Monday 7 December 2026, 09:00 in Berlin (08:00 UTC).
    assert de.text == "Wir sind gerade nicht da. Ab Montag, 07.12.26, 09:00 sind wir wieder für Sie da."
    assert de.subject == "Wir sind gerade nicht da"
    [en] = await outgoing(site.daemon, english.conversation_id)
    assert en.extra["automatic"] == "out_of_hours"
    assert en.language == "en"
    assert en.text.startswith("We are closed right now. We are back on Monday, 12/7/26, 9:00")

    # Out of hours counts toward the period: on Tuesday during hours karl's new conversation gets no
    # acknowledgement, while a new customer's does.
    site.clock.set(TUESDAY_10_BERLIN)
    again = await site.say(site.a, "karl", GERMAN, new_conversation=True)
    assert await outgoing(site.daemon, again.conversation_id) == []
    newcomer = await site.say(site.a, "mona", ENGLISH)
    [ack] = await outgoing(site.daemon, newcomer.conversation_id)
    assert ack.extra["automatic"] == "acknowledge"


async def test_during_hours_no_out_of_hours_reply(site: Site) -> None:
    await away_settings(site, acknowledge=False)
    site.clock.set(TUESDAY_10_BERLIN)
    await site.say(site.a, "nina", ENGLISH)
    assert await outgoing(site.daemon) == []
    # One minute after closing time it does apply.
    site.clock.set(datetime(2026, 12, 8, 16, 1, tzinfo=UTC))
    late = await site.say(site.a, "otto", ENGLISH)
    [reply] = await outgoing(site.daemon)
    assert reply.conversation_id == late.conversation_id
    assert reply.extra["automatic"] == "out_of_hours"
    assert "Wednesday" in reply.text


async def test_out_of_hours_limited_to_its_channels(site: Site) -> None:
    await away_settings(site, acknowledge=False, channels=[site.b])
    site.clock.set(SATURDAY_NOON_BERLIN)
    await site.say(site.a, "paula", ENGLISH)
    assert await outgoing(site.daemon) == []
    on_b = await site.say(site.b, "quinn", ENGLISH)
    [reply] = await outgoing(site.daemon)
    assert (reply.conversation_id, reply.extra["automatic"]) == (on_b.conversation_id, "out_of_hours")

    # Channel A still has its acknowledgement on Saturday, out-of-hours reply or not.
    await away_settings(site, acknowledge=True, channels=[site.b])
    on_a = await site.say(site.a, "rosa", ENGLISH)
    [ack] = await outgoing(site.daemon, on_a.conversation_id)
    assert ack.extra["automatic"] == "acknowledge"


async def test_out_of_hours_follows_the_teams_calendar_or_the_one_it_names(site: Site) -> None:
    # Budapest's team works 8:00-16:00 and takes channel B; the workspace's own hours (Berlin, 9-17)
    # are for everything else.
    store = site.daemon.store
    budapest = await store.create_calendar(
        site.workspace_id,
        "Budapest",
        BusinessHours.model_validate(
            {
                "timezone": "Europe/Budapest",
                "weekly": {d: ["08:00-16:00"] for d in ("mon", "tue", "wed", "thu", "fri")},
                "holidays": {"country": "HU"},
            }
        ),
    )
    await store.create_team(
        site.workspace_id, "Budapest", [], [], channel_account_ids=[site.b], calendar_id=budapest.id
    )
    await away_settings(site, acknowledge=False)
    # Tuesday 16:30 in Berlin and Budapest: Berlin is open, Budapest closed since 16:00.
    site.clock.set(datetime(2026, 12, 8, 15, 30, tzinfo=UTC))
    await site.say(site.a, "sara", ENGLISH)
    assert await outgoing(site.daemon) == []
    on_b = await site.say(site.b, "tibor", ENGLISH)
    [reply] = await outgoing(site.daemon)
    assert (reply.conversation_id, reply.extra["automatic"]) == (on_b.conversation_id, "out_of_hours")
    # The next opening is the team's: Wednesday at 8:00, not the workspace's 9:00.
    assert reply.text == "We are closed right now. We are back on Wednesday, 12/9/26, 8:00\u202fAM."

    # Named in the settings, a calendar wins over the team's and the workspace's hours: at 16:30
    # the Berlin customer on channel A gets the reply too.
    await site.configure(
        timezone="Europe/Berlin",
        hours=BERLIN_HOURS,
        auto_replies={"out_of_hours": {"enabled": True, "template": "away", "calendar_id": budapest.id}},
    )
    on_a = await site.say(site.a, "ulla", ENGLISH)
    [named] = await outgoing(site.daemon, on_a.conversation_id)
    assert named.extra["automatic"] == "out_of_hours"


async def test_out_of_hours_settings_accept_a_teams_calendar_and_check_the_named_one(site: Site) -> None:
    body = {"auto_replies": {"out_of_hours": {"enabled": True, "template": "away", "calendar_id": "nope"}}}
    refused = await site.api.patch("/workspace", body)
    assert refused.status == 400, refused.body
    assert "calendar_id: no calendar with id 'nope'" in refused.body["error"]["message"]
    # No workspace hours, but a team has a calendar: enough to know when the team is away.
    calendar = await site.daemon.store.create_calendar(
        site.workspace_id, "Office", BusinessHours.model_validate(BERLIN_HOURS)
    )
    await site.daemon.store.create_team(site.workspace_id, "Office", ["en"], [], calendar_id=calendar.id)
    accepted = await site.api.patch(
        "/workspace", {"auto_replies": {"out_of_hours": {"enabled": True, "template": "away"}}}
    )
    assert accepted.status == 200, accepted.body
    assert accepted.body["settings"]["auto_replies"]["out_of_hours"]["calendar_id"] is None


# ------------------------------------------------------------------------------------------------
# 5. The settings through the API


async def test_patch_workspace_validates_the_automatic_replies(site: Site) -> None:
    api = site.api

    async def refused(body: dict[str, Any], *needles: str) -> None:
        answer = await api.patch("/workspace", body)
        assert answer.status == 400, answer.body
        message = answer.body["error"]["message"]
        for needle in needles:
            assert needle in message, message

    await refused(
        {"auto_replies": {"acknowledge": {site.a: {"template": "no-such-template"}}}},
        f"auto_replies.acknowledge.{site.a}.template",
        "no-such-template",
    )
    await refused(
        {"auto_replies": {"acknowledge": {"0" * 32: {"template": "ack"}}}},
        "0" * 32,
    )
    await refused(
        {"auto_replies": {"out_of_hours": {"enabled": True, "template": "away", "channels": ["nope"]}}},
        "'nope'",
    )
    await refused({"auto_replies": {"out_of_hours": {"enabled": True}}}, "auto_replies.out_of_hours.template")
    # Another workspace's channel and template are unknown here.
    other = await site.daemon.store.create_workspace("elsewhere")
    foreign_channel = await add_channel(site.daemon.store, other.id, {"secret": SECRET}, name="theirs")
    foreign = await site.daemon.store.create_template(other.id, "Theirs", ACK_VARIANTS, shortcode="theirs")
    await refused({"auto_replies": {"acknowledge": {foreign_channel: {"template": "ack"}}}}, foreign_channel)
    await refused(
        {"auto_replies": {"acknowledge": {site.a: {"template": foreign.id}}}},
        f"auto_replies.acknowledge.{site.a}.template",
    )
    # Nobody gives an automatic reply the values an agent would type in.
    await site.daemon.store.create_template(
        site.workspace_id,
        "Your code",
        [{"language": "en", "subject": "Code", "body": "Your code is {{ vars.code }}."}],
        shortcode="code",
    )
    await refused(
        {"auto_replies": {"out_of_hours": {"enabled": True, "template": "code"}}},
        "auto_replies.out_of_hours.template",
        "vars.code",
    )
    await refused({"timezone": "Mars/Olympus_Mons"}, "timezone", "Mars/Olympus_Mons")
    await refused(
        {"hours": {"timezone": "Europe/Berlin", "weekly": {"mon": ["9:00-17:00"]}}},
        "weekly.mon[0]",
        "two digits",
    )
    await refused({"hours": {"weekly": {"tue": ["09:00-09:00"]}}}, "weekly.tue[0]", "same time")
    await refused({"auto_replies": {"period_days": 0}}, "period_days")
    # Out-of-hours replies need hours to know when the team is away.
    await refused(
        {"auto_replies": {"out_of_hours": {"enabled": True, "template": "away"}}},
        "auto_replies.out_of_hours: needs business hours",
    )
    await refused({"default_language": "tlh"}, "default_language", "'tlh'")
    # Nothing of the refused changes was stored.
    assert (
        WorkspaceSettings.load(await site.daemon.store.workspace_settings(site.workspace_id))
        == WorkspaceSettings()
    )

    wanted = {
        "timezone": "Europe/Berlin",
        "hours": BERLIN_HOURS,
        "auto_replies": {
            "period_days": 2,
            "acknowledge": {site.a: {"enabled": True, "template": "ack"}},
            "out_of_hours": {"enabled": True, "template": "away", "channels": [site.b]},
        },
    }
    saved = await api.patch("/workspace", wanted)
    assert saved.status == 200, saved.body
    shown = await api.get("/workspace")
    assert shown.status == 200
    settings = shown.body["settings"]
    assert settings["timezone"] == "Europe/Berlin"
    assert settings["hours"]["weekly"] == BERLIN_HOURS["weekly"]
    assert settings["auto_replies"] == {
        "period_days": 2.0,
        "acknowledge": {site.a: {"enabled": True, "template": "ack"}},
        "out_of_hours": {"enabled": True, "template": "away", "channels": [site.b], "calendar_id": None},
    }
    # Hours given without a zone are in the workspace's time zone.
    zoneless = await api.patch("/workspace", {"hours": {"weekly": {"mon": ["08:00-12:00"]}}})
    assert zoneless.status == 200, zoneless.body
    assert zoneless.body["settings"]["hours"]["timezone"] == "Europe/Berlin"


async def test_patch_workspace_applies_in_its_process_at_once(site: Site) -> None:
    # The daemon has read (and cached) the settings without any rule ...
    await site.say(site.a, "sara", ENGLISH)
    assert await outgoing(site.daemon) == []
    # ... the PATCH makes the next message see the new rule, without waiting for the cache to expire.
    answer = await site.api.patch(
        "/workspace", {"auto_replies": {"acknowledge": {site.a: {"template": "ack"}}}}
    )
    assert answer.status == 200, answer.body
    await site.say(site.a, "tom", ENGLISH)
    assert len(await outgoing(site.daemon)) == 1


async def test_a_stored_setting_that_no_longer_validates_keeps_the_automatic_replies(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    # As an older version may have stored them: a detection language this one does not support, and a
    # setting it no longer knows, next to valid automatic replies.
    await site.daemon.store.update_workspace(
        site.workspace_id,
        settings={
            "languages": ["en", "de", "klingon"],
            "retired_setting": True,
            "auto_replies": {"acknowledge": {site.a: {"template": "ack"}}},
        },
    )
    site.daemon.workspace_settings.forget(site.workspace_id)
    with caplog.at_level(logging.ERROR, logger="aggregator.workspace"):
        await site.say(site.a, "yvonne", ENGLISH)
    assert len(await outgoing(site.daemon)) == 1, "the acknowledgement still goes out"
    assert any("languages" in r.getMessage() for r in caplog.records), "the broken setting is named"

    # A PATCH of something else keeps the automatic replies (and replaces what was broken).
    answer = await site.api.patch("/workspace", {"timezone": "Europe/Berlin"})
    assert answer.status == 200, answer.body
    settings = (await site.api.get("/workspace")).body["settings"]
    assert settings["auto_replies"]["acknowledge"] == {site.a: {"enabled": True, "template": "ack"}}
    assert settings["timezone"] == "Europe/Berlin"
    assert settings["languages"] == WorkspaceSettings().languages


async def test_no_automatic_reply_to_a_contact_who_blocked_us(site: Site) -> None:
    first = await site.say(site.a, "ulla", ENGLISH)
    # Like a Telegram user who blocked the bot: the channel reports the identity unreachable.
    assert await site.daemon.store.set_reachability(
        site.a, Identity("api", "ulla"), Reachability(True, "blocked by the user", site.clock())
    )
    blocked = await sql(
        site.daemon.store,
        "SELECT i.blocked_at FROM identities i JOIN conversations c ON c.identity_id = i.id WHERE c.id = :id",
        id=first.conversation_id,
    )
    assert blocked[0].blocked_at is not None
    await site.acknowledge({site.a: True})
    await site.say(site.a, "ulla", ENGLISH, new_conversation=True)
    assert await outgoing(site.daemon) == []
    await site.say(site.a, "vera", ENGLISH, new_conversation=True)
    assert len(await outgoing(site.daemon)) == 1


# ------------------------------------------------------------------------------------------------
# 6. A template that cannot be rendered here


async def test_a_template_that_fails_to_render_logs_and_sends_nothing(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    await site.daemon.store.create_template(
        site.workspace_id,
        "Needs a variable",
        [{"language": "en", "subject": "Hi", "body": "Your code is {{ vars.code }}."}],
        shortcode="needs-vars",
    )
    # PATCH refuses such a template; a template changed after it was chosen gets here all the same.
    await site.configure(auto_replies={"acknowledge": {site.a: {"template": "needs-vars"}}})
    with caplog.at_level(logging.ERROR, logger="aggregator.autoreply"):
        broken = await site.say(site.a, "walter", ENGLISH)
    assert await outgoing(site.daemon) == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "aggregator.autoreply"]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    message = errors[0].getMessage()
    assert "needs-vars" in message and broken.conversation_id in message and "vars.code" in message

    # Still running: with a template that renders, the next customer is acknowledged.
    await site.acknowledge({site.a: True})
    await site.say(site.a, "xaver", ENGLISH)
    assert len(await outgoing(site.daemon)) == 1


# ------------------------------------------------------------------------------------------------
# 2, end to end: email in through IMAP, out through SMTP

SUPPORT = "support@shop.test"
MAILBOX = "support"


def corpus_mail(name: str) -> bytes:
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(
            f"the email corpus is missing: expected {path} (../shared/corpora, see ../shared/README.md)"
        )
    return path.read_bytes()


def ticket_auto_reply(raw: bytes) -> bytes:
    """The ticket system's automatic answer (Auto-Submitted: auto-generated) that thirdparty/015.eml
    forwards as a message/rfc822 attachment: a real automatic reply, byte for byte as it arrived."""
    for attachment in parse_message(raw).attachments:
        if attachment.filename == "office-reply.txt":
            assert b"\nAuto-Submitted: auto-generated" in attachment.content
            return attachment.content
    raise AssertionError("thirdparty/015.eml no longer forwards office-reply.txt")


def headerless(raw: bytes) -> bytes:
    """shop-mail.txt, forwarded in thirdparty/015.eml: a blank line after its first header ends the
    header, so it arrives with no From (nobody to answer), its real headers read as text."""
    for attachment in parse_message(raw).attachments:
        if attachment.filename == "shop-mail.txt":
            assert parse_message(attachment.content).sender is None
            return attachment.content
    raise AssertionError("thirdparty/015.eml no longer forwards shop-mail.txt")


def postfix_bounce(original_message_id: str, recipient: str, queue_id: str) -> bytes:
    """A Postfix non-delivery report (RFC 3464), as Postfix writes it. The corpus has none."""
    boundary = f"{queue_id}.1765000000/mx.shop.test"
    return (
        "Return-Path: <>\r\n"
        f"Received: by mx.shop.test (Postfix) id {queue_id}; Tue,  8 Dec 2026 10:00:05 +0100 (CET)\r\n"
        "Date: Tue,  8 Dec 2026 10:00:05 +0100 (CET)\r\n"
        "From: MAILER-DAEMON@mx.shop.test (Mail Delivery System)\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"To: {SUPPORT}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        f'\tboundary="{boundary}"\r\n'
        f"Message-Id: <20261208090005.{queue_id}@mx.shop.test>\r\n"
        "\r\n"
        "This is a MIME-encapsulated message.\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Notification\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "This is the mail system at host mx.shop.test.\r\n"
        "\r\n"
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients. It's attached below.\r\n"
        "\r\n"
        f"<{recipient}>: host mx.example.com[192.0.2.10] said: 550 5.1.1 <{recipient}>:\r\n"
        "    Recipient address rejected: User unknown (in reply to RCPT TO command)\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Delivery report\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; mx.shop.test\r\n"
        f"X-Postfix-Queue-ID: {queue_id}\r\n"
        f"X-Postfix-Sender: rfc822; {SUPPORT}\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        "Action: failed\r\n"
        "Status: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 Recipient address rejected: User unknown\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Undelivered Message Headers\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        f"From: Shop Support <{SUPPORT}>\r\n"
        f"To: <{recipient}>\r\n"
        "Subject: Re: your order\r\n"
        f"Message-ID: {original_message_id}\r\n"
        "\r\n"
        f"--{boundary}--\r\n"
    ).encode()


def customer_mail(sender: str, subject: str, body: str, message_id: str) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = SUPPORT
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = message_id
    msg.set_content(body)
    return msg.as_bytes()


async def inbound_rows(daemon: Daemon, channel_id: str) -> list[Any]:
    return await sql(
        daemon.store,
        "SELECT m.id, m.conversation_id, m.flags, m.extra FROM messages m "
        "WHERE m.channel_account_id = :ch AND m.direction = 'in' ORDER BY m.id",
        ch=channel_id,
    )


async def test_over_email_automatic_mail_gets_no_reply_and_a_customer_gets_one(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpServer
) -> None:
    forwarded = corpus_mail("thirdparty/015.eml")  # a person's mail, forwarding automatic ones
    auto_reply = ticket_auto_reply(forwarded)
    no_sender = headerless(forwarded)
    mailing_list = corpus_mail("thirdparty/014.eml")  # Precedence: list, List-Id

    async with started(tmp_path / "site") as daemon:
        assert daemon.bootstrap is not None and daemon.channels is not None
        workspace_id = daemon.bootstrap.workspace.id
        channel_id = await add_channel(
            daemon.store,
            workspace_id,
            {
                "address": SUPPORT,
                "display_name": "Shop Support",
                "imap_host": "127.0.0.1",
                "imap_port": dovecot.port,
                "imap_user": MAILBOX,
                "imap_password": "secret",
                "imap_security": "none",
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp.port,
                "smtp_user": SUPPORT,
                "smtp_password": "secret",
                "smtp_security": "none",
                "timeout_seconds": 5,
            },
            kind="email",
            name="support",
            registry=daemon.registry,
        )
        assert await daemon.channels.get(channel_id) is not None
        await daemon.store.create_template(workspace_id, "Acknowledgement", ACK_VARIANTS, shortcode="ack")
        await daemon.store.update_workspace(
            workspace_id,
            settings=WorkspaceSettings.model_validate(
                {"auto_replies": {"acknowledge": {channel_id: {"template": "ack"}}}}
            ).model_dump(mode="json"),
        )
        daemon.workspace_settings.forget(workspace_id)

        async def stored(n: int) -> None:
            async def enough() -> bool:
                return len(await inbound_rows(daemon, channel_id)) >= n

            await wait_until(enough, 20, f"{n} mails stored")
            await settle(daemon)

        # A customer (at an address that does not exist) writes: acknowledged by mail.
        customer_id = "<order-77@customer.test>"
        await dovecot.deliver(
            MAILBOX, customer_mail("Nora Kunde <nora@customer.test>", "Meine Bestellung", GERMAN, customer_id)
        )
        await stored(1)
        [ack] = await smtp.wait_for(1, within=10)
        mail = ack.parsed()
        assert ack.recipients == ["nora@customer.test"]
        assert mail["Auto-Submitted"] == "auto-replied"
        assert mail["X-Auto-Response-Suppress"] == "OOF, AutoReply"
        assert mail["In-Reply-To"] == customer_id
        assert customer_id in str(mail["References"])
        assert "Hallo Nora" in ack.text
        ack_message_id = str(mail["Message-ID"])

        # Then, on the same run: the acknowledgement bounces, a ticket system answers automatically,
        # a mailing list posts, spam that forged our address bounces, a mail without sender comes,
        # and a person writes.
        await dovecot.deliver_many(
            MAILBOX,
            [
                postfix_bounce(ack_message_id, "nora@customer.test", "4F2A1C0001"),
                auto_reply,
                mailing_list,
                postfix_bounce("<spam-123@forged.example>", "victim@example.org", "4F2A1C0002"),
                no_sender,
                forwarded,
            ],
        )
        await stored(7)

        rows = await inbound_rows(daemon, channel_id)
        by_id = {_json(r.extra)["email"]["message_id"]: r for r in rows}
        flags = {message_id: sorted(_json(r.flags) or []) for message_id, r in by_id.items()}
        assert flags == {
            customer_id.strip("<>"): [],
            "20261208090005.4F2A1C0001@mx.shop.test": ["auto_submitted", "bounce"],
            "214c803d66ce9428e8e68ada78c9b308@proxmox.com": ["auto_submitted"],
            parse_message(mailing_list).message_id: ["bulk"],
            "20261208090005.4F2A1C0002@mx.shop.test": ["auto_submitted", "bounce"],
            None: [],  # the mail without sender (and without Message-ID)
            "7da78721a8a234894af702fe25fc64a5@proxforge.de": [],
        }, flags
        nora = by_id[customer_id.strip("<>")]
        person = by_id["7da78721a8a234894af702fe25fc64a5@proxforge.de"]
        # The bounce reached the acknowledgement it reports on.
        status = await sql(
            daemon.store,
            "SELECT delivery_status FROM messages WHERE direction = 'out' AND conversation_id = :c",
            c=nora.conversation_id,
        )
        assert [s.delivery_status for s in status] == ["failed"]

        async def two_sent() -> bool:
            return len(smtp.received) >= 2

        await wait_until(two_sent, 10, "the acknowledgement of the forwarded mail")
        replies = await outgoing(daemon)
        assert sorted(r.conversation_id for r in replies) == sorted(
            [nora.conversation_id, person.conversation_id]
        )
        assert all(r.extra["automatic"] == "acknowledge" for r in replies)
        second = smtp.received[1]
        assert second.recipients == ["jsterr@proxforge.de"]
        assert second.parsed()["Auto-Submitted"] == "auto-replied"
        # Nothing else is queued or on its way: the automatic mail and the one without sender got
        # no answer.
        outbox = await sql(daemon.store, "SELECT count(*) FROM outbox")
        assert outbox[0][0] == 2
        await asyncio.sleep(0.3)
        assert len(smtp.received) == 2


async def test_a_reply_a_stop_left_out_is_sent_at_the_next_start_and_only_once(tmp_path: Path) -> None:
    """The crash window: a message committed whose automatic reply was never considered (here the
    hook is taken away, as a kill between the commit and the reply would)."""
    clock = Clock(START)
    async with started(tmp_path, clock) as daemon:
        assert daemon.bootstrap is not None
        workspace_id = daemon.bootstrap.workspace.id
        channel = await add_channel(daemon.store, workspace_id, {"secret": SECRET}, name="shop")
        await daemon.store.create_template(workspace_id, "Acknowledgement", ACK_VARIANTS, shortcode="ack")
        rules = {"acknowledge": {channel: {"template": "ack"}}}
        await daemon.store.update_workspace(
            workspace_id,
            settings=WorkspaceSettings.model_validate({"auto_replies": rules}).model_dump(mode="json"),
        )
        daemon.workspace_settings.forget(workspace_id)
        answered = await daemon.ingestor(inbound(channel, "m1", sender="ann", text_body=ENGLISH))
        await settle(daemon)
        assert len(await outgoing(daemon)) == 1
        daemon.ingestor.hooks.remove(daemon.auto_replies.hook)
        missed = await daemon.ingestor(inbound(channel, "m2", sender="bob", text_body=ENGLISH))
        await daemon.ingestor._events.join()
        assert [r.conversation_id for r in await outgoing(daemon)] == [answered.conversation_id]
    async with started(tmp_path, clock) as daemon:

        async def two() -> bool:
            return len(await outgoing(daemon)) == 2

        await wait_until(two, within=10.0, what="the left-out acknowledgement")
        assert {r.conversation_id for r in await outgoing(daemon)} == {
            answered.conversation_id,
            missed.conversation_id,
        }
        # Looking again sends nothing: each contact's period is claimed.
        assert await daemon.auto_replies.recover() == 0
    async with started(tmp_path, clock) as daemon:
        assert await daemon.auto_replies.recover() == 0
        assert len(await outgoing(daemon)) == 2
