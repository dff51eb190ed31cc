"""The email channel end to end against a real Dovecot (IMAP) and a real SMTP server, inside the real core:
receiving (IDLE, checkpoints, UIDVALIDITY, outages, credentials), history import, threading, loops and
bounces, sending."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import pytest
from contract import AdapterContract, InboundDelivery, SendFake

from aggregator.model import Identity, OutboundMessage, new_id
from channels.base import AuthError, ChannelAdapter, ChannelError, PermanentError, TransientError
from channels.email import EmailChannel
from support.app import Core, closed_port, sql, sql_write
from support.dovecot import Dovecot, running_dovecot
from support.smtp_server import SmtpServer

pytestmark = pytest.mark.timeout(60)

SUPPORT = "support@shop.test"
USER = "support"  # the Dovecot mailbox our channel reads (any user logs in with "secret")


def config(dovecot: Dovecot, smtp: SmtpServer, **overrides: Any) -> dict[str, Any]:
    return {
        "address": SUPPORT,
        "display_name": "Shop Support",
        "imap_host": "127.0.0.1",
        "imap_port": dovecot.port,
        "imap_user": USER,
        "imap_password": "secret",
        "imap_security": "none",
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_user": SUPPORT,
        "smtp_password": "secret",
        "smtp_security": "none",
        "timeout_seconds": 5,
        **overrides,
    }


def mail(
    sender: str,
    subject: str,
    body: str,
    *,
    to: str = SUPPORT,
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
    when: datetime | None = None,
) -> bytes:
    """A plain mail as a customer's client writes it."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when or datetime.now(UTC))
    msg["Message-ID"] = message_id or make_msgid(domain="customer.test")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = " ".join(references)
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes()


async def until(check: Callable[[], Awaitable[bool]], within: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within}s")
        await asyncio.sleep(0.05)


async def count_messages(core: Core, channel_id: str) -> int:
    """Mail received on the channel (our own replies are not counted)."""
    rows = await sql(
        core.store,
        "SELECT count(*) FROM messages WHERE channel_account_id = :id AND direction = 'in'",
        id=channel_id,
    )
    return int(rows[0][0])


async def stored_count(core: Core, channel_id: str, n: int, within: float = 15.0) -> None:
    async def reached() -> bool:
        return await count_messages(core, channel_id) >= n

    await until(reached, within, f"{n} messages stored")


async def start_channel(core: Core, values: dict[str, Any]) -> EmailChannel:
    account_id = await core.add_channel(values, kind="email")
    adapter = await core.adapter(account_id)
    assert isinstance(adapter, EmailChannel)
    return adapter


async def state_of(core: Core, channel_id: str) -> tuple[str, str | None]:
    account = await core.store.get_channel_account(channel_id)
    return account.state, account.state_detail


# ------------------------------------------------------------------------------------------------
# The adapter contract


