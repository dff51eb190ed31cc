"""A throw-away Dovecot for tests: real IMAP server on free loopback ports, mail in maildirs we can write.

The configuration is the shared recipe's template (../shared/recipes/dovecot/dovecot.conf.in), rendered
the way its start-dovecot.sh does, plus overrides appended at the end: `protocols = imap` (we deliver
straight into the maildirs, so no LMTP, which also needs the separate dovecot-lmtpd package that
start-dovecot.sh fails without), optional TLS, and any extra settings a test asks for. As root,
Dovecot runs as nobody, like the recipe. Unlike the recipe, the master runs in the foreground as our
child process, so that stopping it never depends on an init that reaps orphans (`doveadm stop`, which
stop-all.sh uses, waits 3 s for a zombie master in containers whose init does not).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from support.tls import Certificates, make_certificates

RECIPE_DIR = (Path(__file__).resolve().parents[2] / ".." / "shared" / "recipes" / "dovecot").resolve()
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
USERS = ("alice", "bob")
PASSWORD = "secret"
# Dovecot's longest socket name under base_dir is about 30 bytes; sun_path holds 107.
MAX_WORKDIR_LENGTH = 70


def search_path() -> str:
    """PATH plus the sbin directories where Debian installs dovecot and doveadm."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(parts + [d for d in SBIN_DIRS if d not in parts])


def skip_reason() -> str | None:
    """Why a real Dovecot cannot run here, or None."""
    if (
        shutil.which("dovecot", path=search_path()) is None
        or shutil.which("doveadm", path=search_path()) is None
    ):
        return "dovecot is not installed: run the tests with `make test`, which installs the apt package dovecot-imapd"
    if not (RECIPE_DIR / "dovecot.conf.in").is_file():
        return f"the Dovecot recipe is missing: expected dovecot.conf.in in {RECIPE_DIR}"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _traversable_by_others(path: Path) -> bool:
    return all(os.stat(parent).st_mode & 0o001 for parent in [path, *path.parents] if parent.exists())


def _folder_dir(name: str) -> str:
    # Maildir++ layout with the recipe's "/" separator: Archive/2024 is .Archive.2024
    return "" if name.upper() == "INBOX" else "." + name.replace("/", ".")


