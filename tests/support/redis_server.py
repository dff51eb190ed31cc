"""A throw-away redis-server for tests: real server, loopback, free port, no persistence."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from pathlib import Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """Starts, stops and restarts (on the same port) a redis-server process."""

    def __init__(self, workdir: Path, executable: str | None = None) -> None:
        found = executable or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError("redis-server is not installed")
        self.executable = found
        self.workdir = workdir
        self.port = _free_port()
        self.logfile = workdir / "redis.log"
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """Connection URL of the server (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the process is up (not whether it answers)."""
        return self._proc is not None and self._proc.returncode is None

    async def start(self, within: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._proc = await asyncio.create_subprocess_exec(
            self.executable,
            "--save", "",
            "--appendonly", "no",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--daemonize", "no",
            "--dir", str(self.workdir),
            "--logfile", str(self.logfile),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not await self._answers_ping():
            if self._proc.returncode is not None or loop.time() > deadline:
                await self.stop()
                log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
                raise RuntimeError(f"redis-server on port {self.port} did not come up:\n{log[-2000:]}")
            await asyncio.sleep(0.02)

    async def _answers_ping(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 1.0)
            return line.startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self, within: float = 10.0) -> None:
        """SIGTERM the server and wait for it to exit (SIGKILL if it does not)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), within)
            except TimeoutError:
                proc.kill()
                await proc.wait()
