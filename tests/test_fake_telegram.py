"""The fake Telegram Bot API (tests/fakes/telegram.py) driven by python-telegram-bot itself: what PTB
sends, the fake understands, and what the fake answers, PTB reads as it would Telegram's answers."""

from __future__ import annotations

import asyncio
import datetime as dtm
import json
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from telegram import Bot, InputFile, MessageEntity, ReplyParameters
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    EndPointNotFound,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TimedOut,
)
from telegram.helpers import escape_markdown
from telegram.request import HTTPXRequest

from fakes.telegram import SECRET_HEADER, FakeTelegram

pytestmark = pytest.mark.timeout(30)

USER = 777000111
GROUP = -1001234567890123
RESERVED = "_*[]()~`>#+-=|{}.!"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as f:
        yield f


# Each HTTPXRequest otherwise loads the CA certificates (about 30 ms, twice a Bot) for plain http.
TLS = ssl.create_default_context()


def request(**kwargs: Any) -> HTTPXRequest:
    """PTB's request as Bot makes it by default, with the one shared TLS context."""
    return HTTPXRequest(httpx_kwargs={"verify": TLS}, **kwargs)


def make_bot(fake: FakeTelegram, token: str | None = None, **kwargs: Any) -> Bot:
    kwargs.setdefault("request", request())
    kwargs.setdefault("get_updates_request", request(connection_pool_size=1))
    return Bot(token or fake.token, base_url=fake.base_url, base_file_url=fake.file_base_url, **kwargs)


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    bot = make_bot(fake)
    await bot.initialize()
    try:
        yield bot
    finally:
        await bot.shutdown()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# ------------------------------------------------------------------------------------------------
# The API itself


async def test_get_me_describes_the_bot(fake: FakeTelegram, bot: Bot) -> None:
    me = await bot.get_me()
    assert (me.id, me.username, me.is_bot, me.first_name) == (fake.bot_id, "support_bot", True, "Support")
    assert me.can_join_groups is True and me.can_read_all_group_messages is False
    assert bot.username == "support_bot"  # initialize() called getMe
    assert [c.method for c in fake.calls] == ["getMe", "getMe"]


async def test_a_wrong_token_is_unauthorized(fake: FakeTelegram) -> None:
    # Bot.shutdown() does nothing after a failed initialize(): the request is closed by hand.
    own, polls = request(), request(connection_pool_size=1)
    bot = make_bot(
        fake, token="123456:WRONG-token-abcdefghijklmnopqrstu", request=own, get_updates_request=polls
    )
    try:
        with pytest.raises(InvalidToken, match="was rejected by the server"):
            await bot.initialize()
        with pytest.raises(InvalidToken, match=r"^Unauthorized$"):
            await bot.get_me()
    finally:
        await own.shutdown()
        await polls.shutdown()
    assert [c.method for c in fake.calls] == ["getMe", "getMe"]


