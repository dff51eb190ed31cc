"""The IMAP client against a real Dovecot, plus a scripted server for what Dovecot never does."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from channels.email.imap import (
    FolderState,
    ImapAuthError,
    ImapClient,
    ImapError,
    ImapSettings,
    ImapTransientError,
    encode_folder,
)
from support.dovecot import PASSWORD, Dovecot, free_port, running_dovecot

pytestmark = pytest.mark.timeout(30)

# Dovecot's imap_capability replaces the post-login list; the commands themselves keep working.
WITHOUT_IDLE = "protocol imap {\n  imap_capability = IMAP4rev1 LITERAL+ UIDPLUS MOVE\n}"
WITHOUT_MOVE = "protocol imap {\n  imap_capability = IMAP4rev1 IDLE UIDPLUS\n}"
WITHOUT_MOVE_OR_UIDPLUS = "protocol imap {\n  imap_capability = IMAP4rev1 IDLE\n}"


def mail(subject: str, body: bytes = b"Hello.\r\n", extra: bytes = b"") -> bytes:
    message_id = subject.replace(" ", ".").encode()
    head = b"From: Customer <customer@example.org>\r\nTo: support@shop.example\r\n"
    head += b"Subject: %s\r\nMessage-ID: <%s@example.org>\r\n" % (subject.encode(), message_id)
    return head + extra + b"\r\n" + body


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def settings_for(server: Dovecot, **overrides: Any) -> ImapSettings:
    base = ImapSettings("127.0.0.1", server.port, "none", "alice", PASSWORD, timeout=5.0)
    return dataclasses.replace(base, **overrides)


@pytest.fixture
async def client(dovecot: Dovecot) -> AsyncIterator[ImapClient]:
    connected = await ImapClient.connect(settings_for(dovecot))
    try:
        yield connected
    finally:
        await connected.logout()


async def logged(server: Dovecot, text: str, times: int, within: float = 3.0) -> bool:
    """Whether Dovecot's log (written by a separate process, a little later) shows `text` `times` times."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if server.log.read_text(errors="replace").count(text) >= times:
            return True
        await asyncio.sleep(0.02)
    return False


async def fetch_all(client: ImapClient, uids: list[int], **options: int) -> list[tuple[int, bytes]]:
    return [item async for item in client.fetch(uids, **options)]


# --- connecting ------------------------------------------------------------------------------------


async def test_login_reads_capabilities_after_login(client: ImapClient) -> None:
    # Dovecot announces MOVE and UIDPLUS only after login.
    assert client.has_idle and client.has_move and client.has_uidplus
    assert "IMAP4REV1" in client.capabilities


async def test_wrong_password_is_an_auth_error_that_does_not_show_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = 'Wr0ng "pass\\word'
    async with running_dovecot(tmp_path, extra_config="auth_failure_delay = 0") as server:
        # The good login first: after a failure Dovecot slows down logins from the same address.
        good = await ImapClient.connect(settings_for(server))
        await good.logout()
        with pytest.raises(ImapAuthError) as raised:
            await ImapClient.connect(settings_for(server, password=wrong))
        assert await logged(server, "auth failed, 1 attempts", 1)
        assert server.failed_logins() == 1
    assert "alice" in str(raised.value)
    assert wrong not in str(raised.value) and wrong not in repr(settings_for(server, password=wrong))
    for secret in (wrong, 'Wr0ng \\"pass\\\\word', PASSWORD):
        assert secret not in caplog.text


async def test_refused_port_is_transient() -> None:
    settings = ImapSettings("127.0.0.1", free_port(), "none", "alice", PASSWORD, timeout=5)
    with pytest.raises(ImapTransientError, match="cannot connect"):
        await ImapClient.connect(settings)


