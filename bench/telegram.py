"""Telegram: inbound updates/s through the webhook endpoint end to end, outbound messages/s, and the
rate the shared limiter lets out.

    python -m bench.telegram [--updates 5000] [--concurrency 32] [--sends 2000] [--limited 300]

- inbound: the daemon's HTTP application (aiohttp, on loopback) with a Telegram channel in webhook
  mode; `--concurrency` clients (Telegram opens up to 40 connections) POST updates with the secret
  header. Each 200 means the update is stored (SQLite committed), so the figure is updates stored/s.
- outbound, limits off: the adapter's send() to the fake Bot API (tests/fakes/telegram.py) over
  HTTP, to distinct chats, `--concurrency` at once.
- outbound, limits on: `--limited` replies to distinct chats all at once; what leaves is counted per
  sliding second at the fake (Telegram allows about 30/s per bot). A send the limiter holds back for
  too long raises RateLimited and is sent again after retry_after, as the outbox does.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS_DIR))

from aggregator.model import Identity, OutboundMessage, new_id  # noqa: E402
from bench._common import print_table  # noqa: E402
from channels.base import RateLimited  # noqa: E402
from channels.telegram import TelegramChannel  # noqa: E402
from channels.telegram.adapter import SECRET_HEADER  # noqa: E402
from fakes.telegram import FakeTelegram  # noqa: E402
from support.app import Core, make_settings, open_core  # noqa: E402


@contextlib.asynccontextmanager
async def running(data_dir: Path) -> AsyncIterator[tuple[Core, FakeTelegram]]:
    # The daemon's defaults for storing (a writer process), not the tests' in-thread writer.
    settings = make_settings(data_dir, ingest={"writer_process": True})
    async with FakeTelegram() as fake, open_core(settings) as core:
        await core.store.start_writer()
        yield core, fake


def channel_config(fake: FakeTelegram, **overrides: Any) -> dict[str, Any]:
    return {
        "bot_token": fake.token,
        "api_base_url": fake.base_url,
        "file_base_url": fake.file_base_url,
        "poll_timeout_seconds": 1,
        **overrides,
    }


async def start(core: Core, values: dict[str, Any]) -> TelegramChannel:
    account_id = await core.add_channel(values, kind="telegram")
    adapter = await core.adapter(account_id)
    assert isinstance(adapter, TelegramChannel)
    return adapter


def update(n: int) -> dict[str, Any]:
    user = 5_000_000 + n % 1000  # 1,000 customers writing
    return {
        "update_id": 900_000 + n,
        "message": {
            "message_id": 10 + n,
            "from": {"id": user, "is_bot": False, "first_name": f"Customer {n % 1000}", "language_code": "de"},
            "chat": {"id": user, "type": "private", "first_name": f"Customer {n % 1000}"},
            "date": 1_764_000_000 + n,
            "text": f"Hallo, wo ist meine Bestellung {n}? Sie sollte letzte Woche ankommen.",
        },
    }


async def inbound(count: int, concurrency: int, data_dir: Path) -> tuple[float, int]:
    async with running(data_dir) as (core, fake):
        base = await core.serve()
        adapter = await start(core, channel_config(fake, mode="webhook", public_url=base))
        url = f"{base}/channels/telegram/{adapter.account.id}/webhook"
        headers = {SECRET_HEADER: adapter.secret}
        queue = iter(range(count))

        async def client() -> None:
            for n in queue:
                async with core.http.post(url, json=update(n), headers=headers) as response:
                    if response.status != 200:
                        raise RuntimeError(f"update {n}: {response.status} {await response.text()}")

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        stored = await core.store.count_messages(adapter.account.id)
        return count / elapsed, stored


def outbound_message(adapter: TelegramChannel, chat: int, text: str) -> OutboundMessage:
    return OutboundMessage(
        message_id=new_id(),
        conversation_id=new_id(),
        channel_account_id=adapter.account.id,
        recipient=Identity("telegram", str(chat)),
        text=text,
        attempt=1,
        thread_ref=str(chat),
    )


async def send_until_sent(adapter: TelegramChannel, message: OutboundMessage) -> None:
    while True:
        try:
            await adapter.send(message)
            return
        except RateLimited as exc:
            await asyncio.sleep(exc.retry_after or 1.0)


async def outbound(count: int, concurrency: int, data_dir: Path) -> float:
    async with running(data_dir) as (core, fake):
        adapter = await start(core, channel_config(fake, rate_limit=False))
        queue = iter(range(count))
        text = "Danke für Ihre Geduld! Ihr Paket ist unterwegs und kommt morgen an."

        async def sender() -> None:
            for n in queue:
                await adapter.send(outbound_message(adapter, 6_000_000 + n, text))

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


def max_per_second(times: list[float]) -> int:
    """The most sends in any window of one second (sliding, [t, t + 1))."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)), default=0)


async def limited(count: int, data_dir: Path) -> tuple[int, float, float]:
    async with running(data_dir) as (core, fake):
        adapter = await start(core, channel_config(fake, rate_limit=True))
        started = time.perf_counter()
        await asyncio.gather(
            *(send_until_sent(adapter, outbound_message(adapter, 7_000_000 + n, f"reply {n}")) for n in range(count))
        )
        elapsed = time.perf_counter() - started
        times = [sent.at for sent in fake.sent]
        assert len(times) == count, (len(times), count)
        return max_per_second(times), count / elapsed, elapsed


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-telegram-") as tmp:
        root = Path(tmp)
        print(f"inbound: {args.updates} updates through the webhook, {args.concurrency} connections ...", flush=True)
        rate_in, stored = await inbound(args.updates, args.concurrency, root / "in")
        print(f"outbound: {args.sends} sends, limits off, {args.concurrency} at once ...", flush=True)
        rate_out = await outbound(args.sends, args.concurrency, root / "out")
        print(f"outbound: {args.limited} sends, limits on, all at once ...", flush=True)
        peak, rate_limited, elapsed = await limited(args.limited, root / "limited")
    print()
    print_table(
        [
            ["inbound updates/s (webhook -> stored)", f"{rate_in:,.0f}", f"{stored} stored of {args.updates}"],
            ["outbound messages/s (limits off)", f"{rate_out:,.0f}", ""],
            ["outbound messages/s (limits on)", f"{rate_limited:,.1f}", f"{args.limited} in {elapsed:.1f} s"],
            ["most sent in any 1 s (limits on)", str(peak), "Telegram: about 30/s per bot"],
        ],
        header=["figure", "value", "note"],
    )
    if stored != args.updates:
        raise SystemExit(f"only {stored} of {args.updates} updates were stored")
    if peak > 30:
        raise SystemExit(f"{peak} messages left within one second: over Telegram's 30/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--limited", type=int, default=300)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