async def test_an_unknown_method_is_not_found(
    fake: FakeTelegram, bot: Bot, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(EndPointNotFound):
        await bot.do_api_request("sendTelepathy", api_kwargs={"chat_id": USER})
    async with http.post(f"{fake.base_url}{fake.token}/sendTelepathy") as response:
        assert response.status == 404
        assert await response.json() == {"ok": False, "error_code": 404, "description": "Not Found"}


async def test_parameters_come_from_query_json_form_and_any_method_case(
    fake: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    api = f"{fake.base_url}{fake.token}"
    async with http.get(f"{api}/sendmessage", params={"chat_id": str(USER), "text": "from the query"}) as r:
        assert r.status == 200
        assert (await r.json())["result"]["text"] == "from the query"
    async with http.post(
        f"{api}/sendMessage", json={"chat_id": GROUP, "text": "json", "disable_notification": True}
    ) as r:
        body = await r.json()
        assert body["ok"] is True and body["result"]["chat"] == {"id": GROUP, "type": "supergroup"}
    async with http.post(f"{api}/sendMessage", data={"chat_id": str(USER), "text": "form"}) as r:
        assert (await r.json())["result"]["message_id"] == 1001
    assert fake.calls[1].params == {"chat_id": str(GROUP), "text": "json", "disable_notification": "true"}
    assert [c.method for c in fake.calls] == ["sendMessage"] * 3
    assert fake.delivered_texts() == ["from the query", "json", "form"]
    assert [s.chat_id for s in fake.sent] == [USER, GROUP, USER]


# ------------------------------------------------------------------------------------------------
# Receiving: getUpdates


async def test_get_updates_returns_pushed_messages_until_an_offset_confirms_them(
    fake: FakeTelegram, bot: Bot
) -> None:
    first = fake.push_message(
        USER, "Hol a csomagom?", last_name="Kovács", username="anna_k", language_code="hu"
    )
    second = fake.push_message(USER, "edited", message_id=first["message"]["message_id"], edited=True)
    third = fake.push_message(
        GROUP, "in a group", user_id=USER + 1, chat_type="supergroup", title="Resellers"
    )
    updates = await bot.get_updates()
    assert [u.update_id for u in updates] == [first["update_id"], second["update_id"], third["update_id"]]
    assert updates[0].update_id + 1 == updates[1].update_id
    message = updates[0].message
    assert message is not None and message.from_user is not None
    assert (message.text, message.chat.id, message.chat.type, message.message_id) == (
        "Hol a csomagom?",
        USER,
        "private",
        1000,
    )
    assert (message.from_user.full_name, message.from_user.username, message.from_user.language_code) == (
        "Anna Kovács",
        "anna_k",
        "hu",
    )
    edit = updates[1].edited_message
    assert edit is not None and edit.edit_date is not None and edit.message_id == 1000
    group = updates[2].message
    assert group is not None and (group.chat.id, group.chat.title, group.from_user.id) == (  # type: ignore[union-attr]
        GROUP,
        "Resellers",
        USER + 1,
    )
    # Nothing is confirmed until an offset says so.
    assert fake.confirmed_offset == 0 and len(fake.pending_updates()) == 3
    assert len(await bot.get_updates(limit=1)) == 1
    assert await bot.get_updates(offset=second["update_id"] + 1) == (updates[2],)
    assert fake.confirmed_offset == second["update_id"] + 1
    assert [u["update_id"] for u in fake.pending_updates()] == [third["update_id"]]
    await fake.wait_confirmed(second["update_id"], within=0.1)
    with pytest.raises(AssertionError, match=f"update {third['update_id']} not confirmed"):
        await fake.wait_confirmed(third["update_id"], within=0.05)
    assert await bot.get_updates(offset=third["update_id"] + 1) == ()
    assert fake.pending_updates() == []


async def test_a_reply_carries_the_message_it_answers(fake: FakeTelegram, bot: Bot) -> None:
    question = fake.push_message(USER, "my order is late", date=1_764_000_000)
    reply = fake.push_message(USER, "any news?", reply_to_message_id=question["message"]["message_id"])
    [_, update] = await bot.get_updates()
    assert update.update_id == reply["update_id"] and update.message is not None
    assert update.message.reply_to_message is not None
    assert update.message.reply_to_message.text == "my order is late"
    assert update.message.reply_to_message.date.timestamp() == 1_764_000_000


async def test_extra_fields_and_files_go_into_the_message(fake: FakeTelegram, bot: Bot) -> None:
    photo = fake.add_file(b"JPEG" * 10)
    doc = fake.add_file(b"%PDF-1.4", file_name="invoice.pdf", mime_type="application/pdf")
    fake.push_message(USER, caption="the box", photo=[{**photo, "width": 90, "height": 90}])
    fake.push_message(USER, document=doc, message_thread_id=7)
    first, second = await bot.get_updates()
    assert first.message is not None and first.message.caption == "the box"
    assert first.message.photo[0].file_id == photo["file_id"] and first.message.photo[0].file_size == 40
    assert second.message is not None and second.message.document is not None
    assert (second.message.document.file_name, second.message.document.mime_type) == (
        "invoice.pdf",
        "application/pdf",
    )
    assert second.message.message_thread_id == 7


async def test_a_long_poll_wakes_when_an_update_arrives(fake: FakeTelegram, bot: Bot) -> None:
    started = time.monotonic()
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await asyncio.sleep(0.2)
    assert not poll.done()
    update = fake.push_message(USER, "hello")
    [got] = await asyncio.wait_for(poll, 2)
    assert got.update_id == update["update_id"]
    assert time.monotonic() - started < 1.5


async def test_a_long_poll_with_nothing_to_give_answers_empty_after_its_timeout(
    fake: FakeTelegram, bot: Bot
) -> None:
    started = time.monotonic()
    assert await bot.get_updates(timeout=dtm.timedelta(seconds=0.3)) == ()
    assert 0.25 < time.monotonic() - started < 1.5
    assert fake.calls_to("getUpdates")[-1].params["timeout"] == "0.3"


async def test_a_second_poll_ends_the_first_with_409(fake: FakeTelegram, bot: Bot) -> None:
    # A second instance of the bot: PTB's getUpdates connection pool has a single connection.
    async with make_bot(fake) as other:
        first = asyncio.create_task(bot.get_updates(timeout=5))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(other.get_updates(timeout=5))
        with pytest.raises(Conflict, match="terminated by other getUpdates request"):
            await asyncio.wait_for(first, 2)
        fake.push_message(USER, "for the second")
        assert len(await asyncio.wait_for(second, 2)) == 1


async def test_poll_delay_answers_later(fake: FakeTelegram, bot: Bot) -> None:
    update = fake.push_message(USER, "slow")
    fake.poll_delay = 0.3
    started = time.monotonic()
    assert len(await bot.get_updates(offset=update["update_id"])) == 1
    assert time.monotonic() - started >= 0.3


async def test_allowed_updates_filter_and_are_remembered(fake: FakeTelegram, bot: Bot) -> None:
    member = {
        "chat": {"id": USER, "type": "private", "first_name": "Anna"},
        "from": {"id": USER, "is_bot": False, "first_name": "Anna"},
        "date": 1_764_000_100,
        "old_chat_member": {
            "status": "member",
            "user": {"id": fake.bot_id, "is_bot": True, "first_name": "S"},
        },
        "new_chat_member": {
            "status": "kicked",
            "until_date": 0,
            "user": {"id": fake.bot_id, "is_bot": True, "first_name": "S"},
        },
    }
    kicked = fake.push_update({"my_chat_member": member})
    reaction = fake.push_update(
        {
            "message_reaction": {
                "chat": {"id": USER, "type": "private"},
                "message_id": 1000,
                "date": 1_764_000_200,
                "old_reaction": [],
                "new_reaction": [{"type": "emoji", "emoji": "👍"}],
            }
        }
    )
    text = fake.push_message(USER, "text")["update_id"]
    # By default everything but chat_member and the reactions.
    assert [u.update_id for u in await bot.get_updates()] == [kicked, text]
    assert [u.update_id for u in await bot.get_updates(allowed_updates=["message"])] == [text]
    assert fake.calls_to("getUpdates")[-1].params["allowed_updates"] == '["message"]'
    assert [u.update_id for u in await bot.get_updates()] == [text]  # the list given last still holds
    raw = await bot.get_updates(allowed_updates=["my_chat_member", "message_reaction"])
    assert [u.update_id for u in raw] == [kicked, reaction]
    assert raw[0].my_chat_member is not None and raw[0].my_chat_member.new_chat_member.status == "kicked"


async def test_limit_out_of_range_is_a_bad_request(bot: Bot) -> None:
    with pytest.raises(BadRequest, match=r"(?i)limit must be between 1 and 100"):
        await bot.get_updates(limit=101)


# ------------------------------------------------------------------------------------------------
# Receiving: webhooks


async def test_get_updates_while_a_webhook_is_set_is_a_conflict(fake: FakeTelegram, bot: Bot) -> None:
    fake.push_message(USER, "waiting")
    assert await bot.set_webhook(
        "https://support.example.com/hook", secret_token="s3cret_-X", max_connections=5
    )
    assert (fake.webhook_url, fake.webhook_secret) == ("https://support.example.com/hook", "s3cret_-X")
    with pytest.raises(Conflict, match="webhook is active"):
        await bot.get_updates()
    info = await bot.get_webhook_info()
    assert (info.url, info.pending_update_count, info.max_connections, info.has_custom_certificate) == (
        "https://support.example.com/hook",
        1,
        5,
        False,
    )
    assert await bot.delete_webhook()
    assert fake.webhook_url is None and (await bot.get_webhook_info()).url == ""
    assert len(await bot.get_updates()) == 1


async def test_a_webhook_set_elsewhere_ends_a_long_poll(fake: FakeTelegram, bot: Bot) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await asyncio.sleep(0.1)
    fake.set_webhook_externally("https://other.example.com/hook")
    with pytest.raises(Conflict, match="webhook is active"):
        await asyncio.wait_for(poll, 2)
    assert (await bot.get_webhook_info()).url == "https://other.example.com/hook"


@pytest.mark.parametrize("secret", ["has space", "semi;colon", "é", "x" * 257])
async def test_set_webhook_refuses_a_bad_secret(fake: FakeTelegram, bot: Bot, secret: str) -> None:
    with pytest.raises(BadRequest, match=r"(?i)secret token contains unallowed characters"):
        await bot.set_webhook("https://support.example.com/hook", secret_token=secret)
    assert fake.webhook_url is None


async def test_set_webhook_with_drop_pending_updates_forgets_them(fake: FakeTelegram, bot: Bot) -> None:
    fake.push_message(USER, "old")
    await bot.set_webhook(
        "https://support.example.com/hook", drop_pending_updates=True, allowed_updates=["message"]
    )
    assert fake.pending_updates() == [] and fake.webhook_allowed_updates == ["message"]
    assert (await bot.get_webhook_info()).allowed_updates == ("message",)


async def test_deliver_webhook_posts_the_update_with_the_secret(
    fake: FakeTelegram, bot: Bot, http: aiohttp.ClientSession
) -> None:
    received: list[tuple[str | None, dict[str, Any]]] = []
    status = 200

    async def hook(request: web.Request) -> web.Response:
        received.append((request.headers.get(SECRET_HEADER), await request.json()))
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("/hook"))
        await bot.set_webhook(url, secret_token="s3cret")
        first = fake.push_message(USER, "one")
        second = fake.push_message(USER, "two")
        assert await fake.deliver_webhook() == 200  # the next pending update
        assert received == [("s3cret", first)]
        await fake.wait_confirmed(first["update_id"], within=0.1)
        assert fake.pending_updates() == [second]

        status = 500
        assert await fake.deliver_webhook(second, secret=None, session=http) == 500
        assert received[-1] == (None, second)
        info = await bot.get_webhook_info()
        assert info.last_error_message == "Wrong response from the webhook: 500 Internal Server Error"
        assert info.last_error_date is not None and info.pending_update_count == 1

        status = 200
        assert await fake.deliver_webhook(second, secret="forged") == 200
        assert received[-1] == ("forged", second)
        assert fake.pending_updates() == []
    finally:
        await server.close()
    assert await fake.deliver_webhook(fake.push_message(USER, "nobody there")) == 0
    assert fake.last_error_message == "Connection refused"


# ------------------------------------------------------------------------------------------------
# Sending


async def test_markdown_v2_escaped_text_arrives_intact(fake: FakeTelegram, bot: Bot) -> None:
    text = f"Every reserved one: {' '.join(RESERVED)} and a backslash \\ in 5.00 EUR (incl. VAT)!"
    escaped = escape_markdown(text, version=2)
    message = await bot.send_message(USER, escaped, parse_mode="MarkdownV2")
    [sent] = fake.sent
    assert (sent.text, sent.raw_text, sent.parse_mode, sent.chat_id) == (text, escaped, "MarkdownV2", USER)
    assert message.text == text and message.message_id == sent.message_id == 1000
    assert message.from_user is not None and message.from_user.id == fake.bot_id
    assert fake.delivered_texts() == [text]


async def test_markdown_v2_entities_are_parsed_with_utf16_offsets(fake: FakeTelegram, bot: Bot) -> None:
    source = (
        "😀 *bold* _italic_ __under__ ~strike~ ||spoiler|| `co.de` [site](https://example.com/a\\)b)\n"
        "```python\nprint('x.y')\n```\n>quoted *line*\n>second\nplain"
    )
    message = await bot.send_message(USER, source, parse_mode="MarkdownV2")
    assert message.text == (
        "😀 bold italic under strike spoiler co.de site\nprint('x.y')\n\nquoted line\nsecond\nplain"
    )
    assert [(e.type, message.parse_entity(e)) for e in message.entities] == [
        (MessageEntity.BOLD, "bold"),
        (MessageEntity.ITALIC, "italic"),
        (MessageEntity.UNDERLINE, "under"),
        (MessageEntity.STRIKETHROUGH, "strike"),
        (MessageEntity.SPOILER, "spoiler"),
        (MessageEntity.CODE, "co.de"),
        (MessageEntity.TEXT_LINK, "site"),
        (MessageEntity.PRE, "print('x.y')\n"),
        (MessageEntity.BLOCKQUOTE, "quoted line\nsecond"),
        (MessageEntity.BOLD, "line"),
    ]
    bold = [e for e in message.entities if e.type == MessageEntity.BOLD]
    assert [message.parse_entity(e) for e in bold] == ["bold", "line"]
    assert bold[0].offset == 3  # the emoji is two UTF-16 code units
    [link] = [e for e in message.entities if e.type == MessageEntity.TEXT_LINK]
    assert link.url == "https://example.com/a)b"
    [pre] = [e for e in message.entities if e.type == MessageEntity.PRE]
    assert pre.language == "python"
    assert fake.sent[0].entities == tuple(e.to_dict() for e in message.entities)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("Total: 5.00 EUR", "Character '.' is reserved"),
        ("Call us (today)", r"Character '\(' is reserved"),
        ("a > b", "Character '>' is reserved"),
        ("*never closed", "Can't find end of bold entity at byte offset 0"),
        ("ok _never closed", "Can't find end of italic entity at byte offset 3"),
        ("[link](https://example.com", "Can't find end of a url"),
    ],
)
async def test_markdown_v2_that_telegram_cannot_parse_is_refused(
    fake: FakeTelegram, bot: Bot, text: str, error: str
) -> None:
    # PTB drops "Bad Request: " and capitalizes the rest (lowering the other letters).
    with pytest.raises(BadRequest, match=f"(?i)can't parse entities: {error}"):
        await bot.send_message(USER, text, parse_mode="MarkdownV2")
    assert fake.sent == [] and len(fake.calls_to("sendMessage")) == 1


