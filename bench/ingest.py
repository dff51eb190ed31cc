"""End-to-end ingest through the API channel: signed POST -> stored, indexed, published.

    python -m bench.ingest [--redis] [--duration 20] [--connections 64] [--threads 2]

Sets up a temporary data directory and config, creates an API channel with the CLI, starts the daemon
(with --redis also a throw-away redis-server), pre-generates distinct signed requests and drives wrk
(bench/wrk_signed.lua) over loopback, each request sent at most once.  Afterwards it checks in SQLite
that what was stored is what wrk was told was stored, and prints throughput, latency and daemon RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import (
    DaemonProcess,
    MessageFactory,
    RedisProcess,
    add_api_channel,
    db_counts,
    db_files_size,
    free_port,
    mib,
    ms,
    print_table,
    proc_cpu_seconds,
    run_wrk,
    write_config,
    write_requests,
)

# Requests generated per second of --duration: well above what one daemon can take, so wrk never runs
# out (it would keep its clock running and understate the rate).  The run says so when it happens.
REQUESTS_PER_SECOND_CAP = 10_000


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


@dataclass
class IngestResult:
    mode: str
    values: dict[str, Any] = field(default_factory=dict)
    ok: bool = True
    problems: list[str] = field(default_factory=list)


def run(
    *,
    redis: bool = False,
    duration: float = 20.0,
    connections: int = 64,
    threads: int = 2,
    requests: int | None = None,
    max_batch: int | None = None,
    log_level: str = "WARNING",
    profile: Path | None = None,
    profile_mode: str = "cpu",
    whatif: str | None = None,
    keep: bool = False,
    quiet: bool = False,
) -> IngestResult:
    mode = ("SQLite + Redis" if redis else "SQLite only") + (f" [whatif: {whatif}]" if whatif else "")
    say = (lambda *a: None) if quiet else print
    workdir = Path(tempfile.mkdtemp(prefix="aggregator-bench-ingest-"))
    result = IngestResult(mode)
    redis_server: RedisProcess | None = None
    daemon: DaemonProcess | None = None
    try:
        data_dir = workdir / "data"
        port = free_port()
        if redis:
            redis_server = RedisProcess(workdir / "redis")
            redis_server.start()
        config = write_config(
            workdir / "aggregator.toml",
            data_dir,
            port,
            redis_url=redis_server.url if redis_server else None,
            log_level=log_level,
            max_batch=max_batch,
        )
        channel_id = add_api_channel(config)
        n = requests or max(20_000, int(duration * REQUESTS_PER_SECOND_CAP))
        say(f"== ingest, {mode}: {duration:g}s, {connections} connections, {threads} wrk threads")
        say(f"   work dir {workdir}; generating {n} signed requests ...", flush=True)
        generated = write_requests(workdir / "requests.tsv", n, MessageFactory(tag=f"ing{os.getpid()}"))
        say(
            f"   {generated.count} requests, mean body {generated.mean_body:.0f} B, "
            f"{mib(generated.bytes)} in {generated.seconds:.1f}s"
        )

        daemon = DaemonProcess(config, port, workdir / "daemon.log", whatif=whatif)
        daemon.start()
        time.sleep(1.0)
        idle = daemon.status()
        url = f"http://127.0.0.1:{port}/channels/api/{channel_id}/messages"

        spy: subprocess.Popen[bytes] | None = None
        if profile is not None:
            spy = _start_profile(profile, daemon.pid, duration, redis, profile_mode)
        cpu_before = daemon.cpu_seconds()
        redis_cpu_before = proc_cpu_seconds(redis_server.proc.pid) if redis_server and redis_server.proc else 0.0
        machine_before = machine_cpu()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk = run_wrk(url, generated.path, duration=duration, connections=connections, threads=threads)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        machine_after = machine_cpu()
        cpu_after = daemon.cpu_seconds()
        redis_cpu = (
            proc_cpu_seconds(redis_server.proc.pid) - redis_cpu_before
            if redis_server and redis_server.proc
            else 0.0
        )
        end = daemon.status()
        metrics = daemon.metrics()
        if spy is not None:
            spy.wait()
        returncode = daemon.stop()
        daemon_log = daemon.tail()
        daemon = None
        counts = db_counts(data_dir, channel_id)
        publishes = redis_server.command_calls("publish") if redis_server else None

        # ---- check: what was stored is what wrk was told was stored ----
        v = wrk.values
        answered = v["created"] + v["duplicate"] + v["other2xx"] + v["non2xx"]
        unanswered = v["sent"] - answered
        stored = counts["messages_in_channel"]
        late = stored - v["created"]
        problems = result.problems
        if v["non2xx"]:
            problems.append(f"{v['non2xx']} non-2xx responses: {wrk.errors[:3]}")
        if v["duplicate"] or v["other2xx"]:
            problems.append(f"{v['duplicate']} answered 200 (already stored), {v['other2xx']} other 2xx")
        if not 0 <= late <= max(unanswered, 0):
            problems.append(
                f"stored {stored} but wrk saw {v['created']} x 202 with {unanswered} unanswered at the cut-off"
            )
        if counts.get("search_message", 0) != counts["messages"]:
            problems.append(f"search index has {counts.get('search_message', 0)} message rows for {counts['messages']}")
        expected_events = stored + counts["conversations"]
        if publishes is not None and publishes != expected_events:
            problems.append(f"redis saw {publishes} PUBLISH for {expected_events} events")
        if wrk.socket_errors:
            problems.append(
                f"socket errors: connect {v['err_connect']} read {v['err_read']} write {v['err_write']} "
                f"timeout {v['err_timeout']}"
            )
        if v["exhausted"]:
            problems.append("wrk ran out of requests before the end: raise --requests (the rate is understated)")
        if returncode not in (0, None):
            problems.append(f"the daemon exited with {returncode}:\n{daemon_log}")
        result.ok = not problems

        seconds = wrk.seconds
        busy = machine_after[0] - machine_before[0]
        total = machine_after[1] - machine_before[1]
        wrk_cpu = (children_after.ru_utime + children_after.ru_stime) - (
            children_before.ru_utime + children_before.ru_stime
        )
        result.values = {
            "mode": mode,
            "duration_s": seconds,
            "connections": connections,
            "threads": threads,
            "requests": v["sent"],
            "responses": answered,
            "ok_2xx": wrk.ok,
            "created_202": v["created"],
            "non_2xx": v["non2xx"],
            "socket_errors": wrk.socket_errors,
            "stored": stored,
            "stored_after_cutoff": late,
            "msgs_per_s": v["created"] / seconds if seconds else 0.0,
            "server_msgs_per_s": stored / (counts["span_ms"] / 1000) if counts["span_ms"] else 0.0,
            "p50_us": v["lat_p50_us"],
            "p90_us": v["lat_p90_us"],
            "p99_us": v["lat_p99_us"],
            "p999_us": v["lat_p999_us"],
            "max_us": v["lat_max_us"],
            "rss_idle": idle["VmRSS"],
            "rss_end": end["VmRSS"],
            "rss_peak": end["VmHWM"],
            "daemon_threads": end.get("Threads", 0),
            "daemon_cpu": (cpu_after - cpu_before) / seconds if seconds else 0.0,
            "wrk_cpu": wrk_cpu / seconds if seconds else 0.0,
            "redis_cpu": redis_cpu / seconds if seconds else 0.0,
            "machine_busy": busy / total if total else 0.0,
            # Cores busy outside the daemon, wrk and redis-server: other work on the machine skews the run.
            "other_cpu": max(
                0.0,
                (busy / total * (os.cpu_count() or 1) if total else 0.0)
                - (cpu_after - cpu_before + wrk_cpu + redis_cpu) / (seconds or 1.0),
            ),
            "db_bytes": db_files_size(data_dir),
            "contacts": counts["contacts"],
            "conversations": counts["conversations"],
            "search_rows": sum(n for k, n in counts.items() if k.startswith("search_")),
            "publishes": publishes,
            "batches": int(metrics.get("aggregator_ingest_batch_size_count", 0)),
            "mean_batch": _ratio(metrics, "aggregator_ingest_batch_size"),
            "mean_pipeline_ms": _ratio(metrics, "aggregator_ingest_latency_seconds") * 1000,
        }
        if not quiet:
            _print(result, wrk.output, counts)
        return result
    finally:
        if daemon is not None:
            daemon.stop()
        if redis_server is not None:
            redis_server.stop()
        if keep:
            say(f"   kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _ratio(metrics: dict[str, float], name: str) -> float:
    count = metrics.get(f"{name}_count", 0.0)
    return metrics.get(f"{name}_sum", 0.0) / count if count else 0.0


def _start_profile(
    out_dir: Path, pid: int, duration: float, redis: bool, mode: str
) -> subprocess.Popen[bytes] | None:
    """py-spy record in the background: raw collapsed stacks plus a .json with rate and duration."""
    spy = py_spy()
    if spy is None:
        print("   --profile: py-spy not found (pip install py-spy); running without it", file=sys.stderr)
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    name = ("ingest-redis" if redis else "ingest-sqlite") + ("" if mode == "cpu" else f"-{mode}")
    # Stop before wrk does, so that every sample is taken under load.
    seconds = max(1, int(duration) - 2)
    rate = 250
    output = out_dir / f"{name}.txt"
    command = [
        spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(rate), "--threads",
        "--format", "raw", "--output", str(output),
    ]
    command += {"cpu": ["--nonblocking"], "gil": ["--nonblocking", "--gil"], "native": ["--native"]}[mode]
    output.with_suffix(".json").write_text(
        json.dumps({"rate": rate, "seconds": seconds, "mode": f"py-spy {' '.join(command[1:])}"})
    )
    print(f"   profiling: py-spy {' '.join(command[1:])}")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _print(result: IngestResult, wrk_output: str, counts: dict[str, int]) -> None:
    v = result.values
    print("   wrk:")
    for line in wrk_output.splitlines():
        if line.strip():
            print("     " + line)
    rows = [
        ("requests sent", f"{v['requests']}"),
        ("responses 2xx", f"{v['ok_2xx']} (202 created: {v['created_202']})"),
        ("responses non-2xx", f"{v['non_2xx']}"),
        ("socket errors", f"{v['socket_errors']}"),
        ("stored (SQLite)", f"{v['stored']} (+{v['stored_after_cutoff']} answered after wrk's cut-off)"),
        ("messages/s", f"{v['msgs_per_s']:.0f} (server side, first to last commit: {v['server_msgs_per_s']:.0f})"),
        ("latency p50 / p90", f"{ms(v['p50_us'])} / {ms(v['p90_us'])}"),
        ("latency p99 / p99.9 / max", f"{ms(v['p99_us'])} / {ms(v['p999_us'])} / {ms(v['max_us'])}"),
        (
            "group commit",
            f"{v['batches']} batches, mean {v['mean_batch']:.1f} messages; mean queue+commit "
            f"{v['mean_pipeline_ms']:.1f} ms",
        ),
        ("daemon RSS idle / end / peak", f"{mib(v['rss_idle'])} / {mib(v['rss_end'])} / {mib(v['rss_peak'])}"),
        (
            "CPU (cores busy)",
            f"daemon {v['daemon_cpu']:.2f}, wrk {v['wrk_cpu']:.2f}, redis {v['redis_cpu']:.2f}; "
            f"machine {v['machine_busy'] * 100:.0f}% of {os.cpu_count()} cores, "
            f"other processes {v['other_cpu']:.2f}" + ("  (!) not a quiet machine" if v["other_cpu"] > 0.2 else ""),
        ),
        (
            "rows",
            f"contacts {counts['contacts']}, conversations {counts['conversations']}, "
            f"thread keys {counts['thread_keys']}, search rows {v['search_rows']}",
        ),
        ("DB on disk", mib(v["db_bytes"])),
    ]
    if v["publishes"] is not None:
        rows.append(("redis PUBLISH calls", f"{v['publishes']} (events: {v['stored'] + v['conversations']})"))
    print(f"   -- result, {result.mode}:")
    print_table(rows)
    if result.ok:
        print("   check: OK (every stored message was answered 202 or was in flight at wrk's cut-off)")
    else:
        print("   check: FAILED")
        for problem in result.problems:
            print(f"     - {problem}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--redis", action="store_true", help="also start a throw-away redis-server and use it")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load (default 20)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--requests", type=int, help=f"requests to generate (default duration x {REQUESTS_PER_SECOND_CAP})")
    p.add_argument("--max-batch", type=int, help="ingest.max_batch of the daemon (default: its own, 500)")
    p.add_argument("--log-level", default="WARNING", help="daemon log level (default WARNING)")
    p.add_argument("--profile", type=Path, metavar="DIR", help="record a py-spy profile (collapsed stacks) into DIR")
    p.add_argument(
        "--profile-mode",
        choices=["cpu", "gil", "native"],
        default="cpu",
        help="cpu: all running threads (default); gil: only samples holding the GIL; "
        "native: with C frames (pauses the daemon at each sample, slower)",
    )
    p.add_argument("--whatif", metavar="PATCHES", help="run the daemon with bench/whatif.py patches, e.g. index-in")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = run(
        redis=args.redis,
        duration=args.duration,
        connections=args.connections,
        threads=args.threads,
        requests=args.requests,
        max_batch=args.max_batch,
        log_level=args.log_level,
        profile=args.profile,
        profile_mode=args.profile_mode,
        whatif=args.whatif,
        keep=args.keep,
    )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
