"""Summarise a py-spy profile in raw (collapsed) format, as bench.ingest --profile records it.

    python -m bench.profile_report PROFILE.txt [--top 25]

For each thread: its share of the samples, the time by component (the innermost frame that belongs to a
known component wins, so the components of a thread add up to 100 %), the hottest leaf functions and,
for the ingest writer, which statement of aggregator/store/ingest_batch.py the time goes to.

Samples are taken without --idle: a thread appears only while it runs (or waits in a system call), so
"share of wall" is roughly the share of one core that the thread used.
"""

from __future__ import annotations

import argparse
import json
import linecache
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

# (component, pattern on one frame "function (file:line)"), innermost match wins, checked in this order.
COMPONENTS: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(pattern))
    for name, pattern in [
        ("SQLite C: commit (WAL write + fsync)", r"^DefaultDialect\.do_commit |^Connection\.commit |commit \(aiosqlite"),
        ("SQLite C: execute/executemany (incl. FTS5, index scans)", r"^DefaultDialect\.do_execute(many)? "),
        ("SQLite C: fetch rows (lazy scans)", r"^CursorFetchStrategy\.fetch|^CursorResult\.(fetch|__iter__)|_fetchone_impl|_fetchall_impl"),
        ("HMAC-SHA256 signature", r"\(hmac\.py|^sign \(channels/api"),
        ("JSON decode (request body)", r"\(json/decoder\.py|^loads \(json/|^detect_encoding \(json/"),
        ("JSON encode", r"\(json/encoder\.py|^dumps \(json/"),
        ("pydantic validation", r"\(pydantic/|\(pydantic_core/"),
        ("ids (new_id)", r"^new_id \(aggregator/model\.py"),
        ("prometheus metrics", r"\(prometheus_client/"),
        ("redis client / bus publish", r"\(redis/|\(aggregator/bus\.py"),
        ("SQLAlchemy (statement build, compile cache, params, results)", r"\(sqlalchemy/"),
        ("aiosqlite hand-off", r"\(aiosqlite/"),
        ("API channel adapter (Python)", r"\(channels/api/"),
        ("ingest_batch logic (Python)", r"\(aggregator/store/ingest_batch\.py"),
        ("store (Python)", r"\(aggregator/store/"),
        ("Ingestor (queue, futures, group commit)", r"\(aggregator/ingest\.py"),
        ("aiohttp: HTTP parse, routing, response", r"\(aiohttp/|\(multidict/|\(yarl/"),
        ("app / middleware", r"\(aggregator/api/"),
        ("asyncio: socket write (send syscall)", r"^_SelectorSocketTransport\.write "),
        ("asyncio: socket read", r"_read_ready"),
        ("asyncio: epoll wait", r"^EpollSelector\.select |^BaseSelector\.select "),
        ("asyncio: wake-up pipe (call_soon_threadsafe)", r"_write_to_self|_read_from_self"),
        ("asyncio: event loop, tasks, futures", r"\(asyncio/"),
        ("thread pool", r"\(concurrent/futures/|\(threading\.py|\(queue\.py"),
        ("logging", r"\(logging/"),
    ]
]
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+):(?P<line>\d+)\)$")


def component(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in COMPONENTS:
            if pattern.search(frame):
                return name
    return "other"


def parse(path: Path) -> dict[str, list[tuple[list[str], int]]]:
    """Samples by thread name: [(frames outermost first, count)]."""
    threads: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0]
        name = re.sub(r"^thread \(\d+\): ", "", thread)
        name = re.sub(r"^Thread-\d+ ", "", name)  # pool threads of one kind together
        threads[name].append((frames[1:], int(count)))
    return threads


def source_line(frame: str, root: Path) -> str:
    found = FRAME.match(frame)
    if not found:
        return ""
    file = root / found["file"]
    if not file.exists():
        return ""
    return linecache.getline(str(file), int(found["line"])).strip()


def report(path: Path, top: int = 20, out: object = None) -> None:
    write = (lambda s: print(s, file=out)) if out is not None else print
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    ticks = meta.get("rate", 0) * meta.get("seconds", 0)
    threads = parse(path)
    root = Path(__file__).resolve().parent.parent
    total = sum(n for samples in threads.values() for _, n in samples)
    write(f"profile {path} ({total} samples" + (f", {meta['rate']} Hz x {meta['seconds']} s" if ticks else "") + ")")
    if meta.get("mode"):
        write(f"  mode: {meta['mode']}")
    ordered = sorted(threads.items(), key=lambda item: -sum(n for _, n in item[1]))
    write("")
    write("threads (share of samples; of one core's wall time when known):")
    for name, samples in ordered:
        n = sum(c for _, c in samples)
        wall = f", {n / ticks * 100:5.1f} % of wall" if ticks else ""
        write(f"  {name:<44} {n:7d} samples  {n / total * 100:5.1f} %{wall}")
    for name, samples in ordered:
        n = sum(c for _, c in samples)
        if n < total * 0.02:
            continue
        write("")
        write(f"== {name}: {n} samples")
        by_component: Counter[str] = Counter()
        leaves: Counter[str] = Counter()
        batch_lines: Counter[str] = Counter()
        for frames, count in samples:
            by_component[component(frames)] += count
            if frames:
                leaves[frames[-1]] += count
            for frame in frames:
                if "(aggregator/store/ingest_batch.py:" in frame and not frame.startswith("_audit"):
                    batch_lines[frame] += count
                    break
        write("  by component:")
        for comp, count in by_component.most_common():
            write(f"    {count / n * 100:5.1f} %  {comp}")
        write(f"  top {top} leaf frames (self time):")
        for frame, count in leaves.most_common(top):
            write(f"    {count / n * 100:5.1f} %  {frame}")
        if batch_lines:
            write("  ingest_batch.py lines (inclusive):")
            for frame, count in batch_lines.most_common(12):
                line = FRAME.match(frame)
                where = f"line {line['line']}" if line else frame
                write(f"    {count / n * 100:5.1f} %  {where:<9} {source_line(frame, root)[:90]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_report", description=__doc__.split("\n\n")[0])
    p.add_argument("profiles", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args(argv)
    for path in args.profiles:
        report(path, args.top)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
