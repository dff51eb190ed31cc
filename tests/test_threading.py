"""Threading rules of the inbound pipeline (strong refs, contact-scoped keys, subject window), delivery
reports on our own messages and recognising a raw original seen before, on a real SQLite store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aggregator.model import (
    ConversationStatus,
    DeliveryReport,
    DeliveryStatus,
    MessageFlags,
    ThreadHints,
)
from aggregator.store.schema import format_time
from aggregator.threading import normalize_subject
from support.app import Core, inbound, next_event, sql, sql_write, subscribed

pytestmark = pytest.mark.timeout(30)

WEEK = timedelta(days=7)


@pytest.fixture
async def channel_id(core: Core) -> str:
    return await core.add_channel()


def mail(
    mid: str,
    *,
    refs: tuple[str, ...] = (),
    subject: str | None = None,
    window: timedelta | None = WEEK,
    conversation_refs: tuple[str, ...] = (),
    message_refs: tuple[str, ...] = (),
) -> ThreadHints:
    """Hints the way the email channel builds them: other people's ids count for the same contact only."""
    return ThreadHints(
        own_keys=(f"mid:{mid}",),
        contact_keys=tuple(f"mid:{r}" for r in refs),
        subject_key=normalize_subject(subject) or None,
        subject_window=window,
        by_contact=False,
        conversation_refs=conversation_refs,
        message_refs=message_refs,
        reply_refs=(*refs, mid),
    )


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: Order 1234", "order 1234"),
        ("RE: RE: Fwd: Order 1234", "order 1234"),
        ("AW: Bestellung", "bestellung"),
        ("WG: AW: Bestellung", "bestellung"),
        ("TR: Commande", "commande"),
        ("RV: Pedido", "pedido"),
        ("Vá: Rendelés", "rendelés"),
        ("Ynt: Sipariş", "sipariş"),
        ("Re[2]: Order", "order"),
        ("Re:Order", "order"),
        ("  Order   1234 ", "order 1234"),
        ("Rebate question", "rebate question"),
        ("Árvíztűrő", "árvíztűrő"),
        (None, ""),
    ],
)
def test_subject_normalisation(subject: str | None, expected: str) -> None:
    assert normalize_subject(subject) == expected


async def test_two_customers_replying_to_one_newsletter_stay_two_conversations(
    core: Core, channel_id: str
) -> None:
    anna = await core.ingest(
        inbound(channel_id, "1", sender="anna@example.com", subject="Re: Our news",
                thread=mail("a1@mail.example", refs=("news-7@list.example",), subject="Re: Our news"))
    )
    bert = await core.ingest(
        inbound(channel_id, "2", sender="bert@example.com", subject="Re: Our news",
                thread=mail("b1@mail.example", refs=("news-7@list.example",), subject="Re: Our news"))
    )
    anna_again = await core.ingest(
        inbound(channel_id, "3", sender="anna@example.com", subject="Re: Our news",
                thread=mail("a2@mail.example", refs=("news-7@list.example",), subject="Re: Our news"))
    )
    bert_again = await core.ingest(
        inbound(channel_id, "4", sender="bert@example.com", subject="Re: Our news",
                thread=mail("b2@mail.example", refs=("news-7@list.example", "b1@mail.example")))
    )

    assert anna.conversation_id != bert.conversation_id
    assert anna_again.conversation_id == anna.conversation_id
    assert bert_again.conversation_id == bert.conversation_id


async def test_references_to_a_stored_message_thread_for_the_same_contact(
    core: Core, channel_id: str
) -> None:
    first = await core.ingest(
        inbound(channel_id, "1", sender="anna@example.com", subject="Broken lamp",
                thread=mail("a1@mail.example", subject="Broken lamp"))
    )
    follow_up = await core.ingest(
        inbound(channel_id, "2", sender="anna@example.com", subject="Something else entirely",
                thread=mail("a2@mail.example", refs=("a1@mail.example",), subject="Something else entirely"))
    )
    stranger = await core.ingest(
        inbound(channel_id, "3", sender="eve@example.com", subject="Broken lamp",
                thread=mail("e1@mail.example", refs=("a1@mail.example",), subject="Broken lamp"))
    )

    assert follow_up.conversation_id == first.conversation_id
    assert stranger.conversation_id != first.conversation_id