async def test_starttls_and_implicit_tls_verify_the_certificate(tmp_path: Path) -> None:
    async with running_dovecot(tmp_path, tls=True) as server:
        assert server.tls_port is not None
        for security, port in (("starttls", server.port), ("tls", server.tls_port)):
            secured = await ImapClient.connect(
                settings_for(server, security=security, port=port, ca_file=server.ca_file)
            )
            try:
                assert (await secured.select("INBOX")).exists == 0
            finally:
                await secured.logout()
        # Dovecot's own word that both logins happened over TLS.
        assert await logged(server, ", TLS, session=", 2)
        with pytest.raises(ImapError, match="certificate"):
            await ImapClient.connect(settings_for(server, security="tls", port=server.tls_port))
        with pytest.raises(ImapError, match="certificate"):
            await ImapClient.connect(settings_for(server, security="starttls"))


async def test_starttls_never_falls_back_to_plain_text(dovecot: Dovecot) -> None:
    with pytest.raises(ImapError, match="does not offer STARTTLS"):
        await ImapClient.connect(settings_for(dovecot, security="starttls"))


# --- reading ---------------------------------------------------------------------------------------


async def test_select_reports_uidvalidity_uidnext_and_count(dovecot: Dovecot, client: ImapClient) -> None:
    await dovecot.deliver_many("alice", [mail("one"), mail("two"), mail("three")])
    state = await client.select("INBOX")
    assert state == FolderState(uidvalidity=await dovecot.uidvalidity("alice"), uidnext=4, exists=3)


async def test_uids_after_drops_the_highest_uid_that_the_server_always_returns(
    dovecot: Dovecot, client: ImapClient
) -> None:
    await dovecot.deliver_many("alice", [mail("one"), mail("two"), mail("three")])
    await client.select("INBOX")
    assert await client.uids_after(0) == [1, 2, 3]
    assert await client.uids_after(1) == [2, 3]
    assert await client.uids_after(3) == []
    assert await client.uids_after(1000) == []


async def test_uids_since_uses_the_received_date(dovecot: Dovecot, client: ImapClient) -> None:
    await dovecot.deliver("alice", mail("old"))
    old = datetime(2020, 5, 17, 12, tzinfo=UTC).timestamp()
    for path in dovecot.mail_files("alice"):
        os.utime(path, (old, old))
    await dovecot.deliver("alice", mail("new"))
    await client.select("INBOX")
    assert await client.uids_since(date(2020, 5, 17)) == [1, 2]
    assert await client.uids_since(date(2020, 5, 18)) == [2]
    assert await client.uids_since(date(2099, 1, 1)) == []


async def test_fetch_returns_the_exact_bytes_of_each_message(dovecot: Dovecot, client: ImapClient) -> None:
    tricky = [
        mail("plain"),
        mail(
            "8bit",
            "Grüße, 日本語, \u00ff\r\n".encode() + bytes(range(0x80, 0x100)) + b"\r\n",
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
        ),
        mail("binary-ish", bytes(b for b in range(1, 256) if b not in (10, 13)) + b"\r\n"),
        mail(
            "looks like imap",
            b")\r\n* 3 FETCH (UID 9 BODY[] {5}\r\nhello)\r\nA0001 OK done\r\n"
            b"* BYE\r\n+ idling\r\nends with a literal {12}\r\n(((\r\n",
        ),
        mail("no final newline", b"last line"),
        mail("big", b"".join(b"%06d " % n + b"z" * 70 + b"\r\n" for n in range(4000))),
        mail("empty body", b""),
    ]
    await dovecot.deliver_many("alice", tricky)
    await client.select("INBOX")
    uids = await client.uids_after(0)
    expected = [(uid, sha(raw)) for uid, raw in zip(uids, tricky, strict=True)]
    got = await fetch_all(client, [*reversed(uids), 999, uids[0]])
    assert [(uid, sha(raw)) for uid, raw in got] == expected
    # Several commands, and the big message alone in its batch.
    got = await fetch_all(client, uids, chunk=2, max_bytes=10_000)
    assert [(uid, sha(raw)) for uid, raw in got] == expected


async def test_fetch_of_a_thousand_messages_is_fast(dovecot: Dovecot, client: ImapClient) -> None:
    messages = [mail(f"bulk {n}", (b"%05d " % n + b"y" * 70 + b"\r\n") * 64) for n in range(1000)]
    await dovecot.deliver_many("alice", messages)
    await client.select("INBOX")
    uids = await client.uids_after(0)
    started = time.perf_counter()
    got = await fetch_all(client, uids)
    elapsed = time.perf_counter() - started
    assert [raw for _, raw in got] == messages
    assert elapsed < 1.5, f"1000 messages of 5 KB took {elapsed:.2f} s"