async def test_html_and_legacy_markdown_show_their_visible_text(fake: FakeTelegram, bot: Bot) -> None:
    html = await bot.send_message(
        USER, "<b>Tom &amp; Jerry</b> &lt;3 <a href='https://e.com'>site</a>", parse_mode="HTML"
    )
    assert html.text == "Tom & Jerry <3 site"
    assert [(e.type, html.parse_entity(e)) for e in html.entities] == [
        ("bold", "Tom & Jerry"),
        ("text_link", "site"),
    ]
    legacy = await bot.send_message(USER, "*bold* and 5.00 (ok)", parse_mode="Markdown")
    assert legacy.text == "bold and 5.00 (ok)"
    assert [s.parse_mode for s in fake.sent] == ["HTML", "Markdown"]


async def test_text_length_is_counted_in_utf16_after_parsing(fake: FakeTelegram, bot: Bot) -> None:
    await bot.send_message(USER, "a" * 4096)
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await bot.send_message(USER, "a" * 4097)
    # Markers do not count...
    await bot.send_message(USER, "*" + "a" * 4096 + "*", parse_mode="MarkdownV2")
    # ... UTF-16 code units do: 2049 code points, 4098 units.
    emoji = "😀" * 2049
    assert len(emoji) < 4096
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await bot.send_message(USER, emoji)
    await bot.send_message(USER, "😀" * 2048)
    assert [len(t) for t in fake.delivered_texts()] == [4096, 4096, 2048]