class TestEmailChannelContract(AdapterContract):
    adapter_class = EmailChannel
    secret_fields = frozenset({"imap_password", "smtp_password"})
    inbound_sender = "anna@customer.test"
    recipient_address = "anna@customer.test"
    # SMTP reply codes: bad credentials stop the channel, 4xx are retried, 5xx are final.
    status_errors = {
        535: AuthError,
        421: TransientError,
        450: TransientError,
        451: TransientError,
        452: TransientError,
        550: PermanentError,
        553: PermanentError,
        554: PermanentError,
    }
    rate_limit_status = None

    @pytest.fixture
    def valid_config(self, dovecot: Dovecot, smtp: SmtpServer) -> dict[str, Any]:
        return config(dovecot, smtp)

    @pytest.fixture
    def invalid_configs(self, valid_config: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
        v = valid_config
        return [
            ({**v, "address": "not-an-address"}, "address"),
            ({**v, "imap_security": "ssl3"}, "imap_security"),
            ({**v, "smtp_security": "maybe"}, "smtp_security"),
            ({**v, "imap_port": 0}, "imap_port"),
            ({**v, "smtp_port": "many"}, "smtp_port"),
            ({**v, "after_store": "delete"}, "after_store"),
            ({**v, "after_store": "move:"}, "after_store"),
            ({**v, "after_store": "move:INBOX"}, "after_store"),
            ({**v, "reply_to_token": "sometimes"}, "reply_to_token"),
            ({**v, "imap_folders": []}, "imap_folders"),
            ({**v, "imap_folders": ["INBOX", "INBOX"]}, "imap_folders"),
            ({k: x for k, x in v.items() if k != "imap_host"}, "imap_host"),
            ({k: x for k, x in v.items() if k != "imap_password"}, "imap_password"),
            ({**v, "idle_seconds": 29 * 60}, "idle_seconds"),
        ]

    @pytest.fixture
    def unreachable_config(self) -> dict[str, Any]:
        return {"imap_port": closed_port(), "smtp_port": closed_port()}

    @pytest.fixture
    def timeout_config(self) -> dict[str, Any]:
        return {"timeout_seconds": 0.5}

    @pytest.fixture
    def send_fake(self, smtp: SmtpServer) -> SendFake:
        return smtp

    @pytest.fixture
    def inbound_delivery(self, core: Core, dovecot: Dovecot) -> InboundDelivery:
        async def deliver(adapter: ChannelAdapter[Any], external_id: str, sender: str, text: str) -> None:
            raw = mail(sender, f"Contract {external_id}", text, message_id=f"<{external_id}@customer.test>")
            before = len(core.received)
            await dovecot.deliver(USER, raw)

            async def received() -> bool:
                return len(core.received) > before

            await until(received, 10, "the mail handed to the core")
            newest = max(await dovecot.uids(USER))

            async def acknowledged() -> bool:
                # Acknowledged to the source: the folder's checkpoint is past the mail.
                checkpoint = await core.store.get_checkpoint(adapter.account.id, "folder:INBOX")
                return bool(checkpoint["last_uid"] >= newest)

            await until(acknowledged, 10, "the checkpoint past the mail")

        return deliver


def test_config_defaults_ports_by_security() -> None:
    parsed = EmailChannel.config_model.parse(
        "email",
        {"address": SUPPORT, "imap_host": "imap.x", "imap_password": "p", "smtp_host": "smtp.x"},
    )
    assert isinstance(parsed, EmailChannel.config_model)
    assert (parsed.port("imap"), parsed.port("smtp")) == (993, 587)
    assert parsed.imap_folders == ["INBOX"]
    assert parsed.after_store == "none"
    assert parsed.reply_to_token is True
    from_cli = EmailChannel.config_model.parse(
        "email",
        {
            "address": SUPPORT, "imap_host": "imap.x", "imap_password": "p", "smtp_host": "smtp.x",
            "imap_folders": "INBOX, Support", "reply_to_token": "off", "imap_security": "starttls",
        },
    )
    assert isinstance(from_cli, EmailChannel.config_model)
    assert from_cli.imap_folders == ["INBOX", "Support"]
    assert from_cli.reply_to_token is False
    assert from_cli.port("imap") == 143


# ------------------------------------------------------------------------------------------------
# Receiving


async def test_connecting_takes_new_mail_only_and_idle_brings_it_at_once(
    core: Core, dovecot: Dovecot, smtp: SmtpServer
) -> None:
    for n in range(3):
        await dovecot.deliver(USER, mail("old@customer.test", f"Old {n}", "from last year"))
    adapter = await start_channel(core, config(dovecot, smtp))
    assert await state_of(core, adapter.account.id) == ("connected", None)
    checkpoint = await core.store.get_checkpoint(adapter.account.id, "folder:INBOX")
    assert checkpoint["last_uid"] == 3

    started = time.monotonic()
    await dovecot.deliver(USER, mail("anna@customer.test", "Where is my parcel?", "Order 1234"))
    await stored_count(core, adapter.account.id, 1, within=5)
    assert time.monotonic() - started < 3, "IDLE should bring new mail within a second or two"
    await asyncio.sleep(0.3)
    assert await count_messages(core, adapter.account.id) == 1
    rows = await sql(
        core.store,
        "SELECT m.subject, m.text, m.raw_ref, m.external_id, i.address FROM messages m "
        "JOIN identities i ON i.contact_id = m.sender_contact_id",
    )
    subject, text, raw_ref, external_id, address = rows[0]
    assert (subject, address) == ("Where is my parcel?", "anna@customer.test")
    assert "Order 1234" in text
    assert external_id.startswith("imap:") and external_id.endswith(":4:INBOX")
    raw = core.attachments.path_for(raw_ref).read_bytes()
    assert b"Subject: Where is my parcel?" in raw


async def test_polling_when_the_server_has_no_idle_and_several_folders(
    core: Core, tmp_path: Path, smtp: SmtpServer
) -> None:
    no_idle = "protocol imap {\n  imap_capability = IMAP4rev1 LITERAL+ UIDPLUS MOVE\n}"
    async with running_dovecot(tmp_path / "no-idle", extra_config=no_idle) as dovecot:
        await dovecot.create_folder(USER, "Support")
        adapter = await start_channel(
            core, config(dovecot, smtp, imap_folders=["INBOX", "Support"], poll_seconds=0.3)
        )
        await dovecot.deliver(USER, mail("anna@customer.test", "In the inbox", "one"))
        await dovecot.deliver(USER, mail("bert@customer.test", "In the folder", "two"), folder="Support")
        await stored_count(core, adapter.account.id, 2, within=5)
    ids = [r[0] for r in await sql(core.store, "SELECT external_id FROM messages")]
    assert sorted(i.rsplit(":", 1)[1] for i in ids) == ["INBOX", "Support"]


async def test_after_store_seen_and_move(core: Core, dovecot: Dovecot, smtp: SmtpServer) -> None:
    await dovecot.create_folder(USER, "Done")
    adapter = await start_channel(core, config(dovecot, smtp, after_store="move:Done"))
    await dovecot.deliver(USER, mail("anna@customer.test", "Move me", "x"))
    await stored_count(core, adapter.account.id, 1)

    async def moved() -> bool:
        return len(await dovecot.uids(USER, "Done")) == 1 and not await dovecot.uids(USER, "INBOX")

    await until(moved, 5, "the mail moved to Done")
    await core.channels.stop_all()

    other = await start_channel(core, config(dovecot, smtp, after_store="seen", imap_user="seen-user"))
    await dovecot.deliver("seen-user", mail("bert@customer.test", "Mark me", "y"))
    await stored_count(core, other.account.id, 1)

    async def seen() -> bool:
        return "\\Seen" in await dovecot.flags("seen-user", (await dovecot.uids("seen-user"))[0])

    await until(seen, 5, "the mail marked seen")


async def test_default_leaves_mail_untouched_and_unread(
    core: Core, dovecot: Dovecot, smtp: SmtpServer
) -> None:
    adapter = await start_channel(core, config(dovecot, smtp))
    await dovecot.deliver(USER, mail("anna@customer.test", "Leave me", "x"))
    await stored_count(core, adapter.account.id, 1)
    uids = await dovecot.uids(USER)
    assert len(uids) == 1
    assert "\\Seen" not in await dovecot.flags(USER, uids[0])


async def test_same_message_id_different_mails_are_each_stored(
    core: Core, dovecot: Dovecot, smtp: SmtpServer
) -> None:
    adapter = await start_channel(core, config(dovecot, smtp))
    stamp = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    for body in ("first mail", "second mail, same id and date"):
        await dovecot.deliver(
            USER, mail("anna@customer.test", "Same", body, message_id="<same@customer.test>", when=stamp)
        )
    await stored_count(core, adapter.account.id, 2)


async def test_new_uidvalidity_resyncs_without_duplicates(
    core: Core, dovecot: Dovecot, smtp: SmtpServer
) -> None:
    adapter = await start_channel(core, config(dovecot, smtp))
    for n in range(5):
        await dovecot.deliver(USER, mail("anna@customer.test", f"Mail {n}", f"body {n}"))
    await stored_count(core, adapter.account.id, 5)
    before = (await core.store.get_checkpoint(adapter.account.id, "folder:INBOX"))["uidvalidity"]

    await dovecot.restart(new_uidvalidity=True)
    await dovecot.deliver(USER, mail("bert@customer.test", "After the change", "new"))
    await stored_count(core, adapter.account.id, 6, within=30)
    await asyncio.sleep(0.5)

    assert await count_messages(core, adapter.account.id) == 6
    after = await core.store.get_checkpoint(adapter.account.id, "folder:INBOX")
    assert after["uidvalidity"] != before
    assert after["last_uid"] == 6


async def test_server_down_for_a_while_then_everything_arrives(
    core: Core, dovecot: Dovecot, smtp: SmtpServer
) -> None:
    adapter = await start_channel(core, config(dovecot, smtp))
    await dovecot.deliver(USER, mail("anna@customer.test", "Before", "x"))
    await stored_count(core, adapter.account.id, 1)

    await dovecot.stop()

    async def disconnected() -> bool:
        return (await state_of(core, adapter.account.id))[0] == "transient_disconnect"

    await until(disconnected, 15, "the outage noticed")
    for n in range(20):
        await dovecot.deliver(USER, mail("bert@customer.test", f"During {n}", "y"))
    await asyncio.sleep(2)
    await dovecot.start()
    await stored_count(core, adapter.account.id, 21, within=40)
    assert (await state_of(core, adapter.account.id))[0] == "connected"
    account = await core.store.get_channel_account(adapter.account.id)
    assert account.enabled


async def test_bad_credentials_are_shown_and_not_retried(
    core: Core, dovecot: Dovecot, smtp: SmtpServer
) -> None:
    adapter = await start_channel(core, config(dovecot, smtp, imap_password="wrong"))

    async def refused() -> bool:
        # Dovecot answers a wrong password only after its auth_failure_delay (2 s and more).
        return (await state_of(core, adapter.account.id))[0] == "bad_credentials"

    await until(refused, 15, "the refused login shown")
    state, detail = await state_of(core, adapter.account.id)
    assert state == "bad_credentials"
    assert detail is not None and "imap_password" in detail
    logins = dovecot.failed_logins()
    await asyncio.sleep(3)
    assert dovecot.failed_logins() == logins, "a refused login must not be retried"


# ------------------------------------------------------------------------------------------------
# History import


async def test_history_import_is_a_choice_with_progress_and_resumes(
    core: Core, dovecot: Dovecot, smtp: SmtpServer
) -> None:
    for n in range(450):
        await dovecot.deliver(USER, mail(f"c{n % 40}@customer.test", f"History {n}", f"old mail {n}"))
    adapter = await start_channel(core, config(dovecot, smtp))
    assert await count_messages(core, adapter.account.id) == 0

    seen: list[tuple[int, int]] = []

    class Interrupted(Exception):
        pass

    def stop_after_first_chunk(folder: str, done: int, total: int) -> None:
        seen.append((done, total))
        if done > 0:
            raise Interrupted

    with pytest.raises(Interrupted):
        await adapter.import_history(date.today() - timedelta(days=1), stop_after_first_chunk)
    first = await count_messages(core, adapter.account.id)
    assert 0 < first < 450

    progress: list[tuple[int, int]] = []
    reports = await adapter.import_history(
        date.today() - timedelta(days=1), lambda f, d, t: progress.append((d, t))
    )
    assert await count_messages(core, adapter.account.id) == 450
    # The run goes on after the first chunk (the one checkpointed); what the interrupted run had
    # handed over beyond it is found again and recognised, not stored twice.
    report = reports[0]
    assert report.found == 450 - 200
    assert report.stored + report.already == report.found
    assert progress[0] == (0, report.found) and progress[-1] == (report.found, report.found)

    # New mail still arrives through the running reader; a third import finds nothing left.
    await dovecot.deliver(USER, mail("new@customer.test", "New", "z"))
    await stored_count(core, adapter.account.id, 451)
    again = await adapter.import_history(date.today() - timedelta(days=1))
    assert again[0].found == 0
    assert await count_messages(core, adapter.account.id) == 451


# ------------------------------------------------------------------------------------------------
# Threading, loops and bounces


async def reply_from_us(core: Core, adapter: EmailChannel, conversation_id: str, text: str) -> EmailMessage:
    """Send a reply through the real outbox path (row, claim, adapter) and return the mail as sent."""
    _, outbox_id = await core.store.create_reply(core.workspace.id, conversation_id, text)
    now = datetime.now(UTC)
    item = await core.store.claim_outbox(outbox_id, now, now + timedelta(seconds=30))
    assert item is not None
    message = item.outbound()
    smtp_count = len(adapter_smtp(adapter).received)
    await adapter.send(message)
    sent = adapter_smtp(adapter).received[smtp_count]
    return email.message_from_bytes(sent.raw, policy=email.policy.default)  # type: ignore[return-value]


_SMTP: dict[str, SmtpServer] = {}


def adapter_smtp(adapter: EmailChannel) -> SmtpServer:
    return _SMTP[adapter.account.id]


async def email_channel(core: Core, dovecot: Dovecot, smtp: SmtpServer, **overrides: Any) -> EmailChannel:
    adapter = await start_channel(core, config(dovecot, smtp, **overrides))
    _SMTP[adapter.account.id] = smtp
    return adapter


async def conversations_of(core: Core) -> list[str]:
    return [r[0] for r in await sql(core.store, "SELECT DISTINCT conversation_id FROM messages")]


async def test_five_exchanges_stay_one_conversation_even_without_in_reply_to(
    core: Core, dovecot: Dovecot, smtp: SmtpServer
) -> None:
    adapter = await email_channel(core, dovecot, smtp)
    anna = "Anna Kovács <anna@customer.test>"
    await dovecot.deliver(USER, mail(anna, "Broken lamp", "My lamp arrived broken.", message_id="<a1@customer.test>"))
    await stored_count(core, adapter.account.id, 1)
    (conversation_id,) = await conversations_of(core)
    previous_ids = ["a1@customer.test"]
    for n in range(2, 7):
        sent = await reply_from_us(core, adapter, conversation_id, f"Answer {n}")
        assert sent["Reply-To"] == f"support+{conversation_id}@shop.test"
        ours = sent["Message-ID"].strip("<>")
        assert sent["In-Reply-To"].strip("<>") == previous_ids[-1]
        previous_ids.append(ours)
        if n == 4:
            # Her client dropped In-Reply-To and References (and wrote to the plain address).
            raw = mail(anna, f"AW: {sent['Subject']}", f"Reply {n}", message_id=f"<a{n}@customer.test>")
        else:
            raw = mail(
                anna,
                f"Re: {sent['Subject']}",
                f"Reply {n}\n\n> Answer {n}",
                to=sent["Reply-To"],
                message_id=f"<a{n}@customer.test>",
                in_reply_to=sent["Message-ID"],
                references=tuple(f"<{i}>" for i in previous_ids),
            )
        previous_ids.append(f"a{n}@customer.test")
        await dovecot.deliver(USER, raw)
        await stored_count(core, adapter.account.id, n)
    assert await conversations_of(core) == [conversation_id]
    rows = await sql(core.store, "SELECT reply_text FROM messages WHERE text LIKE 'Reply 5%'")
    assert rows[0][0] == "Reply 5"


async def test_colleague_in_copy_replying_to_our_mail_joins_the_conversation(
    core: Core, dovecot: Dovecot, smtp: SmtpServer
) -> None:
    adapter = await email_channel(core, dovecot, smtp, reply_to_token=False)
    await dovecot.deliver(USER, mail("anna@customer.test", "Invoice", "Please send the invoice"))
    await stored_count(core, adapter.account.id, 1)
    (conversation_id,) = await conversations_of(core)
    sent = await reply_from_us(core, adapter, conversation_id, "Attached")
    assert sent["Reply-To"] is None
    await dovecot.deliver(
        USER,
        mail("boss@customer.test", "Re: Invoice (accounting)", "Thanks, I take it from here",
             in_reply_to=sent["Message-ID"], references=(sent["Message-ID"],)),
    )
    await stored_count(core, adapter.account.id, 2)
    assert await conversations_of(core) == [conversation_id]


async def test_two_customers_replying_to_one_newsletter_stay_two_conversations(
    core: Core, dovecot: Dovecot, smtp: SmtpServer
) -> None:
    adapter = await email_channel(core, dovecot, smtp)
    news = "<newsletter-2026-12@news.shop.test>"
    for who in ("anna", "bert"):
        await dovecot.deliver(
            USER,
            mail(f"{who}@customer.test", "Re: December news", f"{who} likes it",
                 in_reply_to=news, references=(news,)),
        )
    await stored_count(core, adapter.account.id, 2)
    assert len(await conversations_of(core)) == 2


async def test_outlook_thread_index_threads_when_headers_are_dropped(
    core: Core, dovecot: Dovecot, smtp: SmtpServer
) -> None:
    adapter = await email_channel(core, dovecot, smtp)
    index = "AdnE3Lr6wq0K9i8bQtWb7gVw5DYHnA=="
    await dovecot.deliver(
        USER, mail("anna@corp.test", "Delivery", "When?", headers={"Thread-Index": index})
    )
    await stored_count(core, adapter.account.id, 1)
    # Outlook rewrote the subject and sent no In-Reply-To, but kept the thread's index (plus 5 bytes).
    await dovecot.deliver(
        USER,
        mail("anna@corp.test", "WG: Lieferung - dringend", "Any news?",
             headers={"Thread-Index": "AdnE3Lr6wq0K9i8bQtWb7gVw5DYHnAABBBBBBB=="}),
    )
    await dovecot.deliver(
        USER, mail("eve@corp.test", "Lieferung", "other person", headers={"Thread-Index": index})
    )
    await stored_count(core, adapter.account.id, 3)
    rows = await sql(core.store, "SELECT subject, conversation_id FROM messages")
    conversation = dict(rows)
    assert conversation["Delivery"] == conversation["WG: Lieferung - dringend"]
    assert conversation["Lieferung"] != conversation["Delivery"]


async def test_out_of_office_reply_triggers_nothing(core: Core, dovecot: Dovecot, smtp: SmtpServer) -> None:
    adapter = await email_channel(core, dovecot, smtp)
    await dovecot.deliver(USER, mail("anna@customer.test", "Refund", "Please refund", message_id="<r1@customer.test>"))
    await stored_count(core, adapter.account.id, 1)
    (conversation_id,) = await conversations_of(core)
    sent = await reply_from_us(core, adapter, conversation_id, "Refunded")
    await sql_write(core.store, "UPDATE conversations SET status = 'resolved' WHERE id = :id", id=conversation_id)
    outbox_before = (await sql(core.store, "SELECT count(*) FROM outbox"))[0][0]

    await dovecot.deliver(
        USER,
        mail("anna@customer.test", "Automatic reply: Re: Refund", "I am out of office until Monday.",
             in_reply_to=sent["Message-ID"], references=(sent["Message-ID"],),
             headers={"Auto-Submitted": "auto-replied", "X-Auto-Response-Suppress": "All"}),
    )
    await stored_count(core, adapter.account.id, 2)
    rows = await sql(core.store, "SELECT status FROM conversations WHERE id = :id", id=conversation_id)
    assert rows[0][0] == "resolved"
    flags = await sql(core.store, "SELECT flags FROM messages WHERE text LIKE 'I am out of office%'")
    assert "auto_submitted" in flags[0][0]
    assert (await sql(core.store, "SELECT count(*) FROM outbox"))[0][0] == outbox_before


async def test_bounce_fails_our_message_with_the_reason(core: Core, dovecot: Dovecot, smtp: SmtpServer) -> None:
    adapter = await email_channel(core, dovecot, smtp)
    await dovecot.deliver(USER, mail("anna@customer.test", "Question", "Hello"))
    await stored_count(core, adapter.account.id, 1)
    (conversation_id,) = await conversations_of(core)
    sent = await reply_from_us(core, adapter, conversation_id, "Answer")
    our_id = sent["Message-ID"].strip("<>").split("@")[0]
    dsn = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.shop.test>\r\n"
        f"To: {SUPPORT}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "Message-ID: <dsn-1@mx.shop.test>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that your message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.shop.test\r\n\r\n"
        "Final-Recipient: rfc822; anna@customer.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <anna@customer.test>: Recipient address rejected: User unknown\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: {SUPPORT}\r\nTo: anna@customer.test\r\nSubject: {sent['Subject']}\r\n"
        f"Message-ID: {sent['Message-ID']}\r\n"
        "--B--\r\n"
    ).encode()
    await dovecot.deliver(USER, dsn)
    await stored_count(core, adapter.account.id, 2)
    rows = await sql(core.store, "SELECT delivery_status, delivery_error FROM messages WHERE id = :id", id=our_id)
    assert rows[0][0] == "failed"
    assert "User unknown" in rows[0][1]
    bounce = await sql(core.store, "SELECT conversation_id, flags FROM messages WHERE text LIKE '%sorry to have%'")
    assert bounce[0][0] == conversation_id
    assert "bounce" in bounce[0][1]