async def test_fetch_peeks_and_mark_seen_sets_seen(dovecot: Dovecot, client: ImapClient) -> None:
    await dovecot.deliver_many("alice", [mail("one"), mail("two")])
    await client.select("INBOX")
    await fetch_all(client, [1, 2])
    assert await dovecot.all_flags("alice") == {1: frozenset(), 2: frozenset()}
    await client.mark_seen(2)
    assert await dovecot.all_flags("alice") == {1: frozenset(), 2: frozenset({"\\Seen"})}


async def test_fetch_copes_with_flag_updates_from_another_client(
    dovecot: Dovecot, client: ImapClient
) -> None:
    await dovecot.deliver_many("alice", [mail("one"), mail("two"), mail("three")])
    await client.select("INBOX")
    other = await ImapClient.connect(settings_for(dovecot))
    try:
        await other.select("INBOX")
        await other.mark_seen(2)
        await other.mark_seen(3)
    finally:
        await other.logout()
    # Dovecot reports those flag changes inside the answer to this FETCH.
    got = await fetch_all(client, [1, 2, 3])
    assert [uid for uid, _ in got] == [1, 2, 3]
    assert [raw for _, raw in got] == [mail("one"), mail("two"), mail("three")]


async def test_select_of_a_missing_folder_names_it(client: ImapClient) -> None:
    with pytest.raises(ImapError, match="'Support/Nope'") as raised:
        await client.select("Support/Nope")
    assert "exists" in str(raised.value)
    with pytest.raises(ImapError, match="no folder selected"):
        await client.uids_after(0)
    assert (await client.select("INBOX")).exists == 0


async def test_folder_names_with_spaces_and_non_ascii(dovecot: Dovecot, client: ImapClient) -> None:
    name = "Entwürfe & Co/Über 日本"
    assert encode_folder(name) == '"Entw&APw-rfe &- Co/&ANw-ber &ZeVnLA-"'
    await client.create_folder(name)
    await client.create_folder(name)
    assert (await client.select(name)).exists == 0
    out = await dovecot.doveadm("mailbox", "list", "-u", "alice")
    assert name in out.splitlines()


# --- waiting for mail --------------------------------------------------------------------------------


async def test_idle_wakes_on_delivery_and_commands_follow(dovecot: Dovecot, client: ImapClient) -> None:
    await dovecot.deliver("alice", mail("first"))
    await client.select("INBOX")
    assert await client.uids_after(0) == [1]
    waiting = asyncio.create_task(client.wait_for_change(10))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    delivered = time.perf_counter()
    await dovecot.deliver("alice", mail("second"))
    assert await asyncio.wait_for(waiting, 5) is True
    assert time.perf_counter() - delivered < 1.0
    assert await client.uids_after(1) == [2]
    assert [raw for _, raw in await fetch_all(client, [2])] == [mail("second")]


async def test_idle_times_out_and_ends_with_done(client: ImapClient) -> None:
    await client.select("INBOX")
    await client.uids_after(0)
    started = time.perf_counter()
    assert await client.wait_for_change(0.3) is False
    assert 0.25 < time.perf_counter() - started < 2
    assert await client.uids_after(0) == []
    assert await client.wait_for_change(0.1) is False
    await client.create_folder("Archive")


async def test_mail_reported_during_another_command_is_not_slept_through(
    dovecot: Dovecot, client: ImapClient
) -> None:
    await dovecot.deliver("alice", mail("first"))
    await client.select("INBOX")
    assert await client.uids_after(0) == [1]
    await dovecot.deliver("alice", mail("second"))
    # Dovecot announces the new message (EXISTS) in its answer to this command, and not again in IDLE.
    await client.mark_seen(1)
    started = time.perf_counter()
    assert await client.wait_for_change(3) is True
    assert time.perf_counter() - started < 0.5
    assert await client.uids_after(1) == [2]
    # That search saw the message: no reason left to wake up.
    assert await client.wait_for_change(0.3) is False


