"""The contacts API on a real daemon: list and search, one contact, edits, merges, roles and workspaces."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import event

from aggregator.daemon import Daemon
from aggregator.model import Event, Role, ThreadHints, utcnow
from aggregator.store import contacts as contacts_store
from support.api import ApiClient, Reply, user_with_token
from support.app import (
    SECRET,
    add_channel,
    daemon_url,
    inbound,
    make_settings,
    next_event,
    running_daemon,
    sql,
    subscribed,
)

pytestmark = pytest.mark.timeout(60)


@dataclass
class Book:
    daemon: Daemon
    channel_id: str
    mail_id: str  # a second channel, with addresses of kind "email"
    agent: ApiClient
    seller: ApiClient
    admin: ApiClient
    outsider: ApiClient  # an agent of another workspace
    other_workspace_id: str
    other_channel_id: str

    @property
    def workspace_id(self) -> str:
        assert self.daemon.bootstrap is not None
        return self.daemon.bootstrap.workspace.id

    async def message(
        self,
        external_id: str,
        *,
        sender: str,
        name: str | None = None,
        kind: str = "api",
        channel_id: str | None = None,
        text: str = "hello",
        **fields: Any,
    ) -> tuple[str, str]:
        """Ingest a customer message: (contact id, conversation id)."""
        result = await self.daemon.ingestor(
            inbound(
                channel_id or self.channel_id,
                external_id,
                sender=sender,
                name=name,
                kind=kind,
                text_body=text,
                **fields,
            )
        )
        (contact_id,) = (
            await sql(
                self.daemon.store,
                "SELECT sender_contact_id FROM messages WHERE id = :id",
                id=result.message_id,
            )
        )[0]
        return str(contact_id), result.conversation_id


@pytest.fixture
async def book(tmp_path: Path) -> AsyncIterator[Book]:
    async with running_daemon(make_settings(tmp_path)) as daemon, aiohttp.ClientSession() as http:
        assert daemon.bootstrap is not None
        ws = daemon.bootstrap.workspace.id
        channel_id = await add_channel(daemon.store, ws, {"secret": SECRET}, name="shop")
        mail_id = await add_channel(daemon.store, ws, {"secret": SECRET}, name="mail")
        other_ws = await daemon.store.create_workspace("other shop")
        other_channel_id = await add_channel(daemon.store, other_ws.id, {"secret": SECRET}, name="elsewhere")
        base = daemon_url(daemon)
        _, agent_token = await user_with_token(daemon.store, ws, Role.AGENT)
        _, seller_token = await user_with_token(daemon.store, ws, Role.SELLER)
        _, admin_token = await user_with_token(daemon.store, ws, Role.ADMIN)
        _, outsider_token = await user_with_token(daemon.store, other_ws.id, Role.AGENT)
        yield Book(
            daemon,
            channel_id,
            mail_id,
            ApiClient(http, base, agent_token),
            ApiClient(http, base, seller_token),
            ApiClient(http, base, admin_token),
            ApiClient(http, base, outsider_token),
            other_ws.id,
            other_channel_id,
        )


def field_of(reply: Reply) -> str | None:
    assert isinstance(reply.body, dict), reply.body
    field: str | None = reply.body["error"].get("field")
    return field


async def all_pages(client: ApiClient, limit: int, **params: str) -> list[list[dict[str, Any]]]:
    """Every page of GET /contacts, following next_cursor to the end."""
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    for _ in range(200):
        query = {**params, "limit": str(limit)}
        if cursor is not None:
            query["cursor"] = cursor
        reply = await client.get("/contacts", **query)
        assert reply.status == 200, reply.body
        assert len(reply.body["items"]) <= limit
        pages.append(reply.body["items"])
        cursor = reply.body["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("next_cursor never ended")


async def search_ids(client: ApiClient, q: str) -> list[str]:
    return [item["id"] for page in await all_pages(client, 100, q=q) for item in page]


async def wait_for_event(subscription: Any, type_: str) -> Event:
    """The next event of that type (others are skipped); fails after 5 s without one."""
    while True:
        received = await next_event(subscription)
        if received.type == type_:
            return received


async def test_list_is_newest_first_pages_without_gaps_or_repeats_and_hides_merged_contacts(
    book: Book,
) -> None:
    ids = [(await book.message(f"m{n}", sender=f"s{n}", name=f"Customer {n}"))[0] for n in range(8)]
    merged = await book.agent.post(f"/contacts/{ids[0]}/merge", {"other_id": ids[1]})
    assert merged.status == 200, merged.body
    rows = await sql(
        book.daemon.store,
        "SELECT id FROM contacts WHERE workspace_id = :ws AND merged_into IS NULL ORDER BY created_at DESC, id DESC",
        ws=book.workspace_id,
    )
    expected = [row[0] for row in rows]
    assert expected == [i for i in reversed(ids) if i != ids[1]]  # newest first, the merged one left out

    pages = await all_pages(book.agent, 3)
    assert [len(page) for page in pages] == [3, 3, 1]
    listed = [item["id"] for page in pages for item in page]
    assert listed == expected
    first = next(item for page in pages for item in page if item["id"] == ids[2])
    assert first["name"] == "Customer 2" and first["merged_into"] is None
    assert [(i["kind"], i["address"], i["display_name"]) for i in first["identities"]] == [
        ("api", "s2", "Customer 2")
    ]
    kept = next(item for page in pages for item in page if item["id"] == ids[0])
    assert sorted(i["address"] for i in kept["identities"]) == ["s0", "s1"]

    bad = await book.agent.get("/contacts", cursor="not-a-cursor")
    assert bad.status == 400 and field_of(bad) == "cursor"
    too_many = await book.agent.get("/contacts", limit="101")
    assert too_many.status == 400 and field_of(too_many) == "limit"
    unknown = await book.agent.get("/contacts", sort="name")
    assert unknown.status == 400 and unknown.error_code == "unknown_field" and field_of(unknown) == "sort"


async def test_search_finds_contacts_by_current_and_old_names(book: Book) -> None:
    ada, _ = await book.message("m1", sender="c-ada", name="Ada Lovelace")
    bob, _ = await book.message("m2", sender="c-bob", name="Bob Lovelace-Smith", text="Ada told me to write")
    await book.message("m3", sender="c-ada", name="Ada King")

    assert await search_ids(book.agent, "king") == [ada]
    assert await search_ids(book.agent, "Lovelace") == [bob, ada]  # the newest match first
    assert await search_ids(book.agent, "ada") == [ada]  # listed once; message text is not a name
    assert await search_ids(book.agent, "lov*") == [bob, ada]
    assert await search_ids(book.agent, "ada smith") == []
    assert await search_ids(book.agent, "nobody") == []
    reply = await book.agent.get("/contacts", q="king")
    assert reply.body["items"][0]["name"] == "Ada King"


async def test_search_finds_contacts_by_address_prefix_and_exact_address(book: Book) -> None:
    ada, _ = await book.message(
        "m1", sender="ada.lovelace@example.com", kind="email", channel_id=book.mail_id
    )
    adam, _ = await book.message("m2", sender="adam@example.org", kind="email", channel_id=book.mail_id)
    bob, _ = await book.message(
        "m3", sender="bob@example.com", name="Bob", kind="email", channel_id=book.mail_id
    )

    assert await search_ids(book.agent, "ada.lovelace@example.com") == [ada]
    assert await search_ids(book.agent, "ADA.Lovelace@EXAMPLE") == [ada]
    assert await search_ids(book.agent, "ada") == [ada, adam]  # address order
    assert await search_ids(book.agent, "bob@") == [bob]
    assert await search_ids(book.agent, "carol@example.com") == []

    # An email set by hand is searchable too (through the full-text index).
    patched = await book.agent.patch(f"/contacts/{bob}", {"email": "Robert.Builder@shop.example"})
    assert patched.status == 200, patched.body
    assert await search_ids(book.agent, "robert.builder@shop.example") == [bob]


async def test_search_pages_list_each_contact_once_across_address_and_name_matches(book: Book) -> None:
    expected: set[str] = set()
    for n in range(5):  # match by address and by name: listed among the address matches only
        expected.add((await book.message(f"a{n}", sender=f"shop-{n}", name=f"Shop customer {n}"))[0])
    for n in range(5):  # match by name only
        expected.add((await book.message(f"b{n}", sender=f"x-{n}", name=f"Shop fan {n}"))[0])
    renamed, _ = await book.message("c1", sender="y-1", name="Shop old name")
    for n in range(3):  # between the two names of `renamed`, so they fall on different pages
        expected.add((await book.message(f"d{n}", sender=f"z-{n}", name=f"Shop regular {n}"))[0])
    await book.message("c2", sender="y-1", name="Shop new name")
    expected.add(renamed)
    # Two matching identities on one contact: listed once.
    keep, _ = await book.message("e1", sender="shop-keep-1", name="Kept")
    other, _ = await book.message("e2", sender="shop-keep-2", name="Shop merged away")
    assert (await book.agent.post(f"/contacts/{keep}/merge", {"other_id": other})).status == 200
    expected.add(keep)
    await book.message("f1", sender="unrelated", name="Someone else")

    for limit in (1, 2, 3, 100):
        pages = await all_pages(book.agent, limit, q="shop")
        listed = [item["id"] for page in pages for item in page]
        assert len(listed) == len(set(listed)), f"listed twice with limit {limit}"
        assert set(listed) == expected, f"limit {limit}"
    first_page = (await book.agent.get("/contacts", q="shop", limit="6")).body["items"]
    # Address matches first, in address order.
    assert [i["identities"][0]["address"] for i in first_page] == [
        "shop-0",
        "shop-1",
        "shop-2",
        "shop-3",
        "shop-4",
        "shop-keep-1",
    ]
    stale = await book.agent.get(
        "/contacts",
        q="other",
        cursor=(await book.agent.get("/contacts", q="shop", limit="1")).body["next_cursor"],
    )
    assert stale.status == 400 and field_of(stale) == "cursor"


async def test_get_contact_has_identities_and_conversations_newest_first(book: Book) -> None:
    ada, first = await book.message("m1", sender="ada", name="Ada", subject="Parcel")
    await book.message("m2", sender="ada", name="Ada", subject="Parcel again")  # same conversation
    ada_mail, second = await book.message(
        "m3", sender="ada@example.com", kind="email", channel_id=book.mail_id
    )
    assert (await book.agent.post(f"/contacts/{ada}/merge", {"other_id": ada_mail})).status == 200
    await book.message("m4", sender="ada", text="anyone?")  # `first` has the newest activity now

    reply = await book.seller.get(f"/contacts/{ada}")
    assert reply.status == 200, reply.body
    body = reply.body
    assert body["id"] == ada and body["name"] == "Ada" and body["merged_into"] is None
    assert [(i["kind"], i["address"]) for i in body["identities"]] == [
        ("api", "ada"),
        ("email", "ada@example.com"),
    ]
    assert [c["id"] for c in body["conversations"]] == [first, second]
    assert body["conversations"][0]["subject"] == "Parcel"
    assert body["conversations"][0]["status"] == "open"
    assert body["conversations"][0]["channel"] == {"id": book.channel_id, "kind": "api", "name": "shop"}
    assert body["conversations"][1]["channel"]["id"] == book.mail_id

    gone = await book.agent.get(f"/contacts/{ada_mail}")
    assert gone.status == 200
    assert gone.body["merged_into"] == ada
    assert gone.body["identities"] == [] and gone.body["conversations"] == []

    missing = await book.agent.get("/contacts/nope")
    assert missing.status == 404 and missing.error_code == "not_found"


async def test_patch_changes_fields_publishes_and_keeps_the_old_name_searchable(book: Book) -> None:
    ada, _ = await book.message("m1", sender="ada", name="Ada Lovelace")
    async with subscribed(book.daemon.bus, book.workspace_id) as subscription:
        reply = await book.agent.patch(
            f"/contacts/{ada}",
            {
                "name": "Augusta King",
                "email": "ada@example.com",
                "language": "en-GB",
                "attributes": {"vip": True},
            },
        )
        assert reply.status == 200, reply.body
        published = await wait_for_event(subscription, "contact.updated")
    assert published.data["contact_id"] == ada
    assert published.data["changed"] == ["attributes", "email", "language", "name"]
    body = reply.body
    assert (body["name"], body["email"], body["language"], body["attributes"]) == (
        "Augusta King",
        "ada@example.com",
        "en-GB",
        {"vip": True},
    )
    assert body["identities"][0]["address"] == "ada"
    assert await search_ids(book.agent, "augusta") == [ada]
    assert await search_ids(book.agent, "lovelace") == [ada]
    audit = await sql(
        book.daemon.store, "SELECT type, actor FROM audit_events WHERE type = 'contact.updated'"
    )
    assert len(audit) == 1 and audit[0][1].startswith("user:")

    # Only what is sent changes; attributes are replaced, not merged; null clears.
    again = await book.agent.patch(f"/contacts/{ada}", {"attributes": {"tier": "gold"}, "language": None})
    assert again.status == 200
    assert again.body["attributes"] == {"tier": "gold"}
    assert again.body["language"] is None and again.body["name"] == "Augusta King"
    got = await book.agent.get(f"/contacts/{ada}")
    assert got.body["attributes"] == {"tier": "gold"} and got.body["email"] == "ada@example.com"

    for body_, field in [
        ({"nickname": "x"}, "nickname"),
        ({"name": "   "}, "name"),
        ({"email": "not an email"}, "email"),
        ({"language": "english please"}, "language"),
        ({"attributes": None}, "attributes"),
        ({"attributes": ["a"]}, "attributes"),
        ({"attributes": {"notes": "x" * 17_000}}, "attributes"),
        ({"attributes": {f"k{n}": n for n in range(101)}}, "attributes"),
    ]:
        bad = await book.agent.patch(f"/contacts/{ada}", body_)
        assert bad.status == 400, (body_, bad.body)
        assert field_of(bad) == field, (body_, bad.body)
    missing = await book.agent.patch("/contacts/nope", {"name": "x"})
    assert missing.status == 404


async def test_merge_moves_everything_and_later_messages_land_on_the_kept_contact(book: Book) -> None:
    keep, keep_conversation = await book.message("k1", sender="ada", text="first")
    assert (
        await book.agent.patch(f"/contacts/{keep}", {"attributes": {"tier": "gold", "vip": False}})
    ).status == 200
    mail = {"kind": "email", "channel_id": book.mail_id}
    other, other_conversation = await book.message(
        "o1", sender="ada@example.com", name="Ada Lovelace", **mail
    )
    await book.message("o2", sender="ada@example.com", text="second", **mail)
    patched = await book.agent.patch(
        f"/contacts/{other}",
        {"email": "ada@example.com", "language": "en", "attributes": {"vip": True, "x": 1}},
    )
    assert patched.status == 200
    # A thread shared with a third contact: one of the other's messages sits in that contact's conversation.
    carol, shared = await book.message(
        "c1", sender="carol@example.com", thread=ThreadHints(own_keys=("t:1",)), **mail
    )
    sender, landed = await book.message(
        "o3", sender="ada@example.com", thread=ThreadHints(keys=("t:1",)), **mail
    )
    assert (sender, landed) == (other, shared)
    moved = await sql(
        book.daemon.store, "SELECT id FROM messages WHERE sender_contact_id IN (:a, :b)", a=keep, b=other
    )
    (carols,) = await sql(book.daemon.store, "SELECT id FROM messages WHERE sender_contact_id = :c", c=carol)
    other_identities = await sql(
        book.daemon.store, "SELECT id FROM identities WHERE contact_id = :c", c=other
    )
    assert len(moved) == 4 and len(other_identities) == 1

    async with subscribed(book.daemon.bus, book.workspace_id) as subscription:
        reply = await book.admin.post(f"/contacts/{keep}/merge", {"other_id": other})
        assert reply.status == 200, reply.body
        merged_event = await wait_for_event(subscription, "contact.merged")
        updated = await wait_for_event(subscription, "conversation.updated")
    assert merged_event.data["contact_id"] == keep and merged_event.data["merged_id"] == other
    assert updated.conversation_id == other_conversation

    body = reply.body
    assert body["id"] == keep
    assert (body["name"], body["email"], body["language"]) == ("Ada Lovelace", "ada@example.com", "en")
    assert body["attributes"] == {"tier": "gold", "vip": False, "x": 1}  # the kept contact wins
    assert [i["address"] for i in body["identities"]] == ["ada", "ada@example.com"]
    assert {i["id"] for i in body["identities"]} >= {row[0] for row in other_identities}
    assert {c["id"] for c in body["conversations"]} == {keep_conversation, other_conversation}

    # Every message is reachable from the kept contact, and carries it as its sender.
    senders: dict[str, str | None] = {}
    for conversation_id in [*(c["id"] for c in body["conversations"]), shared]:
        page = await book.agent.get(f"/conversations/{conversation_id}/messages")
        assert page.status == 200, page.body
        senders |= {m["id"]: m["sender"]["id"] for m in page.body["items"]}
    assert senders == {**{row[0]: keep for row in moved}, carols[0]: carol}
    assert await sql(book.daemon.store, "SELECT id FROM messages WHERE sender_contact_id = :c", c=other) == []
    assert await sql(book.daemon.store, "SELECT id FROM conversations WHERE contact_id = :c", c=other) == []
    assert await sql(book.daemon.store, "SELECT id FROM identities WHERE contact_id = :c", c=other) == []
    audit = await sql(book.daemon.store, "SELECT actor, data FROM audit_events WHERE type = 'contact.merged'")
    assert len(audit) == 1 and other in audit[0][1] and audit[0][0].startswith("user:")

    gone = await book.agent.get(f"/contacts/{other}")
    assert gone.status == 200 and gone.body["merged_into"] == keep
    assert other not in [item["id"] for page in await all_pages(book.agent, 100) for item in page]
    assert await search_ids(book.agent, "lovelace") == [keep]  # the other's search rows count for keep
    assert await search_ids(book.agent, "ada@example") == [keep]

    # New messages from the other's identity arrive on the kept contact, in its conversation on that channel.
    sender, conversation = await book.message("o4", sender="ada@example.com", text="third", **mail)
    assert (sender, conversation) == (keep, other_conversation)


async def test_merge_moves_old_messages_and_those_arriving_while_it_runs(
    book: Book, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No margin: every message so far is only found by the unlocked scan, the one arriving after it only
    # by the catch-up inside the transaction.
    monkeypatch.setattr(contacts_store, "MERGE_SCAN_MARGIN_SECONDS", 0)
    mail = {"kind": "email", "channel_id": book.mail_id}
    keep, _ = await book.message("k1", sender="ada")
    other, _ = await book.message("o1", sender="ada@example.com", **mail)
    carol, shared = await book.message(
        "c1", sender="carol@example.com", thread=ThreadHints(own_keys=("t:1",)), **mail
    )
    await book.message("o2", sender="ada@example.com", thread=ThreadHints(keys=("t:1",)), **mail)
    store = book.daemon.store
    write = store.write
    arrived: list[str] = []

    @asynccontextmanager
    async def write_after_a_message_arrived() -> AsyncIterator[Any]:
        if not arrived:
            arrived.append("o3")
            sender, conversation = await book.message(
                "o3", sender="ada@example.com", thread=ThreadHints(keys=("t:1",)), **mail
            )
            assert (sender, conversation) == (other, shared)
        async with write() as conn:
            yield conn

    monkeypatch.setattr(store, "write", write_after_a_message_arrived)
    # The store itself: through the API, the token's last-use write could be the first write.
    outcome = await store.merge_contacts(book.workspace_id, keep, other, "user:test", utcnow())
    assert arrived == ["o3"] and outcome.messages == 3
    monkeypatch.undo()
    rows = await sql(store, "SELECT external_id, sender_contact_id FROM messages ORDER BY external_id")
    assert dict(rows) == {"c1": carol, "k1": keep, "o1": keep, "o2": keep, "o3": keep}


async def test_merge_errors_name_the_field(book: Book) -> None:
    ada, _ = await book.message("m1", sender="ada")
    bob, _ = await book.message("m2", sender="bob")
    carol, _ = await book.message("m3", sender="carol")
    result = await book.daemon.ingestor(inbound(book.other_channel_id, "x1", sender="stranger"))
    (stranger,) = (
        await sql(
            book.daemon.store, "SELECT sender_contact_id FROM messages WHERE id = :id", id=result.message_id
        )
    )[0]
    assert (await book.agent.post(f"/contacts/{ada}/merge", {"other_id": bob})).status == 200

    for path_id, body, status, field in [
        (ada, {"other_id": ada}, 400, "other_id"),  # itself
        (ada, {"other_id": "nope"}, 400, "other_id"),  # unknown
        (ada, {"other_id": stranger}, 400, "other_id"),  # another workspace's, answered as unknown
        (carol, {"other_id": bob}, 400, "other_id"),  # merged already
        (bob, {"other_id": carol}, 400, "id"),  # into a merged contact
        (ada, {}, 400, "other_id"),
        (ada, {"other_id": ""}, 400, "other_id"),
        (ada, {"other_id": carol, "force": True}, 400, "force"),
    ]:
        reply = await book.agent.post(f"/contacts/{path_id}/merge", body)
        assert reply.status == status, (path_id, body, reply.body)
        assert field_of(reply) == field, (body, reply.body)
    unknown = await book.agent.post(f"/contacts/{stranger}/merge", {"other_id": "nope"})
    missing = await book.agent.post("/contacts/nope/merge", {"other_id": carol})
    assert unknown.status == missing.status == 404
    patch_merged = await book.agent.patch(f"/contacts/{bob}", {"name": "Bob"})
    assert patch_merged.status == 400 and field_of(patch_merged) == "id"
    # Nothing moved by any of the refused merges.
    assert (await book.agent.get(f"/contacts/{carol}")).body["identities"][0]["address"] == "carol"
    assert (await book.agent.get(f"/contacts/{carol}")).body["merged_into"] is None
    unknown_message = (await book.agent.post(f"/contacts/{ada}/merge", {"other_id": stranger})).body["error"][
        "message"
    ]
    assert unknown_message == f"other_id: no contact with id {stranger!r} in this workspace"


async def test_seller_reads_contacts_but_cannot_change_or_merge_them(book: Book) -> None:
    ada, _ = await book.message("m1", sender="ada", name="Ada")
    bob, _ = await book.message("m2", sender="bob")
    assert (await book.seller.get("/contacts")).status == 200
    assert (await book.seller.get("/contacts", q="ada")).body["items"][0]["id"] == ada
    assert (await book.seller.get(f"/contacts/{ada}")).status == 200
    for reply in [
        await book.seller.patch(f"/contacts/{ada}", {"name": "Eve"}),
        await book.seller.patch(f"/contacts/{ada}", {"no such field": 1}),  # 403 whatever the body
        await book.seller.post(f"/contacts/{ada}/merge", {"other_id": bob}),
        await book.seller.post(f"/contacts/{ada}/merge", {}),
    ]:
        assert reply.status == 403 and reply.error_code == "forbidden", reply.body
    got = await book.agent.get(f"/contacts/{ada}")
    assert (
        got.body["name"] == "Ada" and (await book.agent.get(f"/contacts/{bob}")).body["merged_into"] is None
    )
    assert (await book.agent.as_token(None).get("/contacts")).status == 401
    assert (await book.admin.patch(f"/contacts/{ada}", {"name": "Ada L."})).status == 200


async def test_another_workspaces_contacts_are_404_exactly_as_missing_ones(book: Book) -> None:
    ada, _ = await book.message("m1", sender="ada", name="Ada Lovelace")
    bob, _ = await book.message("m2", sender="bob")
    for reply, missing in [
        (await book.outsider.get(f"/contacts/{ada}"), await book.outsider.get("/contacts/nope")),
        (
            await book.outsider.patch(f"/contacts/{ada}", {"name": "Eve"}),
            await book.outsider.patch("/contacts/nope", {"name": "Eve"}),
        ),
        (
            await book.outsider.post(f"/contacts/{ada}/merge", {"other_id": bob}),
            await book.outsider.post("/contacts/nope/merge", {"other_id": bob}),
        ),
    ]:
        assert reply.status == missing.status == 404
        assert reply.body["error"]["message"] == missing.body["error"]["message"].replace("'nope'", repr(ada))
    assert (await book.outsider.get("/contacts")).body["items"] == []
    assert (await book.outsider.get("/contacts", q="lovelace")).body["items"] == []
    assert (await book.outsider.get("/contacts", q="ada")).body["items"] == []
    got = await book.agent.get(f"/contacts/{ada}")
    assert got.body["name"] == "Ada Lovelace" and got.body["identities"][0]["address"] == "ada"
    assert (await book.agent.get(f"/contacts/{bob}")).body["merged_into"] is None


async def test_list_search_and_details_read_through_indexes(book: Book) -> None:
    ada, _ = await book.message(
        "m1", sender="ada@example.com", name="Ada", kind="email", channel_id=book.mail_id
    )
    for n in range(8):
        await book.message(f"m{n + 2}", sender=f"c{n}", name=f"Customer {n}")
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            statements.append((statement, params))

    engine = book.daemon.store.engine.sync_engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        page = await book.agent.get("/contacts", limit="2")
        await book.agent.get("/contacts", limit="2", cursor=page.body["next_cursor"])
        first = await book.agent.get("/contacts", q="c", limit="1")
        await book.agent.get("/contacts", q="c", limit="1", cursor=first.body["next_cursor"])
        named = await book.agent.get("/contacts", q="customer", limit="1")
        await book.agent.get("/contacts", q="customer", limit="1", cursor=named.body["next_cursor"])
        await book.agent.get(f"/contacts/{ada}")
        wide = await book.agent.get("/contacts", q="customer", limit="100")
        assert len(wide.body["items"]) == 8  # enough ids for SQLite to weigh another index against them
        await book.agent.get("/contacts", q="c", limit="100")
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    plans: list[str] = []
    async with book.daemon.store.read() as conn:
        for statement, params in statements:
            if "api_tokens" in statement:
                continue
            rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)
            plan = " | ".join(str(row[-1]) for row in rows)
            plans.append(plan)
            if "contacts.id IN" in statement:
                assert "sqlite_autoindex_contacts_1 (id=?)" in plan, f"{statement}\n-> {plan}"
            for table in ("contacts", "identities", "conversations", "messages", "channel_accounts"):
                for step in plan.split(" | "):
                    assert not (step.startswith(f"SCAN {table}") and "INDEX" not in step), (
                        f"{statement}\n-> {plan}"
                    )
    assert any("ix_contacts_workspace_id_created_at_id" in plan for plan in plans)
    assert any("(workspace_id=? AND kind=? AND address>? AND address<?)" in plan for plan in plans)
    assert len(plans) >= 10
    assert any(
        "ix_conversations_contact_id_channel_account_id_last_activity_at (contact_id=?)" in p for p in plans
    )
