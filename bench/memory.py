"""Daemon memory: RSS idle on a fresh data directory, and idle / after a burst with N stored messages.

    python -m bench.memory [--messages 1000000] [--contacts 50000] [--burst 10]

1. Fresh data dir: start the daemon, read VmRSS from /proc/PID/status once it is idle.
2. Fill the database through the real write path, in-process (Store.ingest_batch, the group-commit
   transaction the daemon runs, batches of 500 realistic messages from --contacts senders), with a
   progress line; prints the fill rate (rows/s) and the size on disk.
3. Start the daemon on that data dir: VmRSS idle, then after a burst of signed API requests (wrk, the
   same script as bench.ingest), which also shows ingest throughput on a big database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.bus import create_bus
from aggregator.channels import ChannelManager
from aggregator.config import load_settings
from aggregator.daemon import open_store
from aggregator.model import Identity, InboundMessage, ThreadHints, utcnow
from aggregator.store import ChannelAccount, PreparedInbound, Store
from bench._common import (
    DaemonProcess,
    MessageFactory,
    add_api_channel,
    db_counts,
    db_files_size,
    encode,
    free_port,
    mib,
    ms,
    print_table,
    run_wrk,
    table_sizes,
    write_config,
    write_requests,
)
from channels.base import Registry


def api_parser(store: Store, account: ChannelAccount) -> Callable[[bytes], InboundMessage] | None:
    """The API channel adapter's own body -> InboundMessage, built as the daemon builds it; None if the
    adapter's internals have moved (the fill then uses `inbound`, a copy of what it does)."""
    try:
        manager = ChannelManager(
            store, create_bus(None), Registry(), _no_sink, None,  # type: ignore[arg-type]
            clock=utcnow, node_id="bench-fill", max_body_bytes=10 * 1024 * 1024,
            max_attachment_bytes=25 * 1024 * 1024,
        )
        parse: Callable[[bytes], InboundMessage] = manager.build(account)._parse  # type: ignore[attr-defined]
        parse(encode({"external_id": "probe", "sender": {"id": "probe"}, "text": "probe"}))
        return parse
    except Exception as exc:
        print(f"   (fill: the API adapter's parser is not usable here ({exc!r}); using bench's copy)")
        return None


async def _no_sink(message: InboundMessage) -> Any:
    raise RuntimeError("the fill calls Store.ingest_batch itself")


def inbound(payload: dict[str, Any], channel_id: str) -> InboundMessage:
    """What channels/api/adapter.py makes of a payload (no attachments, no sent_at)."""
    sender = payload["sender"]
    thread_id = payload.get("thread_id")
    thread = (
        ThreadHints(keys=(f"thread:{thread_id}",), by_contact=False, thread_ref=thread_id)
        if thread_id
        else ThreadHints(by_contact=True)
    )
    return InboundMessage(
        channel_account_id=channel_id,
        external_id=payload["external_id"],
        sender=Identity("api", f"{channel_id}/{sender['id']}", sender.get("name"), sender.get("email")),
        text=payload["text"],
        thread=thread,
        subject=payload.get("subject"),
        extra={},
    )


@dataclass
class FillResult:
    messages: int = 0
    seconds: float = 0.0
    store_seconds: float = 0.0
    windows: list[tuple[int, float]] = field(default_factory=list)  # (messages so far, rows/s in window)