async def test_polling_with_noop_when_the_server_has_no_idle(tmp_path: Path) -> None:
    async with running_dovecot(tmp_path, extra_config=WITHOUT_IDLE) as server:
        polling = await ImapClient.connect(settings_for(server))
        try:
            assert not polling.has_idle
            await polling.select("INBOX")
            assert await polling.uids_after(0) == []
            assert await polling.wait_for_change(0.3, poll_interval=0.1) is False
            waiting = asyncio.create_task(polling.wait_for_change(5, poll_interval=0.1))
            await asyncio.sleep(0.2)
            await server.deliver("alice", mail("polled"))
            assert await asyncio.wait_for(waiting, 5) is True
            assert await polling.uids_after(0) == [1]
        finally:
            await polling.logout()


# --- changing the mailbox -----------------------------------------------------------------------------


async def test_move_uses_move(dovecot: Dovecot, client: ImapClient) -> None:
    await dovecot.deliver_many("alice", [mail("one"), mail("two")])
    await dovecot.create_folder("alice", "Archive")
    await client.select("INBOX")
    await client.move(1, "Archive")
    assert await dovecot.uids("alice") == [2]
    assert await dovecot.uids("alice", "Archive") == [1]


async def test_move_falls_back_to_copy_and_uid_expunge(tmp_path: Path) -> None:
    async with running_dovecot(tmp_path, extra_config=WITHOUT_MOVE) as server:
        await server.deliver_many("alice", [mail("one"), mail("two"), mail("three")])
        await server.doveadm("flags", "add", "-u", "alice", "\\Deleted", "mailbox", "INBOX", "uid", "2")
        async with await ImapClient.connect(settings_for(server)) as fallback:
            assert not fallback.has_move and fallback.has_uidplus
            await fallback.create_folder("Archive")
            await fallback.select("INBOX")
            await fallback.move(1, "Archive")
        # Message 2 was \Deleted by someone else: a plain EXPUNGE would have removed it too.
        assert await server.uids("alice") == [2, 3]
        assert await server.uids("alice", "Archive") == [1]


async def test_move_without_move_or_uidplus_is_refused(tmp_path: Path) -> None:
    async with running_dovecot(tmp_path, extra_config=WITHOUT_MOVE_OR_UIDPLUS) as server:
        await server.deliver("alice", mail("one"))
        async with await ImapClient.connect(settings_for(server)) as limited:
            await limited.create_folder("Archive")
            await limited.select("INBOX")
            with pytest.raises(ImapError, match="neither MOVE nor UIDPLUS"):
                await limited.move(1, "Archive")
        assert await server.uids("alice") == [1]
        assert await server.uids("alice", "Archive") == []


async def test_move_to_a_missing_folder_names_it(dovecot: Dovecot, client: ImapClient) -> None:
    await dovecot.deliver("alice", mail("one"))
    await client.select("INBOX")
    with pytest.raises(ImapError, match="'Done'"):
        await client.move(1, "Done")
    assert await dovecot.uids("alice") == [1]


async def test_append_stores_bytes_flags_and_date(dovecot: Dovecot, client: ImapClient) -> None:
    raw = mail("sent copy", "Grüße\r\n".encode())
    received = datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)
    uid = await client.append("INBOX", raw, date=received)
    assert uid == 1
    assert await client.append("INBOX", mail("unflagged"), flags=()) == 2
    assert await dovecot.flags("alice", 1) == {"\\Seen"}
    assert await dovecot.flags("alice", 2) == frozenset()
    await client.select("INBOX")
    assert [raw_ for _, raw_ in await fetch_all(client, [1])] == [raw]
    assert await client.uids_since(date(2021, 3, 4)) == [1, 2]
    assert await client.uids_since(date(2021, 3, 5)) == [2]
    with pytest.raises(ImapError, match="'Nowhere'"):
        await client.append("Nowhere", raw)


# --- the server going away ---------------------------------------------------------------------------