# ------------------------------------------------------------------------------------------------
# Sending


async def test_sent_mail_threads_and_is_copied_to_sent(core: Core, dovecot: Dovecot, smtp: SmtpServer) -> None:
    await dovecot.create_folder(USER, "Sent")
    adapter = await email_channel(core, dovecot, smtp, sent_folder="Sent")
    await dovecot.deliver(
        USER,
        mail("Ünal Yılmaz <unal@customer.test>", "Sipariş 9", "Merhaba", message_id="<u1@customer.test>",
             references=("<u0@customer.test>",)),
    )
    await stored_count(core, adapter.account.id, 1)
    (conversation_id,) = await conversations_of(core)
    sent = await reply_from_us(core, adapter, conversation_id, "Kargoya verildi")
    smtp_mail = smtp.received[-1]

    assert smtp_mail.envelope_from == SUPPORT
    assert smtp_mail.recipients == ["unal@customer.test"]
    assert sent["Subject"] == "Re: Sipariş 9"
    assert sent["In-Reply-To"] == "<u1@customer.test>"
    assert sent["References"].split() == ["<u0@customer.test>", "<u1@customer.test>"]
    assert sent["Message-ID"].endswith("@shop.test>")
    assert sent["Auto-Submitted"] is None
    assert "Ünal Yılmaz" in str(sent["To"])

    async def copied() -> bool:
        return len(await dovecot.uids(USER, "Sent")) == 1

    await until(copied, 5, "a copy in Sent")


