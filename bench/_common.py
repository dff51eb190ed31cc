"""Shared pieces of the benchmarks: daemon and redis-server processes, request generation, wrk, SQLite."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from channels.api import sign

BENCH_DIR = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH_DIR / "wrk_signed.lua"
SECRET = "bench-secret-0123456789abcdef"


def in_process_settings(data_dir: Path) -> Any:
    """Settings for a store opened in the benchmark's own process: SQLite under data_dir, no Redis,
    the ingest writer in-process (aggregator.config.Settings; imported here, not at the top, so that
    the HTTP benchmarks do not load the daemon)."""
    from aggregator.config import Settings

    return Settings(
        data_dir=data_dir, redis_url=None, database_url=None, secret_key=None, ingest={"writer_process": False}
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def aggregator_command() -> list[str]:
    """The `aggregator` console script of this interpreter's environment, else `python -m aggregator`."""
    script = Path(sys.executable).parent / "aggregator"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "aggregator"]


def write_config(
    path: Path,
    data_dir: Path,
    port: int,
    *,
    redis_url: str | None = None,
    log_level: str = "WARNING",
    max_batch: int | None = None,
) -> Path:
    lines = [
        f"data_dir = {json.dumps(str(data_dir))}",
        f"log_level = {json.dumps(log_level)}",
    ]
    if redis_url:
        lines.append(f"redis_url = {json.dumps(redis_url)}")
    lines += ["", "[http]", 'host = "127.0.0.1"', f"port = {port}"]
    if max_batch is not None:
        lines += ["", "[ingest]", f"max_batch = {max_batch}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def add_api_channel(config: Path, name: str = "bench", secret: str = SECRET) -> str:
    """Create an API channel through the CLI; returns its id."""
    done = subprocess.run(
        [*aggregator_command(), "--config", str(config), "channel", "add", "api", "--name", name,
         "--set", f"secret={secret}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"`aggregator channel add` failed ({done.returncode}):\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


# --------------------------------------------------------------------------------------------------
# Processes


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... of /proc/PID/status in bytes (only the kB-valued fields)."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                values[key] = int(parts[0]) * 1024
            elif key == "Threads":
                values[key] = int(parts[0])
    return values


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def child_pids(pid: int) -> list[int]:
    """Live children of `pid` (e.g. the daemon's writer process), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


class DaemonProcess:
    """`aggregator --config FILE serve` as a child process."""

    def __init__(self, config: Path, port: int, log: Path, whatif: str | None = None) -> None:
        self.config = config
        self.port = port
        self.log = log
        self.whatif = whatif
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> None:
        self._log_handle = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        args = ["--config", str(self.config), "serve"]
        command = [*aggregator_command(), *args]
        env = None
        if self.whatif:
            # Patches applied in the daemon process (bench/whatif.py), for measuring suggestions.
            command = [sys.executable, "-m", "bench.whatif", self.whatif, "--", *args]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR.parent),
                                                                            os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/healthz"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the daemon did not answer {url} within {timeout}s:\n{self.tail()}")
            time.sleep(0.05)

    def status(self) -> dict[str, int]:
        """/proc status of the daemon; VmRSS and VmHWM add its writer process's (all of its memory)."""
        values = proc_status(self.pid)
        for child in child_pids(self.pid):
            with contextlib.suppress(OSError):
                extra = proc_status(child)
                for key in ("VmRSS", "VmHWM"):
                    values[key] = values.get(key, 0) + extra.get(key, 0)
        return values

    def metrics(self) -> dict[str, float]:
        """The daemon's Prometheus samples without labels (name -> value)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
            text = response.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, _, value = line.partition(" ")
                with contextlib.suppress(ValueError):
                    values[name] = float(value)
        return values

    def cpu_seconds(self) -> float:
        """The daemon's CPU time, its writer process included."""
        return proc_cpu_seconds(self.pid) + sum(proc_cpu_seconds(child) for child in child_pids(self.pid))

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the daemon commits and publishes what it has taken), SIGKILL after `timeout`."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        return None if proc is None else proc.returncode

    def __enter__(self) -> DaemonProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class RedisProcess:
    """A throw-away redis-server on a free loopback port, without persistence."""

    def __init__(self, workdir: Path) -> None:
        found = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(found).exists():
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.executable = found
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.executable, "--save", "", "--appendonly", "no", "--port", str(self.port),
             "--bind", "127.0.0.1", "--daemonize", "no", "--dir", str(self.workdir),
             "--logfile", str(self.workdir / "redis.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.command("PING") == "+PONG":
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not come up")
            time.sleep(0.02)

    def command(self, *words: str) -> str:
        """One inline command; the raw reply (bulk replies read whole)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall((" ".join(words) + "\r\n").encode())
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if data.startswith(b"$"):
                    header, _, rest = data.partition(b"\r\n")
                    if len(rest) >= int(header[1:]) + 2:
                        return rest[: int(header[1:])].decode()
                elif data.endswith(b"\r\n"):
                    return data.decode().strip()
        return data.decode().strip()

    def command_calls(self, name: str) -> int:
        """How many times the server ran `name` (INFO commandstats)."""
        stats = self.command("INFO", "commandstats")
        found = re.search(rf"cmdstat_{name.lower()}:calls=(\d+)", stats)
        return int(found.group(1)) if found else 0

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------
# Realistic messages

FIRST_NAMES = (
    "Anna", "Bence", "Chloé", "Daniel", "Eszter", "Fatima", "Georg", "Hannah", "Ivan", "Jürgen", "Kata",
    "Liam", "María", "Noah", "Olivia", "Péter", "Quentin", "Rosa", "Sofia", "Tamás", "Uwe", "Valentina",
    "William", "Xenia", "Yusuf", "Zoë", "Ahmed", "Björn", "Camille", "Dóra", "Emma", "François", "Greta",
)
LAST_NAMES = (
    "Müller", "Nagy", "Smith", "García", "Kovács", "Schmidt", "Dubois", "Rossi", "Horváth", "Johnson",
    "Fischer", "Tóth", "Martin", "Weber", "Szabó", "Brown", "López", "Wagner", "Varga", "Bernard",
    "Kiss", "Becker", "Moreau", "Hoffmann", "Molnár", "Taylor", "Schulz", "Németh", "Silva", "Novak",
)
ITEMS = (
    "blue running shoes (size 42)", "espresso machine", "phone case", "winter jacket", "set of 6 mugs",
    "wireless headphones", "desk lamp", "yoga mat", "gift card", "kids' bicycle helmet", "backpack",
    "coffee grinder", "linen bed sheets", "smart watch strap", "cast-iron pan", "USB-C charger",
)
CITIES = ("Budapest", "Berlin", "Lyon", "Madrid", "Vienna", "Debrecen", "Hamburg", "Porto", "Graz", "Milan")
SENTENCES = (
    "Hi, I ordered a {item} on {day} and it still has not arrived.",
    "Order #{order} shows as shipped but the tracking link gives an error.",
    "Could you tell me when the {item} will be back in stock?",
    "The parcel was delivered to the wrong address in {city}, what should I do?",
    "I would like to return the {item}; it does not fit and the box is unopened.",
    "I was charged twice for order #{order}, please refund one of the payments.",
    "Is it possible to change the delivery address to {city} before it ships?",
    "Thanks for the quick reply yesterday!",
    "The {item} arrived damaged, I attached photos in my previous email.",
    "Do you ship to {city}, and how long does it usually take?",
    "My discount code SAVE{days} was not applied at checkout.",
    "Please cancel order #{order}, I placed it by mistake.",
    "I have been waiting {days} days for a refund, can you check the status?",
    "Can I pick up the order in your store in {city} instead?",
    "Hallo, meine Bestellung #{order} ist noch nicht angekommen, können Sie bitte nachsehen?",
    "Szia! A(z) #{order} rendelésem mikor érkezik {city} városba?",
    "Bonjour, je voudrais échanger le {item} contre une autre taille.",
    "Hola, ¿podrían confirmarme si el pedido #{order} ya salió del almacén?",
    "The invoice for order #{order} has the wrong VAT number, could you reissue it?",
    "Best regards and have a nice day.",
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the weekend", "March 3", "last week")


@dataclass
class MessageFactory:
    """Deterministic, realistic API channel payloads.

    Without `contacts`: each message comes from a new sender with probability `new_sender_ratio`, else
    from one seen before.  With `contacts`: senders are drawn (skewed, a few very active customers) from
    a fixed pool of that many.  `thread_ratio` of the messages carry a thread_id (half of them one the
    sender used before).  Texts are ~300 bytes, a few of them non-ASCII.
    """

    tag: str
    seed: int = 1
    new_sender_ratio: float = 0.6
    thread_ratio: float = 0.25
    subject_ratio: float = 0.1
    contacts: int | None = None
    sender_offset: int = 0
    rng: random.Random = field(init=False)
    senders: int = field(init=False, default=0)
    threads: dict[int, str] = field(init=False, default_factory=dict)
    count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def sender(self) -> int:
        rng = self.rng
        if self.contacts is not None:
            return int(self.contacts * rng.random() ** 2)
        if self.senders == 0 or rng.random() < self.new_sender_ratio:
            self.senders += 1
            return self.senders - 1
        return rng.randrange(self.senders)

    def text(self) -> str:
        rng = self.rng
        target = rng.randint(150, 450)
        parts: list[str] = []
        size = 0
        while size < target:
            sentence = rng.choice(SENTENCES).format(
                item=rng.choice(ITEMS),
                day=rng.choice(DAYS),
                order=rng.randint(100000, 999999),
                city=rng.choice(CITIES),
                days=rng.randint(2, 40),
            )
            parts.append(sentence)
            size += len(sentence) + 1
        return " ".join(parts)

    def payload(self) -> dict[str, Any]:
        """The next message as the JSON object an API client posts."""
        rng = self.rng
        n = self.count
        self.count += 1
        who = self.sender() + self.sender_offset
        sender: dict[str, Any] = {
            "id": f"cust-{who}",
            "name": f"{FIRST_NAMES[who * 7 % len(FIRST_NAMES)]} {LAST_NAMES[who * 13 % len(LAST_NAMES)]}",
        }
        if who % 3 == 0:
            sender["email"] = f"customer{who}@example.com"
        payload: dict[str, Any] = {
            "external_id": f"{self.tag}-{n}",
            "sender": sender,
            "text": self.text(),
        }
        if rng.random() < self.thread_ratio:
            known = self.threads.get(who)
            if known is None or rng.random() < 0.5:
                known = self.threads[who] = f"order-{self.tag}-{n}"
            payload["thread_id"] = known
        if rng.random() < self.subject_ratio:
            payload["subject"] = f"Question about order #{rng.randint(100000, 999999)}"
        return payload

    def payloads(self, n: int) -> Iterator[dict[str, Any]]:
        for _ in range(n):
            yield self.payload()


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class RequestsFile:
    path: Path
    count: int
    bytes: int
    mean_body: float
    seconds: float


def write_requests(path: Path, n: int, factory: MessageFactory, secret: str = SECRET) -> RequestsFile:
    """N signed requests, one a line: signature TAB body."""
    started = time.perf_counter()
    body_bytes = 0
    with open(path, "wb") as handle:
        for payload in factory.payloads(n):
            body = encode(payload)
            body_bytes += len(body)
            handle.write(sign(secret, body).encode() + b"\t" + body + b"\n")
    return RequestsFile(path, n, path.stat().st_size, body_bytes / max(n, 1), time.perf_counter() - started)


# --------------------------------------------------------------------------------------------------
# wrk


@dataclass(frozen=True)
class WrkResult:
    values: dict[str, int]
    errors: list[str]
    output: str
    command: list[str]

    def __getitem__(self, key: str) -> int:
        return self.values[key]

    @property
    def ok(self) -> int:
        return self.values["created"] + self.values["duplicate"] + self.values["other2xx"]

    @property
    def seconds(self) -> float:
        return self.values["duration_us"] / 1e6

    @property
    def socket_errors(self) -> int:
        return sum(self.values[k] for k in ("err_connect", "err_read", "err_write", "err_timeout"))


def run_wrk(
    url: str,
    requests: Path,
    *,
    duration: float,
    connections: int,
    threads: int,
    timeout: float = 10.0,
) -> WrkResult:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise FileNotFoundError("wrk is not installed (apt-get install wrk)")
    threads = max(1, min(threads, connections))
    command = [
        wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s", "--latency",
        "--timeout", f"{timeout:g}s", "-s", str(WRK_SCRIPT), url, "--", str(requests), str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    values: dict[str, int] = {}
    errors: list[str] = []
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            values = {k: int(v) for k, v in (item.split("=", 1) for item in line.split()[1:])}
        elif line.startswith("BENCH_ERR "):
            errors.append(line[len("BENCH_ERR "):])
    if not values:
        raise RuntimeError(f"wrk printed no BENCH line:\n{done.stdout}\n{done.stderr}")
    # wrk calls request() once before the run to check the script (thread 0); that one is never sent.
    values["sent"] = max(0, values["sent"] - 1)
    report = "\n".join(line for line in done.stdout.splitlines() if not line.startswith("BENCH"))
    return WrkResult(values, errors, report, command)


# --------------------------------------------------------------------------------------------------
# SQLite


def db_path(data_dir: Path) -> Path:
    return data_dir / "aggregator.db"


def db_files_size(data_dir: Path) -> int:
    db = db_path(data_dir)
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())


def db_counts(data_dir: Path, channel_id: str | None = None) -> dict[str, int]:
    """Row counts straight from the SQLite file (read-only)."""
    con = sqlite3.connect(f"file:{db_path(data_dir)}?mode=ro", uri=True)
    try:
        counts: dict[str, int] = {}
        for table in ("messages", "contacts", "identities", "conversations", "thread_keys", "audit_events"):
            counts[table] = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        if channel_id is not None:
            counts["messages_in_channel"] = con.execute(
                "SELECT count(*) FROM messages WHERE channel_account_id = ? AND direction = 'in'", (channel_id,)
            ).fetchone()[0]
        for kind, n in con.execute("SELECT kind, count(*) FROM search_index GROUP BY kind"):
            counts[f"search_{kind}"] = n
        first_last = con.execute("SELECT min(created_at), max(created_at) FROM messages").fetchone()
        counts["span_ms"] = _span_ms(first_last[0], first_last[1])
        return counts
    finally:
        con.close()


def _span_ms(first: str | None, last: str | None) -> int:
    if not first or not last:
        return 0
    from datetime import datetime

    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    return int((datetime.strptime(last, fmt) - datetime.strptime(first, fmt)).total_seconds() * 1000)


def table_sizes(data_dir: Path) -> list[tuple[str, int]]:
    """Bytes per table/index (dbstat), largest first; FTS5 shadow tables summed under search_index."""
    con = sqlite3.connect(f"file:{db_path(data_dir)}?mode=ro", uri=True)
    try:
        sizes: dict[str, int] = {}
        for name, size in con.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
            key = "search_index (FTS5)" if name.startswith("search_index") else name
            sizes[key] = sizes.get(key, 0) + size
        return sorted(sizes.items(), key=lambda item: -item[1])
    finally:
        con.close()


# --------------------------------------------------------------------------------------------------
# Printing


def mib(n: float) -> str:
    return f"{n / 1048576:.1f} MiB"


def ms(us: float) -> str:
    return f"{us / 1000:.1f} ms"


def print_table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> None:
    table = [list(header)] if header else []
    table += [list(row) for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for index, row in enumerate(table):
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if header and index == 0:
            print("  " + "  ".join("-" * width for width in widths))