async def test_subject_matches_only_the_same_contact_within_the_window(
    core: Core, channel_id: str
) -> None:
    first = await core.ingest(
        inbound(channel_id, "1", sender="anna@example.com", subject="Where is my parcel?",
                thread=mail("a1@x", subject="Where is my parcel?"))
    )
    # Her client dropped In-Reply-To and References; the subject still says what it answers.
    reply = await core.ingest(
        inbound(channel_id, "2", sender="anna@example.com", subject="AW: Where is my parcel?",
                thread=mail("a2@x", subject="AW: Where is my parcel?"))
    )
    other_person = await core.ingest(
        inbound(channel_id, "3", sender="bert@example.com", subject="Re: Where is my parcel?",
                thread=mail("b1@x", subject="Re: Where is my parcel?"))
    )
    other_subject = await core.ingest(
        inbound(channel_id, "4", sender="anna@example.com", subject="Invoice please",
                thread=mail("a3@x", subject="Invoice please"))
    )

    assert reply.conversation_id == first.conversation_id
    assert other_person.conversation_id != first.conversation_id
    assert other_subject.conversation_id != first.conversation_id


async def test_subject_match_ends_with_the_window(core: Core, channel_id: str) -> None:
    first = await core.ingest(
        inbound(channel_id, "1", sender="anna@example.com", subject="Refund",
                thread=mail("a1@x", subject="Refund"))
    )
    month_ago = datetime.now(UTC) - timedelta(days=30)
    await sql_write(
        core.store,
        "UPDATE conversations SET last_activity_at = :t WHERE id = :id", t=format_time(month_ago),
        id=first.conversation_id,
    )
    late = await core.ingest(
        inbound(channel_id, "2", sender="anna@example.com", subject="Re: Refund",
                thread=mail("a2@x", subject="Re: Refund"))
    )

    assert late.conversation_id != first.conversation_id


async def test_reply_token_and_our_message_id_join_whoever_the_sender_is(
    core: Core, channel_id: str
) -> None:
    first = await core.ingest(
        inbound(channel_id, "1", sender="anna@example.com", subject="Order 77",
                thread=mail("a1@x", subject="Order 77"))
    )
    ours, _ = await core.store.create_reply(core.workspace.id, first.conversation_id, "On its way")

    by_token = await core.ingest(
        inbound(channel_id, "2", sender="colleague@anna-corp.example", subject="Fwd: unrelated words",
                thread=mail("c1@x", subject="Fwd: unrelated words", conversation_refs=(first.conversation_id,)))
    )
    by_our_id = await core.ingest(
        inbound(channel_id, "3", sender="boss@anna-corp.example", subject="Re: Order 77",
                thread=mail("d1@x", subject="Re: Order 77", message_refs=(ours,)))
    )
    forged = await core.ingest(
        inbound(channel_id, "4", sender="eve@example.com", subject="x",
                thread=mail("e1@x", subject="x", conversation_refs=("0" * 32,), message_refs=("f" * 32,)))
    )

    assert by_token.conversation_id == first.conversation_id
    assert by_our_id.conversation_id == first.conversation_id
    assert forged.conversation_id != first.conversation_id


async def test_refs_into_another_channel_accounts_conversation_are_ignored(
    core: Core, channel_id: str
) -> None:
    other = await core.add_channel()
    first = await core.ingest(
        inbound(other, "1", sender="anna@example.com", subject="Hi", thread=mail("a1@x", subject="Hi"))
    )
    here = await core.ingest(
        inbound(channel_id, "1", sender="anna@example.com", subject="Hi",
                thread=mail("a2@x", subject="Hi", conversation_refs=(first.conversation_id,)))
    )
    assert here.conversation_id != first.conversation_id


async def test_automatic_mail_joins_but_does_not_reopen(core: Core, channel_id: str) -> None:
    first = await core.ingest(
        inbound(channel_id, "1", sender="anna@example.com", subject="Help", thread=mail("a1@x", subject="Help"))
    )
    await sql_write(
        core.store, "UPDATE conversations SET status = 'resolved' WHERE id = :id", id=first.conversation_id
    )
    away = await core.ingest(
        inbound(channel_id, "2", sender="anna@example.com", subject="Automatic reply: Help",
                flags=MessageFlags(auto_submitted=True),
                thread=mail("a2@x", refs=("a1@x",), subject="Automatic reply: Help"))
    )
    rows = await sql(core.store, "SELECT status FROM conversations WHERE id = :id", id=first.conversation_id)

    assert away.conversation_id == first.conversation_id
    assert rows[0][0] == ConversationStatus.RESOLVED.value
    assert (await sql(core.store, "SELECT count(*) FROM outbox"))[0][0] == 0