async def test_an_empty_text_is_refused(fake: FakeTelegram, bot: Bot) -> None:
    for text in ("", "  \n ", "**"):
        with pytest.raises(BadRequest, match=r"(?i)message text is empty"):
            await bot.send_message(USER, text, parse_mode="MarkdownV2")
    assert fake.sent == []


async def test_reply_parameters_and_topics_are_recorded(fake: FakeTelegram, bot: Bot) -> None:
    question = fake.push_message(GROUP, "where is it?", user_id=USER, chat_type="supergroup")
    mid = question["message"]["message_id"]
    message = await bot.send_message(
        GROUP, "on its way", reply_parameters=ReplyParameters(mid), message_thread_id=9
    )
    assert message.reply_to_message is not None and message.reply_to_message.text == "where is it?"
    assert message.chat.type == "supergroup" and message.chat.id == GROUP and message.message_id == mid + 1
    with pytest.raises(BadRequest, match=r"(?i)message to be replied not found"):
        await bot.send_message(GROUP, "to nothing", reply_parameters=ReplyParameters(42))
    await bot.send_message(
        GROUP, "anyway", reply_parameters=ReplyParameters(42, allow_sending_without_reply=True)
    )
    assert json.loads(fake.calls_to("sendMessage")[0].params["reply_parameters"]) == {"message_id": mid}
    assert [(s.reply_to_message_id, s.message_thread_id) for s in fake.sent] == [(mid, 9), (42, None)]


