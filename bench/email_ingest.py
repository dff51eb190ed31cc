"""Email ingest: parse-only, parse+store, and IMAP -> stored end to end, in messages per second.

    python -m bench.email_ingest [--messages 10000] [--skip-imap] [--keep DIR]

The messages are `bench.email_corpus.realistic_messages` (~5 KB support mail: text + HTML, some
attachments, replies with quoted history, several languages and charsets). Each figure runs the real
code: `parse_message`; the email adapter's mapping plus the core's ingest pipeline (language detection,
dedup, contacts, threading, attachments and raw .eml on disk with fsync, one SQLite transaction per
batch; also measured without detection, for its cost); and for
IMAP a real Dovecot (tests/support/dovecot.py, needs dovecot-imapd) read by the running adapter, from
the first fetch to the last message committed.

Reference on this machine: django-helpdesk 2.6.1's email-to-ticket path ingests about 71 messages/s;
the target is 1,400/s parse+store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from aggregator.attachments import AttachmentStore
from aggregator.bus import create_bus
from aggregator.channels import ChannelManager
from aggregator.config import Settings
from aggregator.daemon import open_store
from aggregator.ingest import Ingestor
from aggregator.metrics import Metrics
from aggregator.model import utcnow
from aggregator.workspace import SettingsCache
from bench.email_corpus import realistic_messages
from channels.base import Registry
from channels.email import EmailChannel
from channels.email.parse import parse_message

TARGET = 1400
TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"
CHUNK = 200


@contextlib.asynccontextmanager
async def core(data_dir: Path, detect: bool = True) -> AsyncIterator[tuple[Any, Any, ChannelManager]]:
    settings = Settings(data_dir=data_dir, redis_url=None, database_url=None, secret_key=None)
    store = open_store(settings)
    await store.migrate()
    workspace, _ = await store.ensure_workspace(settings.default_workspace)
    await store.start_writer()
    bus = create_bus(None)
    await bus.start()
    attachments = AttachmentStore(settings.attachments_dir, settings.max_attachment_bytes)
    # As the daemon runs it: the workspace's settings, so each message's language is detected.
    cache = SettingsCache(store.workspace_settings) if detect else None
    ingestor = Ingestor(store, bus, attachments, Metrics(), max_batch=settings.ingest.max_batch, settings=cache)
    await ingestor.start()
    import aiohttp

    async with aiohttp.ClientSession() as http:
        manager = ChannelManager(
            store, bus, Registry(), ingestor, http, clock=utcnow, node_id="bench",
            max_body_bytes=settings.http.max_body_bytes, max_attachment_bytes=settings.max_attachment_bytes,
        )
        try:
            yield store, workspace, manager
        finally:
            await manager.stop_all()
            await ingestor.stop()
            await bus.close()
            await store.close()


async def add_channel(store: Any, workspace_id: str, imap_port: int = 1, imap_user: str = "bench") -> str:
    config = EmailChannel.config_model.parse(
        "email",
        {
            "address": "support@shop.test", "imap_host": "127.0.0.1", "imap_port": imap_port,
            "imap_user": imap_user, "imap_password": "secret", "imap_security": "none",
            "smtp_host": "127.0.0.1", "smtp_port": 1, "smtp_security": "none",
        },
    )
    plain, secrets = config.split_secrets()
    account_id: str = await store.create_channel_account(workspace_id, "email", "bench", plain, secrets)
    return account_id


def parse_only(raws: Sequence[bytes]) -> float:
    started = time.perf_counter()
    for raw in raws:
        parse_message(raw)
    return len(raws) / (time.perf_counter() - started)


class _Fetched:
    """Stands in for the IMAP connection: the mail is in memory, so only parse + store is measured."""

    def __init__(self, raws: Sequence[bytes]) -> None:
        self.raws = raws

    async def fetch(self, uids: Sequence[int]) -> AsyncIterator[tuple[int, bytes]]:
        for uid in uids:
            yield uid, self.raws[uid - 1]


async def parse_and_store(raws: Sequence[bytes], data_dir: Path, detect: bool = True) -> tuple[float, int]:
    async with core(data_dir, detect) as (store, workspace, manager):
        account_id = await add_channel(store, workspace.id)
        adapter = manager.build(await store.get_channel_account(account_id))
        assert isinstance(adapter, EmailChannel)
        source: Any = _Fetched(raws)
        started = time.perf_counter()
        # The adapter's own loop: chunks fetched, parsed and handed over while the previous one commits.
        async for _, results in adapter._stored_chunks(source, "INBOX", 1, range(1, len(raws) + 1)):
            failed = [outcome for _, outcome in results if isinstance(outcome, Exception)]
            if failed:
                raise RuntimeError(f"{len(failed)} messages not stored: {failed[0]}")
        elapsed = time.perf_counter() - started
        stored = await store.count_messages(account_id)
    return len(raws) / elapsed, stored


async def imap_to_stored(raws: Sequence[bytes], data_dir: Path) -> tuple[float, int] | str:
    sys.path.insert(0, str(TESTS_DIR))
    try:
        from support.dovecot import Dovecot, skip_reason
    except ImportError as exc:
        return f"skipped: {exc}"
    reason = skip_reason()
    if reason is not None:
        return f"skipped: {reason}"
    workdir = Path(tempfile.mkdtemp(prefix="dovecot-bench-", dir="/tmp"))
    dovecot = Dovecot(workdir)
    try:
        await dovecot.start()
        await dovecot.deliver_many("bench", raws)
        async with core(data_dir) as (store, workspace, manager):
            account_id = await add_channel(store, workspace.id, dovecot.port)
            # The whole folder is new mail to this channel: its starting point is before the first UID.
            await store.set_checkpoint(
                account_id, "folder:INBOX",
                {"uidvalidity": await dovecot.uidvalidity("bench"), "last_uid": 0, "start_uid": 0,
                 "connected_at": utcnow().isoformat()},
            )
            started = time.perf_counter()
            await manager.start_account(account_id)
            # The rows are the signal: nothing else says when the last mail is committed.
            while (stored := await store.count_messages(account_id)) < len(raws):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - started
        return len(raws) / elapsed, stored
    finally:
        await dovecot.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def run(args: argparse.Namespace) -> int:
    raws = realistic_messages(args.messages)
    average = sum(map(len, raws)) / len(raws)
    print(f"{len(raws)} realistic messages, {average / 1024:.1f} KB on average")
    rate = parse_only(raws)
    print(f"parse only (parse_message):          {rate:8,.0f} messages/s")
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-email-"))
    try:
        stored_rate, stored = await parse_and_store(raws, base / "store")
        verdict = "met" if stored_rate >= TARGET else "MISSED"
        print(
            f"parse + store (adapter + ingest):    {stored_rate:8,.0f} messages/s "
            f"({stored} stored; target {TARGET:,}/s {verdict}; django-helpdesk: 71/s)"
        )
        plain_rate, _ = await parse_and_store(raws, base / "store-no-detection", detect=False)
        print(f"  the same without language detection: {plain_rate:8,.0f} messages/s")
        if not args.skip_imap:
            outcome = await imap_to_stored(raws, base / "imap")
            if isinstance(outcome, str):
                print(f"IMAP -> stored (Dovecot, loopback):  {outcome}")
            else:
                print(f"IMAP -> stored (Dovecot, loopback):  {outcome[0]:8,.0f} messages/s ({outcome[1]} stored)")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.email_ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--skip-imap", action="store_true", help="no Dovecot run")
    parser.add_argument("--keep", metavar="DIR", help="keep the databases in DIR")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