async def test_restart_with_new_uidvalidity(dovecot: Dovecot) -> None:
    await dovecot.deliver_many("alice", [mail("one"), mail("two")])
    async with await ImapClient.connect(settings_for(dovecot)) as first:
        before = await first.select("INBOX")
    await dovecot.restart(new_uidvalidity=True)
    async with await ImapClient.connect(settings_for(dovecot)) as second:
        after = await second.select("INBOX")
        assert after.uidvalidity > before.uidvalidity
        assert after.exists == 2
        uids = await second.uids_after(0)
        assert {sha(raw) for _, raw in await fetch_all(second, uids)} == {sha(mail("one")), sha(mail("two"))}


async def test_server_stopped_mid_session_fails_the_next_call_quickly(dovecot: Dovecot) -> None:
    connected = await ImapClient.connect(settings_for(dovecot, timeout=10))
    await connected.select("INBOX")
    await dovecot.stop()
    started = time.perf_counter()
    with pytest.raises(ImapTransientError, match="closed the connection"):
        await connected.uids_after(0)
    with pytest.raises(ImapTransientError):
        await connected.mark_seen(1)
    assert time.perf_counter() - started < 1
    await connected.logout()
    await dovecot.start()
    async with await ImapClient.connect(settings_for(dovecot)) as again:
        assert (await again.select("INBOX")).exists == 0


async def test_server_stopped_during_idle_ends_the_wait(dovecot: Dovecot) -> None:
    connected = await ImapClient.connect(settings_for(dovecot, timeout=10))
    try:
        await connected.select("INBOX")
        waiting = asyncio.create_task(connected.wait_for_change(20))
        await asyncio.sleep(0.2)
        await dovecot.stop()
        with pytest.raises(ImapTransientError):
            await asyncio.wait_for(waiting, 3)
    finally:
        await connected.logout()


# --- a scripted server for what Dovecot never does -------------------------------------------------


Reply = bytes | Callable[[str], bytes | None] | None

DEFAULT_REPLIES: dict[str, Reply] = {
    "CAPABILITY": b"* CAPABILITY IMAP4rev1 IDLE UIDPLUS MOVE\r\nTAG OK done\r\n",
    "LOGIN": b"TAG OK logged in\r\n",
    "SELECT": b"* 3 EXISTS\r\n* OK [UIDVALIDITY 42] ok\r\n* OK [UIDNEXT 10] ok\r\nTAG OK [READ-WRITE] done\r\n",
    "NOOP": b"TAG OK done\r\n",
    "LOGOUT": b"* BYE bye\r\nTAG OK bye\r\n",
}


@contextlib.asynccontextmanager
async def scripted_imap(
    replies: Mapping[str, Reply], greeting: bytes = b"* OK scripted ready\r\n", piece: int = 0
) -> AsyncIterator[int]:
    """A loopback IMAP server answering each command from `replies` (None: stay silent); its port."""
    writers: set[asyncio.StreamWriter] = set()

    async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
        # Tiny pieces exercise every "rest of the line comes later" path of the parser.
        step = piece or len(data) or 1
        for start in range(0, len(data), step):
            writer.write(data[start : start + step])
            await writer.drain()
            if piece:
                await asyncio.sleep(0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            await send(writer, greeting)
            while line := await reader.readline():
                tag, _, rest = line.decode().rstrip("\r\n").partition(" ")
                words = rest.split(" ")
                verb = " ".join(words[:2]).upper() if words[0].upper() == "UID" else words[0].upper()
                reply = replies.get(verb, DEFAULT_REPLIES.get(verb))
                data = reply(rest) if callable(reply) else reply
                if data is not None:
                    await send(writer, data.replace(b"TAG", tag.encode()))
                if verb == "LOGOUT":
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in list(writers):
            writer.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)


def scripted_settings(port: int, timeout: float = 5.0) -> ImapSettings:
    return ImapSettings("127.0.0.1", port, "none", "alice", PASSWORD, timeout=timeout)


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


