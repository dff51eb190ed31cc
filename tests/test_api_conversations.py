"""The inbox API on a real daemon: conversation lists, filters, search, changes, messages, notes, read marks
and attachment downloads."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from aggregator.daemon import Daemon
from aggregator.model import InboundAttachment, MessageFlags, Role, ThreadHints, utcnow
from fakes.callback import CallbackServer
from support.api import ApiClient, user_with_token
from support.app import SECRET, add_channel, daemon_url, inbound, make_settings, running_daemon, sql

pytestmark = pytest.mark.timeout(60)


@dataclass
class Inbox:
    daemon: Daemon
    channel_id: str
    agent: ApiClient
    agent_id: str
    other_agent: ApiClient
    seller: ApiClient
    admin: ApiClient
    outsider: ApiClient  # an agent of another workspace

    @property
    def workspace_id(self) -> str:
        assert self.daemon.bootstrap is not None
        return self.daemon.bootstrap.workspace.id

    async def message(self, external_id: str, *, sender: str = "c1", text: str = "hello", **fields: object) -> str:
        result = await self.daemon.ingestor(
            inbound(self.channel_id, external_id, sender=sender, name=f"Customer {sender}", text_body=text, **fields)
        )
        return result.conversation_id


@pytest.fixture
async def inbox(tmp_path: Path, callback_server: CallbackServer) -> AsyncIterator[Inbox]:
    async with running_daemon(make_settings(tmp_path)) as daemon, aiohttp.ClientSession() as http:
        assert daemon.bootstrap is not None
        ws = daemon.bootstrap.workspace.id
        channel_id = await add_channel(
            daemon.store, ws, {"secret": SECRET, "callback_url": callback_server.url}, name="shop"
        )
        assert daemon.channels is not None and await daemon.channels.get(channel_id) is not None
        other_ws = await daemon.store.create_workspace("other shop")
        base = daemon_url(daemon)
        agent_id, agent_token = await user_with_token(daemon.store, ws, Role.AGENT, languages=("de",))
        _, other_agent_token = await user_with_token(daemon.store, ws, Role.AGENT)
        _, seller_token = await user_with_token(daemon.store, ws, Role.SELLER)
        _, admin_token = await user_with_token(daemon.store, ws, Role.ADMIN)
        _, outsider_token = await user_with_token(daemon.store, other_ws.id, Role.AGENT)
        yield Inbox(
            daemon,
            channel_id,
            ApiClient(http, base, agent_token),
            agent_id,
            ApiClient(http, base, other_agent_token),
            ApiClient(http, base, seller_token),
            ApiClient(http, base, admin_token),
            ApiClient(http, base, outsider_token),
        )


async def test_list_shows_conversations_newest_activity_first_with_contact_preview_and_unread(
    inbox: Inbox,
) -> None:
    first = await inbox.message("m1", sender="ada", text="Where is my parcel?")
    second = await inbox.message("m2", sender="bob", text="Invoice please")
    await inbox.message("m3", sender="ada", text="Hello?\n  Anyone   there?")
    reply = await inbox.agent.get("/conversations")
    assert reply.status == 200
    items = reply.body["items"]
    assert [item["id"] for item in items] == [first, second]
    top = items[0]
    assert top["contact"]["name"] == "Customer ada"
    assert top["channel"] == {"id": inbox.channel_id, "kind": "api", "name": "shop"}
    assert top["last_message"]["preview"] == "Hello? Anyone there?"
    assert top["last_message"]["direction"] == "in"
    assert top["unread_count"] == 2
    assert top["message_count"] == 2
    assert reply.body["next_cursor"] is None

    assert (await inbox.agent.post(f"/conversations/{first}/read")).status == 204
    mine = {i["id"]: i["unread_count"] for i in (await inbox.agent.get("/conversations")).body["items"]}
    theirs = {i["id"]: i["unread_count"] for i in (await inbox.other_agent.get("/conversations")).body["items"]}
    assert mine == {first: 0, second: 1}
    assert theirs == {first: 2, second: 1}
    await inbox.message("m4", sender="ada", text="still waiting")
    mine = {i["id"]: i["unread_count"] for i in (await inbox.agent.get("/conversations")).body["items"]}
    assert mine[first] == 1


async def test_cursor_pagination_returns_every_conversation_once_in_order(inbox: Inbox) -> None:
    ids = [await inbox.message(f"p{n}", sender=f"cust{n}") for n in range(23)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "5"} | ({"cursor": cursor} if cursor else {})
        reply = await inbox.agent.get("/conversations", **params)
        assert reply.status == 200
        assert len(reply.body["items"]) <= 5
        seen += [item["id"] for item in reply.body["items"]]
        cursor = reply.body["next_cursor"]
        pages += 1
        if cursor is None:
            break
    assert pages == 5
    assert seen == list(reversed(ids))


@pytest.mark.parametrize("cursor", ["garbage", "WzFd", "eyJhIjoxfQ", "W251bGwsIm51bGwiXQ"])
async def test_a_cursor_we_did_not_make_is_400_naming_cursor(inbox: Inbox, cursor: str) -> None:
    reply = await inbox.agent.get("/conversations", cursor=cursor)
    assert reply.status == 400
    assert reply.body["error"]["field"] == "cursor"


async def test_filters_by_status_assignee_team_label_language_priority_and_channel(inbox: Inbox) -> None:
    store, ws = inbox.daemon.store, inbox.workspace_id
    german = await inbox.message("f1", sender="hans", language_hint="de")
    resolved = await inbox.message("f2", sender="res")
    labelled = await inbox.message("f3", sender="lab")
    team_id = await sql_team(inbox, "billing")
    assert (await inbox.agent.patch(f"/conversations/{resolved}", {"status": "resolved"})).status == 200
    assert (
        await inbox.agent.patch(
            f"/conversations/{labelled}",
            {"labels": ["vip", "refund"], "priority": "urgent", "assignee_id": inbox.agent_id, "team_id": team_id},
        )
    ).status == 200
    other_channel = await add_channel(store, ws, {"secret": SECRET}, name="second shop")
    elsewhere = (
        await inbox.daemon.ingestor(inbound(other_channel, "f4", sender="zed", text_body="hi"))
    ).conversation_id

    async def ids(**params: str) -> set[str]:
        reply = await inbox.agent.get("/conversations", **params)
        assert reply.status == 200, reply.body
        return {item["id"] for item in reply.body["items"]}

    assert await ids() == {german, labelled, elsewhere}
    assert await ids(status="all") == {german, resolved, labelled, elsewhere}
    assert await ids(status="resolved") == {resolved}
    assert await ids(status="resolved,open") == {german, resolved, labelled, elsewhere}
    assert await ids(assignee="me") == {labelled}
    assert await ids(assignee=inbox.agent_id) == {labelled}
    assert await ids(assignee="none") == {german, elsewhere}
    assert await ids(team=team_id) == {labelled}
    assert await ids(label="vip") == {labelled}
    assert await ids(label="nope") == set()
    assert await ids(language="de") == {german}
    assert await ids(priority="urgent") == {labelled}
    assert await ids(channel=other_channel) == {elsewhere}
    assert await ids(channel="api") == {german, labelled, elsewhere}
    assert await ids(channel="email") == set()
    assert await ids(status="all", label="vip", priority="urgent", assignee="me") == {labelled}
    bad = await inbox.agent.get("/conversations", status="opened")
    assert bad.status == 400
    assert bad.body["error"]["field"] == "status"
    assert (await inbox.agent.get("/conversations", limit="101")).body["error"]["field"] == "limit"


async def sql_team(inbox: Inbox, name: str) -> str:
    from aggregator.model import new_id
    from support.app import sql_write

    team_id = new_id()
    await sql_write(
        inbox.daemon.store,
        "INSERT INTO teams (id, workspace_id, name, languages, created_at) "
        "VALUES (:id, :ws, :name, '[]', '2026-01-01T00:00:00.000000Z')",
        id=team_id,
        ws=inbox.workspace_id,
        name=name,
    )
    return team_id


async def test_full_text_search_finds_words_and_pages_without_repeats(inbox: Inbox) -> None:
    wanted = []
    for n in range(12):
        wanted.append(await inbox.message(f"s{n}", sender=f"s{n}", text=f"my parcel number {n} is late"))
        await inbox.message(f"s{n}b", sender=f"s{n}", text="another parcel question")
    await inbox.message("x", sender="other", text="nothing to see")
    reply = await inbox.outsider.get("/conversations", q="parcel")
    assert reply.body["items"] == []

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"q": "parcel", "limit": "5"} | ({"cursor": cursor} if cursor else {})
        reply = await inbox.agent.get("/conversations", **params)
        assert reply.status == 200
        seen += [item["id"] for item in reply.body["items"]]
        cursor = reply.body["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(wanted)
    assert len(seen) == len(set(seen))
    assert {i["id"] for i in (await inbox.agent.get("/conversations", q="number 7")).body["items"]} == {wanted[7]}
    assert {i["id"] for i in (await inbox.agent.get("/conversations", q="parc*")).body["items"]} == set(wanted)
    # Words only: FTS5 syntax in a query is taken literally, never an error.
    odd = await inbox.agent.get("/conversations", q='"parcel" OR NEAR( -late ^')
    assert odd.status == 200


async def test_patch_changes_status_and_fields_and_refuses_what_it_cannot_apply(inbox: Inbox) -> None:
    conversation = await inbox.message("c1")
    path = f"/conversations/{conversation}"
    resolved = await inbox.agent.patch(path, {"status": "resolved"})
    assert resolved.status == 200
    assert resolved.body["status"] == "resolved"
    assert resolved.body["resolved_at"] is not None
    reopened = await inbox.agent.patch(path, {"status": "open"})
    assert reopened.body["resolved_at"] is None

    for body, field in [
        ({"assignee_id": "nobody"}, "assignee_id"),
        ({"status": "closed"}, "status"),
        ({"status": None}, "status"),
        ({"labels": ["ok", ""]}, "labels.1"),
        ({"labels": "vip"}, "labels"),
        ({"priority": "urgent", "colour": "red"}, "colour"),
        ({"status": "snoozed"}, "snooze_until"),
        ({"snooze_until": (utcnow() - timedelta(minutes=1)).isoformat()}, "snooze_until"),
        ({"snooze_until": "2030-01-01T00:00:00"}, "snooze_until"),
        ({"team_id": "nope"}, "team_id"),
    ]:
        reply = await inbox.agent.patch(path, body)
        assert reply.status == 400, (body, reply.body)
        assert reply.body["error"]["field"] == field, (body, reply.body)
    assert (await inbox.agent.patch(path, {"assignee_id": inbox.agent_id})).body["assignee_id"] == inbox.agent_id
    assert (await inbox.agent.patch(path, {"assignee_id": None})).body["assignee_id"] is None
    labels = await inbox.agent.patch(path, {"labels": ["b", "a", "b"]})
    assert labels.body["labels"] == ["a", "b"]
    audit = await sql(inbox.daemon.store, "SELECT type, actor FROM audit_events WHERE conversation_id = :c "
                      "AND type = 'conversation.updated'", c=conversation)
    assert len(audit) == 5
    assert all(row.actor == f"user:{inbox.agent_id}" for row in audit)


async def test_a_snoozed_conversation_reopens_on_a_new_customer_message_but_not_on_an_auto_reply(
    inbox: Inbox,
) -> None:
    conversation = await inbox.message("z1", sender="sleepy")
    until = (utcnow() + timedelta(days=2)).isoformat()
    snoozed = await inbox.agent.patch(f"/conversations/{conversation}", {"snooze_until": until})
    assert snoozed.body["status"] == "snoozed"
    assert snoozed.body["snoozed_until"] is not None
    assert (await inbox.agent.get("/conversations", status="snoozed")).body["items"][0]["id"] == conversation
    await inbox.message("z2", sender="sleepy", flags=MessageFlags(auto_submitted=True))
    assert (await inbox.agent.get(f"/conversations/{conversation}")).body["status"] == "snoozed"
    await inbox.message("z3", sender="sleepy")
    woken = (await inbox.agent.get(f"/conversations/{conversation}")).body
    assert woken["status"] == "open"
    assert woken["snoozed_until"] is None


async def test_messages_page_backwards_oldest_first_within_a_page(inbox: Inbox) -> None:
    conversation = ""
    for n in range(7):
        conversation = await inbox.message(f"h{n}", sender="chatty", text=f"line {n}")
    path = f"/conversations/{conversation}/messages"
    first = await inbox.agent.get(path, limit="3")
    assert [m["text"] for m in first.body["items"]] == ["line 4", "line 5", "line 6"]
    second = await inbox.agent.get(path, limit="3", cursor=first.body["next_cursor"])
    assert [m["text"] for m in second.body["items"]] == ["line 1", "line 2", "line 3"]
    third = await inbox.agent.get(path, limit="3", cursor=second.body["next_cursor"])
    assert [m["text"] for m in third.body["items"]] == ["line 0"]
    assert third.body["next_cursor"] is None
    item = third.body["items"][0]
    assert item["direction"] == "in"
    assert item["kind"] == "message"
    assert item["sender"]["type"] == "contact"
    assert item["sender"]["name"] == "Customer chatty"


async def test_a_reply_is_queued_then_delivered_and_a_note_is_never_sent(
    inbox: Inbox, callback_server: CallbackServer
) -> None:
    conversation = await inbox.message("r1", sender="ada", text="Where is it?")
    reply = await inbox.agent.post(f"/conversations/{conversation}/messages", {"text": "It ships today"})
    assert reply.status == 202
    assert reply.body["delivery_status"] == "queued"
    assert reply.body["direction"] == "out"
    assert reply.body["sender"] == {"type": "user", "id": inbox.agent_id, "name": reply.body["sender"]["name"]}
    note = await inbox.agent.post(f"/conversations/{conversation}/messages", {"text": "VIP, be nice", "private": True})
    assert note.status == 202
    assert note.body["kind"] == "note"
    assert note.body["delivery_status"] is None

    deliveries = await callback_server.wait_for_deliveries(1)
    assert [d.body["text"] for d in deliveries] == ["It ships today"]

    async def delivered() -> bool:
        items = (await inbox.agent.get(f"/conversations/{conversation}/messages")).body["items"]
        return next(m for m in items if m["id"] == reply.body["id"])["delivery_status"] == "sent"

    from support.app import wait_until

    await wait_until(delivered, what="the reply marked sent")
    assert callback_server.delivered_texts() == ["It ships today"]
    outbox = await sql(inbox.daemon.store, "SELECT message_id FROM outbox")
    assert [row.message_id for row in outbox] == [reply.body["id"]]
    listed = (await inbox.agent.get(f"/conversations/{conversation}")).body
    assert listed["last_message"]["preview"] == "It ships today"
    assert listed["last_message"]["direction"] == "out"
    assert listed["first_response_at"] is not None
    found = await inbox.agent.get("/conversations", q="nice")
    assert [i["id"] for i in found.body["items"]] == [conversation]


async def test_posting_checks_permission_before_the_body_and_limits_text_and_body_size(inbox: Inbox) -> None:
    conversation = await inbox.message("l1")
    path = f"/conversations/{conversation}/messages"
    for body in ({"text": "hi"}, {"nonsense": True}, {"text": ""}):
        reply = await inbox.seller.post(path, body)
        assert reply.status == 403, body
        assert reply.body["error"]["code"] == "forbidden"
    raw = await inbox.seller.call("POST", path, data=b"{not json", headers={"Content-Type": "application/json"})
    assert raw.status == 403
    assert (await inbox.agent.post(path, {"text": "x" * 100_001})).body["error"]["field"] == "text"
    assert (await inbox.agent.post(path, {"text": "   "})).body["error"]["field"] == "text"
    assert (await inbox.agent.post(path, {"text": "hi", "private": "maybe"})).body["error"]["field"] == "private"
    assert (await inbox.agent.post(path, {})).body["error"]["code"] == "missing_field"
    huge = await inbox.agent.call(
        "POST", path, data=json.dumps({"text": "y" * (2 * 1024 * 1024)}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert huge.status == 413
    assert huge.body["error"]["code"] == "body_too_large"
    bad_json = await inbox.agent.call("POST", path, data=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status == 400
    assert bad_json.body["error"]["code"] == "invalid_json"
    not_object = await inbox.agent.post(path, ["text"])
    assert not_object.status == 400
    stored = await sql(inbox.daemon.store, "SELECT count(*) AS n FROM messages WHERE direction = 'out'")
    assert stored[0].n == 0


async def test_another_workspaces_records_are_404_exactly_like_missing_ones(inbox: Inbox) -> None:
    conversation = await inbox.message("w1")
    missing = await inbox.outsider.get("/conversations/0123456789abcdef0123456789abcdef")
    for method, path, body in [
        ("GET", f"/conversations/{conversation}", None),
        ("PATCH", f"/conversations/{conversation}", {"status": "resolved"}),
        ("GET", f"/conversations/{conversation}/messages", None),
        ("POST", f"/conversations/{conversation}/messages", {"text": "hijack"}),
        ("POST", f"/conversations/{conversation}/read", None),
    ]:
        reply = await inbox.outsider.call(method, path, json_body=body)
        assert reply.status == 404, (method, path)
        assert reply.body["error"]["code"] == missing.body["error"]["code"] == "not_found"
    assert (await inbox.agent.get(f"/conversations/{conversation}")).body["status"] == "open"
    assert (await inbox.outsider.get("/conversations")).body["items"] == []


async def test_attachments_download_with_their_type_and_html_never_inline(inbox: Inbox) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
    html = b"<html><script>alert(document.cookie)</script></html>"
    conversation = await inbox.message(
        "a1",
        html='<p onclick="steal()">Hi</p><script>alert(1)</script><b>bold</b>',
        attachments=(
            InboundAttachment("photo.png", "image/png", png),
            InboundAttachment('evil "page".html', "text/html", html),
        ),
    )
    items = (await inbox.agent.get(f"/conversations/{conversation}/messages")).body["items"]
    message = items[0]
    assert "script" not in message["html"] and "onclick" not in message["html"]
    assert "<b>bold</b>" in message["html"]
    files = {a["filename"]: a for a in message["attachments"]}
    assert files["photo.png"]["size"] == len(png)
    photo = await inbox.agent.call("GET", files["photo.png"]["url"].removeprefix("/api/v1"))
    assert photo.status == 200
    assert photo.body == png
    assert photo.headers["Content-Type"] == "image/png"
    assert photo.headers["Content-Disposition"].startswith("inline")
    page = await inbox.agent.call("GET", files['evil "page".html']["url"].removeprefix("/api/v1"))
    assert page.status == 200
    assert page.body == html
    assert page.headers["Content-Type"] == "application/octet-stream"
    assert page.headers["Content-Disposition"].startswith("attachment")
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in page.headers["Content-Security-Policy"]
    stolen = await inbox.outsider.call("GET", files["photo.png"]["url"].removeprefix("/api/v1"))
    assert stolen.status == 404


async def test_without_a_valid_token_everything_but_the_document_is_401(inbox: Inbox) -> None:
    anonymous = inbox.agent.as_token(None)
    assert (await anonymous.get("/openapi.json")).status == 200
    for token in (None, "agg_not-a-token"):
        for method, path in [("GET", "/conversations"), ("GET", "/conversations/x"), ("POST", "/conversations/x/read")]:
            reply = await inbox.agent.as_token(token).call(method, path)
            assert reply.status == 401
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    basic = await inbox.agent.call("GET", "/conversations", headers={"Authorization": "Basic YTpi"})
    assert basic.status == 401
    unknown = await inbox.agent.get("/no-such-thing")
    assert unknown.status == 404
    assert unknown.body["error"]["code"] == "unknown_endpoint"


async def test_thread_keys_keep_replies_in_one_conversation_in_the_list(inbox: Inbox) -> None:
    first = await inbox.message("t1", sender="k", thread=ThreadHints(keys=("order-1",), own_keys=("order-1",),
                                                                     by_contact=False))
    second = await inbox.message("t2", sender="k", thread=ThreadHints(keys=("order-2",), own_keys=("order-2",),
                                                                      by_contact=False))
    again = await inbox.message("t3", sender="k", thread=ThreadHints(keys=("order-1",), by_contact=False))
    assert again == first != second
    items = (await inbox.agent.get("/conversations")).body["items"]
    assert [i["id"] for i in items] == [first, second]
    assert items[0]["message_count"] == 2


async def test_label_filter_gives_the_same_pages_through_either_plan(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aggregator.store import inbox as inbox_queries

    labelled = []
    for n in range(9):
        conversation = await inbox.message(f"lb{n}", sender=f"lb{n}")
        if n % 3 != 1:
            await inbox.agent.patch(f"/conversations/{conversation}", {"labels": ["vip"]})
            labelled.append(conversation)

    async def pages() -> list[str]:
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params = {"label": "vip", "limit": "2"} | ({"cursor": cursor} if cursor else {})
            body = (await inbox.agent.get("/conversations", **params)).body
            seen += [item["id"] for item in body["items"]]
            if (cursor := body["next_cursor"]) is None:
                return seen

    rare = await pages()
    monkeypatch.setattr(inbox_queries, "RARE_LABEL", 0)
    common = await pages()
    assert rare == common == list(reversed(labelled))


async def test_unknown_query_parameters_are_400_naming_them(inbox: Inbox) -> None:
    conversation = await inbox.message("q1")
    for path, params in [
        (f"/conversations/{conversation}", {"expand": "all"}),
        ("/conversations", {"limit": "5", "sort": "oldest"}),
    ]:
        reply = await inbox.agent.call("GET", path, params=params)
        assert reply.status == 400
        assert reply.body["error"]["code"] == "unknown_field"
        assert reply.body["error"]["field"] in {"expand", "sort"}