async def test_retry_after_becomes_retry_after(
    fake: FakeTelegram, bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PTB 22 builds RetryAfter by reading its deprecated int retry_after (a PTBDeprecationWarning)
    # unless PTB_TIMEDELTA is set, as channels.telegram does on import.
    monkeypatch.setenv("PTB_TIMEDELTA", "true")
    fake.fail_next(429, retry_after="7")
    with pytest.raises(RetryAfter) as raised:
        await bot.send_message(USER, "hello")
    assert raised.value.retry_after == dtm.timedelta(seconds=7)
    fake.fail_next(429, retry_after="7", times=2)
    for _ in range(2):
        with pytest.raises(RetryAfter) as raised:
            await bot.send_message(USER, "hello")
        assert raised.value.retry_after in (7, dtm.timedelta(seconds=7))
    await bot.send_message(USER, "hello")
    assert fake.delivered_texts() == ["hello"]
    async with aiohttp.ClientSession() as http:
        fake.fail_next(429, retry_after="3")
        async with http.post(
            f"{fake.base_url}{fake.token}/sendMessage", data={"chat_id": USER, "text": "x"}
        ) as r:
            assert r.status == 429
            assert await r.json() == {
                "ok": False,
                "error_code": 429,
                "description": "Too Many Requests: retry after 3",
                "parameters": {"retry_after": 3},
            }


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (400, BadRequest, "Chat not found"),
        (401, InvalidToken, "Unauthorized"),
        (403, Forbidden, "Forbidden: bot was blocked by the user"),
        (404, InvalidToken, "Not Found"),
        (409, Conflict, "Conflict"),
        (500, NetworkError, "Internal Server Error"),
        (502, NetworkError, "Bad Gateway"),
        (503, NetworkError, "Service Unavailable"),
    ],
)
async def test_fail_next_answers_as_telegram_would(
    fake: FakeTelegram, bot: Bot, status: int, error: type[Exception], message: str
) -> None:
    fake.fail_next(status)
    with pytest.raises(error, match=message):
        await bot.send_message(USER, "hello")
    await bot.send_message(USER, "hello")
    assert fake.delivered_texts() == ["hello"]
    assert len(fake.calls_to("sendMessage")) == 2


