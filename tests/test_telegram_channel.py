"""The Telegram channel inside the real core, against the fake Bot API (tests/fakes/telegram.py):
polling and webhook, normalisation, files, edits, blocking, splitting, MarkdownV2, rate limits."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from contract import AdapterContract, InboundDelivery, SendFake

from aggregator.bus import RedisBus
from aggregator.model import (
    Identity,
    InboundMessage,
    OutboundAttachment,
    OutboundMessage,
    ThreadHints,
    new_id,
)
from aggregator.store.admin import ChannelChange
from aggregator.templates import Format, Rendered, Variant, build_context, render
from channels.base import AuthError, ChannelAdapter, PermanentError, RateLimited, TransientError
from channels.telegram import TelegramChannel
from channels.telegram.adapter import SECRET_HEADER
from channels.telegram.text import split_text
from fakes.telegram import FakeTelegram, parse_markdown_v2
from support.app import Core, closed_port, make_settings, open_core, sql
from support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)

USER = 777000111  # a customer's Telegram user id (= their private chat id)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


def config(fake: FakeTelegram, **overrides: Any) -> dict[str, Any]:
    return {
        "bot_token": fake.token,
        "api_base_url": fake.base_url,
        "file_base_url": fake.file_base_url,
        "poll_timeout_seconds": 1,
        "timeout_seconds": 5,
        "rate_limit": False,
        **overrides,
    }


async def until(check: Callable[[], Awaitable[bool]], within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within}s")
        await asyncio.sleep(0.02)


async def start_channel(core: Core, values: dict[str, Any]) -> TelegramChannel:
    account_id = await core.add_channel(values, kind="telegram")
    adapter = await core.adapter(account_id)
    assert isinstance(adapter, TelegramChannel)
    return adapter


async def state_of(core: Core, channel_id: str) -> tuple[str, str | None]:
    account = await core.store.get_channel_account(channel_id)
    return account.state, account.state_detail


async def messages(core: Core, channel_id: str) -> list[Any]:
    return await sql(
        core.store,
        "SELECT id, conversation_id, external_id, text, edited_at, versions, language, sent_at "
        "FROM messages WHERE channel_account_id = :id AND direction = 'in' ORDER BY created_at, id",
        id=channel_id,
    )


def outbound(adapter: ChannelAdapter[Any], text: str, **fields: Any) -> OutboundMessage:
    values: dict[str, Any] = {
        "message_id": new_id(),
        "conversation_id": new_id(),
        "channel_account_id": adapter.account.id,
        "recipient": Identity("telegram", str(USER)),
        "text": text,
        "attempt": 1,
        "thread_ref": str(USER),
        **fields,
    }
    return OutboundMessage(**values)


# ------------------------------------------------------------------------------------------------
# The adapter contract


class TestTelegramChannelContract(AdapterContract):
    adapter_class = TelegramChannel
    secret_fields = frozenset({"bot_token"})
    inbound_sender = str(USER)
    recipient_address = "424242"
    # Telegram's answers as python-telegram-bot reports them: 401/404 are a bad token, 403 is the user
    # (blocked the bot) or the chat refusing this message, 400 a message Telegram will never take.
    status_errors = {
        400: PermanentError,
        401: AuthError,
        403: PermanentError,
        404: AuthError,
        500: TransientError,
        502: TransientError,
        503: TransientError,
    }

    @pytest.fixture
    def valid_config(self, fake: FakeTelegram) -> dict[str, Any]:
        return config(fake)

    @pytest.fixture
    def invalid_configs(self, valid_config: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
        v = valid_config
        return [
            ({**v, "bot_token": "not-a-token"}, "bot_token"),
            ({k: x for k, x in v.items() if k != "bot_token"}, "bot_token"),
            ({**v, "mode": "push"}, "mode"),
            ({**v, "mode": "webhook"}, "public_url"),
            ({**v, "mode": "webhook", "public_url": "support.example.com"}, "public_url"),
            ({**v, "api_base_url": "ftp://example.com/bot"}, "api_base_url"),
            ({**v, "poll_timeout_seconds": -1}, "poll_timeout_seconds"),
            ({**v, "formatting": "html5"}, "formatting"),
            ({**v, "accept_groups": "sometimes"}, "accept_groups"),
        ]

    @pytest.fixture
    def unreachable_config(self) -> dict[str, Any]:
        return {"api_base_url": f"http://127.0.0.1:{closed_port()}/bot"}

    @pytest.fixture
    def timeout_config(self) -> dict[str, Any]:
        return {"timeout_seconds": 0.5}

    @pytest.fixture
    def send_fake(self, fake: FakeTelegram) -> SendFake:
        return fake

    @pytest.fixture
    def inbound_delivery(self, fake: FakeTelegram) -> InboundDelivery:
        message_ids: dict[str, int] = {}

        async def deliver(adapter: ChannelAdapter[Any], external_id: str, sender: str, text: str) -> None:
            # The same external id is the same Telegram message delivered again (a new update).
            message_id = message_ids.setdefault(external_id, 100 + len(message_ids))
            update = fake.push_message(int(sender), text, message_id=message_id)
            await fake.wait_confirmed(update["update_id"])

        return deliver


# ------------------------------------------------------------------------------------------------
# Configuration


def test_config_defaults_point_at_telegram() -> None:
    parsed = TelegramChannel.config_model.parse("telegram", {"bot_token": "123456:" + "A" * 35})
    assert str(parsed.api_base_url) == "https://api.telegram.org/bot"  # type: ignore[attr-defined]
    assert str(parsed.file_base_url) == "https://api.telegram.org/file/bot"  # type: ignore[attr-defined]
    assert parsed.mode == "polling"  # type: ignore[attr-defined]
    assert parsed.accept_groups is False  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------
# Receiving by polling


async def test_polling_normalises_text_sender_language_and_time(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake))
    update = fake.push_message(
        USER, "Hol a csomagom?", first_name="Anna", last_name="Kovács", username="anna_k",
        language_code="hu", date=1_764_000_000,
    )
    await fake.wait_confirmed(update["update_id"])
    [row] = await messages(core, adapter.account.id)
    assert row.text == "Hol a csomagom?"
    assert row.external_id == f"{USER}:{update['message']['message_id']}"
    assert row.language == "hu"
    assert datetime.fromisoformat(row.sent_at).timestamp() == 1_764_000_000
    [identity] = await sql(
        core.store, "SELECT address, display_name, handle FROM identities WHERE kind = 'telegram'"
    )
    assert tuple(identity) == (str(USER), "Anna Kovács", "anna_k")
    [conversation] = await sql(core.store, "SELECT thread_ref, language FROM conversations")
    assert tuple(conversation) == (str(USER), "hu")
    # getUpdates asked only for what the bot handles.
    assert '"my_chat_member"' in fake.calls_to("getUpdates")[-1].params["allowed_updates"]


async def test_name_and_username_are_kept_current(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake))
    await fake.wait_confirmed(fake.push_message(USER, "one", username="anna_k")["update_id"])
    await fake.wait_confirmed(
        fake.push_message(USER, "two", first_name="Anna", last_name="Nagy", username="anna_n")["update_id"]
    )
    [identity] = await sql(core.store, "SELECT display_name, handle FROM identities WHERE kind = 'telegram'")
    assert tuple(identity) == ("Anna Nagy", "anna_n")
    assert len(await messages(core, adapter.account.id)) == 2
    [contact] = await sql(core.store, "SELECT name FROM contacts")
    assert contact.name == "Anna Nagy"


async def test_files_are_downloaded_largest_photo_first(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake))
    small = fake.add_file(b"s" * 100)
    large = fake.add_file(b"L" * 5000)
    photo = [
        {**small, "width": 90, "height": 90},
        {**large, "width": 1280, "height": 1280},
    ]
    doc = fake.add_file(b"%PDF-1.4 invoice", file_name="invoice.pdf", mime_type="application/pdf")
    voice = fake.add_file(b"OggS voice", mime_type="audio/ogg")
    u1 = fake.push_message(USER, caption="the box arrived like this", photo=photo)
    u2 = fake.push_message(USER, document=doc)
    u3 = fake.push_message(USER, voice={**voice, "duration": 3})
    await fake.wait_confirmed(u3["update_id"])
    rows = await sql(
        core.store,
        "SELECT m.external_id, m.text, a.filename, a.content_type, a.size FROM messages m "
        "JOIN attachments a ON a.message_id = m.id ORDER BY m.created_at, m.id",
    )
    got = {(r.external_id.split(":")[1], r.filename, r.content_type, r.size) for r in rows}
    mid = lambda u: str(u["message"]["message_id"])  # noqa: E731
    assert got == {
        (mid(u1), f"photo-{mid(u1)}.jpg", "image/jpeg", 5000),
        (mid(u2), "invoice.pdf", "application/pdf", 16),
        (mid(u3), f"voice-{mid(u3)}.ogg", "audio/ogg", 10),
    }
    texts = {r.external_id: r.text for r in await messages(core, adapter.account.id)}
    assert texts[f"{USER}:{mid(u1)}"] == "the box arrived like this"
    # Only the largest photo size was fetched.
    fetched = [c.params["file_id"] for c in fake.calls_to("getFile")]
    assert small["file_id"] not in fetched and large["file_id"] in fetched


async def test_a_file_over_20_mb_is_recorded_with_the_reason(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake))
    video = fake.add_file(b"", file_name="unboxing.mp4", mime_type="video/mp4", declared_size=25 * 1024 * 1024)
    update = fake.push_message(USER, caption="see the video", video={**video, "duration": 60})
    await fake.wait_confirmed(update["update_id"])
    [row] = await messages(core, adapter.account.id)
    assert row.text.startswith("see the video\n[video unboxing.mp4 not downloaded: 25.0 MB")
    assert "at most 20 MB" in row.text and "local Bot API server" in row.text
    [extra] = await sql(core.store, "SELECT extra FROM messages")
    [missing] = json.loads(extra[0])["telegram"]["files_not_downloaded"]
    assert (missing["filename"], missing["size"]) == ("unboxing.mp4", 25 * 1024 * 1024)
    assert not await sql(core.store, "SELECT id FROM attachments")


async def test_an_edit_replaces_the_text_and_keeps_the_previous_version(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake))
    first = fake.push_message(USER, "Order 1234 hasnt arrived", date=1_764_000_000)
    mid = first["message"]["message_id"]
    await fake.wait_confirmed(first["update_id"])
    edit = fake.push_message(USER, "Order 1243 hasn't arrived", message_id=mid, edited=True, date=1_764_000_000)
    await fake.wait_confirmed(edit["update_id"])
    # The same edit delivered again adds nothing.
    again = fake.push_update({"edited_message": edit["edited_message"]})
    await fake.wait_confirmed(again)
    [row] = await messages(core, adapter.account.id)
    assert row.text == "Order 1243 hasn't arrived"
    assert row.edited_at is not None
    assert [v["text"] for v in json.loads(row.versions)] == ["Order 1234 hasnt arrived"]
    [conversation] = await sql(core.store, "SELECT last_message_preview, message_count FROM conversations")
    assert tuple(conversation) == ("Order 1243 hasn't arrived", 1)


async def test_an_edit_of_a_message_never_seen_is_stored(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake))
    update = fake.push_message(USER, "edited before we connected", message_id=5, edited=True)
    await fake.wait_confirmed(update["update_id"])
    [row] = await messages(core, adapter.account.id)
    assert row.text == "edited before we connected" and row.edited_at is not None and row.versions is None


async def test_a_reply_joins_the_conversation_of_the_message_it_answers(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake))
    first = fake.push_message(USER, "my order is late")
    await fake.wait_confirmed(first["update_id"])
    [old] = await messages(core, adapter.account.id)
    # The same customer has a newer conversation on this account (opened elsewhere).
    newer = await core.ingest(
        InboundMessage(
            channel_account_id=adapter.account.id,
            external_id="elsewhere-1",
            sender=Identity("telegram", str(USER)),
            text="another topic",
            thread=ThreadHints(by_contact=False),
        )
    )
    assert newer.conversation_id != old.conversation_id
    plain = fake.push_message(USER, "and this is not a reply")
    await fake.wait_confirmed(plain["update_id"])
    reply = fake.push_message(USER, "any news on this?", reply_to_message_id=first["message"]["message_id"])
    await fake.wait_confirmed(reply["update_id"])
    rows = {r.text: r.conversation_id for r in await messages(core, adapter.account.id)}
    assert rows["any news on this?"] == old.conversation_id
    assert rows["and this is not a reply"] == newer.conversation_id


async def test_group_messages_are_skipped_unless_accepted(core: Core, fake: FakeTelegram) -> None:
    group = -1001234567890123
    adapter = await start_channel(core, config(fake))
    skipped = fake.push_message(group, "hello bot", user_id=USER, chat_type="supergroup", title="Resellers")
    private = fake.push_message(USER, "hello")
    await fake.wait_confirmed(private["update_id"])
    assert skipped["update_id"] < private["update_id"]
    assert [r.text for r in await messages(core, adapter.account.id)] == ["hello"]

    # The same bot, now taking groups too (one poller per bot: the first account stops).
    await core.channels.stop_account(adapter.account.id)
    groups = await start_channel(core, config(fake, accept_groups=True))
    a = fake.push_message(group, "first", user_id=USER, chat_type="supergroup", title="Resellers")
    b = fake.push_message(group, "second", user_id=USER + 1, first_name="Bob", chat_type="supergroup", title="Resellers")
    await fake.wait_confirmed(b["update_id"])
    assert a["update_id"] < b["update_id"]
    rows = await messages(core, groups.account.id)
    assert [r.text for r in rows] == ["first", "second"]
    assert rows[0].conversation_id == rows[1].conversation_id
    [conversation] = await sql(
        core.store, "SELECT thread_ref, subject FROM conversations WHERE channel_account_id = :id", id=groups.account.id
    )
    assert tuple(conversation) == (str(group), "Resellers")


async def test_blocking_and_unblocking_the_bot_is_recorded_on_the_contact(core: Core, fake: FakeTelegram) -> None:
    await start_channel(core, config(fake))
    await fake.wait_confirmed(fake.push_message(USER, "hi")["update_id"])

    def member(status: str) -> dict[str, Any]:
        user = {"id": USER, "is_bot": False, "first_name": "Anna"}
        return {
            "my_chat_member": {
                "chat": {"id": USER, "type": "private", "first_name": "Anna"},
                "from": user,
                "date": 1_764_000_100,
                "old_chat_member": {"status": "member", "user": {"id": fake.bot_id, "is_bot": True}},
                "new_chat_member": {"status": status, "user": {"id": fake.bot_id, "is_bot": True}},
            }
        }

    await fake.wait_confirmed(fake.push_update(member("kicked")))
    [identity] = await sql(core.store, "SELECT blocked_at, blocked_reason FROM identities")
    assert identity.blocked_at is not None and "blocked the bot" in identity.blocked_reason
    await fake.wait_confirmed(fake.push_update(member("member")))
    [identity] = await sql(core.store, "SELECT blocked_at, blocked_reason FROM identities")
    assert tuple(identity) == (None, None)


async def test_a_malformed_update_is_skipped_and_the_rest_stored(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake))
    broken = fake.push_update({"message": {"message_id": "x", "text": "no chat"}})
    good = fake.push_message(USER, "still here")
    await fake.wait_confirmed(good["update_id"])
    assert broken < good["update_id"]
    assert [r.text for r in await messages(core, adapter.account.id)] == ["still here"]


async def test_a_storage_failure_leaves_the_updates_unconfirmed(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake))
    # The disk refuses the photo (its directory is a file now, which stops root too).
    root = core.attachments.root
    root.mkdir(parents=True, exist_ok=True)
    aside = root.with_name("attachments-aside")
    root.rename(aside)
    root.write_bytes(b"")
    photo = fake.add_file(b"JPEG" * 100)
    update = fake.push_message(USER, caption="kept by Telegram until stored", photo=[{**photo, "width": 9, "height": 9}])
    await until(lambda: _state_is(core, adapter.account.id, "transient_disconnect"), what="the failure shown")
    assert fake.confirmed_offset <= update["update_id"]
    assert [u["update_id"] for u in fake.pending_updates()] == [update["update_id"]]
    assert await messages(core, adapter.account.id) == []
    root.unlink()
    aside.rename(root)
    await fake.wait_confirmed(update["update_id"], within=15)
    assert [r.text for r in await messages(core, adapter.account.id)] == ["kept by Telegram until stored"]
    assert (await state_of(core, adapter.account.id))[0] == "connected"


async def _state_is(core: Core, channel_id: str, state: str) -> bool:
    return (await state_of(core, channel_id))[0] == state


async def test_a_bad_token_is_shown_and_not_retried(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake, bot_token="123456:WRONG-token-abcdefghijklmnopqrstu"))
    state, detail = await state_of(core, adapter.account.id)
    assert state == "bad_credentials"
    assert detail is not None and "bot_token" in detail and "@BotFather" in detail
    calls = len(fake.calls)
    await asyncio.sleep(1.0)
    assert len(fake.calls) == calls
    with pytest.raises(AuthError):
        await adapter.send(outbound(adapter, "hello"))


async def test_409_from_another_poller_is_explained_and_not_looped_on(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake))
    await fake.wait_confirmed(fake.push_message(USER, "before")["update_id"])
    fake.set_webhook_externally("https://other.example.com/hook")
    await until(lambda: _state_is(core, adapter.account.id, "unknown_error"), what="the conflict shown")
    _, detail = await state_of(core, adapter.account.id)
    assert detail is not None and "https://other.example.com/hook" in detail and "mode=webhook" in detail
    polls = len(fake.calls_to("getUpdates"))
    await asyncio.sleep(1.5)
    assert len(fake.calls_to("getUpdates")) == polls
    # We did not fight the other program for its webhook.
    assert fake.webhook_url == "https://other.example.com/hook"


async def test_check_reports_the_bot(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake))
    result = await adapter.check()
    assert result.ok and f"@{fake.username}" in result.detail


# ------------------------------------------------------------------------------------------------
# Receiving by webhook


async def test_webhook_mode_sets_the_webhook_and_stores_each_update_once(core: Core, fake: FakeTelegram) -> None:
    base = await core.serve()
    adapter = await start_channel(core, config(fake, mode="webhook", public_url=base))
    assert not adapter.exclusive
    assert fake.webhook_url == f"{base}/channels/telegram/{adapter.account.id}/webhook"
    assert fake.webhook_secret == adapter.secret and re.fullmatch(r"[A-Za-z0-9_-]{1,256}", adapter.secret)
    update = fake.push_message(USER, "via webhook")
    assert await fake.deliver_webhook(update) == 200
    assert await fake.deliver_webhook(update) == 200
    rows = await messages(core, adapter.account.id)
    assert [r.text for r in rows] == ["via webhook"]
    assert not fake.calls_to("getUpdates")
    check = await adapter.check()
    assert check.ok and "webhook set" in check.detail


async def test_webhook_with_a_wrong_or_missing_secret_is_refused(core: Core, fake: FakeTelegram) -> None:
    base = await core.serve()
    adapter = await start_channel(core, config(fake, mode="webhook", public_url=base))
    update = fake.push_message(USER, "forged")
    assert await fake.deliver_webhook(update, secret="x" * 64) == 403
    url = f"{base}/channels/telegram/{adapter.account.id}/webhook"
    async with core.http.post(url, json=update) as response:
        assert response.status == 403
        assert SECRET_HEADER in (await response.json())["error"]["message"]
    async with core.http.post(url, data=b"{not json", headers={SECRET_HEADER: adapter.secret}) as response:
        assert response.status == 400
    assert await messages(core, adapter.account.id) == []


async def test_switching_from_webhook_to_polling_deletes_the_webhook(core: Core, fake: FakeTelegram) -> None:
    base = await core.serve()
    adapter = await start_channel(core, config(fake, mode="webhook", public_url=base))
    assert fake.webhook_url is not None
    await core.store.update_channel(
        core.workspace.id, adapter.account.id, ChannelChange(config={**config(fake), "mode": "polling"})
    )
    polling = await core.channels.restart_account(adapter.account.id)
    assert isinstance(polling, TelegramChannel) and polling.exclusive
    assert fake.webhook_url is None
    await fake.wait_confirmed(fake.push_message(USER, "by polling now")["update_id"])
    assert [r.text for r in await messages(core, adapter.account.id)] == ["by polling now"]
    assert (await state_of(core, adapter.account.id))[0] == "connected"


# ------------------------------------------------------------------------------------------------
# Sending


LOREM = (
    "Thank you for your patience while we looked into order 1234. "
    "The parcel left our warehouse on Monday and the carrier scanned it in Vienna yesterday. "
    "Delivery should follow within two working days, and you will get a tracking mail today! "
    "Should anything be missing from the box, reply here with a photo and we will send it again. "
)


def long_reply(length: int) -> str:
    paragraphs, text = [], ""
    while len(text) < length:
        paragraphs.append(LOREM * 3)
        text = "\n\n".join(paragraphs)
    return text[:length].rsplit(" ", 1)[0] + "."


async def test_a_10000_character_reply_arrives_as_three_ordered_messages(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake))
    text = long_reply(10_000)
    assert len(text) > 9_900
    message = outbound(adapter, text, references=("41", "42"))
    result = await adapter.send(message)
    sent = fake.sent
    assert len(sent) == 3
    assert all(len(s.text) <= 4096 for s in sent)
    assert " ".join(s.text for s in sent).split() == text.split()
    # No word cut in half: each part ends at a word's end and the next starts at a word's start.
    words = set(text.split())
    assert all(w in words for s in sent for w in s.text.split())
    assert [s.reply_to_message_id for s in sent] == [42, None, None]
    assert result.external_id == f"{USER}:{sent[0].message_id}"
    # The parts' progress is kept only while the message is being sent.
    assert await core.store.get_checkpoint(adapter.account.id, f"out:{message.message_id}") is None


async def test_markdown_v2_special_characters_arrive_intact(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake, formatting="markdownv2"))
    text = "Price: 5.00 EUR (incl. VAT) - see *terms* #1, [link](x) ~ `code` > quote | {a} = b + c! \\ _u_"
    await adapter.send(outbound(adapter, text))
    [sent] = fake.sent
    assert sent.parse_mode == "MarkdownV2"
    assert sent.text == text


def rendered(body: str) -> Rendered:
    """A reply rendered from a template, as the outbox gets it: plain text and MarkdownV2."""
    context = build_context(
        contact={"name": "Ana"},
        conversation={"id": "c1", "channel": "telegram"},
        agent=None,
        workspace={"name": "Shop"},
        order=None,
        now=datetime.now(UTC),
        language="en",
    )
    return render(Variant("en", body), context, {Format.MARKDOWN_V2})


def formatted(adapter: ChannelAdapter[Any], body: str, **fields: Any) -> OutboundMessage:
    reply = rendered(body)
    assert reply.markdown_v2 is not None
    return outbound(adapter, reply.text, markdown_v2=reply.markdown_v2, **fields)


def long_markdown_body() -> str:
    """Three Markdown paragraphs of about 2,000 characters, with bold, italic, links and code."""
    return "\n\n".join(
        f"**Order {n}**, dear {{{{ contact.first_name }}}}: _{LOREM.strip()}_ "
        + LOREM * 5
        + f"See [your order](https://shop.example/orders/{n}_a) or type `/status {n}`."
        for n in (1, 2, 3)
    )


async def test_markdown_v2_from_a_template_is_sent_as_rendered(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake, formatting="markdownv2"))
    message = formatted(
        adapter,
        "Hi {{ contact.first_name }}! Your **order** ships _today_: [track it](https://t.example/a_b).",
    )
    await adapter.send(message)
    [sent] = fake.sent
    assert sent.parse_mode == "MarkdownV2"
    assert sent.raw_text == message.markdown_v2
    assert sent.text == "Hi Ana! Your order ships today: track it."
    assert {e["type"] for e in sent.entities} == {"bold", "italic", "text_link"}
    [link] = [e for e in sent.entities if e["type"] == "text_link"]
    assert link["url"] == "https://t.example/a_b"


async def test_a_long_markdown_v2_reply_is_split_between_paragraphs(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake, formatting="markdownv2"))
    message = formatted(adapter, long_markdown_body(), references=("42",))
    assert message.markdown_v2 is not None and len(message.markdown_v2) > 6000
    await adapter.send(message)
    sent = fake.sent
    assert len(sent) >= 2
    assert all(s.parse_mode == "MarkdownV2" and s.raw_text is not None for s in sent)
    assert all(len(s.raw_text or "") <= 4096 for s in sent)
    # Each part is a run of whole paragraphs of our source: all of it, once, in order.
    assert "\n\n".join(s.raw_text or "" for s in sent) == message.markdown_v2
    shown, entities = parse_markdown_v2(message.markdown_v2)
    assert " ".join(s.text for s in sent).split() == shown.split()
    assert sum(len(s.entities) for s in sent) == len(entities)
    assert [s.reply_to_message_id for s in sent] == [42] + [None] * (len(sent) - 1)
    assert await core.store.get_checkpoint(adapter.account.id, f"out:{message.message_id}") is None


async def test_a_retry_of_a_markdown_v2_reply_sends_the_same_remaining_parts(
    core: Core, fake: FakeTelegram
) -> None:
    adapter = await start_channel(core, config(fake, formatting="markdownv2"))
    message = formatted(adapter, long_markdown_body())
    fake.fail_next(502, after=1)
    with pytest.raises(TransientError):
        await adapter.send(message)
    assert len(fake.sent) == 1
    await adapter.send(message)
    assert "\n\n".join(s.raw_text or "" for s in fake.sent) == message.markdown_v2


async def test_plain_formatting_sends_the_plain_text_of_a_template(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake, formatting="plain"))
    message = formatted(adapter, "Your **order** ships _today_: [track it](https://t.example/a_b).")
    await adapter.send(message)
    [sent] = fake.sent
    assert sent.parse_mode is None
    assert sent.raw_text == message.text == "Your order ships today: track it (https://t.example/a_b)."
    assert sent.entities == ()


async def test_markdown_v2_telegram_cannot_parse_is_sent_as_plain_text(
    core: Core, fake: FakeTelegram, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    adapter = await start_channel(core, config(fake, formatting="markdownv2"))
    label = tmp_path / "label.pdf"
    label.write_bytes(b"%PDF-1.4 label")
    attachment = OutboundAttachment("label.pdf", "application/pdf", str(label), label.stat().st_size)
    for attachments in ((), (attachment,)):
        fake.sent.clear()
        # Unbalanced bold: Telegram answers 400 "can't parse entities".
        message = outbound(
            adapter,
            "*Your order (no. 5) ships today!",
            markdown_v2="*Your order \\(no\\. 5\\) ships today\\!",
            references=("41",),
            attachments=attachments,
        )
        await adapter.send(message)
        assert [s.method for s in fake.sent] == ["sendMessage"] + ["sendDocument"] * len(attachments)
        text = fake.sent[0]
        assert text.text == message.text and text.parse_mode == "MarkdownV2" and text.entities == ()
        assert text.reply_to_message_id == 41
        assert await core.store.get_checkpoint(adapter.account.id, f"out:{message.message_id}") is None
    refused = [c for c in fake.calls_to("sendMessage") if c.params["text"].startswith("*Your")]
    assert len(refused) == 2
    assert "cannot parse its MarkdownV2" in caplog.text


async def test_a_retry_after_falling_back_to_plain_text_goes_on_in_plain_text(
    core: Core, fake: FakeTelegram
) -> None:
    adapter = await start_channel(core, config(fake, formatting="markdownv2"))
    # Contrived so that the plain text takes more parts than the MarkdownV2 did.
    message = outbound(adapter, long_reply(5000), markdown_v2="*not closed")
    fake.fail_next(502, after=2)  # our MarkdownV2 (refused), plain part 1, then plain part 2 fails
    with pytest.raises(TransientError):
        await adapter.send(message)
    assert len(fake.sent) == 1
    saved = await core.store.get_checkpoint(adapter.account.id, f"out:{message.message_id}")
    assert saved["plain"] is True and len(saved["sent"]) == 1
    await adapter.send(message)
    assert [s.text for s in fake.sent] == split_text(message.text)
    assert [c.params["text"] for c in fake.calls_to("sendMessage")].count("*not closed") == 1
    assert await core.store.get_checkpoint(adapter.account.id, f"out:{message.message_id}") is None


async def test_a_refused_markdown_v2_part_of_several_fails_for_good(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake, formatting="markdownv2"))
    message = formatted(adapter, long_markdown_body())
    assert message.markdown_v2 is not None
    # A reserved character left unescaped in the last paragraph: only that part is refused.
    broken = message.markdown_v2 + " oops."
    message = outbound(adapter, message.text, markdown_v2=broken)
    with pytest.raises(PermanentError) as raised:
        await adapter.send(message)
    assert len(fake.sent) >= 1
    reason = raised.value.reason
    parts = len(fake.sent) + 1
    assert reason.startswith(f"part {parts} of {parts} not sent (parts 1-{parts - 1} were delivered): ")
    assert "cannot parse the MarkdownV2" in reason and "can't parse entities" in reason.lower()
    assert await core.store.get_checkpoint(adapter.account.id, f"out:{message.message_id}") is None


async def test_markdown_v2_that_cannot_be_split_is_sent_as_plain_text(
    core: Core, fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    adapter = await start_channel(core, config(fake, formatting="markdownv2"))
    # One paragraph of 5,000 characters: no place to cut it as MarkdownV2.
    message = formatted(adapter, "**Note:** " + LOREM * 15)
    assert message.markdown_v2 is not None and "\n" not in message.markdown_v2
    await adapter.send(message)
    assert [s.text for s in fake.sent] == split_text(message.text)
    assert all(s.parse_mode == "MarkdownV2" and s.entities == () for s in fake.sent)
    assert "its MarkdownV2 is sent as plain text" in caplog.text


async def test_a_retry_after_a_failure_midway_sends_only_the_rest(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake))
    message = outbound(adapter, long_reply(10_000))
    fake.fail_next(502, after=1)
    with pytest.raises(TransientError):
        await adapter.send(message)
    assert len(fake.sent) == 1
    await adapter.send(message)
    assert len(fake.sent) == 3
    # Each part once, in order: together they are the reply.
    assert " ".join(s.text for s in fake.sent).split() == message.text.split()
    assert await core.store.get_checkpoint(adapter.account.id, f"out:{message.message_id}") is None


async def test_attachments_go_as_photo_or_document(core: Core, fake: FakeTelegram, tmp_path: Path) -> None:
    adapter = await start_channel(core, config(fake))
    photo, pdf = tmp_path / "label.png", tmp_path / "invoice.pdf"
    photo.write_bytes(b"\x89PNG fake image")
    pdf.write_bytes(b"%PDF-1.4 fake")
    await adapter.send(
        outbound(
            adapter,
            "Here are your label and invoice",
            attachments=(
                OutboundAttachment("label.png", "image/png", str(photo), photo.stat().st_size),
                OutboundAttachment("invoice.pdf", "application/pdf", str(pdf), pdf.stat().st_size),
            ),
        )
    )
    assert [(s.method, s.file_name, s.file_content) for s in fake.sent] == [
        ("sendMessage", None, None),
        ("sendPhoto", "label.png", b"\x89PNG fake image"),
        ("sendDocument", "invoice.pdf", b"%PDF-1.4 fake"),
    ]


async def test_403_blocked_fails_for_good_and_marks_the_contact(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake))
    await fake.wait_confirmed(fake.push_message(USER, "hi")["update_id"])
    fake.blocked_chats.add(USER)
    with pytest.raises(PermanentError) as raised:
        await adapter.send(outbound(adapter, "Your refund is on its way"))
    assert "blocked the bot" in raised.value.reason
    [identity] = await sql(core.store, "SELECT blocked_at, blocked_reason FROM identities")
    assert identity.blocked_at is not None


async def test_429_retry_after_is_honoured(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake))
    fake.fail_next(429, retry_after="12")
    with pytest.raises(RateLimited) as raised:
        await adapter.send(outbound(adapter, "hello"))
    assert raised.value.retry_after == 12.0


async def test_rate_limits_are_shared_across_processes_through_redis(
    fake: FakeTelegram, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two processes (each its own core and bus client) sending to one chat keep 1 message/s together."""
    async with (
        open_core(make_settings(tmp_path / "a"), bus=RedisBus(redis_server.url)) as one,
        open_core(make_settings(tmp_path / "b"), bus=RedisBus(redis_server.url)) as two,
    ):
        first = await start_channel(one, config(fake, rate_limit=True))
        second = await start_channel(two, config(fake, rate_limit=True))
        await asyncio.gather(
            *(adapter.send(outbound(adapter, f"reply {n}")) for n, adapter in enumerate([first, second] * 2))
        )
    times = sorted(s.at for s in fake.sent)
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) > 0.85, gaps


