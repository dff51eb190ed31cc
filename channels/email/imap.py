"""A small typed IMAP client over aioimaplib's protocol, for reading one mailbox folder.

Errors come in three kinds, each asking the caller for something different: `ImapAuthError` (stop until
an admin fixes the credentials), `ImapTransientError` (reconnect with back-off) and `ImapError` (a
permanent problem such as a missing folder; the message names it and the fix).

What this layer does that aioimaplib 2.0.3 does not:
- STARTTLS (aioimaplib knows the command name but has no implementation): the transport is upgraded
  with `loop.start_tls` and the capabilities are read again.
- A dropped connection fails the pending call at once (aioimaplib leaves it waiting for its timeout),
  and every call is bounded by `ImapSettings.timeout`; after a timeout, a drop or a cancelled call the
  client is unusable and each further call raises `ImapTransientError`.
- LOGIN quotes the user name and never hands the password to aioimaplib (whose debug log only scrubs
  it when it needs no escaping); folder names are quoted and encoded as modified UTF-7.
- An `EXISTS` that the server reports in the middle of another command's response (aioimaplib drops
  it) is remembered, so `wait_for_change` does not sleep through mail that arrived meanwhile.
- FETCH responses are parsed here: literals, items in any order, unsolicited FLAGS updates.

One client is one connection; its commands run one at a time (IDLE included), in the order called.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final, Literal, TypeVar

from aioimaplib import aioimaplib

log = logging.getLogger(__name__)

T = TypeVar("T")

Security = Literal["none", "starttls", "tls"]

# RFC 2177: servers may drop an idle client after 30 minutes.
MAX_IDLE_SECONDS: Final = 29 * 60.0

# Response codes (RFC 5530) that say "try again later" rather than "this will never work".
_TRANSIENT_CODES: Final = frozenset({"UNAVAILABLE", "SERVERBUG", "INUSE", "LIMIT", "EXPUNGEISSUED"})
_AUTH_CODES: Final = frozenset({"AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED", "EXPIRED", "PRIVACYREQUIRED"})

_CODE_RE: Final = re.compile(rb"^\[([A-Z][A-Z0-9-]*)")
_UIDVALIDITY_RE: Final = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT_RE: Final = re.compile(rb"\[UIDNEXT (\d+)\]")
_APPENDUID_RE: Final = re.compile(rb"\[APPENDUID \d+ (\d+)\]")
_EXISTS_RE: Final = re.compile(rb"^(\d+) EXISTS\b")
_CHANGE_RE: Final = re.compile(rb"^\* (\d+) (EXISTS|RECENT|FETCH)\b")
_FETCH_START_RE: Final = re.compile(rb"^\d+ FETCH \(")
_TOKEN_RE: Final = re.compile(rb'\(|\)|"(?:[^"\\]|\\.)*"|\{\d+\+?\}|[^\s()"{]+|\{')
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class ImapAuthError(Exception):
    """The server refused the credentials: stop until an admin fixes them."""


class ImapTransientError(Exception):
    """Timeout, refused or dropped connection, BYE, NO [UNAVAILABLE]: reconnect with back-off."""


class ImapError(Exception):
    """A permanent problem (missing folder, missing server feature, TLS misconfiguration)."""


@dataclass(frozen=True, slots=True)
class ImapSettings:
    """Where and how to log in; `timeout` bounds every network call (seconds)."""

    host: str
    port: int
    security: Security
    user: str
    password: str = field(repr=False)
    timeout: float = 30.0
    tls_verify: bool = True
    ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class FolderState:
    """What SELECT said about a folder."""

    uidvalidity: int
    uidnext: int | None
    exists: int


class _FetchCommand(aioimaplib.FetchCommand):  # type: ignore[misc]
    """FETCH whose "response incomplete?" test is kept up to date line by line.

    aioimaplib's own test rescans every line collected so far for each new line, which is quadratic in
    the size of the response (half the time of a 100-message fetch).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._depth = 0

    def append_to_resp(self, line: bytes, result: str = "Pending") -> None:
        super().append_to_resp(line, result)
        # Literals arrive as bytearray and do not count, as in aioimaplib.
        if type(line) is bytes:
            balance = line.count(b"(") - line.count(b")")
            self._depth = balance if _FETCH_START_RE.match(line) else self._depth + balance

    def wait_data(self) -> bool:
        return self._depth > 0


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol plus STARTTLS, a password-safe LOGIN, greeting checks and change tracking."""

    transport: Any

    def __init__(self, loop: asyncio.AbstractEventLoop, on_lost: Callable[[Exception | None], None]) -> None:
        super().__init__(loop, on_lost)
        self.changed = False
        self.refused_greeting: bytes | None = None
        self.received_at = loop.time()

    def data_received(self, data: bytes) -> None:
        self.received_at = self.loop.time()
        super().data_received(data)

    def _untagged_response(self, line: bytes) -> Any:
        match = _CHANGE_RE.match(line)
        if match is not None:
            kind = match.group(2)
            # A FETCH outside IDLE is the answer to our own FETCH or STORE; RECENT 0 comes with SELECT.
            if (
                kind == b"EXISTS"
                or (kind == b"RECENT" and match.group(1) != b"0")
                or (kind == b"FETCH" and self.has_pending_idle_command())
            ):
                self.changed = True
        return super()._untagged_response(line)

    async def welcome(self, command: bytes) -> None:
        if not command.startswith((b"* OK", b"* PREAUTH")):
            # aioimaplib would raise in a task nobody awaits; closing makes the caller see the refusal.
            self.refused_greeting = command
            self.transport.close()
            return
        await super().welcome(command)

    async def login_hidden(self, user: str, password: str) -> Any:
        # The Command only ever holds a placeholder: aioimaplib puts commands in log lines and errors.
        command = aioimaplib.Command("LOGIN", self.new_tag(), "<user>", "<password>", loop=self.loop)
        self.pending_sync_command = command
        line = f"{command.tag} LOGIN {aioimaplib.quoted(user)} {aioimaplib.quoted(password)}\r\n"
        self.transport.write(line.encode())
        await command.wait()
        response = command.response
        if response.result == "OK":
            self.state = aioimaplib.AUTH
        return response

    async def uid_fetch(self, uid_set: str, items: str) -> Any:
        return await self.execute(_FetchCommand(self.new_tag(), uid_set, items, prefix="UID", loop=self.loop))

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> Any:
        response = await self.execute(aioimaplib.Command("STARTTLS", self.new_tag(), loop=self.loop))
        if response.result == "OK":
            self.transport = await self.loop.start_tls(
                self.transport, self, context, server_hostname=server_hostname
            )
        return response


def encode_folder(name: str) -> str:
    """A folder name as an IMAP astring: modified UTF-7 (RFC 3501 5.1.3), quoted."""
    if any(char in name for char in "\r\n\x00"):
        raise ImapError(f"folder name {name!r} contains a line break or NUL: fix it in the mailbox settings")
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            encoded = base64.b64encode("".join(pending).encode("utf-16-be")).decode("ascii")
            out.append("&" + encoded.rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if "\x20" <= char <= "\x7e":
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return str(aioimaplib.quoted("".join(out)))


def imap_date(day: date) -> str:
    """A date as IMAP's date-text (dd-Mon-yyyy), independent of the locale."""
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year:04d}"


