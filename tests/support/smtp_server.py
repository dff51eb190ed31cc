"""A real SMTP server for tests (aiosmtpd), on a free loopback port, in the test's own event loop.

It records what it receives, checks AUTH PLAIN / LOGIN against one configured user, speaks plain
SMTP, STARTTLS or implicit TLS with a throw-away certificate (support.tls), and can be told to fail or
hang the next transactions. Running in the test's loop (aiosmtpd's unthreaded controller, not the
threaded one) keeps it deterministic: a hang is an awaited event, and stopping it joins no thread.

    async with running_smtp_server(tmp_path, security="starttls", auth=("agent", "s3cret")) as server:
        await send_message(server.smtp_settings(), mail, sender=..., recipients=[...])
        [received] = await server.wait_for(1)
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal
from weakref import WeakKeyDictionary

from aiosmtpd.controller import UnthreadedController
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from channels.email.config import Security
from channels.email.smtp import SmtpSettings
from support.tls import LOOPBACK, Certificates, make_certificates

Stage = Literal["CONNECT", "AUTH", "MAIL", "RCPT", "DATA"]
MECHANISMS = ("PLAIN", "LOGIN")


# Where a real server gives each reply code, for fail_next() without `at`.
_STAGE_OF: dict[int, Stage] = {
    454: "AUTH", 534: "AUTH", 535: "AUTH", 538: "AUTH",
    530: "MAIL",
    450: "RCPT", 452: "RCPT", 550: "RCPT", 551: "RCPT", 553: "RCPT",
}  # fmt: skip
_TEXT_OF = {
    421: "4.3.2 Service shutting down, closing transmission channel",
    450: "4.2.1 Mailbox busy, try again later",
    451: "4.3.0 Local error in processing, try again later",
    452: "4.3.1 Insufficient system storage",
    454: "4.7.0 Temporary authentication failure",
    530: "5.7.0 Authentication required",
    534: "5.7.9 Application-specific password required",
    535: "5.7.8 Authentication credentials invalid",
    550: "5.1.1 Mailbox unavailable",
    551: "5.1.6 User not local",
    552: "5.3.4 Message size exceeds fixed limit",
    553: "5.1.3 Mailbox name not allowed",
    554: "5.7.1 Transaction failed",
}


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    envelope_from: str
    recipients: list[str]
    raw: bytes
    tls: bool
    login: str | None

    def parsed(self) -> EmailMessage:
        """The message as the stdlib reads it (policy.default), line ends as a mail client stores them."""
        message = email.message_from_bytes(self.raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message

    @property
    def text(self) -> str:
        """The text/plain body without its final line end ("" when there is none)."""
        body = self.parsed().get_body(("plain",))
        return str(body.get_content()).removesuffix("\n") if body is not None else ""


@dataclass(frozen=True, slots=True)
class _Failure:
    stage: Stage
    code: int
    text: str
    close: bool
    hang: bool


@dataclass
class SmtpServer:
    """The server's settings, what it received, and the failures queued for it."""

    certificates: Certificates | None
    security: Security = "none"
    auth: tuple[str, str] | None = None
    # STARTTLS servers refuse MAIL before STARTTLS (RFC 3207 4); False offers it without requiring it.
    require_tls: bool = True
    mechanisms: Sequence[str] = MECHANISMS
    max_size: int | None = None
    host: str = "127.0.0.1"
    port: int = 0
    received: list[ReceivedMessage] = field(default_factory=list, init=False)
    logins: list[str] = field(default_factory=list, init=False)
    failed_logins: list[str] = field(default_factory=list, init=False)
    connections: int = field(default=0, init=False)
    _failures: list[_Failure] = field(default_factory=list, init=False)
    # A refused login is refused for every mechanism the client tries on that connection.
    _auth_failures: WeakKeyDictionary[Session, _Failure] = field(
        default_factory=WeakKeyDictionary, init=False
    )
    _sessions: list[_Session] = field(default_factory=list, init=False)
    _controller: UnthreadedController | None = field(default=None, init=False)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _released: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    @property
    def ca_file(self) -> str | None:
        return str(self.certificates.ca) if self.certificates else None

    def smtp_settings(self, **overrides: Any) -> SmtpSettings:
        """Client settings that fit this server (its security, user, password, CA); override any."""
        user, password = self.auth or (None, None)
        settings = SmtpSettings(
            host=self.host,
            port=self.port,
            security=self.security,
            user=user,
            password=password,
            timeout=5.0,
            ca_file=self.ca_file,
        )
        return replace(settings, **overrides)

    def fail_next(
        self,
        status: int,
        times: int = 1,
        retry_after: str | None = None,
        *,
        text: str | None = None,
        at: Stage | None = None,
        close: bool | None = None,
    ) -> None:
        """The next `times` transactions that reach `at` get `status text`; 421 also closes the connection.

        `at` defaults to where servers give that code (535 at AUTH, 550 at RCPT, 451 at DATA ...).
        """
        if retry_after is not None:
            raise ValueError("an SMTP reply carries no retry time")
        stage = at or _STAGE_OF.get(status, "DATA")
        reply = text or _TEXT_OF.get(status, f"{status // 100}.0.0 Failed")
        closing = status == 421 if close is None else close
        self._failures.extend(_Failure(stage, status, reply, closing, hang=False) for _ in range(times))

    def hang_next(self, times: int = 1, *, at: Stage = "DATA") -> None:
        """The next `times` transactions that reach `at` get no answer until the client gives up."""
        self._failures.extend(_Failure(at, 0, "", close=False, hang=True) for _ in range(times))

    def delivered_texts(self) -> list[str]:
        """The text of each message received, in order."""
        return [message.text for message in self.received]

    async def wait_for(self, count: int = 1, within: float = 5.0) -> list[ReceivedMessage]:
        """The first `count` messages, once that many have arrived."""
        try:
            async with asyncio.timeout(within):
                while len(self.received) < count:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(
                f"{len(self.received)} of {count} messages arrived within {within}s"
            ) from None
        return self.received[:count]

    async def start(self) -> None:
        if self.security != "none" and self.certificates is None:
            raise ValueError(f"security {self.security!r} needs certificates")
        tls = self.certificates.server_context() if self.certificates else None
        excluded = [m for m in ("PLAIN", "LOGIN") if m not in self.mechanisms]
        self._controller = _Controller(
            self,
            _Handler(self),
            hostname=self.host,
            port=0,
            loop=asyncio.get_running_loop(),
            ssl_context=tls if self.security == "tls" else None,
            server_hostname="smtp.test",
            tls_context=tls if self.security == "starttls" else None,
            require_starttls=self.security == "starttls" and self.require_tls,
            # aiosmtpd only knows of TLS it started itself (STARTTLS); behind implicit TLS, or on
            # plain loopback for tests, AUTH must be offered without it.
            auth_require_tls=self.security == "starttls",
            authenticator=self._authenticate,
            auth_exclude_mechanism=excluded,
            data_size_limit=self.max_size,
        )
        server = await self._controller._create_server()
        assert isinstance(server, asyncio.Server)
        self._controller.server = server
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is None or controller.server is None:
            return
        controller.server.close()
        for session in self._sessions:
            # The raw socket too: a session whose TLS handshake the client abandoned (an untrusted
            # certificate) waits on it otherwise.
            for transport in (session.transport, session.raw_transport):
                if transport is not None:
                    transport.close()
        self._released.set()
        tasks = [s.handler_task for s in self._sessions if s.handler_task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=0.25)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for task in tasks:
            # Mark their outcome as seen: a connection reset by the client is no test failure.
            if task.done() and not task.cancelled():
                task.exception()
        await controller.server.wait_closed()

    def _take(self, stage: Stage) -> _Failure | None:
        for i, failure in enumerate(self._failures):
            if failure.stage == stage:
                return self._failures.pop(i)
        return None

    async def _apply(self, smtp: SMTP, failure: _Failure) -> str:
        if failure.hang:
            await self._released.wait()
            return "421 4.3.2 shutting down"
        if failure.close and smtp.transport is not None:
            # After the reply is written (the caller pushes it before it next yields).
            asyncio.get_running_loop().call_soon(smtp.transport.close)
        return f"{failure.code} {failure.text}"

    def _authenticate(
        self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = data.login.decode("utf-8", "replace")
        if self.auth is not None and (login, data.password.decode("utf-8", "replace")) == self.auth:
            self.logins.append(login)
            return AuthResult(success=True, auth_data=data)
        self.failed_logins.append(login)
        return AuthResult(success=False, handled=False)


class _Session(SMTP):
    """One connection; can fail or hang before the greeting."""

    def __init__(self, owner: SmtpServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner

    @property
    def handler_task(self) -> asyncio.Task[None] | None:
        return self._handler_coroutine

    @property
    def raw_transport(self) -> asyncio.BaseTransport | None:
        """The socket's own transport under STARTTLS (None before it)."""
        return self._original_transport

    async def _handle_client(self) -> None:
        self._owner.connections += 1
        failure = self._owner._take("CONNECT")
        if failure is None:
            await super()._handle_client()
            return
        if failure.hang:
            await self._owner._released.wait()
            return
        await self.push(f"{failure.code} {failure.text}")
        if self.transport is not None:
            self.transport.close()


class _Controller(UnthreadedController):
    def __init__(self, owner: SmtpServer, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._owner = owner

    def factory(self) -> SMTP:
        session = _Session(self._owner, self.handler, loop=self.loop, **self.SMTP_kwargs)
        self._owner._sessions.append(session)
        return session


class _Handler:
    """aiosmtpd's hooks; a separate object, as aiosmtpd inspects every attribute of its handler."""

    def __init__(self, owner: SmtpServer) -> None:
        self.owner = owner

    async def handle_EHLO(
        self, smtp: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.owner.auth is None:
            # A server without users offers no AUTH at all, like a plain relay.
            responses = [line for line in responses if not line[4:].upper().startswith("AUTH")]
        return responses

    async def handle_AUTH(self, smtp: SMTP, session: Session, envelope: Envelope, args: list[str]) -> Any:
        failure = self.owner._auth_failures.get(session) or self.owner._take("AUTH")
        if failure is None:
            return MISSING
        self.owner._auth_failures[session] = failure
        return await self.owner._apply(smtp, failure)

    async def handle_MAIL(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        failure = self.owner._take("MAIL")
        if failure is not None:
            return await self.owner._apply(smtp, failure)
        if self.owner.auth is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        failure = self.owner._take("RCPT")
        if failure is not None:
            return await self.owner._apply(smtp, failure)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        failure = self.owner._take("DATA")
        if failure is not None:
            return await self.owner._apply(smtp, failure)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        transport = smtp.transport
        tls = transport is not None and transport.get_extra_info("sslcontext") is not None
        content = envelope.original_content or b""
        assert envelope.mail_from is not None
        self.owner.received.append(
            ReceivedMessage(envelope.mail_from, list(envelope.rcpt_tos), bytes(content), tls, login)
        )
        self.owner._arrived.set()
        return "250 2.0.0 OK queued"


@contextlib.asynccontextmanager
async def running_smtp_server(
    tmp_path: Path,
    *,
    security: Security = "none",
    auth: tuple[str, str] | None = None,
    cert_hosts: Sequence[str] = LOOPBACK,
    **options: Any,
) -> AsyncIterator[SmtpServer]:
    """A started SmtpServer (TLS material for `cert_hosts` under tmp_path), stopped on exit."""
    certificates = make_certificates(tmp_path / "smtp-tls", cert_hosts) if security != "none" else None
    server = SmtpServer(certificates, security=security, auth=auth, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
