"""The email channel in the real daemon process: kill -9 in the middle of fetching, and the history
import command with its progress bar, resumable."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import date, timedelta
from pathlib import Path

import pytest

from support.daemon_process import DaemonProcess
from support.dovecot import Dovecot
from support.smtp_server import SmtpServer

pytestmark = pytest.mark.timeout(180)

USER = "support"


def raw_mail(n: int) -> bytes:
    return (
        f"From: Customer {n % 97} <c{n % 97}@customer.test>\r\n"
        "To: support@shop.test\r\n"
        f"Subject: Question {n}\r\n"
        f"Message-ID: <q{n}@customer.test>\r\n"
        "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        + f"Hello, this is question number {n}.\r\n" * 20
    ).encode()


async def add_email_channel(daemon: DaemonProcess, dovecot: Dovecot, smtp: SmtpServer) -> str:
    settings = {
        "address": "support@shop.test",
        "imap_host": "127.0.0.1",
        "imap_port": dovecot.port,
        "imap_user": USER,
        "imap_password": "secret",
        "imap_security": "none",
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_security": "none",
    }
    args = ["channel", "add", "email", "--name", "support"]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return await daemon.cli(*args)


async def test_kill_9_while_fetching_1000_mails_stores_each_exactly_once(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpServer
) -> None:
    daemon = DaemonProcess(tmp_path / "site")
    try:
        channel_id = await add_email_channel(daemon, dovecot, smtp)
        await daemon.start()
        await daemon.wait_for(f"SELECT count(*) FROM channel_accounts WHERE id = '{channel_id}' AND state = 'connected'",
            1, 30,
        )
        await dovecot.deliver_many(USER, [raw_mail(n) for n in range(1000)])

        deadline = time.monotonic() + 60
        while (stored := daemon.scalar("SELECT count(*) FROM messages")) == 0:
            assert time.monotonic() < deadline, daemon.log_tail()
            await asyncio.sleep(0.005)
        await daemon.kill()
        at_kill = daemon.scalar("SELECT count(*) FROM messages")
        assert 0 < stored <= at_kill < 1000, f"the kill came too late to test anything ({at_kill} stored)"

        await daemon.start()
        await daemon.wait_for("SELECT count(*) FROM messages", 1000, 90)
        await asyncio.sleep(1.0)
        assert daemon.scalar("SELECT count(*) FROM messages") == 1000
        assert daemon.scalar("SELECT count(DISTINCT external_id) FROM messages") == 1000
        assert daemon.scalar("SELECT count(DISTINCT subject) FROM messages") == 1000
        checkpoint = daemon.scalar(
            f"SELECT value FROM channel_checkpoints WHERE channel_account_id = '{channel_id}' AND key = 'folder:INBOX'"
        )
        assert '"last_uid": 1000' in checkpoint
    finally:
        await daemon.close()


async def test_import_command_shows_progress_resumes_and_never_stores_twice(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpServer
) -> None:
    await dovecot.deliver_many(USER, [raw_mail(n) for n in range(600)])
    daemon = DaemonProcess(tmp_path / "site")
    try:
        channel_id = await add_email_channel(daemon, dovecot, smtp)
        await daemon.start()
        await daemon.wait_for(f"SELECT count(*) FROM channel_accounts WHERE id = '{channel_id}' AND state = 'connected'",
            1, 30,
        )
        assert daemon.scalar("SELECT count(*) FROM messages") == 0, "connecting must not import history"
        since = (date.today() - timedelta(days=2)).isoformat()

        # Interrupted: the command is stopped once part of the history is in.
        proc = await asyncio.create_subprocess_exec(
            *daemon._command("channel", "import", channel_id, "--since", since),
            cwd=daemon.workdir, env=daemon._env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while daemon.scalar("SELECT count(*) FROM messages") == 0:
            assert time.monotonic() < deadline and proc.returncode is None, daemon.log_tail()
            await asyncio.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.communicate(), 30)
        partial = daemon.scalar("SELECT count(*) FROM messages")
        assert 0 < partial <= 600

        code, out, err = await daemon.run_cli("channel", "import", channel_id, "--since", since)
        assert code == 0, err
        assert daemon.scalar("SELECT count(*) FROM messages") == 600
        assert "INBOX" in err and "mail/s" in err  # tqdm's bar: folder, count, rate, ETA
        assert f"{600 - partial} stored" in out or "stored before" in out

        code, out, _ = await daemon.run_cli("channel", "import", channel_id, "--since", since)
        assert code == 0
        assert "0 mails since" in out
        assert daemon.scalar("SELECT count(*) FROM messages") == 600

        code, _, err = await daemon.run_cli("channel", "import", channel_id, "--since", "yesterday")
        assert code == 2 and "2026-01-31" in err
    finally:
        await daemon.close()