def _text(response: Any) -> str:
    lines = response.lines
    if not lines:
        return ""
    last = lines[-1]
    return bytes(last).decode("utf-8", "replace").strip()


def _code(response: Any) -> str | None:
    lines = response.lines
    if not lines:
        return None
    match = _CODE_RE.match(bytes(lines[-1]))
    return match.group(1).decode("ascii") if match else None


def _tokens(data: bytes) -> Iterator[bytes]:
    for match in _TOKEN_RE.finditer(data):
        yield match.group(0)


def _fetch_responses(lines: Sequence[bytes | bytearray]) -> Iterator[dict[bytes, bytes]]:
    """The items of each FETCH response among the lines aioimaplib collected (other responses skipped).

    Item names are upper case; literals and quoted strings become their bytes; list values (FLAGS)
    are left out.
    """
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if isinstance(line, bytearray) or not _FETCH_START_RE.match(line):
            continue
        # One response: this line, then literals and the lines that follow them, until the
        # parenthesis opened after FETCH closes.
        tokens: list[bytes | bytearray] = []
        part: bytes | bytearray = line.split(b"(", 1)[1]
        depth = 1
        while True:
            if isinstance(part, bytearray):
                tokens.append(part)
            else:
                for token in _tokens(part):
                    if token == b"(":
                        depth += 1
                    elif token == b")":
                        depth -= 1
                    if not token.startswith(b"{"):
                        tokens.append(token)
                    if depth == 0:
                        break
            if depth == 0 or index >= len(lines):
                break
            part = lines[index]
            if isinstance(part, bytes) and _FETCH_START_RE.match(part):
                break  # an unterminated response: do not swallow the next one
            index += 1
        yield _items(tokens)