async def test_delivery_report_fails_our_message_with_the_reason(core: Core, channel_id: str) -> None:
    first = await core.ingest(
        inbound(channel_id, "1", sender="anna@example.com", subject="Help", thread=mail("a1@x", subject="Help"))
    )
    ours, _ = await core.store.create_reply(core.workspace.id, first.conversation_id, "Answer")
    reason = "550 5.1.1 <anna@example.com>: Recipient address rejected: User unknown"
    async with subscribed(core.bus, core.workspace.id) as events:
        bounce = await core.ingest(
            inbound(channel_id, "2", sender="mailer-daemon@mx.example", subject="Undelivered Mail",
                    flags=MessageFlags(bounce=True),
                    delivery_report=DeliveryReport(ours, DeliveryStatus.FAILED, reason),
                    thread=mail("dsn1@mx.example", subject="Undelivered Mail", message_refs=(ours,)))
        )
        seen = [await next_event(events) for _ in range(2)]
    rows = await sql(
        core.store, "SELECT delivery_status, delivery_error FROM messages WHERE id = :id", id=ours
    )

    assert bounce.conversation_id == first.conversation_id
    assert tuple(rows[0]) == ("failed", reason)
    delivery = [e for e in seen if e.type == "message.delivery"]
    assert delivery and delivery[0].data["message_id"] == ours
    assert delivery[0].data["delivery_status"] == "failed"


async def test_delivery_report_for_an_inbound_or_unknown_message_changes_nothing(
    core: Core, channel_id: str
) -> None:
    first = await core.ingest(
        inbound(channel_id, "1", sender="anna@example.com", thread=mail("a1@x", subject="Help"))
    )
    await core.ingest(
        inbound(channel_id, "2", sender="mailer-daemon@mx.example", flags=MessageFlags(bounce=True),
                delivery_report=DeliveryReport(first.message_id, DeliveryStatus.FAILED, "spoofed"),
                thread=mail("dsn1@x", subject="Undelivered"))
    )
    rows = await sql(
        core.store, "SELECT delivery_status FROM messages WHERE id = :id", id=first.message_id
    )
    assert rows[0][0] is None


async def test_same_raw_original_under_a_new_external_id_is_recognised(
    core: Core, channel_id: str
) -> None:
    raw = b"From: anna@example.com\r\nSubject: Hi\r\n\r\nHello\r\n"
    first = await core.ingest(
        inbound(channel_id, "INBOX/1/5", sender="anna@example.com", raw=raw, dedup_by_content=True,
                thread=mail("a1@x", subject="Hi"))
    )
    again = await core.ingest(
        inbound(channel_id, "INBOX/2/1", sender="anna@example.com", raw=raw, dedup_by_content=True,
                thread=mail("a1@x", subject="Hi"))
    )
    # Same Message-ID, different content: a different mail, stored too.
    other = await core.ingest(
        inbound(channel_id, "INBOX/2/2", sender="anna@example.com", raw=raw + b"PS\r\n",
                dedup_by_content=True, thread=mail("a1@x", subject="Hi"))
    )

    assert again.created is False
    assert again.message_id == first.message_id
    assert other.created is True
    assert (await sql(core.store, "SELECT count(*) FROM messages"))[0][0] == 2


async def test_reply_refs_reach_the_outbound_message(core: Core, channel_id: str) -> None:
    first = await core.ingest(
        inbound(channel_id, "1", sender="anna@example.com",
                thread=mail("a2@x", refs=("a0@x", "a1@x"), subject="Help"))
    )
    _, outbox_id = await core.store.create_reply(core.workspace.id, first.conversation_id, "Answer")
    now = datetime.now(UTC)
    item = await core.store.claim_outbox(outbox_id, now, now + timedelta(seconds=30))

    assert item is not None
    assert item.references == ("a0@x", "a1@x", "a2@x")


async def test_preview_is_the_reply_part(core: Core, channel_id: str) -> None:
    first = await core.ingest(
        inbound(channel_id, "1", sender="anna@example.com", text_body="Thanks!\n\n> On Monday you wrote:\n> old",
                reply_text="Thanks!", thread=mail("a1@x", subject="Help"))
    )
    rows = await sql(
        core.store, "SELECT last_message_preview FROM conversations WHERE id = :id", id=first.conversation_id
    )
    assert rows[0][0] == "Thanks!"