async def test_fail_next_after_lets_some_through_and_can_migrate(fake: FakeTelegram, bot: Bot) -> None:
    fake.fail_next(500, after=1, description="Internal Server Error: try again")
    fake.fail_next(400, migrate_to_chat_id=GROUP)
    await bot.send_message(USER, "one")
    with pytest.raises(NetworkError, match="try again"):
        await bot.send_message(USER, "two")
    with pytest.raises(ChatMigrated) as raised:
        await bot.send_message(-4242, "three")
    assert raised.value.new_chat_id == GROUP
    assert fake.delivered_texts() == ["one"]


async def test_blocked_chats_answer_403(fake: FakeTelegram, bot: Bot) -> None:
    fake.blocked_chats.add(USER)
    with pytest.raises(Forbidden, match="bot was blocked by the user"):
        await bot.send_message(USER, "Your refund is on its way")
    await bot.send_message(USER + 1, "someone else")
    assert [s.chat_id for s in fake.sent] == [USER + 1]


async def test_hang_next_never_answers(fake: FakeTelegram) -> None:
    bot = make_bot(fake, request=request(read_timeout=0.3))
    async with bot:
        fake.hang_next()
        with pytest.raises(TimedOut):
            await bot.send_message(USER, "lost")
        await bot.send_message(USER, "answered")
    assert fake.delivered_texts() == ["answered"]
    assert len(fake.calls_to("sendMessage")) == 2


async def test_large_chat_ids_work(fake: FakeTelegram, bot: Bot) -> None:
    big = -1009_999_999_999_999
    message = await bot.send_message(big, "int64")
    assert message.chat.id == big and fake.sent[0].chat_id == big
    with pytest.raises(BadRequest, match=r"(?i)chat not found"):
        await bot.send_message("@nobody", "who")


