"""The SQL record on a real SQLite file: migrations, workspaces, tokens, channel secrets, batches, search,
replies and the outbox claim."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from concurrent.futures.process import BrokenProcessPool
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import event

from aggregator.model import OutboxStatus, Role, ThreadHints, utcnow
from aggregator.secrets import SecretBox, SecretKeyError
from aggregator.store import Conflict, NotFound, PreparedInbound, Store
from aggregator.store.engine import create_sqlite_writer
from aggregator.store.schema import format_time
from aggregator.store.writer import write_batch
from support.app import SECRET, Core, inbound, sql, sql_write

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = Store.open(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", SecretBox(Fernet.generate_key()))
    try:
        await opened.migrate()
        yield opened
    finally:
        await opened.close()


async def test_migrate_twice_is_a_no_op(tmp_path: Path) -> None:
    store = Store.open(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", SecretBox(Fernet.generate_key()))
    try:
        before, after = await store.migrate()
        assert before is None and after is not None
        assert await store.migrate() == (after, after)
        tables = {r[0] for r in await sql(store, "SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"messages", "conversations", "contacts", "identities", "outbox", "search_index"} <= tables
        mode = await sql(store, "PRAGMA journal_mode")
        assert mode[0][0] == "wal"
    finally:
        await store.close()


async def test_workspaces_are_unique_by_name(store: Store) -> None:
    created = await store.create_workspace("shop")
    with pytest.raises(Conflict, match="shop"):
        await store.create_workspace("shop")
    assert await store.get_workspace_by_name("shop") == created
    with pytest.raises(NotFound, match="nope"):
        await store.get_workspace_by_name("nope")
    again, was_created = await store.ensure_workspace("shop")
    assert (again, was_created) == (created, False)


async def test_tokens_are_stored_hashed_and_authenticate_with_role_and_workspace(store: Store) -> None:
    ws = await store.create_workspace("shop")
    token = "agg_example-token-value"
    user_id = await store.create_user(ws.id, "Ada", "ada@example.test", Role.AGENT)
    token_id = await store.create_token(ws.id, Role.AGENT, token, user_id=user_id, name="laptop")

    info = await store.authenticate(token)
    assert info is not None
    assert (info.id, info.workspace_id, info.user_id, info.role) == (token_id, ws.id, user_id, Role.AGENT)
    assert await store.authenticate(token + "x") is None
    stored = await sql(store, "SELECT token_hash FROM api_tokens")
    assert token not in stored[0][0]
    assert await store.count_tokens(ws.id, Role.AGENT) == 1
    assert await store.count_tokens(ws.id, Role.ADMIN) == 0


async def test_channel_secrets_are_encrypted_at_rest(store: Store, tmp_path: Path) -> None:
    ws = await store.create_workspace("shop")
    account_id = await store.create_channel_account(
        ws.id, "api", "shop", {"timeout_seconds": 5}, {"secret": SECRET}
    )

    raw = await sql(store, "SELECT config, secrets FROM channel_accounts")
    assert SECRET.encode() not in raw[0].secrets
    assert SECRET not in raw[0].config
    account = await store.get_channel_account(account_id)
    assert account.secrets == {"secret": SECRET}
    assert account.config == {"timeout_seconds": 5}

    other_key = Store(store.engine, SecretBox(Fernet.generate_key()))
    with pytest.raises(SecretKeyError, match="restore the key"):
        await other_key.get_channel_account(account_id)


async def test_channel_accounts_are_scoped_by_workspace(store: Store) -> None:
    mine = await store.create_workspace("mine")
    theirs = await store.create_workspace("theirs")
    account_id = await store.create_channel_account(mine.id, "api", "shop", {}, {})
    await store.create_channel_account(theirs.id, "api", "shop", {}, {})  # same name, other workspace

    assert (await store.get_channel_account(account_id, mine.id)).id == account_id
    with pytest.raises(NotFound):
        await store.get_channel_account(account_id, theirs.id)
    assert [a.id for a in await store.list_channel_accounts(mine.id)] == [account_id]
    with pytest.raises(Conflict):
        await store.create_channel_account(mine.id, "api", "shop", {}, {})


async def test_checkpoints_are_upserted(store: Store) -> None:
    ws = await store.create_workspace("shop")
    account_id = await store.create_channel_account(ws.id, "api", "shop", {}, {})
    assert await store.get_checkpoint(account_id, "uid") is None
    await store.set_checkpoint(account_id, "uid", {"validity": 7, "last": 10})
    await store.set_checkpoint(account_id, "uid", {"validity": 7, "last": 11})
    assert await store.get_checkpoint(account_id, "uid") == {"validity": 7, "last": 11}


async def test_a_batch_with_a_repeat_stores_it_once(store: Store) -> None:
    ws = await store.create_workspace("shop")
    account_id = await store.create_channel_account(ws.id, "api", "shop", {}, {})
    message = inbound(account_id, "ext-1", sender="a")
    batch = [
        PreparedInbound(message, ws.id),
        PreparedInbound(inbound(account_id, "ext-2", sender="a"), ws.id),
    ]
    batch.append(PreparedInbound(message, ws.id))

    outcome = await store.ingest_batch(batch, utcnow())

    first, second, repeat = outcome.results
    assert (first.created, second.created, repeat.created) == (True, True, False)
    assert (repeat.message_id, repeat.conversation_id) == (first.message_id, first.conversation_id)
    assert second.conversation_id == first.conversation_id
    assert await store.count_messages() == 2
    assert [e.type for e in outcome.events] == ["conversation.created", "message.created", "message.created"]

    again = await store.ingest_batch([PreparedInbound(message, ws.id)], utcnow())
    assert again.results[0].message_id == first.message_id and not again.results[0].created
    assert again.events == []


async def test_thread_keys_are_per_channel_account(store: Store) -> None:
    ws = await store.create_workspace("shop")
    one = await store.create_channel_account(ws.id, "api", "one", {}, {})
    two = await store.create_channel_account(ws.id, "api", "two", {}, {})
    hints = ThreadHints(keys=("thread:T",), by_contact=False, thread_ref="T")
    outcome = await store.ingest_batch(
        [
            PreparedInbound(inbound(one, "m1", thread=hints), ws.id),
            PreparedInbound(inbound(two, "m1", thread=hints), ws.id),
        ],
        utcnow(),
    )
    assert outcome.results[0].conversation_id != outcome.results[1].conversation_id


async def test_search_index_finds_message_text_subject_and_contact_name(core: Core) -> None:
    channel_id = await core.add_channel()
    result = await core.ingest(
        inbound(
            channel_id,
            "m1",
            name="Zebulon Quarrington",
            text_body="My parcel never arrived, tracking says Rotterdam",
            subject="Missing parcel",
        )
    )

    found = await sql(
        core.store,
        "SELECT ref_id, kind, workspace_id, conversation_id FROM search_index WHERE search_index MATCH :q",
        q="rotterdam",
    )
    assert [(r.ref_id, r.kind, r.workspace_id, r.conversation_id) for r in found] == [
        (result.message_id, "message", core.workspace.id, result.conversation_id)
    ]
    contact = await sql(
        core.store, "SELECT ref_id, kind FROM search_index WHERE search_index MATCH 'quarrington'"
    )
    contact_id = (await sql(core.store, "SELECT id FROM contacts"))[0][0]
    assert [(r.ref_id, r.kind) for r in contact] == [(contact_id, "contact")]
    subject = await sql(
        core.store, "SELECT ref_id, kind FROM search_index WHERE search_index MATCH 'missing'"
    )
    assert [(r.ref_id, r.kind) for r in subject] == [(result.conversation_id, "subject")]
    # Diacritics are folded: a customer's accented spelling is found by the plain one.
    await core.ingest(inbound(channel_id, "m2", text_body="Bestellung für Müller"))
    assert len(await sql(core.store, "SELECT 1 FROM search_index WHERE search_index MATCH 'muller'")) == 1


async def test_reply_is_stored_with_its_outbox_row_and_is_claimed_once(core: Core) -> None:
    channel_id = await core.add_channel()
    inbound_result = await core.ingest(inbound(channel_id, "m1", thread=ThreadHints(thread_ref="T9")))
    message_id, outbox_id = await core.store.create_reply(
        core.workspace.id, inbound_result.conversation_id, "Your parcel is on its way"
    )

    message = await core.store.get_message(message_id, core.workspace.id)
    assert (message["direction"], message["delivery_status"]) == ("out", "queued")
    assert len(await sql(core.store, "SELECT 1 FROM search_index WHERE search_index MATCH 'parcel'")) == 1
    conv = await sql(core.store, "SELECT first_response_at FROM conversations")
    assert conv[0][0] is not None

    now = utcnow()
    item = await core.store.claim_outbox(outbox_id, now, now + timedelta(seconds=60))
    assert item is not None
    assert (item.message_id, item.text, item.attempts, item.thread_ref) == (
        message_id,
        "Your parcel is on its way",
        1,
        "T9",
    )
    assert (item.recipient.kind, item.recipient.address) == ("api", "customer-1")
    assert await core.store.claim_outbox(outbox_id, now, now + timedelta(seconds=60)) is None
    assert await core.store.due_outbox(now) == []
    # A claim that ran out (the worker crashed) is due again.
    later = now + timedelta(seconds=61)
    assert [oid for oid, _ in await core.store.due_outbox(later)] == [outbox_id]
    again = await core.store.claim_outbox(outbox_id, later, later + timedelta(seconds=60))
    assert again is not None and again.attempts == 2

    await core.store.finish_outbox(again, OutboxStatus.SENT, external_id="ext-out-1")
    sent = await core.store.get_message(message_id, core.workspace.id)
    assert (sent["delivery_status"], sent["external_id"], sent["delivery_error"]) == (
        "sent",
        "ext-out-1",
        None,
    )
    assert await core.store.outbox_counts() == {"sent": 1}


async def test_reply_is_scoped_by_workspace(core: Core) -> None:
    channel_id = await core.add_channel()
    result = await core.ingest(inbound(channel_id, "m1"))
    other = await core.store.create_workspace("other")
    with pytest.raises(NotFound):
        await core.store.create_reply(other.id, result.conversation_id, "not yours")
    assert await core.store.count_messages() == 1
    assert await core.store.outbox_counts() == {}


async def test_outbox_row_not_yet_due_is_not_claimed(core: Core) -> None:
    channel_id = await core.add_channel()
    result = await core.ingest(inbound(channel_id, "m1"))
    _, outbox_id = await core.store.create_reply(core.workspace.id, result.conversation_id, "later")
    later = utcnow() + timedelta(hours=1)
    await sql_write(
        core.store,
        "UPDATE outbox SET next_attempt_at = :t WHERE id = :id",
        t=format_time(later),
        id=outbox_id,
    )
    now = utcnow()
    assert await core.store.claim_outbox(outbox_id, now, now + timedelta(seconds=60)) is None


async def test_ingest_lookups_use_indexes_not_table_scans(store: Store) -> None:
    """A scan per batch made ingest slow down with the size of the table (83 msgs/s at 1M messages)."""
    ws = await store.create_workspace("shop")
    account = await store.create_channel_account(ws.id, "api", "shop", {}, {})
    await store.ingest_batch(
        [PreparedInbound(inbound(account, "seed", thread=ThreadHints(keys=("t:1",))), ws.id)], utcnow()
    )
    selects: list[tuple[str, object]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append((statement, params))

    writer = create_sqlite_writer(str(store.engine.url))
    assert writer is not None
    event.listen(writer, "before_cursor_execute", capture)
    try:
        batch = [
            PreparedInbound(
                inbound(account, f"m{n}", sender=f"s{n % 3}", thread=ThreadHints(keys=(f"t:{n}",))), ws.id
            )
            for n in range(5)
        ]
        write_batch(writer, batch, utcnow())
        with writer.connect() as conn:
            for statement, params in selects:
                plan = " | ".join(
                    row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)
                )
                assert "SCAN" not in plan.replace("SCAN CONSTANT ROW", ""), f"{statement}\n-> {plan}"
    finally:
        event.remove(writer, "before_cursor_execute", capture)
        writer.dispose()
    assert len(selects) >= 3


async def test_the_writer_process_writes_batches_and_is_replaced_when_it_dies(tmp_path: Path) -> None:
    store = Store.open(
        f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", SecretBox(Fernet.generate_key()), writer_process=True
    )
    try:
        await store.migrate()
        ws = await store.create_workspace("shop")
        account = await store.create_channel_account(ws.id, "api", "shop", {}, {})
        await store.start_writer()
        first = await store.ingest_batch([PreparedInbound(inbound(account, "m1"), ws.id)], utcnow())
        assert [r.created for r in first.results] == [True]
        assert [e.type for e in first.events] == ["conversation.created", "message.created"]

        writer = store._writer
        assert writer is not None and writer._executor is not None
        for pid in list(writer._executor._processes):  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            await store.ingest_batch([PreparedInbound(inbound(account, "m2"), ws.id)], utcnow())
        again = await store.ingest_batch(
            [PreparedInbound(inbound(account, "m2"), ws.id), PreparedInbound(inbound(account, "m1"), ws.id)],
            utcnow(),
        )
        assert [r.created for r in again.results] == [True, False]
        assert again.results[1].message_id == first.results[0].message_id
    finally:
        await store.close()
