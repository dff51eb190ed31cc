"""channels.email.compose and channels.email.smtp: the mail we build, read back; sending to a real server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.model import OutboundAttachment
from channels.base import AuthError, ChannelError, PermanentError, TransientError
from channels.email.compose import compose, message_id_for, normalize_subject, reply_subject
from channels.email.parse import parse_message
from channels.email.smtp import SmtpSettings, check_login, send_message
from support.smtp_server import running_smtp_server

MESSAGE_ID = "0190f3a2b4c5d6e7f8091a2b3c4d5e6f"
WHEN = datetime(2024, 3, 1, 12, 30, tzinfo=UTC)
USER, PASSWORD = "agent@shop.example", "pä55 w0rd"
# Outlook's Message-IDs are longer than a folded header line.
OUTLOOK_ID = "AM0PR04MB6547D3E5B7C1F2A9E8D4C6B1A3F5E7D9@AM0PR04MB6547.eurprd04.prod.outlook.com"


def mail(**overrides: Any) -> EmailMessage:
    values: dict[str, Any] = {
        "message_id": MESSAGE_ID,
        "domain": "shop.example",
        "from_address": "support@shop.example",
        "display_name": "Müller & Söhne, Kundendienst",
        "to": ("kunde@example.com", "Zoë Ørsted"),
        "subject": "Ihre Bestellung 1234",
        "text": "Guten Tag,\n\nIhre Rücksendung ist angekommen.\n",
        "html": None,
        "reply_to": None,
        "in_reply_to": None,
        "references": (),
        "attachments": (),
        "automatic": False,
        "date": WHEN,
    }
    values.update(overrides)
    return compose(**values)


def read_back(message: EmailMessage) -> EmailMessage:
    """The message as a receiver parses it from the wire."""
    # Line ends as a mail client stores them: the stdlib keeps CRLF inside 8bit text parts.
    parsed = message_from_bytes(bytes(message).replace(b"\r\n", b"\n"), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def attachment(tmp_path: Path, filename: str, content_type: str, content: bytes) -> OutboundAttachment:
    path = tmp_path / f"stored-{len(list(tmp_path.iterdir()))}"
    path.write_bytes(content)
    return OutboundAttachment(filename=filename, content_type=content_type, path=str(path), size=len(content))


# --- compose ------------------------------------------------------------------------------------


def test_plain_text_mail_headers_read_back() -> None:
    parsed = read_back(mail())

    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content_charset() == "utf-8"
    assert parsed.get_content() == "Guten Tag,\n\nIhre Rücksendung ist angekommen.\n"
    [sender] = parsed["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Müller & Söhne, Kundendienst", "support@shop.example")
    [recipient] = parsed["To"].addresses
    assert (recipient.display_name, recipient.addr_spec) == ("Zoë Ørsted", "kunde@example.com")
    assert parsed["Subject"] == "Ihre Bestellung 1234"
    assert parsed["Message-ID"] == f"<{MESSAGE_ID}@shop.example>"
    assert parsedate_to_datetime(parsed["Date"]) == WHEN
    for absent in ("In-Reply-To", "References", "Reply-To", "Auto-Submitted", "X-Auto-Response-Suppress"):
        assert parsed[absent] is None, absent


def test_raw_headers_are_ascii_with_encoded_words_and_crlf() -> None:
    raw = bytes(mail(html="<p>Grüße</p>"))

    head = raw.split(b"\r\n\r\n", 1)[0]
    head.decode("ascii")
    assert b"=?utf-8?" in head
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78


def test_html_makes_an_alternative_and_attachments_a_mixed_message(tmp_path: Path) -> None:
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 40
    csv = "Artikel;Menge\nSchäler;2\n".encode()
    parsed = read_back(
        mail(
            html="<p>Guten Tag,</p><p>Ihre Rücksendung ist angekommen.</p>",
            attachments=[
                attachment(tmp_path, "Rechnung März 2024.pdf", "application/pdf", pdf),
                attachment(tmp_path, "überblick.csv", "text/csv; charset=utf-8", csv),
                attachment(tmp_path, "kaputt", "not a type", b"\x00\x01"),
            ],
        )
    )

    assert parsed.get_content_type() == "multipart/mixed"
    body, *files = parsed.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in body.iter_parts()] == ["text/plain", "text/html"]
    html = body.get_body(("html",))
    assert html is not None and "Rücksendung" in html.get_content()
    assert [(f.get_filename(), f.get_content_type(), f.get_payload(decode=True)) for f in files] == [
        ("Rechnung März 2024.pdf", "application/pdf", pdf),
        ("überblick.csv", "text/csv", csv),
        ("kaputt", "application/octet-stream", b"\x00\x01"),
    ]
    raw = bytes(parsed)
    # RFC 2231 parameters, not RFC 2047 words inside a quoted file name.
    assert b"filename*=utf-8''Rechnung%20M%C3%A4rz%202024.pdf" in raw
    assert raw.count(b"MIME-Version") == 1


def test_our_own_parser_reads_it_back(tmp_path: Path) -> None:
    composed = mail(
        html="<p>Hallo</p>",
        attachments=[attachment(tmp_path, "Ärger.txt", "text/plain", b"x")],
        in_reply_to="parent@example.com",
        automatic=True,
    )

    parsed = parse_message(bytes(composed))

    assert parsed.subject == "Re: Ihre Bestellung 1234"
    assert (parsed.message_id or "").strip("<>") == f"{MESSAGE_ID}@shop.example"
    assert [a.filename for a in parsed.attachments] == ["Ärger.txt"]
    assert parsed.auto_submitted and parsed.is_automatic


def test_automatic_mail_is_marked_and_agent_mail_is_not() -> None:
    automatic = read_back(mail(automatic=True))
    by_agent = read_back(mail(automatic=False))

    assert automatic["Auto-Submitted"] == "auto-replied"
    assert automatic["X-Auto-Response-Suppress"] == "OOF, AutoReply"
    assert by_agent["Auto-Submitted"] is None
    assert by_agent["X-Auto-Response-Suppress"] is None


def test_threading_headers_take_ids_with_or_without_brackets() -> None:
    parsed = read_back(
        mail(
            in_reply_to=OUTLOOK_ID,
            references=[
                "first@example.com",
                "<second@example.com>",
                f"<{OUTLOOK_ID}>",
                "<first@example.com>",
            ],
        )
    )

    assert parsed["In-Reply-To"] == f"<{OUTLOOK_ID}>"
    assert str(parsed["References"]).split() == [
        "<first@example.com>",
        "<second@example.com>",
        f"<{OUTLOOK_ID}>",
    ]


def test_references_end_with_the_parent_and_fold_between_ids_only() -> None:
    chain = [f"<{i:02d}{OUTLOOK_ID}>" for i in range(6)]
    raw = bytes(mail(in_reply_to="parent@example.com", references=chain))

    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    assert "=?" not in head.split("References:", 1)[1]
    folded = head.split("References:", 1)[1].split("\r\nAuto", 1)[0]
    assert read_back(mail(in_reply_to="parent@example.com", references=chain))["References"].split() == [
        *chain,
        "<parent@example.com>",
    ]
    # One id per line at this length; each continuation line starts with folding white space.
    assert len([line for line in folded.split("\r\n") if line.startswith(" <")]) >= 6


def test_a_references_value_given_whole_is_split() -> None:
    parsed = read_back(mail(references=["<a@x> <b@x>\r\n <c@x>"]))

    assert parsed["References"].split() == ["<a@x>", "<b@x>", "<c@x>"]


def test_message_id_is_the_same_on_every_attempt() -> None:
    first = read_back(mail(date=WHEN))
    retry = read_back(mail(date=WHEN + timedelta(minutes=5)))
    other = read_back(mail(message_id="0190f3a2b4c5d6e7f8091a2b3c4d5e70"))

    assert first["Message-ID"] == retry["Message-ID"] == message_id_for(MESSAGE_ID, "shop.example")
    assert other["Message-ID"] != first["Message-ID"]
    assert message_id_for("abc", "shop.example") == "<abc@shop.example>"


def test_date_keeps_its_offset_and_a_naive_date_is_utc() -> None:
    berlin = datetime(2024, 3, 1, 13, 30, tzinfo=timezone(timedelta(hours=1)))

    assert read_back(mail(date=berlin))["Date"].endswith("+0100")
    assert parsedate_to_datetime(read_back(mail(date=WHEN.replace(tzinfo=None)))["Date"]) == WHEN


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Ihre Bestellung", "Re: Ihre Bestellung"),
        ("Re: Ihre Bestellung", "Re: Ihre Bestellung"),
        ("AW: Ihre Bestellung", "AW: Ihre Bestellung"),
        ("Aw:Ihre Bestellung", "Aw:Ihre Bestellung"),
        ("SV: Order", "SV: Order"),
        ("Ynt: Sipariş", "Ynt: Sipariş"),
        ("Vá: Rendelés", "Vá: Rendelés"),
        ("Re[2]: Order", "Re[2]: Order"),
        # A forward is not yet a reply.
        ("Fwd: Order", "Re: Fwd: Order"),
        ("WG: Bestellung", "Re: WG: Bestellung"),
        ("Refund", "Re: Refund"),
        ("  lots   of\r\n space ", "Re: lots of space"),
        ("", "Re:"),
        (None, "Re:"),
    ],
)
def test_reply_subject(subject: str | None, expected: str) -> None:
    assert reply_subject(subject) == expected


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Ihre Bestellung", "ihre bestellung"),
        ("Re: Re: RE: Ihre  Bestellung ", "ihre bestellung"),
        ("AW: Aw: WG: Bestellung", "bestellung"),
        ("Re[2]: Fwd: FW: Fw: Order", "order"),
        ("TR: RV: VS: Vs: SV: Order", "order"),
        ("Ynt: YNT: Vá: VA: Antw: Ref: Order", "order"),
        ("Re:Order", "order"),
        ("Refund for Order", "refund for order"),
        ("Reise: Anfrage", "reise: anfrage"),
        ("", ""),
    ],
)
def test_normalize_subject(subject: str, expected: str) -> None:
    assert normalize_subject(subject) == expected


def test_replies_get_re_and_first_messages_keep_their_subject() -> None:
    assert read_back(mail(references=["a@x"]))["Subject"] == "Re: Ihre Bestellung 1234"
    assert read_back(mail(in_reply_to="a@x", subject="AW: Frage"))["Subject"] == "AW: Frage"
    assert read_back(mail())["Subject"] == "Ihre Bestellung 1234"


def test_header_values_cannot_inject_headers() -> None:
    parsed = read_back(
        mail(
            subject="Hallo\r\nBcc: victim@example.com", to=("kunde@example.com", "Eve\r\nBcc: x@example.com")
        )
    )

    assert parsed["Bcc"] is None
    assert parsed["Subject"] == "Hallo Bcc: victim@example.com"


def test_a_non_ascii_domain_is_sent_in_idna_form() -> None:
    parsed = read_back(mail(to=("kunde@müller.example", None)))

    assert parsed["To"].addresses[0].addr_spec == "kunde@xn--mller-kva.example"


@pytest.mark.parametrize("address", ["not an address", "a@b@c", "jürgen@example.com"])
def test_an_unusable_recipient_is_a_permanent_error(address: str) -> None:
    with pytest.raises(PermanentError, match="recipient address"):
        mail(to=(address, None))


def test_a_missing_attachment_file_is_a_permanent_error(tmp_path: Path) -> None:
    gone = OutboundAttachment("Rechnung.pdf", "application/pdf", str(tmp_path / "gone"), 10)

    with pytest.raises(PermanentError, match=r"Rechnung\.pdf"):
        mail(attachments=[gone])


# --- sending ------------------------------------------------------------------------------------


async def send(settings: SmtpSettings, recipients: Sequence[str] = ("kunde@example.com",)) -> EmailMessage:
    message = mail()
    await send_message(settings, message, sender="support@shop.example", recipients=recipients)
    return message


@pytest.mark.parametrize("security", ["none", "starttls", "tls"])
async def test_send_with_login(tmp_path: Path, security: Any) -> None:
    async with running_smtp_server(tmp_path, security=security, auth=(USER, PASSWORD)) as server:
        await send(server.smtp_settings())

        [received] = await server.wait_for(1)
    assert (received.envelope_from, received.recipients) == ("support@shop.example", ["kunde@example.com"])
    assert received.login == USER
    assert received.tls is (security != "none")
    assert received.parsed()["Message-ID"] == f"<{MESSAGE_ID}@shop.example>"
    assert received.parsed().get_content() == "Guten Tag,\n\nIhre Rücksendung ist angekommen.\n"


async def test_login_works_with_auth_login_only(tmp_path: Path) -> None:
    async with running_smtp_server(
        tmp_path, security="starttls", auth=(USER, PASSWORD), mechanisms=("LOGIN",)
    ) as server:
        await send(server.smtp_settings())

        [received] = await server.wait_for(1)
    assert received.login == USER


async def test_security_none_never_starts_tls_even_when_offered(tmp_path: Path) -> None:
    async with running_smtp_server(tmp_path, security="starttls", require_tls=False) as server:
        await send(server.smtp_settings(security="none"))

        [received] = await server.wait_for(1)
    assert received.tls is False


async def test_starttls_against_a_server_without_it_fails_clearly(tmp_path: Path) -> None:
    async with running_smtp_server(tmp_path, security="none", auth=(USER, PASSWORD)) as server:
        with pytest.raises(AuthError, match="does not offer STARTTLS") as caught:
            await send(server.smtp_settings(security="starttls"))

        assert server.received == [] and server.logins == []
    assert f"127.0.0.1:{server.port}" in caught.value.reason


async def test_implicit_tls_against_a_plain_port_is_a_settings_error(tmp_path: Path) -> None:
    async with running_smtp_server(tmp_path, security="none") as server:
        with pytest.raises(AuthError, match="smtp_security"):
            await send(server.smtp_settings(security="tls"))


async def test_wrong_password_is_an_auth_error_without_the_password(tmp_path: Path) -> None:
    async with running_smtp_server(tmp_path, security="starttls", auth=(USER, PASSWORD)) as server:
        settings = server.smtp_settings(password="wrong-secret")
        with pytest.raises(AuthError) as caught:
            await send(settings)

        assert server.received == [] and USER in server.failed_logins
    reason = caught.value.reason
    assert "535" in reason and USER in reason and "smtp_password" in reason
    assert "wrong-secret" not in reason and "wrong-secret" not in repr(settings)


async def test_no_login_on_a_server_that_requires_one_is_an_auth_error(tmp_path: Path) -> None:
    async with running_smtp_server(tmp_path, security="starttls", auth=(USER, PASSWORD)) as server:
        with pytest.raises(AuthError, match="530"):
            await send(server.smtp_settings(user=None, password=None))


async def test_login_over_plain_text_where_auth_needs_starttls(tmp_path: Path) -> None:
    async with running_smtp_server(
        tmp_path, security="starttls", auth=(USER, PASSWORD), require_tls=False
    ) as server:
        with pytest.raises(AuthError, match=r"does not offer AUTH.*'starttls'"):
            await send(server.smtp_settings(security="none"))


async def test_an_untrusted_certificate_is_a_settings_error(tmp_path: Path) -> None:
    async with running_smtp_server(tmp_path, security="tls", auth=(USER, PASSWORD)) as server:
        with pytest.raises(AuthError, match="certificate") as caught:
            await send(server.smtp_settings(ca_file=None))
        assert "tls_ca_file" in caught.value.reason

        # The same server with verification off (admins testing a self-signed setup).
        await send(server.smtp_settings(ca_file=None, tls_verify=False))
        assert len(await server.wait_for(1)) == 1


async def test_the_host_name_must_match_the_certificate(tmp_path: Path) -> None:
    async with running_smtp_server(
        tmp_path, security="starttls", auth=(USER, PASSWORD), cert_hosts=["mail.shop.example"]
    ) as server:
        with pytest.raises(AuthError, match=r"certificate.*smtp_host") as caught:
            await send(server.smtp_settings())
        assert "mismatch" in caught.value.reason
        assert server.logins == []


async def test_a_name_in_the_certificate_verifies(tmp_path: Path) -> None:
    async with running_smtp_server(tmp_path, security="starttls", auth=(USER, PASSWORD)) as server:
        await send(server.smtp_settings(host="localhost"))
        assert len(await server.wait_for(1)) == 1


async def test_a_missing_ca_file_is_a_settings_error(tmp_path: Path) -> None:
    async with running_smtp_server(tmp_path, security="tls", auth=(USER, PASSWORD)) as server:
        with pytest.raises(AuthError, match="tls_ca_file"):
            await send(server.smtp_settings(ca_file=str(tmp_path / "nope.pem")))


@pytest.mark.parametrize(
    ("code", "at"),
    [(451, "DATA"), (452, "RCPT"), (450, "RCPT"), (421, "MAIL"), (421, "DATA"), (451, "MAIL")],
)
async def test_4xx_is_transient_and_the_next_attempt_goes_through(tmp_path: Path, code: int, at: Any) -> None:
    async with running_smtp_server(tmp_path, security="starttls", auth=(USER, PASSWORD)) as server:
        server.fail_next(code, text=f"4.3.0 try again later ({at})", at=at)
        with pytest.raises(TransientError) as caught:
            await send(server.smtp_settings())
        assert caught.value.retry_after is None
        assert str(code) in caught.value.reason and "try again later" in caught.value.reason
        assert server.received == []

        await send(server.smtp_settings())
        assert len(await server.wait_for(1)) == 1


@pytest.mark.parametrize(
    ("code", "at", "text"),
    [
        (550, "RCPT", "5.1.1 <kunde@example.com>: Recipient address rejected: User unknown"),
        (553, "RCPT", "5.1.3 mailbox name not allowed"),
        (554, "DATA", "5.7.1 Message rejected as spam"),
        (552, "DATA", "5.3.4 Message size exceeds fixed limit"),
    ],
)
async def test_5xx_for_the_recipient_or_content_is_permanent(
    tmp_path: Path, code: int, at: Any, text: str
) -> None:
    async with running_smtp_server(tmp_path, security="starttls", auth=(USER, PASSWORD)) as server:
        server.fail_next(code, text=text, at=at)
        with pytest.raises(PermanentError) as caught:
            await send(server.smtp_settings())

    assert f"{code} {text}" in caught.value.reason
    assert f"127.0.0.1:{server.port}" in caught.value.reason


async def test_a_refused_sender_is_a_settings_error(tmp_path: Path) -> None:
    async with running_smtp_server(tmp_path, security="starttls", auth=(USER, PASSWORD)) as server:
        server.fail_next(553, text="5.7.1 Sender address rejected: not owned by user", at="MAIL")
        with pytest.raises(AuthError, match="not owned by user"):
            await send(server.smtp_settings())


async def test_a_temporary_auth_failure_is_transient(tmp_path: Path) -> None:
    async with running_smtp_server(tmp_path, security="tls", auth=(USER, PASSWORD)) as server:
        # Once: the client's second mechanism on the same connection is refused all the same.
        server.fail_next(454)
        with pytest.raises(TransientError, match=r"454 4\.7\.0 Temporary authentication failure"):
            await send(server.smtp_settings())
        assert server.logins == []


async def test_a_server_too_busy_to_greet_is_transient(tmp_path: Path) -> None:
    async with running_smtp_server(tmp_path, security="none") as server:
        server.fail_next(421, text="4.7.0 Too many connections", at="CONNECT")
        with pytest.raises(TransientError, match="Too many connections"):
            await send(server.smtp_settings())


async def test_some_recipients_refused_is_permanent_and_says_who_has_it(tmp_path: Path) -> None:
    async with running_smtp_server(tmp_path, security="none") as server:
        server.fail_next(550, text="5.1.1 User unknown", at="RCPT")
        with pytest.raises(PermanentError, match=r"some recipients only: gone@example.com: 550") as caught:
            await send(server.smtp_settings(), recipients=["gone@example.com", "kunde@example.com"])

        [received] = await server.wait_for(1)
    assert received.recipients == ["kunde@example.com"]
    assert "some recipients" in caught.value.reason


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (535, AuthError),
        (534, AuthError),
        (530, AuthError),
        (421, TransientError),
        (450, TransientError),
        (451, TransientError),
        (452, TransientError),
        (550, PermanentError),
        (551, PermanentError),
        (552, PermanentError),
        (553, PermanentError),
        (554, PermanentError),
    ],
)
async def test_each_reply_code_where_servers_give_it(
    tmp_path: Path, status: int, expected: type[ChannelError]
) -> None:
    async with running_smtp_server(tmp_path, security="tls", auth=(USER, PASSWORD)) as server:
        server.fail_next(status)
        with pytest.raises(expected) as caught:
            await send(server.smtp_settings())
        assert type(caught.value) is expected
        assert str(status) in caught.value.reason
        assert server.delivered_texts() == []

        await send(server.smtp_settings())
        assert server.delivered_texts() == ["Guten Tag,\n\nIhre Rücksendung ist angekommen."]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connection_refused_is_transient() -> None:
    settings = SmtpSettings("127.0.0.1", free_port(), "starttls", USER, PASSWORD, timeout=2.0)

    with pytest.raises(TransientError, match="cannot connect"):
        await send(settings)


@pytest.mark.parametrize("at", ["CONNECT", "MAIL", "DATA"])
async def test_a_hanging_server_is_transient_within_the_timeout(tmp_path: Path, at: Any) -> None:
    async with running_smtp_server(tmp_path, security="starttls", auth=(USER, PASSWORD)) as server:
        server.hang_next(at=at)
        started = time.monotonic()
        with pytest.raises(TransientError, match=r"did not answer within 0.3s"):
            await send(server.smtp_settings(timeout=0.3))
        assert time.monotonic() - started < 2.0
        assert server.received == []


async def test_the_next_send_after_a_hang_goes_through(tmp_path: Path) -> None:
    async with running_smtp_server(tmp_path, security="tls", auth=(USER, PASSWORD)) as server:
        server.hang_next(at="DATA")
        with pytest.raises(TransientError):
            await send(server.smtp_settings(timeout=0.3))

        await send(server.smtp_settings())
        assert len(await server.wait_for(1)) == 1


async def test_a_send_cancelled_by_the_outbox_leaves_no_connection_open(tmp_path: Path) -> None:
    async with running_smtp_server(tmp_path, security="starttls", auth=(USER, PASSWORD)) as server:
        server.hang_next(at="DATA")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await send(server.smtp_settings(timeout=30))
        await asyncio.sleep(0.05)
        assert all(session.transport is None for session in server._sessions)


# --- check_login --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("security", "label"), [("none", "unencrypted"), ("starttls", "STARTTLS"), ("tls", "TLS")]
)
async def test_check_login(tmp_path: Path, security: Any, label: str) -> None:
    async with running_smtp_server(tmp_path, security=security, auth=(USER, PASSWORD)) as server:
        detail = await check_login(server.smtp_settings())

        assert detail == f"logged in to 127.0.0.1:{server.port} ({label}) as {USER}"
        assert server.logins == [USER] and server.received == []


async def test_check_login_without_a_user(tmp_path: Path) -> None:
    async with running_smtp_server(tmp_path, security="none") as server:
        detail = await check_login(server.smtp_settings())

    assert detail == f"connected to 127.0.0.1:{server.port} (unencrypted); no login configured"


async def test_check_login_failing(tmp_path: Path) -> None:
    async with running_smtp_server(tmp_path, security="starttls", auth=(USER, PASSWORD)) as server:
        with pytest.raises(AuthError, match="refused the login"):
            await check_login(server.smtp_settings(password="nope"))
        with pytest.raises(AuthError, match="certificate"):
            await check_login(server.smtp_settings(ca_file=None))
    with pytest.raises(TransientError, match="cannot connect"):
        await check_login(replace(server.smtp_settings(), port=free_port()))