class Dovecot:
    """One Dovecot instance in `workdir`: start, stop, restart, deliver mail and inspect folders."""

    def __init__(self, workdir: Path, *, tls: bool = False, extra_config: str = "") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.tls_port: int | None = free_port() if tls else None
        self.tls = tls
        self.extra_config = extra_config
        self.conf = workdir / "dovecot.conf"
        self.log = workdir / "dovecot.log"
        self.ca_file: str | None = str(workdir / "tls" / "ca.pem") if tls else None
        self._path = search_path()
        self._counter = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._certificates: Certificates | None = None
        if os.geteuid() == 0:
            # As in start-dovecot.sh: root starts Dovecot as nobody, so its files must belong to nobody.
            entry = pwd.getpwnam("nobody")
            self._owner: tuple[int, int] | None = (entry.pw_uid, entry.pw_gid)
            self._run_as = ("nobody", grp.getgrgid(entry.pw_gid).gr_name)
        else:
            self._owner = None
            self._run_as = (pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name)

    # --- lifetime ----------------------------------------------------------------------------------

    async def start(self, within: float = 10.0) -> None:
        """Render the configuration, start Dovecot and wait for its IMAP greeting."""
        if self.running:
            return
        self._render()
        # In the foreground (-F) the master is our child: we reap it, and nothing outlives the test.
        command = ["dovecot", "-F", "-c", str(self.conf)]
        if self._owner is not None:
            user, group = self._run_as
            command = ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", *command]
        log = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "PATH": self._path},
            )
        finally:
            os.close(log)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not await self._greets():
            if self._proc.returncode is not None or loop.time() > deadline:
                await self.stop()
                raise RuntimeError(f"dovecot did not come up on port {self.port}:\n{self._log_tail()}")
            await asyncio.sleep(0.02)

    @property
    def running(self) -> bool:
        """Whether the master process is up (not whether it answers)."""
        return self._proc is not None and self._proc.returncode is None

    async def stop(self, within: float = 10.0) -> None:
        """Stop Dovecot and every process it started; connected clients get BYE and a closed socket."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        # Dovecot 2.3's master waits for busy imap processes instead of ending them, so they are
        # signalled too: by pid, and only those that descend from our master.
        children = _descendants(proc.pid)
        for pid in [proc.pid, *children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        try:
            await asyncio.wait_for(proc.wait(), within)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        while loop.time() < deadline:
            if not any(_alive(pid) for pid in children):
                break
            await asyncio.sleep(0.02)
        for pid in children:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    async def restart(self, new_uidvalidity: bool = False) -> None:
        """Stop and start on the same port; with `new_uidvalidity`, every folder gets a new UIDVALIDITY."""
        before = await self._all_uidvalidities() if new_uidvalidity else {}
        await self.stop()
        if new_uidvalidity:
            # Without its uidlist and indexes Dovecot renumbers the mail and picks a new UIDVALIDITY;
            # dovecot-uidvalidity* stay so that the new value is higher than the old one.
            for user_dir in (self.workdir / "mail").iterdir():
                for path in [*user_dir.glob("dovecot-uidlist"), *user_dir.glob("dovecot.*index*")]:
                    path.unlink()
                for path in [*user_dir.glob(".*/dovecot-uidlist"), *user_dir.glob(".*/dovecot.*index*")]:
                    path.unlink()
        await self.start()
        if new_uidvalidity:
            after = await self._all_uidvalidities()
            same = [key for key, value in before.items() if after.get(key) == value]
            if same:
                raise RuntimeError(f"dovecot kept the UIDVALIDITY of {same} across the restart")

    # --- mail --------------------------------------------------------------------------------------

    async def deliver(self, user: str, raw: bytes, folder: str = "INBOX") -> None:
        """Put one message into `folder` of `user` (maildir new/), as an MTA would; created if needed."""
        self._write_messages(user, [raw], folder)

    async def deliver_many(self, user: str, raws: Iterable[bytes], folder: str = "INBOX") -> None:
        """Put many messages into `folder` of `user`; Dovecot numbers them in this order."""
        self._write_messages(user, raws, folder)

    async def create_folder(self, user: str, folder: str) -> None:
        """Create `folder` for `user` unless it exists (through doveadm, so that LIST shows it)."""
        if folder.upper() == "INBOX" or (self.workdir / "mail" / user / _folder_dir(folder)).is_dir():
            return
        await self.doveadm("mailbox", "create", "-u", user, folder)

    async def uids(self, user: str, folder: str = "INBOX") -> list[int]:
        """UIDs in `folder`, ascending, asked of doveadm (not of the client under test)."""
        return sorted(await self.all_flags(user, folder))

    async def flags(self, user: str, uid: int, folder: str = "INBOX") -> frozenset[str]:
        """The flags of one message (KeyError when `uid` is not in `folder`)."""
        return (await self.all_flags(user, folder))[uid]

    async def all_flags(self, user: str, folder: str = "INBOX") -> dict[int, frozenset[str]]:
        """UID -> flags of every message in `folder`."""
        out = await self.doveadm("-f", "tab", "fetch", "-u", user, "uid flags", "mailbox", folder, "all")
        found: dict[int, frozenset[str]] = {}
        for line in out.splitlines()[1:]:
            uid, _, flags = line.partition("\t")
            if uid.strip().isdigit():
                # \Recent belongs to whichever session saw the message first, not to the message.
                found[int(uid)] = frozenset(flags.split()) - {"\\Recent"}
        return found

    async def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        """UIDVALIDITY of `folder`, from doveadm."""
        out = await self.doveadm("-f", "tab", "mailbox", "status", "-u", user, "uidvalidity", folder)
        return int(out.splitlines()[-1].split("\t")[-1])

    def failed_logins(self) -> int:
        """How many logins Dovecot refused so far (from its log, written when a connection ends)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return sum(int(count) for count in re.findall(r"auth failed, (\d+) attempts", text))

    def mail_files(self, user: str, folder: str = "INBOX") -> list[Path]:
        """The message files of `folder` (new/ and cur/), e.g. to set their received date (mtime)."""
        maildir = self.workdir / "mail" / user / _folder_dir(folder)
        return sorted([*maildir.glob("new/*"), *maildir.glob("cur/*")])

    # --- helpers -----------------------------------------------------------------------------------

    def _write_messages(self, user: str, raws: Iterable[bytes], folder: str) -> None:
        # Plain file writes: a thousand messages take some 60 ms, IMAP APPEND about 2 s.
        maildir = self._maildir(user, folder)
        stamp = int(time.time())
        for raw in raws:
            self._counter += 1
            # Dovecot gives new mail UIDs in file name order: a zero-padded counter keeps delivery order.
            name = f"{stamp}.M{self._counter:09d}P{os.getpid()}.test"
            staged = maildir / "tmp" / name
            staged.write_bytes(raw)
            if self._owner is not None:
                os.chown(staged, *self._owner)
            os.rename(staged, maildir / "new" / name)

    def _maildir(self, user: str, folder: str) -> Path:
        root = self.workdir / "mail" / user
        maildir = root / _folder_dir(folder)
        for path in (root.parent, root, maildir, maildir / "cur", maildir / "new", maildir / "tmp"):
            if not path.exists():
                path.mkdir(mode=0o700)
                if self._owner is not None:
                    os.chown(path, *self._owner)
        if maildir != root and not (maildir / "maildirfolder").exists():
            (maildir / "maildirfolder").touch()
            if self._owner is not None:
                os.chown(maildir / "maildirfolder", *self._owner)
        return maildir

    def _render(self) -> None:
        user, group = self._run_as
        for sub in ("run", "state", "mail", "home"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        template = (RECIPE_DIR / "dovecot.conf.in").read_text()
        config = (
            template.replace("@DIR@", str(self.workdir))
            .replace("@PORT@", str(self.port))
            .replace("@LMTPPORT@", str(free_port()))
            .replace("@USER@", user)
            .replace("@GROUP@", group)
        )
        config += "\n# --- appended by tests/support/dovecot.py ---\nprotocols = imap\n"
        if self.tls:
            if self._certificates is None:
                self._certificates = make_certificates(self.workdir / "tls")
            config += (
                f"ssl = yes\nssl_cert = <{self._certificates.cert}\nssl_key = <{self._certificates.key}\n"
                "service imap-login {\n  inet_listener imaps {\n    address = 127.0.0.1\n"
                f"    port = {self.tls_port}\n    ssl = yes\n  }}\n}}\n"
            )
        config += self.extra_config + "\n"
        self.conf.write_text(config)
        (self.workdir / "passwd").write_text("".join(f"{name}:{{PLAIN}}{PASSWORD}::::::\n" for name in USERS))
        self.log.touch()
        if self._owner is not None:
            for path in [self.workdir, *self.workdir.rglob("*")]:
                os.chown(path, *self._owner, follow_symlinks=False)

    async def _all_uidvalidities(self) -> dict[tuple[str, str], int]:
        found: dict[tuple[str, str], int] = {}
        mail = self.workdir / "mail"
        for user_dir in sorted(mail.iterdir()) if mail.exists() else []:
            out = await self.doveadm(
                "-f", "tab", "mailbox", "status", "-u", user_dir.name, "uidvalidity", "*"
            )
            for line in out.splitlines()[1:]:
                folder, _, value = line.rpartition("\t")
                found[(user_dir.name, folder)] = int(value)
        return found

    async def doveadm(self, *args: str) -> str:
        """Run doveadm against this instance; its output."""
        returncode, output = await self._exec("doveadm", "-c", str(self.conf), *args)
        if returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)} failed ({returncode}):\n{output}")
        return output

    async def _exec(self, *command: str, within: float = 30.0) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PATH": self._path},
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), within)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace")

    async def _greets(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            line = await asyncio.wait_for(reader.readline(), 2.0)
            return line.startswith(b"* OK")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (reaped by nobody in some containers) counts as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    return True


def _workdir(tmp_path: Path) -> tuple[Path, bool]:
    candidate = tmp_path / "dovecot"
    fits = len(str(candidate)) <= MAX_WORKDIR_LENGTH
    # Dovecot running as nobody must be able to walk down to its directory.
    reachable = os.geteuid() != 0 or _traversable_by_others(tmp_path)
    if fits and reachable:
        candidate.mkdir(parents=True, exist_ok=True)
        return candidate, False
    return Path(tempfile.mkdtemp(prefix="dovecot-", dir="/tmp")), True


@contextlib.asynccontextmanager
async def running_dovecot(tmp_path: Path, **options: Any) -> AsyncIterator[Dovecot]:
    """A started Dovecot (skips the test when Dovecot or the recipe is missing), stopped afterwards."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    workdir, temporary = _workdir(tmp_path)
    server = Dovecot(workdir, **options)
    try:
        await server.start()
        yield server
    finally:
        try:
            await server.stop()
        finally:
            if temporary:
                # Keep the log next to the test's other files for a post-mortem.
                with contextlib.suppress(OSError):
                    shutil.copy(server.log, tmp_path / "dovecot.log")
                shutil.rmtree(workdir, ignore_errors=True)
