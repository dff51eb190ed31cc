"""The inbound pipeline (Ingestor) on a real SQLite file: dedup, contacts, threading, reopen, attachments,
group commit, failure isolation and events after commit."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregator.attachments import AttachmentTooLarge
from aggregator.model import InboundAttachment, MessageFlags, ThreadHints
from aggregator.store import NotFound
from support.app import Core, inbound, make_settings, next_event, open_core, sql, sql_write, subscribed

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def channel_id(core: Core) -> str:
    return await core.add_channel()


async def count(core: Core, table: str, where: str = "1=1", **params: object) -> int:
    rows = await sql(core.store, f"SELECT count(*) FROM {table} WHERE {where}", **params)
    return int(rows[0][0])


def thread(thread_id: str) -> ThreadHints:
    """The hints the API channel gives a message that names its thread."""
    return ThreadHints(keys=(f"thread:{thread_id}",), by_contact=False, thread_ref=thread_id)


# Dedup


async def test_repeat_is_acknowledged_with_the_same_ids_and_not_stored_again(
    core: Core, channel_id: str
) -> None:
    first = await core.ingest(inbound(channel_id, "ext-1", text_body="first"))
    again = await core.ingest(inbound(channel_id, "ext-1", text_body="first, delivered again"))

    assert first.created is True
    assert again.created is False
    assert (again.message_id, again.conversation_id) == (first.message_id, first.conversation_id)
    assert await core.store.count_messages(channel_id) == 1
    assert await count(core, "conversations") == 1
    assert await count(core, "search_index", "search_index MATCH 'delivered'") == 0
    duplicates = core.metrics.registry.get_sample_value("aggregator_duplicates_in_total", {"channel": "api"})
    assert duplicates == 1.0


async def test_repeat_within_one_batch_is_stored_once(core: Core, channel_id: str) -> None:
    await core.ingest(inbound(channel_id, "warm-up"))  # the account is known: the next calls queue at once

    results = await asyncio.gather(*(core.ingest(inbound(channel_id, "same")) for _ in range(5)))

    assert [r.created for r in results].count(True) == 1
    assert len({(r.message_id, r.conversation_id) for r in results}) == 1
    assert await count(core, "messages", "external_id = 'same'") == 1


async def test_same_external_id_on_another_channel_account_is_a_different_message(
    core: Core, channel_id: str
) -> None:
    other = await core.add_channel()
    one = await core.ingest(inbound(channel_id, "ext-1"))
    two = await core.ingest(inbound(other, "ext-1"))

    assert two.created is True
    assert two.message_id != one.message_id


async def test_unknown_channel_account_is_refused_before_the_queue(core: Core, channel_id: str) -> None:
    with pytest.raises(NotFound):
        await core.ingest(inbound("01NOSUCHCHANNEL0000000000", "ext-1"))
    assert (await core.ingest(inbound(channel_id, "ext-2"))).created


# Contacts


async def test_identity_resolves_to_one_contact_and_a_new_display_name_updates_it(
    core: Core, channel_id: str
) -> None:
    await core.ingest(inbound(channel_id, "m1", sender="cust-7", name="Ann"))
    await core.ingest(inbound(channel_id, "m2", sender="cust-7", name="Ann"))
    await core.ingest(inbound(channel_id, "m3", sender="cust-7", name="Ann Smith"))

    assert await count(core, "contacts") == 1
    identities = await sql(core.store, "SELECT kind, address, display_name, contact_id FROM identities")
    assert [(r.kind, r.address, r.display_name) for r in identities] == [("api", "cust-7", "Ann Smith")]
    senders = await sql(core.store, "SELECT DISTINCT sender_contact_id FROM messages")
    assert [r[0] for r in senders] == [identities[0].contact_id]
    contacts = await sql(core.store, "SELECT name FROM contacts")
    assert [r.name for r in contacts] == ["Ann Smith"]
    found = await sql(core.store, "SELECT ref_id FROM search_index WHERE search_index MATCH 'smith'")
    assert [r.ref_id for r in found] == [identities[0].contact_id]


async def test_a_name_an_agent_gave_the_contact_is_kept_when_the_display_name_changes(
    core: Core, channel_id: str
) -> None:
    await core.ingest(inbound(channel_id, "m1", sender="cust-7", name="Ann"))
    await sql_write(core.store, "UPDATE contacts SET name = 'Ann (VIP, Berlin)'")
    await core.ingest(inbound(channel_id, "m2", sender="cust-7", name="Annie"))
    contacts = await sql(core.store, "SELECT name FROM contacts")
    assert [r.name for r in contacts] == ["Ann (VIP, Berlin)"]


async def test_different_senders_are_different_contacts(core: Core, channel_id: str) -> None:
    await core.ingest(inbound(channel_id, "m1", sender="a"))
    await core.ingest(inbound(channel_id, "m2", sender="b"))
    assert await count(core, "contacts") == 2
    assert await count(core, "identities") == 2


async def test_same_address_in_two_workspaces_makes_separate_contacts(core: Core, channel_id: str) -> None:
    other_ws = await core.store.create_workspace("other shop")
    other_channel = await core.add_channel(workspace_id=other_ws.id)

    mine = await core.ingest(inbound(channel_id, "m1", sender="shared@example.com"))
    theirs = await core.ingest(inbound(other_channel, "m1", sender="shared@example.com"))

    assert mine.conversation_id != theirs.conversation_id
    contacts = await sql(core.store, "SELECT workspace_id FROM contacts ORDER BY workspace_id")
    assert sorted(r[0] for r in contacts) == sorted([core.workspace.id, other_ws.id])
    for table in ("identities", "conversations", "messages", "audit_events", "search_index"):
        mixed = await sql(
            core.store,
            f"SELECT count(*) FROM {table} WHERE workspace_id NOT IN (:a, :b)",
            a=core.workspace.id,
            b=other_ws.id,
        )
        assert mixed[0][0] == 0, table
    msg = await core.store.get_message(theirs.message_id, other_ws.id)
    assert msg["workspace_id"] == other_ws.id
    with pytest.raises(NotFound):
        await core.store.get_message(theirs.message_id, core.workspace.id)
    conv = await sql(
        core.store,
        "SELECT c.workspace_id, i.workspace_id FROM conversations c JOIN identities i ON i.id = c.identity_id "
        "WHERE c.id = :id",
        id=theirs.conversation_id,
    )
    assert tuple(conv[0]) == (other_ws.id, other_ws.id)


# Threading


async def test_same_thread_id_joins_one_conversation(core: Core, channel_id: str) -> None:
    one = await core.ingest(inbound(channel_id, "m1", sender="a", thread=thread("T1")))
    two = await core.ingest(inbound(channel_id, "m2", sender="a", thread=thread("T1")))
    other_thread = await core.ingest(inbound(channel_id, "m3", sender="a", thread=thread("T2")))

    assert one.conversation_id == two.conversation_id
    assert other_thread.conversation_id != one.conversation_id
    refs = await sql(core.store, "SELECT thread_ref FROM conversations ORDER BY created_at, thread_ref")
    assert sorted(r[0] for r in refs) == ["T1", "T2"]


async def test_without_thread_id_the_same_sender_joins_one_conversation(core: Core, channel_id: str) -> None:
    one = await core.ingest(inbound(channel_id, "m1", sender="a"))
    two = await core.ingest(inbound(channel_id, "m2", sender="a"))
    other = await core.ingest(inbound(channel_id, "m3", sender="b"))

    assert one.conversation_id == two.conversation_id
    assert other.conversation_id != one.conversation_id
    assert await count(core, "conversations") == 2


async def test_threading_within_one_batch(core: Core, channel_id: str) -> None:
    await core.ingest(inbound(channel_id, "warm-up", sender="someone-else"))
    results = await asyncio.gather(
        *(core.ingest(inbound(channel_id, f"m{n}", sender=f"s{n % 3}")) for n in range(9))
    )
    by_sender: dict[str, set[str]] = {}
    for n, result in enumerate(results):
        by_sender.setdefault(f"s{n % 3}", set()).add(result.conversation_id)
    assert all(len(ids) == 1 for ids in by_sender.values())
    assert len(set().union(*by_sender.values())) == 3
    assert await count(core, "contacts") == 4


# Reopening


async def test_resolved_conversation_reopens_on_a_customer_message_not_on_an_auto_reply(
    core: Core, channel_id: str
) -> None:
    first = await core.ingest(inbound(channel_id, "m1"))
    await sql_write(
        core.store,
        "UPDATE conversations SET status = 'resolved', resolved_at = '2026-01-01T00:00:00.000000Z' "
        "WHERE id = :id",
        id=first.conversation_id,
    )

    auto = await core.ingest(inbound(channel_id, "m2", flags=MessageFlags(auto_submitted=True)))
    assert auto.conversation_id == first.conversation_id
    status = await sql(
        core.store, "SELECT status FROM conversations WHERE id = :id", id=first.conversation_id
    )
    assert status[0][0] == "resolved"
    assert await count(core, "audit_events", "type = 'conversation.reopened'") == 0

    human = await core.ingest(inbound(channel_id, "m3"))
    assert human.conversation_id == first.conversation_id
    status = await sql(
        core.store, "SELECT status, resolved_at FROM conversations WHERE id = :id", id=first.conversation_id
    )
    assert tuple(status[0]) == ("open", None)
    audit = await sql(
        core.store,
        "SELECT conversation_id, workspace_id, data FROM audit_events WHERE type = 'conversation.reopened'",
    )
    assert len(audit) == 1
    assert (audit[0].conversation_id, audit[0].workspace_id) == (first.conversation_id, core.workspace.id)
    assert '"resolved"' in audit[0].data


@pytest.mark.parametrize("flag", ["bulk", "bounce"])
async def test_other_automatic_mail_does_not_reopen(core: Core, channel_id: str, flag: str) -> None:
    first = await core.ingest(inbound(channel_id, "m1"))
    await sql_write(
        core.store, "UPDATE conversations SET status = 'resolved' WHERE id = :id", id=first.conversation_id
    )
    await core.ingest(inbound(channel_id, "m2", flags=MessageFlags(**{flag: True})))
    status = await sql(
        core.store, "SELECT status FROM conversations WHERE id = :id", id=first.conversation_id
    )
    assert status[0][0] == "resolved"


# Attachments


async def test_attachments_are_written_content_addressed_with_metadata_rows(
    core: Core, channel_id: str
) -> None:
    pdf, png = b"%PDF-1.4 invoice", b"\x89PNG picture"
    result = await core.ingest(
        inbound(
            channel_id,
            "m1",
            attachments=(
                InboundAttachment("invoice.pdf", "application/pdf", pdf),
                InboundAttachment("photo.png", "image/png", png),
            ),
        )
    )
    # The same content again, on another message, is one file on disk.
    await core.ingest(
        inbound(channel_id, "m2", attachments=(InboundAttachment("copy.pdf", "application/pdf", pdf),))
    )

    rows = await sql(
        core.store,
        "SELECT filename, content_type, size, sha256, workspace_id FROM attachments WHERE message_id = :id "
        "ORDER BY filename",
        id=result.message_id,
    )
    assert [(r.filename, r.content_type, r.size) for r in rows] == [
        ("invoice.pdf", "application/pdf", len(pdf)),
        ("photo.png", "image/png", len(png)),
    ]
    for row, content in zip(rows, (pdf, png), strict=True):
        assert row.sha256 == hashlib.sha256(content).hexdigest()
        assert row.workspace_id == core.workspace.id
        assert core.attachments.path_for(row.sha256).read_bytes() == content
    files = [p for p in core.settings.attachments_dir.rglob("*") if p.is_file()]
    assert len(files) == 2


async def test_over_size_attachment_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_attachment_bytes=1000)
    async with open_core(settings) as core:
        channel_id = await core.add_channel()
        message = inbound(
            channel_id,
            "m1",
            attachments=(
                InboundAttachment("small.txt", "text/plain", b"fits"),
                InboundAttachment("big.bin", "application/octet-stream", b"x" * 1001),
            ),
        )
        with pytest.raises(AttachmentTooLarge, match=r"big\.bin"):
            await core.ingest(message)

        assert await core.store.count_messages() == 0
        assert await count(core, "attachments") == 0
        assert await count(core, "conversations") == 0
        on_disk = [p for p in settings.attachments_dir.rglob("*") if p.is_file()]
        assert on_disk == []


async def test_raw_original_is_kept_on_disk(core: Core, channel_id: str) -> None:
    raw = b"From: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
    result = await core.ingest(inbound(channel_id, "m1", raw=raw))
    row = await core.store.get_message(result.message_id, core.workspace.id)
    assert row["raw_ref"] == hashlib.sha256(raw).hexdigest()
    assert core.attachments.path_for(row["raw_ref"]).read_bytes() == raw


# Group commit


async def test_concurrent_messages_are_committed_in_fewer_transactions(core: Core, channel_id: str) -> None:
    await core.ingest(inbound(channel_id, "warm-up", sender="warm"))
    before = core.metrics.registry.get_sample_value("aggregator_ingest_batch_size_count") or 0.0

    results = await asyncio.gather(
        *(
            core.ingest(inbound(channel_id, f"ext-{n}", sender=f"cust-{n % 20}", text_body=f"body {n}"))
            for n in range(200)
        )
    )

    batches = core.metrics.registry.get_sample_value("aggregator_ingest_batch_size_count") - before
    committed = core.metrics.registry.get_sample_value("aggregator_ingest_batch_size_sum") - 1.0
    assert committed == 200
    assert batches < 200
    assert all(r.created for r in results)
    assert len({r.message_id for r in results}) == 200
    rows = await sql(core.store, "SELECT id, external_id, text, conversation_id FROM messages")
    stored = {r.id: r for r in rows}
    for n, result in enumerate(results):
        row = stored[result.message_id]
        assert (row.external_id, row.text, row.conversation_id) == (
            f"ext-{n}",
            f"body {n}",
            result.conversation_id,
        )
    assert await count(core, "contacts") == 21
    assert await count(core, "conversations") == 21


async def test_one_bad_message_in_a_batch_does_not_fail_the_others(
    core: Core, channel_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    await core.ingest(inbound(channel_id, "warm-up"))
    caplog.set_level(logging.WARNING, logger="aggregator.ingest")
    # An adapter bug: text that is not valid Unicode (a lone surrogate) fails its batch's transaction.
    bad = inbound(channel_id, "bad", sender="b", text_body="broken \ud800 text")
    calls = [core.ingest(inbound(channel_id, f"good-{n}", sender=f"g{n}")) for n in range(10)]
    calls.insert(5, core.ingest(bad))

    outcomes = await asyncio.gather(*calls, return_exceptions=True)

    failed = outcomes.pop(5)
    assert isinstance(failed, UnicodeEncodeError)
    assert all(not isinstance(o, BaseException) and o.created for o in outcomes)
    assert await count(core, "messages", "external_id LIKE 'good-%'") == 10
    assert await count(core, "messages", "external_id = 'bad'") == 0
    assert await count(core, "contacts", "name IS NULL") == 11  # warm-up sender + ten good ones
    assert "retrying one by one" in caplog.text


async def test_extra_that_is_not_json_is_refused_before_anything_is_written(core: Core, channel_id: str) -> None:
    with pytest.raises(ValueError, match="extra cannot be stored as JSON"):
        await core.ingest(inbound(channel_id, "odd", extra={"unstorable": object()}))
    assert await count(core, "messages", "external_id = 'odd'") == 0


async def test_a_naive_sent_at_is_refused_before_anything_is_written(core: Core, channel_id: str) -> None:
    with pytest.raises(ValueError, match="sent_at must carry a time zone"):
        await core.ingest(inbound(channel_id, "naive", sent_at=datetime(2024, 1, 1, 12, 0)))
    assert await count(core, "messages", "external_id = 'naive'") == 0


# Events


async def test_events_are_published_after_commit(core: Core, channel_id: str) -> None:
    seen_stored: list[bool] = []

    async with subscribed(core.bus, core.workspace.id) as subscription:
        result = await core.ingest(inbound(channel_id, "m1"))
        first = await next_event(subscription)
        second = await next_event(subscription)
        # When the event arrives, the record is already there to read.
        stored = await core.store.get_message(second.data["message_id"], core.workspace.id)
        seen_stored.append(stored["id"] == result.message_id)

        await core.ingest(inbound(channel_id, "m1"))  # a repeat publishes nothing
        await core.ingest(inbound(channel_id, "m2"))
        third = await next_event(subscription)

    assert (first.type, first.data["conversation_id"]) == ("conversation.created", result.conversation_id)
    assert second.type == "message.created"
    assert second.data == {
        "message_id": result.message_id,
        "conversation_id": result.conversation_id,
        "direction": "in",
    }
    assert second.workspace_id == core.workspace.id
    assert seen_stored == [True]
    assert third.type == "message.created"
    assert third.data["message_id"] != result.message_id


async def test_reopening_publishes_an_event(core: Core, channel_id: str) -> None:
    first = await core.ingest(inbound(channel_id, "m1"))
    await sql_write(
        core.store, "UPDATE conversations SET status = 'resolved' WHERE id = :id", id=first.conversation_id
    )
    async with subscribed(core.bus, core.workspace.id) as subscription:
        await core.ingest(inbound(channel_id, "m2"))
        types = [(await next_event(subscription)).type for _ in range(2)]
    assert types == ["conversation.reopened", "message.created"]


# Edits, answers by external id, ids in order


def at(minute: int) -> datetime:
    return datetime(2026, 12, 3, 10, minute, tzinfo=UTC)


async def test_an_edit_replaces_the_text_once_and_an_older_edit_is_ignored(core: Core, channel_id: str) -> None:
    first = await core.ingest(inbound(channel_id, "m-1", text_body="v1"))
    edited = await core.ingest(inbound(channel_id, "m-1", text_body="v2", edited_at=at(5)))
    assert (edited.message_id, edited.created, edited.updated) == (first.message_id, False, True)
    # Delivered again, or an older edit arriving late: nothing changes.
    again = await core.ingest(inbound(channel_id, "m-1", text_body="v2", edited_at=at(5)))
    late = await core.ingest(inbound(channel_id, "m-1", text_body="v1.5", edited_at=at(3)))
    assert not again.updated and not late.updated
    [row] = await sql(core.store, "SELECT text, edited_at, versions FROM messages")
    assert row.text == "v2"
    assert json.loads(row.versions) == [{"text": "v1", "replaced_at": at(5).isoformat()}]
    # The new text is searchable.
    assert await count(core, "search_index", "body = 'v2'") == 1


async def test_an_edit_in_the_same_batch_as_its_original(core: Core, channel_id: str) -> None:
    outcomes = await core.ingestor.ingest_many(
        [
            inbound(channel_id, "m-1", text_body="v1"),
            inbound(channel_id, "m-1", text_body="v2", edited_at=at(1)),
        ]
    )
    assert [o.created for o in outcomes if not isinstance(o, Exception)] == [True, False]
    [row] = await sql(core.store, "SELECT text, versions FROM messages")
    assert row.text == "v2" and [v["text"] for v in json.loads(row.versions)] == ["v1"]


async def test_an_answer_by_external_id_joins_that_messages_conversation(core: Core, channel_id: str) -> None:
    old = await core.ingest(inbound(channel_id, "m-1", thread=ThreadHints(by_contact=False)))
    newer = await core.ingest(inbound(channel_id, "m-2", thread=ThreadHints(by_contact=False)))
    assert old.conversation_id != newer.conversation_id
    answer = await core.ingest(inbound(channel_id, "m-3", thread=ThreadHints(external_refs=("m-1",))))
    assert answer.conversation_id == old.conversation_id
    unknown = await core.ingest(
        inbound(channel_id, "m-4", thread=ThreadHints(by_contact=False, external_refs=("nope",)))
    )
    assert unknown.conversation_id not in (old.conversation_id, newer.conversation_id)


async def test_messages_of_one_batch_list_in_the_order_they_came(core: Core, channel_id: str) -> None:
    await core.ingestor.ingest_many([inbound(channel_id, f"m-{n}", text_body=str(n)) for n in range(50)])
    rows = await sql(core.store, "SELECT text FROM messages ORDER BY created_at, id")
    assert [r.text for r in rows] == [str(n) for n in range(50)]