async def fill(
    config: Path, channel_id: str, messages: int, contacts: int, batch: int, progress: bool = True
) -> FillResult:
    store = open_store(load_settings(config))
    result = FillResult()
    try:
        account = await store.get_channel_account(channel_id)
        parse = api_parser(store, account)
        factory = MessageFactory(tag="fill", seed=7, contacts=contacts)
        step = max(batch, (messages // 20) // batch * batch)
        started = window_start = time.perf_counter()
        window_done = 0
        while result.messages < messages:
            n = min(batch, messages - result.messages)
            items = [
                PreparedInbound(parse(encode(p)) if parse else inbound(p, channel_id), account.workspace_id)
                for p in factory.payloads(n)
            ]
            t0 = time.perf_counter()
            outcome = await store.ingest_batch(items, utcnow())
            result.store_seconds += time.perf_counter() - t0
            if not all(r.created for r in outcome.results):
                raise RuntimeError("the fill produced duplicates: external ids must be unique")
            result.messages += n
            window_done += n
            if result.messages % step == 0 or result.messages == messages:
                now = time.perf_counter()
                rate = window_done / (now - window_start)
                result.windows.append((result.messages, rate))
                if progress:
                    print(
                        f"   fill {result.messages:>9}/{messages}  {rate:7.0f} msgs/s (last {window_done})  "
                        f"DB {mib(db_files_size(config.parent / 'data'))}",
                        flush=True,
                    )
                window_start, window_done = now, 0
        result.seconds = time.perf_counter() - started
    finally:
        await store.close()
    return result


def idle_rss(daemon: DaemonProcess, settle: float) -> dict[str, int]:
    """VmRSS after the daemon has been idle for `settle` seconds."""
    time.sleep(settle)
    return daemon.status()


def run(
    *,
    messages: int = 1_000_000,
    contacts: int = 50_000,
    batch: int = 500,
    burst: float = 10.0,
    connections: int = 64,
    threads: int = 2,
    settle: float = 3.0,
    whatif: str | None = None,
    keep: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    say = (lambda *a, **k: None) if quiet else print
    workdir = Path(tempfile.mkdtemp(prefix="aggregator-bench-memory-"))
    data_dir = workdir / "data"
    port = free_port()
    config = write_config(workdir / "aggregator.toml", data_dir, port)
    values: dict[str, Any] = {"messages": messages, "contacts": contacts, "whatif": whatif}
    if whatif:
        # The fill runs in this process: patch it here too (bench/whatif.py); the daemon gets them below.
        from bench import whatif as patches

        patches.apply(whatif)
    daemon: DaemonProcess | None = None
    try:
        say(
            f"== memory: {messages} messages from ~{contacts} contacts"
            + (f" [whatif: {whatif}]" if whatif else "")
            + f"; work dir {workdir}"
        )
        channel_id = add_api_channel(config)

        daemon = DaemonProcess(config, port, workdir / "daemon.log")
        daemon.start()
        fresh = idle_rss(daemon, settle)
        daemon.stop()
        daemon = None
        values["rss_fresh_idle"] = fresh["VmRSS"]
        say(f"   fresh data dir: daemon RSS idle {mib(fresh['VmRSS'])} ({fresh.get('Threads', 0)} threads)")

        say(f"   filling through Store.ingest_batch in batches of {batch} ...", flush=True)
        filled = asyncio.run(fill(config, channel_id, messages, contacts, batch, progress=not quiet))
        counts = db_counts(data_dir, channel_id)
        values.update(
            fill_seconds=filled.seconds,
            fill_rate=filled.messages / filled.seconds if filled.seconds else 0.0,
            fill_store_rate=filled.messages / filled.store_seconds if filled.store_seconds else 0.0,
            fill_first_rate=filled.windows[0][1] if filled.windows else 0.0,
            fill_last_rate=filled.windows[-1][1] if filled.windows else 0.0,
            db_bytes=db_files_size(data_dir),
            stored=counts["messages"],
            contacts_stored=counts["contacts"],
            conversations=counts["conversations"],
            search_rows=sum(n for k, n in counts.items() if k.startswith("search_")),
        )
        # All rows of every table are inserted rows: messages plus contacts, identities, ...
        rows = sum(counts[k] for k in ("messages", "contacts", "identities", "conversations", "thread_keys",
                                       "audit_events")) + values["search_rows"]
        values["fill_rows_per_s"] = rows / filled.seconds if filled.seconds else 0.0

        daemon = DaemonProcess(config, port, workdir / "daemon-full.log", whatif=whatif)
        started = time.perf_counter()
        daemon.start()
        values["start_seconds"] = time.perf_counter() - started
        idle = idle_rss(daemon, settle)
        values["rss_full_idle"] = idle["VmRSS"]
        say(f"   with {counts['messages']} messages: daemon up in {values['start_seconds']:.1f}s, RSS idle {mib(idle['VmRSS'])}")

        requests = write_requests(
            workdir / "burst.tsv",
            max(10_000, int(burst * 5_000)),
            MessageFactory(tag="burst", seed=11, contacts=contacts),
        )
        url = f"http://127.0.0.1:{port}/channels/api/{channel_id}/messages"
        say(f"   burst: wrk {burst:g}s, {connections} connections ...", flush=True)
        wrk = run_wrk(url, requests.path, duration=burst, connections=connections, threads=threads)
        after = daemon.status()
        values.update(
            rss_after_burst=after["VmRSS"],
            rss_peak=after["VmHWM"],
            burst_created=wrk["created"],
            burst_non2xx=wrk["non2xx"],
            burst_rate=wrk["created"] / wrk.seconds if wrk.seconds else 0.0,
            burst_p50_us=wrk["lat_p50_us"],
            burst_p99_us=wrk["lat_p99_us"],
            burst_errors=wrk.socket_errors,
        )
        time.sleep(settle)
        values["rss_after_burst_idle"] = daemon.status()["VmRSS"]
        daemon.stop()
        daemon = None
        values["db_bytes_end"] = db_files_size(data_dir)
        sizes = table_sizes(data_dir)
        if not quiet:
            _print(values, filled, sizes)
        return values
    finally:
        if daemon is not None:
            daemon.stop()
        if keep:
            say(f"   kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _print(v: dict[str, Any], filled: FillResult, sizes: list[tuple[str, int]]) -> None:
    print("   -- result, memory:")
    rows = [
        ("daemon RSS idle, fresh data dir", mib(v["rss_fresh_idle"])),
        (f"fill: {v['stored']} messages", f"{v['fill_seconds']:.0f}s, {v['fill_rate']:.0f} msgs/s overall "
         f"({v['fill_store_rate']:.0f}/s inside ingest_batch), {v['fill_rows_per_s']:.0f} rows/s all tables"),
        ("fill rate first / last 5 %", f"{v['fill_first_rate']:.0f} / {v['fill_last_rate']:.0f} msgs/s"),
        ("rows", f"contacts {v['contacts_stored']}, conversations {v['conversations']}, search rows {v['search_rows']}"),
        ("DB on disk (db + wal + shm)", mib(v["db_bytes"])),
        ("daemon start on the full DB", f"{v['start_seconds']:.1f}s"),
        ("daemon RSS idle, full DB", mib(v["rss_full_idle"])),
        ("daemon RSS after burst / peak", f"{mib(v['rss_after_burst'])} / {mib(v['rss_peak'])}"),
        ("daemon RSS idle after burst", mib(v["rss_after_burst_idle"])),
        ("burst on the full DB", f"{v['burst_created']} stored at {v['burst_rate']:.0f} msgs/s, "
         f"p50 {ms(v['burst_p50_us'])}, p99 {ms(v['burst_p99_us'])}, non-2xx {v['burst_non2xx']}, "
         f"socket errors {v['burst_errors']}"),
    ]
    print_table(rows)
    print("   largest tables and indexes:")
    print_table([(name, mib(size)) for name, size in sizes[:8]])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1_000_000, help="messages to store (default 1000000)")
    p.add_argument("--contacts", type=int, default=50_000, help="distinct senders (default 50000)")
    p.add_argument("--batch", type=int, default=500, help="messages per ingest_batch transaction (default 500)")
    p.add_argument("--burst", type=float, default=10.0, help="seconds of HTTP load after the fill (default 10)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections for the burst (default 64)")
    p.add_argument("--whatif", metavar="PATCHES", help="bench/whatif.py patches for the fill and the daemon")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    run(
        messages=args.messages,
        contacts=args.contacts,
        batch=args.batch,
        burst=args.burst,
        connections=args.connections,
        whatif=args.whatif,
        keep=args.keep,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