async def test_a_permanent_failure_midway_says_what_the_customer_already_has(core: Core, fake: FakeTelegram) -> None:
    adapter = await start_channel(core, config(fake))
    message = outbound(adapter, long_reply(10_000))
    fake.fail_next(400, after=1, description="Bad Request: chat not found")
    with pytest.raises(PermanentError) as raised:
        await adapter.send(message)
    assert raised.value.reason.startswith("part 2 of 3 not sent (parts 1-1 were delivered): ")
    assert "chat not found" in raised.value.reason.lower()
    assert await core.store.get_checkpoint(adapter.account.id, f"out:{message.message_id}") is None


async def test_a_missing_attachment_file_fails_for_good(core: Core, fake: FakeTelegram, tmp_path: Path) -> None:
    adapter = await start_channel(core, config(fake))
    gone = OutboundAttachment("label.pdf", "application/pdf", str(tmp_path / "gone.pdf"), 10)
    with pytest.raises(PermanentError) as raised:
        await adapter.send(outbound(adapter, "", attachments=(gone,)))
    assert "label.pdf" in raised.value.reason
    assert fake.sent == []


async def test_an_oversized_webhook_body_is_refused_and_nothing_stored(
    core: Core, fake: FakeTelegram
) -> None:
    base = await core.serve()
    adapter = await start_channel(core, config(fake, mode="webhook", public_url=base))
    url = f"{base}/channels/telegram/{adapter.account.id}/webhook"
    huge = fake.push_message(USER, "x" * (core.settings.http.max_body_bytes + 10))
    body = io.BytesIO(json.dumps(huge).encode())
    headers = {SECRET_HEADER: adapter.secret, "Content-Type": "application/json"}
    async with core.http.post(url, data=body, headers=headers) as response:
        assert response.status == 413
    assert await messages(core, adapter.account.id) == []