# ------------------------------------------------------------------------------------------------
# Files


async def test_send_document_upload_is_recorded_with_its_bytes(fake: FakeTelegram, bot: Bot) -> None:
    content = b"%PDF-1.4 invoice 1234"
    message = await bot.send_document(
        USER, InputFile(content, filename="invoice.pdf"), caption="Your *invoice*", parse_mode="MarkdownV2"
    )
    [sent] = fake.sent
    assert (sent.method, sent.file_name, sent.file_content, sent.text, sent.raw_text) == (
        "sendDocument",
        "invoice.pdf",
        content,
        "Your invoice",
        "Your *invoice*",
    )
    [call] = fake.calls_to("sendDocument")
    assert call.files == {"document": ("invoice.pdf", content)}
    assert "document" not in call.params and call.params["chat_id"] == str(USER)
    document = message.document
    assert document is not None
    assert (document.file_name, document.mime_type, document.file_size) == (
        "invoice.pdf",
        "application/pdf",
        len(content),
    )
    assert message.caption == "Your invoice" and sent.file_id == document.file_id
    # Sent again by its file_id, and downloadable.
    await bot.send_document(USER, document.file_id)
    assert (fake.sent[1].file_name, fake.sent[1].file_content, fake.sent[1].file_id) == (
        "invoice.pdf",
        None,
        document.file_id,
    )
    assert await (await bot.get_file(document.file_id)).download_as_bytearray() == bytearray(content)


async def test_send_photo_upload_answers_photo_sizes(fake: FakeTelegram, bot: Bot) -> None:
    message = await bot.send_photo(USER, InputFile(b"\x89PNG image", filename="label.png"))
    assert len(message.photo) >= 1 and message.photo[-1].file_size == 10
    assert [(s.method, s.file_name, s.file_content, s.text) for s in fake.sent] == [
        ("sendPhoto", "label.png", b"\x89PNG image", "")
    ]
    with pytest.raises(BadRequest, match=r"(?i)wrong file identifier"):
        await bot.send_photo(USER, "no-such-file-id")


async def test_a_caption_over_1024_utf16_units_is_refused(fake: FakeTelegram, bot: Bot) -> None:
    with pytest.raises(BadRequest, match=r"(?i)message caption is too long"):
        await bot.send_photo(USER, InputFile(b"img", filename="a.jpg"), caption="😀" * 513)
    await bot.send_photo(USER, InputFile(b"img", filename="a.jpg"), caption="😀" * 512)
    assert len(fake.sent) == 1


async def test_get_file_and_download(fake: FakeTelegram, bot: Bot, http: aiohttp.ClientSession) -> None:
    registered = fake.add_file(b"OggS voice", mime_type="audio/ogg")
    assert set(registered) == {"file_id", "file_unique_id", "file_size", "mime_type"}
    file = await bot.get_file(registered["file_id"])
    assert (file.file_id, file.file_unique_id, file.file_size) == (
        registered["file_id"],
        registered["file_unique_id"],
        10,
    )
    assert file.file_path is not None and file.file_path.startswith(f"{fake.file_base_url}{fake.token}/")
    assert await file.download_as_bytearray() == bytearray(b"OggS voice")
    assert fake.calls_to("getFile")[0].params == {"file_id": registered["file_id"]}
    assert len(fake.downloads) == 1
    async with http.get(f"{fake.file_base_url}{fake.token}/documents/nothing.pdf") as response:
        assert response.status == 404
    with pytest.raises(BadRequest, match=r"(?i)invalid file_id"):
        await bot.get_file("not-a-file-id")


async def test_a_file_over_20_mb_cannot_be_fetched(fake: FakeTelegram, bot: Bot) -> None:
    video = fake.add_file(
        b"", file_name="unboxing.mp4", mime_type="video/mp4", declared_size=25 * 1024 * 1024
    )
    assert video["file_size"] == 25 * 1024 * 1024
    with pytest.raises(BadRequest, match=r"(?i)file is too big"):
        await bot.get_file(video["file_id"])
    just = fake.add_file(b"x", declared_size=20 * 1024 * 1024)
    assert (await bot.get_file(just["file_id"])).file_size == 20 * 1024 * 1024