def _items(tokens: Sequence[bytes | bytearray]) -> dict[bytes, bytes]:
    items: dict[bytes, bytes] = {}
    position = 0
    while position + 1 < len(tokens):
        name, value = tokens[position], tokens[position + 1]
        position += 1
        # Literals arrive as bytearray: their content is never syntax, even when it is "(".
        if isinstance(name, bytearray) or name in (b"(", b")"):
            continue
        position += 1
        if isinstance(value, bytearray):
            items.setdefault(name.upper(), bytes(value))
        elif value == b"(":
            position = _after_list(tokens, position)
        elif value.startswith(b'"'):
            items.setdefault(name.upper(), re.sub(rb"\\(.)", rb"\1", value[1:-1]))
        elif value != b")" and value.upper() != b"NIL":
            items.setdefault(name.upper(), value)
    return items


def _after_list(tokens: Sequence[bytes | bytearray], position: int) -> int:
    depth = 1
    while position < len(tokens) and depth:
        token = tokens[position]
        if isinstance(token, bytes):
            depth += 1 if token == b"(" else -1 if token == b")" else 0
        position += 1
    return position


def _bodies(lines: Sequence[bytes | bytearray]) -> dict[int, bytes]:
    """UID -> BODY[] of a UID FETCH answer; a body of NIL (message gone) is left out."""
    found: dict[int, bytes] = {}
    for items in _fetch_responses(lines):
        uid, body = items.get(b"UID", b""), items.get(b"BODY[]")
        if uid.isdigit() and body is not None:
            found.setdefault(int(uid), body)
    return found


