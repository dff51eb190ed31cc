"""Run every benchmark with sane defaults, then print a summary table.

    python -m bench [--duration 20] [--connections 64] [--messages 1000000] [--quick] [--skip-memory]
                    [--skip-api]

`make bench` runs this.  --quick: 10 s of load and 100k stored messages instead of 20 s and 1M.
The full run takes about 20 minutes, most of it filling 1M messages (about 1,000 msgs/s at 3f69d5f, because
ingest gets slower as the database grows; see bench/micro.py and `bench.ingest --whatif index-in`).
The inbox API run (bench/api.py: GET /api/v1/conversations and q= search on --messages messages in a tenth
as many conversations) fills its own database with SQL directly, in about a minute for 1M.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import api, ingest, memory
from bench._common import mib, ms, print_table

TARGET_RATE = 3000
TARGET_P99_US = 50_000


def revision() -> str:
    """The commit measured (read-only git query; 'unknown' outside a checkout)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent.parent,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, help="seconds of load per ingest run (default 20; --quick 10)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--messages", type=int, help="messages stored for the memory run (default 1000000; --quick 100000)")
    p.add_argument("--quick", action="store_true", help="shorter runs: 10 s of load, 100k messages")
    p.add_argument("--skip-memory", action="store_true", help="only the ingest runs")
    p.add_argument("--skip-redis", action="store_true", help="no run with Redis")
    p.add_argument("--skip-api", action="store_true", help="no inbox API run (bench/api.py)")
    args = p.parse_args(argv)
    duration = args.duration or (10.0 if args.quick else 20.0)
    messages = args.messages or (100_000 if args.quick else 1_000_000)

    print(f"aggregator benchmarks at {revision()}: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    started = time.perf_counter()
    runs: list[ingest.IngestResult] = []
    for redis in (False, True):
        if redis and args.skip_redis:
            continue
        runs.append(
            ingest.run(redis=redis, duration=duration, connections=args.connections, threads=args.threads)
        )
        print()
    mem: dict[str, Any] | None = None
    if not args.skip_memory:
        mem = memory.run(messages=messages)
        print()
    api_run: dict[str, Any] | None = None
    if not args.skip_api:
        api_run = api.run(messages=messages, conversations=max(1, messages // 10),
                          duration=3.0 if args.quick else 5.0, show_sql=False)
        print()

    print(f"== summary ({time.perf_counter() - started:.0f}s; target: >= {TARGET_RATE} msgs/s with p99 < "
          f"{ms(TARGET_P99_US)})")
    rows = []
    for run in runs:
        v = run.values
        met = v["msgs_per_s"] >= TARGET_RATE and v["p99_us"] < TARGET_P99_US
        rows.append([
            f"ingest, {run.mode}",
            f"{v['msgs_per_s']:.0f}",
            ms(v["p50_us"]),
            ms(v["p99_us"]),
            f"{v['ok_2xx']}",
            f"{v['non_2xx'] + v['socket_errors']}",
            f"{mib(v['rss_idle'])} -> {mib(v['rss_end'])}",
            ("target met" if met else "below target") + ("" if run.ok else "; CHECK FAILED"),
        ])
    if mem is not None:
        rows.append([
            f"burst on {mem['stored']} stored",
            f"{mem['burst_rate']:.0f}",
            ms(mem["burst_p50_us"]),
            ms(mem["burst_p99_us"]),
            f"{mem['burst_created']}",
            f"{mem['burst_non2xx'] + mem['burst_errors']}",
            f"{mib(mem['rss_full_idle'])} -> {mib(mem['rss_after_burst'])}",
            f"DB {mib(mem['db_bytes'])}",
        ])
    print_table(rows, header=["run", "msgs/s", "p50", "p99", "2xx", "errors", "daemon RSS", "note"])
    if mem is not None:
        print()
        print_table([
            ("daemon RSS idle, fresh data dir", mib(mem["rss_fresh_idle"])),
            (f"daemon RSS idle, {mem['stored']} messages", mib(mem["rss_full_idle"])),
            (f"daemon RSS after burst, {mem['stored']} messages", mib(mem["rss_after_burst"])),
            ("fill rate (Store.ingest_batch, batches of 500)",
             f"{mem['fill_rate']:.0f} msgs/s overall ({mem['fill_rows_per_s']:.0f} rows/s), "
             f"first {mem['fill_first_rate']:.0f} -> last {mem['fill_last_rate']:.0f} msgs/s"),
            ("DB size on disk", mib(mem["db_bytes"])),
        ])
    if api_run is not None:
        print()
        print(f"   inbox API on {api_run['messages']} messages in {api_run['conversations']} conversations, "
              f"{api_run['concurrency']} concurrent clients (target: list p99 < {api.LIST_P99_TARGET_MS:g} ms, "
              f"search p95 < {api.SEARCH_P95_TARGET_MS:g} ms)")
        print_table(
            [
                [
                    s["name"], str(s["items"]), f"{s['seq_p50_ms']:.1f}", f"{s['p50_ms']:.1f}",
                    f"{s['p95_ms']:.1f}", f"{s['p99_ms']:.1f}", f"{s['rps']:.0f}", str(s["errors"]),
                    "target met" if s["met"] else "below target",
                ]
                for s in api_run["scenarios"]
            ],
            header=["GET /api/v1/conversations", "items", "seq p50", "p50", "p95", "p99", "req/s", "errors", "note"],
        )
    api_ok = api_run is None or all(s["errors"] == 0 for s in api_run["scenarios"])
    return 0 if all(run.ok for run in runs) and api_ok else 1


if __name__ == "__main__":
    sys.exit(main())