async def test_fetch_parses_items_in_any_order_and_interleaved_updates() -> None:
    first, second = mail("first", b"(unbalanced\r\n"), mail("second", b'))) "quoted"\r\n')

    def fetch(rest: str) -> bytes:
        if "RFC822.SIZE" in rest:
            return (
                b"* 2 FETCH (RFC822.SIZE %d UID 8)\r\n* 1 FETCH (UID 7 RFC822.SIZE %d)\r\nTAG OK done\r\n"
                % (len(second), len(first))
            )
        return (
            b"* 2 FETCH (BODY[] " + literal(second) + b" UID 8 FLAGS (\\Seen))\r\n"
            b"* 3 FETCH (FLAGS (\\Seen \\Flagged))\r\n"
            b"* 4 EXISTS\r\n"
            b"* 1 FETCH (FLAGS () UID 7 BODY[] " + literal(first) + b")\r\n"
            b"* 5 FETCH (UID 9 BODY[] NIL)\r\n"
            b"* 6 FETCH (UID 10 BODY[] {1}\r\n()\r\n"
            b"* 7 FETCH (BODY[] {3}\r\nNIL UID 11)\r\n"
            b'* 8 FETCH (UID 12 BODY[] "a \\"quoted\\" (body)")\r\n'
            b"TAG OK done\r\n"
        )

    for piece in (0, 1, 7):
        async with (
            scripted_imap({"UID FETCH": fetch}, piece=piece) as port,
            await ImapClient.connect(scripted_settings(port)) as scripted,
        ):
            await scripted.select("INBOX")
            got = await fetch_all(scripted, [7, 8, 9, 10, 11, 12])
            assert got == [(7, first), (8, second), (10, b"("), (11, b"NIL"), (12, b'a "quoted" (body)')], (
                piece
            )
            # The EXISTS inside the FETCH answer is remembered.
            assert await scripted.wait_for_change(0.1) is True


async def test_silent_server_times_out_as_transient() -> None:
    async with scripted_imap({}, greeting=b"") as port:
        started = time.perf_counter()
        with pytest.raises(ImapTransientError, match="no answer"):
            await ImapClient.connect(scripted_settings(port, timeout=0.5))
        assert time.perf_counter() - started < 2


async def test_server_that_stops_answering_mid_session_times_out() -> None:
    async with scripted_imap({"UID SEARCH": None}) as port:
        stuck = await ImapClient.connect(scripted_settings(port, timeout=0.5))
        await stuck.select("INBOX")
        started = time.perf_counter()
        with pytest.raises(ImapTransientError, match=r"no answer within 0\.5 s"):
            await stuck.uids_after(0)
        assert time.perf_counter() - started < 2
        with pytest.raises(ImapTransientError, match="reconnect"):
            await stuck.uids_after(0)
        await stuck.logout()


async def test_greeting_bye_and_unavailable_are_transient() -> None:
    async with scripted_imap({}, greeting=b"* BYE too many connections\r\n") as port:
        with pytest.raises(ImapTransientError, match="too many connections"):
            await ImapClient.connect(scripted_settings(port))
    unavailable = {"LOGIN": b"TAG NO [UNAVAILABLE] user database down\r\n"}
    async with scripted_imap(unavailable) as port:
        with pytest.raises(ImapTransientError, match="user database down"):
            await ImapClient.connect(scripted_settings(port))
    busy = {"SELECT": b"TAG NO [UNAVAILABLE] mailbox locked\r\n"}
    async with scripted_imap(busy) as port, await ImapClient.connect(scripted_settings(port)) as scripted:
        with pytest.raises(ImapTransientError, match="mailbox locked"):
            await scripted.select("INBOX")


async def test_login_quotes_the_user_and_password() -> None:
    seen: list[str] = []

    def login(rest: str) -> bytes:
        seen.append(rest)
        return b"TAG OK logged in\r\n"

    async with scripted_imap({"LOGIN": login}) as port:
        settings = ImapSettings("127.0.0.1", port, "none", "a user", 'p"a\\ss', timeout=5)
        async with await ImapClient.connect(settings):
            pass
    assert seen == ['LOGIN "a user" "p\\"a\\\\ss"']


async def test_cancelled_wait_leaves_the_client_unusable(dovecot: Dovecot, client: ImapClient) -> None:
    await client.select("INBOX")
    waiting = asyncio.create_task(client.wait_for_change(10))
    await asyncio.sleep(0.2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(ImapTransientError, match="reconnect"):
        await client.uids_after(0)