def _batches(uids: Sequence[int], sizes: dict[int, int], chunk: int, max_bytes: int) -> Iterator[list[int]]:
    batch: list[int] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if batch and (len(batch) >= chunk or total + size > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(uid)
        total += size
    if batch:
        yield batch


def _uid_set(uids: Sequence[int]) -> str:
    """A compact UID set: runs of consecutive UIDs become ranges (a,b:c,d)."""
    parts: list[str] = []
    start = prev = uids[0]
    for uid in uids[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


def _tls_context(settings: ImapSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.ca_file)
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class ImapClient:
    """One logged-in IMAP connection. Create it with `await ImapClient.connect(settings)`."""

    def __init__(
        self, settings: ImapSettings, protocol: _Protocol, lost: asyncio.Future[Exception | None]
    ) -> None:
        self._settings = settings
        self._protocol = protocol
        self._lost = lost
        self._lock = asyncio.Lock()
        self._broken: str | None = None
        self._folder: str | None = None
        self._capabilities: frozenset[str] = frozenset()
        self._where = f"IMAP {settings.user}@{settings.host}:{settings.port}"

    @classmethod
    async def connect(cls, settings: ImapSettings) -> ImapClient:
        """Connect, greet, upgrade to TLS as configured, log in and read the capabilities."""
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[Exception | None] = loop.create_future()

        def on_lost(exc: Exception | None) -> None:
            if not lost.done():
                lost.set_result(exc)

        client = cls(settings, _Protocol(loop, on_lost), lost)
        try:
            await client._open()
        except BaseException:
            await client._close()
            raise
        return client

    @property
    def capabilities(self) -> frozenset[str]:
        """What the server announced after login (upper case)."""
        return self._capabilities

    @property
    def has_idle(self) -> bool:
        """Whether the server offers IDLE (RFC 2177)."""
        return "IDLE" in self._capabilities

    @property
    def has_move(self) -> bool:
        """Whether the server offers MOVE (RFC 6851)."""
        return "MOVE" in self._capabilities

    @property
    def has_uidplus(self) -> bool:
        """Whether the server offers UIDPLUS (RFC 4315): UID EXPUNGE and APPENDUID."""
        return "UIDPLUS" in self._capabilities

    @property
    def folder(self) -> str | None:
        """The selected folder, if any."""
        return self._folder

    async def select(self, folder: str) -> FolderState:
        """Open `folder` read-write; its UIDVALIDITY, UIDNEXT and message count."""
        async with self._lock:
            self._folder = None
            response = await self._run(f"SELECT {folder}", self._protocol.select(encode_folder(folder)))
            if response.result != "OK":
                self._raise(response, f"SELECT {folder!r}", folder=folder)
            uidvalidity: int | None = None
            uidnext: int | None = None
            exists = 0
            for raw in response.lines:
                line = bytes(raw)
                if (match := _UIDVALIDITY_RE.search(line)) is not None:
                    uidvalidity = int(match.group(1))
                elif (match := _UIDNEXT_RE.search(line)) is not None:
                    uidnext = int(match.group(1))
                elif (match := _EXISTS_RE.match(line)) is not None:
                    exists = int(match.group(1))
            if uidvalidity is None:
                raise ImapError(
                    f"{self._where}: folder {folder!r} has no UIDVALIDITY; it cannot be synchronised"
                )
            # The state just read is the baseline: earlier EXISTS reports are part of it.
            self._protocol.changed = False
            self._folder = folder
            return FolderState(uidvalidity=uidvalidity, uidnext=uidnext, exists=exists)

    async def uids_after(self, last_uid: int) -> list[int]:
        """UIDs above `last_uid` in the selected folder, ascending."""
        found = await self._search("UID", f"{last_uid + 1}:*")
        # `n:*` always matches the highest UID, even when n is above it.
        return [uid for uid in found if uid > last_uid]

    async def uids_since(self, day: date) -> list[int]:
        """UIDs of the messages the server received on or after `day` (internal date), ascending."""
        return await self._search("SINCE", imap_date(day))

    async def fetch(
        self, uids: Sequence[int], chunk: int = 100, max_bytes: int = 32 * 1024 * 1024
    ) -> AsyncIterator[tuple[int, bytes]]:
        """(uid, raw message) in ascending UID order, without setting \\Seen; vanished UIDs are skipped.

        UIDs are fetched `chunk` at a time and at most about `max_bytes` per command (one message larger
        than that is fetched alone), so memory stays bounded on mailboxes with big attachments.
        """
        wanted = sorted(set(uids))
        for start in range(0, len(wanted), chunk):
            group = wanted[start : start + chunk]
            sizes = await self._fetch_sizes(group)
            # A UID without a size is fetched anyway: better one command too many than a lost message.
            for batch in _batches(group, sizes, chunk, max_bytes):
                bodies = await self._fetch_bodies(batch)
                for uid in batch:
                    if uid in bodies:
                        yield uid, bodies[uid]

    async def wait_for_change(self, within: float, poll_interval: float = 60.0) -> bool:
        """Wait until the selected folder may have new mail (True) or `within` seconds pass (False).

        Uses IDLE when the server offers it (each IDLE ended with DONE, at most 29 minutes long), else
        NOOP every `poll_interval` seconds. An EXISTS seen during an earlier command counts as a change.
        """
        async with self._lock:
            self._require_folder("wait for changes")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max(within, 0.0)
            if self._protocol.changed:
                return True
            if not self.has_idle:
                return await self._poll(deadline, poll_interval)
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                if await self._idle(min(remaining, MAX_IDLE_SECONDS)):
                    return True

    async def mark_seen(self, uid: int) -> None:
        """Set \\Seen on one message of the selected folder."""
        async with self._lock:
            self._require_folder("mark a message seen")
            response = await self._run(
                f"UID STORE {uid} +FLAGS (\\Seen)",
                self._protocol.store(str(uid), "+FLAGS.SILENT", r"(\Seen)", by_uid=True),
            )
            self._check(response, f"UID STORE {uid} +FLAGS (\\Seen)")

    async def move(self, uid: int, folder: str) -> None:
        """Move one message of the selected folder to `folder` (MOVE, else COPY + STORE + UID EXPUNGE)."""
        async with self._lock:
            source = self._require_folder(f"move a message to {folder!r}")
            target = encode_folder(folder)
            what = f"move UID {uid} from {source!r} to {folder!r}"
            if self.has_move:
                response = await self._run(what, self._protocol.move(str(uid), target, by_uid=True))
                self._check(response, what, folder=folder)
                return
            if not self.has_uidplus:
                # A plain EXPUNGE would also remove every other \Deleted message of the folder.
                raise ImapError(
                    f"{self._where}: cannot {what}: the server has neither MOVE nor UIDPLUS, and a plain "
                    "EXPUNGE could delete other mail; configure no move folder for this mailbox"
                )
            response = await self._run(what, self._protocol.copy(str(uid), target, by_uid=True))
            self._check(response, what, folder=folder)
            response = await self._run(
                what, self._protocol.store(str(uid), "+FLAGS.SILENT", r"(\Deleted)", by_uid=True)
            )
            self._check(response, what)
            response = await self._run(what, self._protocol.expunge(str(uid), by_uid=True))
            self._check(response, what)

    async def append(
        self,
        folder: str,
        raw: bytes,
        flags: Sequence[str] = (r"\Seen",),
        date: datetime | None = None,
    ) -> int | None:
        """Store `raw` in `folder`; its new UID when the server says (UIDPLUS), else None."""
        async with self._lock:
            what = f"APPEND to {folder!r}"
            flag_list = "(" + " ".join(flags) + ")" if flags else None
            # Uploading a big message can take longer than one timeout on a slow link.
            limit = self._settings.timeout + len(raw) / 100_000
            response = await self._run(
                what, self._protocol.append(raw, encode_folder(folder), flag_list, date), limit
            )
            self._check(response, what, folder=folder)
            match = _APPENDUID_RE.search(bytes(response.lines[-1])) if response.lines else None
            return int(match.group(1)) if match else None

    async def create_folder(self, folder: str) -> None:
        """Create `folder` unless it exists."""
        async with self._lock:
            what = f"CREATE {folder!r}"
            response = await self._run(what, self._protocol.simple_command("CREATE", encode_folder(folder)))
            if response.result != "OK" and _code(response) != "ALREADYEXISTS":
                self._raise(response, what)

    async def logout(self) -> None:
        """Say LOGOUT (when the connection is idle and healthy) and close; never raises."""
        try:
            if self._broken is None and not self._lost.done() and not self._lock.locked():
                async with self._lock:
                    await asyncio.wait_for(self._protocol.logout(), min(self._settings.timeout, 5.0))
        except Exception as exc:
            log.debug("%s: LOGOUT failed: %r", self._where, exc)
        finally:
            await self._close()

    async def __aenter__(self) -> ImapClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.logout()

    # --- internals ---------------------------------------------------------------------------------

    async def _open(self) -> None:
        settings = self._settings
        loop = asyncio.get_running_loop()
        context = _tls_context(settings) if settings.security != "none" else None
        try:
            async with asyncio.timeout(settings.timeout):
                await loop.create_connection(
                    lambda: self._protocol,
                    settings.host,
                    settings.port,
                    ssl=context if settings.security == "tls" else None,
                )
        except ssl.SSLCertVerificationError as exc:
            raise self._tls_error(exc) from exc
        except (OSError, TimeoutError) as exc:
            raise ImapTransientError(f"{self._where}: cannot connect: {exc or 'timed out'}") from exc
        await self._run("greeting", self._protocol.wait("AUTH|NONAUTH"))
        if self._protocol.state == aioimaplib.AUTH and settings.security == "starttls":
            raise ImapError(
                f"{self._where}: the server logged us in before STARTTLS (PREAUTH); use security 'tls'"
            )
        if settings.security == "starttls":
            if "STARTTLS" not in self._protocol.capabilities:
                raise ImapError(
                    f"{self._where}: the server does not offer STARTTLS; use security 'tls' (usually port "
                    "993) or, on a trusted network only, 'none'"
                )
            assert context is not None
            response = await self._run("STARTTLS", self._protocol.starttls(context, settings.host))
            self._check(response, "STARTTLS")
            # Capabilities announced before TLS may have been forged (RFC 9051 6.2.1).
            await self._run("CAPABILITY", self._protocol.capability())
        if self._protocol.state != aioimaplib.AUTH:
            if "LOGINDISABLED" in self._protocol.capabilities:
                raise ImapError(
                    f"{self._where}: the server refuses LOGIN on an unencrypted connection; use security "
                    "'starttls' or 'tls'"
                )
            if any(char in settings.password for char in "\r\n\x00"):
                raise ImapAuthError(
                    f"{self._where}: the password contains a line break or NUL; IMAP cannot send it"
                )
            response = await self._run("LOGIN", self._protocol.login_hidden(settings.user, settings.password))
            if response.result != "OK":
                code = _code(response)
                if code in _TRANSIENT_CODES:
                    raise ImapTransientError(f"{self._where}: login failed for now: {_text(response)}")
                if response.result == "BAD":
                    raise ImapError(
                        f"{self._where}: the server rejected the LOGIN command: {_text(response)}"
                    )
                raise ImapAuthError(
                    f"{self._where}: login refused ({_text(response)}); fix the user name or password "
                    "of this mailbox"
                )
        await self._run("CAPABILITY", self._protocol.capability())
        self._capabilities = frozenset(cap.upper() for cap in self._protocol.capabilities)
        log.debug("%s: logged in, capabilities %s", self._where, " ".join(sorted(self._capabilities)))

    async def _search(self, *criteria: str) -> list[int]:
        async with self._lock:
            what = "UID SEARCH " + " ".join(criteria)
            self._require_folder(what)
            # From here on, an EXISTS means mail that this search may not include.
            self._protocol.changed = False
            response = await self._run(what, self._protocol.search(*criteria, charset=None, by_uid=True))
            self._check(response, what)
            found: set[int] = set()
            for raw in response.lines[:-1]:
                line = bytes(raw)
                found.update(int(word) for word in line.split() if word.isdigit())
            return sorted(found)

    async def _fetch_sizes(self, uids: Sequence[int]) -> dict[int, int]:
        async with self._lock:
            self._require_folder("fetch messages")
            what = f"UID FETCH ({len(uids)} messages) RFC822.SIZE"
            response = await self._run(what, self._protocol.uid_fetch(_uid_set(uids), "(UID RFC822.SIZE)"))
            self._check(response, what)
            sizes: dict[int, int] = {}
            for items in _fetch_responses(response.lines):
                uid, size = items.get(b"UID", b""), items.get(b"RFC822.SIZE", b"")
                if uid.isdigit() and size.isdigit():
                    sizes[int(uid)] = int(size)
            return sizes

    async def _fetch_bodies(self, uids: Sequence[int]) -> dict[int, bytes]:
        async with self._lock:
            self._require_folder("fetch messages")
            what = f"UID FETCH ({len(uids)} messages) BODY.PEEK[]"
            # Big messages on a slow link may take longer than the timeout: it bounds silence instead.
            response = await self._run(
                what, self._protocol.uid_fetch(_uid_set(uids), "(UID BODY.PEEK[])"), until_silent=True
            )
            self._check(response, what)
            return _bodies(response.lines)

    async def _idle(self, seconds: float) -> bool:
        protocol = self._protocol
        queue: asyncio.Queue[Any] = protocol.idle_queue
        while not queue.empty():
            queue.get_nowait()
        idle: asyncio.Future[Any] = asyncio.ensure_future(protocol.idle())
        try:
            await self._run("IDLE", self._idle_started(idle))
            if idle.done():
                self._raise(await self._run("IDLE", idle), "IDLE")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + seconds
            while not protocol.changed and not idle.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                push = asyncio.ensure_future(queue.get())
                try:
                    await asyncio.wait(
                        (push, idle, self._lost), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    push.cancel()
                if self._lost.done():
                    break
            if not idle.done():
                self._usable("end IDLE")
                protocol.idle_done()
            response = await self._run("IDLE (DONE)", idle)
            self._check(response, "IDLE")
        except BaseException:
            if not idle.done():
                # The server may still be idling: nothing else can be sent on this connection.
                idle.cancel()
                self._break("IDLE was interrupted")
            raise
        return bool(protocol.changed)

    async def _idle_started(self, idle: asyncio.Future[Any]) -> None:
        acked = asyncio.ensure_future(self._protocol.wait_for_idle_response())
        try:
            await asyncio.wait((acked, idle), return_when=asyncio.FIRST_COMPLETED)
        finally:
            acked.cancel()

    async def _poll(self, deadline: float, poll_interval: float) -> bool:
        loop = asyncio.get_running_loop()
        while True:
            response = await self._run("NOOP", self._protocol.simple_command("NOOP"))
            self._check(response, "NOOP")
            if self._protocol.changed:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.wait((self._lost,), timeout=min(poll_interval, remaining))
            self._usable("poll with NOOP")

    async def _run(
        self, what: str, work: Awaitable[T], limit: float | None = None, until_silent: bool = False
    ) -> T:
        """Await `work` within `limit` seconds (default: the settings' timeout); fail at once on a drop.

        With `until_silent`, the limit is on the time without any data from the server instead.
        """
        limit = self._settings.timeout if limit is None else limit
        try:
            self._usable(what)
        except BaseException:
            if asyncio.iscoroutine(work):
                work.close()
            raise
        task = asyncio.ensure_future(work)
        loop = asyncio.get_running_loop()
        try:
            wait = limit
            while True:
                await asyncio.wait((task, self._lost), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if task.done() or self._lost.done() or not until_silent:
                    break
                wait = self._protocol.received_at + limit - loop.time()
                if wait <= 0:
                    break
        except BaseException:
            task.cancel()
            self._break(f"{what} was cancelled")
            raise
        if task.done():
            try:
                return task.result()
            except ssl.SSLCertVerificationError as exc:
                self._break(str(exc))
                raise self._tls_error(exc) from exc
            except (OSError, TimeoutError, aioimaplib.CommandTimeout) as exc:
                self._break(f"{what}: {exc!r}")
                raise ImapTransientError(f"{self._where}: {what} failed: {exc or 'timed out'}") from exc
            except aioimaplib.AioImapException as exc:
                raise ImapError(f"{self._where}: {what} failed: {exc}") from exc
        task.cancel()
        if self._lost.done():
            reason = "the server closed the connection"
            if self._protocol.refused_greeting is not None:
                reason += (
                    f" after greeting with {self._protocol.refused_greeting.decode('utf-8', 'replace')!r}"
                )
            self._break(reason)
            raise ImapTransientError(f"{self._where}: {what}: {reason}")
        self._break(f"{what} timed out")
        raise ImapTransientError(f"{self._where}: {what}: no answer within {limit} s")

    def _usable(self, what: str) -> None:
        if self._broken is not None:
            raise ImapTransientError(
                f"{self._where}: cannot {what}: connection unusable ({self._broken}); reconnect"
            )
        if self._lost.done():
            self._break("the server closed the connection")
            raise ImapTransientError(
                f"{self._where}: cannot {what}: the server closed the connection; reconnect"
            )

    def _require_folder(self, what: str) -> str:
        self._usable(what)
        if self._folder is None:
            raise ImapError(f"{self._where}: cannot {what}: no folder selected (call select first)")
        return self._folder

    def _check(self, response: Any, what: str, folder: str | None = None) -> None:
        if response.result != "OK":
            self._raise(response, what, folder)

    def _raise(self, response: Any, what: str, folder: str | None = None) -> None:
        text = _text(response)
        code = _code(response)
        if code in _TRANSIENT_CODES:
            raise ImapTransientError(f"{self._where}: {what} failed for now: {text}")
        if code in _AUTH_CODES:
            raise ImapAuthError(f"{self._where}: {what} refused: {text}")
        if folder is not None:
            raise ImapError(
                f"{self._where}: {what} failed: {text}; check that the folder {folder!r} exists on the "
                "server (names are case-sensitive, subfolders use the server's separator) or fix the "
                "folder name in the mailbox settings"
            )
        raise ImapError(f"{self._where}: {what} failed: {response.result} {text}")

    def _tls_error(self, exc: ssl.SSLCertVerificationError) -> ImapError:
        return ImapError(
            f"{self._where}: the server's TLS certificate was not accepted ({exc.verify_message}); set ca_file "
            "to the CA that signed it, or tls_verify off on a trusted network"
        )

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
            log.debug("%s: connection unusable: %s", self._where, reason)
        transport = self._protocol.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    async def _close(self) -> None:
        transport = self._protocol.transport
        if self._broken is None:
            self._broken = "logged out"
        for task in list(self._protocol.tasks):
            task.cancel()
        if transport is None:
            return
        if not transport.is_closing():
            transport.close()
        # Wait for connection_lost so that no socket outlives the client (ResourceWarning otherwise).
        done, _ = await asyncio.wait((self._lost,), timeout=1.0)
        if not done:
            transport.abort()
            await asyncio.wait((self._lost,), timeout=1.0)
