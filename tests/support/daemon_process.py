"""The real daemon as a subprocess: its own config and data dir, set up through the CLI, killed and restarted.

Used by the failure tests: what they check is what a user gets from `aggregator serve`, so the daemon
runs exactly as deployed (`python -m aggregator --config FILE serve`), and every probe goes through its
HTTP port or reads its SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import aiohttp

# Small enough that a test sees retries, sweeps and expired claims within seconds.
FAST_OUTBOX: dict[str, Any] = {
    "send_timeout_seconds": 1.0,
    "claim_seconds": 1.0,
    "sweep_interval_seconds": 0.2,
    "backoff_base_seconds": 0.2,
    "backoff_max_seconds": 1.0,
    "max_attempts": 50,
    "workers": 4,
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'
    raise TypeError(f"cannot write {value!r} as a TOML value")


def render_toml(values: Mapping[str, Any]) -> str:
    """Top-level keys, then one [table] per mapping value (one level deep is all the config has)."""
    lines = [
        f"{key} = {_toml_value(value)}" for key, value in values.items() if not isinstance(value, Mapping)
    ]
    for table, inner in values.items():
        if isinstance(inner, Mapping):
            lines.append(f"\n[{table}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in inner.items())
    return "\n".join(lines) + "\n"


class DaemonFailed(AssertionError):
    """The daemon did not start, answer or stop as expected; the message carries its log tail."""


class DaemonProcess:
    """One daemon installation (config + data dir + port) that can be started, killed and restarted."""

    def __init__(
        self,
        workdir: Path,
        *,
        redis_url: str | None = None,
        outbox: Mapping[str, Any] | None = None,
        http: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = workdir / "data"
        self.config_path = workdir / "aggregator.toml"
        self.log_path = workdir / "daemon.log"
        self.port = free_port()
        config: dict[str, Any] = {"data_dir": self.data_dir, "log_level": "INFO", **(settings or {})}
        if redis_url is not None:
            config["redis_url"] = redis_url
        config["http"] = {"host": "127.0.0.1", "port": self.port, **(http or {})}
        config["outbox"] = {**FAST_OUTBOX, **(outbox or {})}
        self.config = config
        self.config_path.write_text(render_toml(config), encoding="utf-8")
        self.starts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._log: TextIO | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "aggregator.db"

    @property
    def database_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.db_path.resolve()}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise DaemonFailed("the daemon is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def api_url(self, channel_id: str) -> str:
        return f"{self.base_url}/channels/api/{channel_id}/messages"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "aggregator", "--config", str(self.config_path), *args]

    async def cli(self, *args: str, within: float = 60.0) -> str:
        """Run one `aggregator` command against this installation; its stdout, stripped."""
        code, out, err = await self.run_cli(*args, within=within)
        if code != 0:
            raise DaemonFailed(f"`aggregator {' '.join(args)}` exited with {code}:\n{err}")
        return out.strip()

    async def run_cli(self, *args: str, within: float = 60.0) -> tuple[int, str, str]:
        """Run one `aggregator` command: (exit code, stdout, stderr), whatever the exit code."""
        proc = await asyncio.create_subprocess_exec(
            *self._command(*args),
            cwd=self.workdir,
            env=self._env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), within)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise DaemonFailed(f"`aggregator {' '.join(args)}` did not finish within {within}s") from None
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def add_api_channel(self, name: str, secret: str, callback_url: str | None = None) -> str:
        """Create an API channel account through the CLI; its id."""
        args = ["channel", "add", "api", "--name", name, "--set", f"secret={secret}"]
        if callback_url is not None:
            args += ["--set", f"callback_url={callback_url}"]
        channel_id = await self.cli(*args)
        if not channel_id or len(channel_id.split()) != 1:
            raise DaemonFailed(f"`aggregator channel add` printed {channel_id!r} instead of only an id")
        return channel_id

    async def start(self, within: float = 30.0) -> None:
        """Start `aggregator serve` and wait until /healthz answers."""
        if self.running:
            raise DaemonFailed("the daemon is running already")
        self.starts += 1
        if self._log is None:
            self._log = self.log_path.open("a", encoding="utf-8")
        self._log.write(f"\n===== test harness: start #{self.starts} on port {self.port} =====\n")
        self._log.flush()
        self._proc = await asyncio.create_subprocess_exec(
            *self._command("serve"),
            cwd=self.workdir,
            env=self._env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with aiohttp.ClientSession() as http:
            while True:
                if self._proc.returncode is not None:
                    raise DaemonFailed(
                        f"the daemon exited with {self._proc.returncode} while starting\n{self.log_tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(
                        f"{self.base_url}/healthz", timeout=aiohttp.ClientTimeout(total=1.0)
                    ) as response:
                        if response.status == 200:
                            return
                if loop.time() > deadline:
                    await self.kill()
                    raise DaemonFailed(
                        f"the daemon did not answer /healthz within {within}s\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut or the OOM killer."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
        self._note(f"killed with SIGKILL (exit {proc.returncode})")

    async def terminate(self, within: float = 15.0) -> int:
        """SIGTERM and wait for the exit; the exit code (the daemon is SIGKILLed if it hangs)."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            raise DaemonFailed("the daemon is not running")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), within)
        except TimeoutError:
            await self.kill()
            raise DaemonFailed(
                f"the daemon did not exit within {within}s of SIGTERM\n{self.log_tail()}"
            ) from None
        self._note(f"exited with {code} {time.monotonic() - started:.2f}s after SIGTERM")
        return code

    async def restart(self, within: float = 30.0) -> None:
        """Start again on the same port and data dir (after kill() or terminate())."""
        if self.running:
            raise DaemonFailed("restart() needs the daemon stopped first")
        await self.start(within)

    async def close(self) -> None:
        """Teardown: kill whatever still runs, close the log."""
        if self.running:
            await self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _note(self, line: str) -> None:
        if self._log is not None:
            self._log.write(f"===== test harness: {line} =====\n")
            self._log.flush()

    def log_tail(self, chars: int = 6000) -> str:
        if not self.log_path.exists():
            return "(no daemon log)"
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return f"----- daemon log tail ({self.log_path}) -----\n{text[-chars:]}"

    def rss_kib(self) -> int:
        """Resident set size of the daemon process (VmRSS), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise DaemonFailed("no VmRSS in /proc status")

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run a query on the daemon's SQLite file, read-only (works while it runs: WAL)."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10.0)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def scalar(self, sql: str, *params: Any) -> Any:
        rows = self.query(sql, *params)
        return rows[0][0] if rows else None

    async def wait_for(self, sql: str, expected: Any, within: float) -> None:
        """Until the query's single value is `expected`; fails with the value seen and the daemon's log."""
        deadline = time.monotonic() + within
        while True:
            value = self.scalar(sql) if self.db_path.exists() else None
            if value == expected:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{sql} = {value}, not {expected}, after {within}s\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.base_url}/readyz", timeout=aiohttp.ClientTimeout(total=10.0)) as response,
        ):
            body: dict[str, Any] = await response.json()
            return response.status, body