async def test_a_retry_reuses_the_message_id(core: Core, dovecot: Dovecot, smtp: SmtpServer) -> None:
    adapter = await email_channel(core, dovecot, smtp)
    message = OutboundMessage(
        message_id=new_id(), conversation_id=new_id(), channel_account_id=adapter.account.id,
        recipient=Identity("email", "anna@customer.test"), text="Hello", attempt=1, automatic=True,
    )
    smtp.fail_next(451)
    with pytest.raises(TransientError):
        await adapter.send(message)
    await adapter.send(message)
    sent = email.message_from_bytes(smtp.received[-1].raw, policy=email.policy.default)
    assert sent["Message-ID"] == f"<{message.message_id}@shop.test>"
    assert sent["Auto-Submitted"] == "auto-replied"


async def test_mail_without_a_sender_cannot_be_answered(core: Core, dovecot: Dovecot, smtp: SmtpServer) -> None:
    adapter = await email_channel(core, dovecot, smtp)
    message = OutboundMessage(
        message_id=new_id(), conversation_id=new_id(), channel_account_id=adapter.account.id,
        recipient=Identity("email", "unknown-sender@invalid"), text="Hello", attempt=1,
    )
    before = len(smtp.received)
    with pytest.raises(PermanentError) as raised:
        await adapter.send(message)
    assert "named no sender" in raised.value.reason
    assert len(smtp.received) == before


async def test_check_reports_each_server(core: Core, dovecot: Dovecot, smtp: SmtpServer) -> None:
    good = await email_channel(core, dovecot, smtp)
    result = await good.check()
    assert result.ok, result.detail
    assert "IMAP" in result.detail and "SMTP" in result.detail
    bad = await email_channel(core, dovecot, smtp, smtp_password="wrong", imap_user="bad-check")
    result = await bad.check()
    assert not result.ok
    assert "IMAP: logged in" in result.detail and "SMTP FAILED" in result.detail


async def test_send_errors_are_typed(core: Core, dovecot: Dovecot, smtp: SmtpServer) -> None:
    adapter = await email_channel(core, dovecot, smtp, smtp_password="wrong")
    message = OutboundMessage(
        message_id=new_id(), conversation_id=new_id(), channel_account_id=adapter.account.id,
        recipient=Identity("email", "anna@customer.test"), text="Hello", attempt=1,
    )
    with pytest.raises(ChannelError) as raised:
        await adapter.send(message)
    assert isinstance(raised.value, AuthError)
    assert "smtp" in raised.value.reason.lower()
