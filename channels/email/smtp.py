"""SMTP submission (RFC 6409 on 587 with STARTTLS, RFC 8314 on 465 with TLS): one connection per send.

Every failure becomes one of the typed send errors, with a reason that names the server and what to do:

- AuthError: nothing can be sent on this account until an admin acts. Refused credentials, and also
  the settings an admin must fix: a TLS certificate that does not verify (a wrong smtp_host or a
  missing tls_ca_file), a server without STARTTLS or AUTH, a sender address the login may not use.
  The outbox keeps such messages queued and shows the account as needing attention, rather than
  failing each message in turn for a reason that has nothing to do with the message.
- TransientError: network trouble, timeouts, disconnects and every 4xx reply (421, 450, 451, 452, 454).
- PermanentError: the server refused this message or its recipient (5xx to RCPT or DATA).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtplib import (
    SMTP,
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupported,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from channels.base import AuthError, ChannelError, PermanentError, TransientError
from channels.email.compose import ascii_address
from channels.email.config import Security

__all__ = ["SmtpSettings", "check_login", "send_message"]

_MODES = {"none": "unencrypted", "starttls": "STARTTLS", "tls": "TLS"}
# QUIT after a finished transaction is a courtesy; it must not make a send slow.
_QUIT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    security: Security
    user: str | None
    password: str | None = field(repr=False)
    timeout: float
    tls_verify: bool = True
    ca_file: str | None = None

    @property
    def server(self) -> str:
        return f"the SMTP server {self.host}:{self.port}"


async def send_message(
    settings: SmtpSettings, message: EmailMessage, *, sender: str, recipients: Sequence[str]
) -> None:
    """Submit one message; raises AuthError, TransientError or PermanentError."""
    if not recipients:
        raise PermanentError("the message has no recipient")
    envelope_from = ascii_address(sender)
    envelope_to = [ascii_address(recipient) for recipient in recipients]
    async with _connected(settings) as smtp:
        try:
            refused, _ = await smtp.send_message(message, sender=envelope_from, recipients=envelope_to)
        except ValueError as exc:
            raise PermanentError(f"the message cannot be sent as it is: {exc}") from exc
        except (SMTPException, OSError) as exc:
            raise _error(settings, exc, "send") from exc
    if refused:
        # The others have it: a retry would send it to them twice.
        listing = "; ".join(f"{rcpt}: {reply.code} {reply.message}" for rcpt, reply in refused.items())
        raise PermanentError(f"{settings.server} accepted the message for some recipients only: {listing}")


async def check_login(settings: SmtpSettings) -> str:
    """Connect, secure and log in as configured, then QUIT; a line for admins, or a typed error."""
    async with _connected(settings):
        pass
    where = f"{settings.host}:{settings.port} ({_MODES[settings.security]})"
    if settings.user:
        return f"logged in to {where} as {settings.user}"
    return f"connected to {where}; no login configured"


@contextlib.asynccontextmanager
async def _connected(settings: SmtpSettings) -> AsyncIterator[SMTP]:
    tls_context = await _tls_context(settings) if settings.security != "none" else None
    smtp = SMTP(
        hostname=settings.host,
        port=settings.port,
        timeout=settings.timeout,
        use_tls=settings.security == "tls",
        # Never STARTTLS on "none", even when offered; on "starttls" it is done below, and required.
        start_tls=False,
        tls_context=tls_context,
    )
    stage = "connect"
    try:
        try:
            await smtp.connect()
            await smtp.ehlo()
            if settings.security == "starttls":
                stage = "tls"
                if not smtp.supports_extension("starttls"):
                    raise AuthError(
                        f"{settings.server} does not offer STARTTLS, which smtp_security 'starttls' "
                        "requires; use 'tls' if it is a port for implicit TLS (465), or an admin must "
                        "enable STARTTLS on the server"
                    )
                await smtp.starttls()
                await smtp.ehlo()
            if settings.user:
                stage = "login"
                if not smtp.supports_extension("auth"):
                    hint = (
                        "; it offers STARTTLS, and many servers offer AUTH only after it: "
                        "set smtp_security to 'starttls'"
                        if smtp.supports_extension("starttls")
                        else ""
                    )
                    raise AuthError(
                        f"{settings.server} does not offer AUTH, so smtp_user cannot log in{hint}"
                    )
                if not smtp.supported_auth_methods:
                    offered = ", ".join(smtp.server_auth_methods) or "none"
                    raise AuthError(
                        f"{settings.server} offers no login method this channel can use "
                        f"(it offers {offered}; PLAIN, LOGIN and CRAM-MD5 are supported)"
                    )
                await smtp.login(settings.user, settings.password or "")
        except ChannelError:
            raise
        except (SMTPException, OSError) as exc:
            raise _error(settings, exc, stage) from exc
        yield smtp
    except asyncio.CancelledError:
        smtp.close()
        raise
    finally:
        # QUIT also after a refused transaction: the server is still listening then.
        if smtp.is_connected:
            with contextlib.suppress(SMTPException, OSError):
                await smtp.quit(timeout=min(settings.timeout, _QUIT_TIMEOUT))
        smtp.close()


async def _tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    try:
        # Reading the system and configured CA bundles is file I/O: kept off the event loop.
        return await asyncio.to_thread(_build_tls_context, settings.tls_verify, settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise AuthError(
            f"the CA file {settings.ca_file!r} (tls_ca_file) for {settings.server} cannot be used: {exc}"
        ) from exc


def _build_tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file:
        # In addition to the system's CAs: a self-hosted server's own CA.
        context.load_verify_locations(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _reply(code: int, message: str) -> str:
    return f"{code} {' '.join(message.split())}".strip()


def _error(settings: SmtpSettings, exc: BaseException, stage: str) -> ChannelError:
    """The typed error for an aiosmtplib or socket failure at `stage` (connect, tls, login, send)."""
    server = settings.server
    for link in _chain(exc):
        if isinstance(link, ssl.SSLCertVerificationError):
            return AuthError(
                f"{server}: its TLS certificate is not trusted ({link.verify_message}); an admin must "
                "fix the settings: smtp_host must be a name in the certificate, and a server with its "
                "own CA needs tls_ca_file"
            )
        if isinstance(link, ssl.SSLError) and not isinstance(link, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return AuthError(
                f"{server}: TLS failed ({link.reason or link}); check smtp_security and smtp_port "
                "(465 is implicit TLS, 'tls'; 587 is 'starttls')"
            )

    if isinstance(exc, SMTPAuthenticationError):
        if 400 <= exc.code < 500:
            return TransientError(
                f"{server} could not check the login just now: {_reply(exc.code, exc.message)}"
            )
        return AuthError(
            f"{server} refused the login as {settings.user!r}: {_reply(exc.code, exc.message)}; "
            "check smtp_user and smtp_password (some providers require an app password)"
        )
    if isinstance(exc, SMTPRecipientsRefused):
        return _refused(server, exc.recipients)
    if isinstance(exc, SMTPRecipientRefused):
        return _refused(server, [exc])
    if isinstance(exc, SMTPSenderRefused):
        reply = _reply(exc.code, exc.message)
        if exc.code < 500:
            return TransientError(f"{server} did not accept the sender just now: {reply}")
        if exc.code == 530:
            return AuthError(
                f"{server} requires a login (or STARTTLS) before sending: {reply}; "
                "check smtp_user and smtp_security"
            )
        if exc.code == 552:
            return PermanentError(f"{server} refused the message as too large: {reply}")
        return AuthError(
            f"{server} refuses to send as {exc.sender}: {reply}; the channel address must be one that "
            f"the login {settings.user!r} may send as"
        )
    if isinstance(exc, SMTPDataError):
        reply = _reply(exc.code, exc.message)
        if exc.code < 500:
            return TransientError(f"{server} did not take the message just now: {reply}")
        return PermanentError(f"{server} rejected the message: {reply}")
    if isinstance(exc, SMTPTimeoutError):
        hint = (
            "; if this persists, check smtp_port and smtp_security (465 expects 'tls')"
            if stage == "connect"
            else ""
        )
        return TransientError(f"{server} did not answer within {settings.timeout:g}s{hint}")
    if isinstance(exc, SMTPConnectResponseError | SMTPHeloError | SMTPResponseException):
        reply = _reply(exc.code, exc.message)
        if exc.code < 500:
            return TransientError(f"{server} is not available just now: {reply}")
        what = {"connect": "refused the connection", "tls": "refused STARTTLS", "login": "refused the login"}
        if stage in what:
            return AuthError(f"{server} {what[stage]}: {reply}; an admin must check the SMTP settings")
        return PermanentError(f"{server} refused the message: {reply}")
    if isinstance(exc, SMTPNotSupported):
        return PermanentError(f"{server} cannot send this message: {exc.message}")
    if isinstance(exc, SMTPConnectError):
        return TransientError(f"cannot connect to {server}: {exc.message}")
    if isinstance(exc, SMTPServerDisconnected):
        return TransientError(f"{server} closed the connection: {exc.message}")
    if stage == "login" and isinstance(exc, SMTPException):
        return AuthError(f"{server}: login failed: {exc.message}")
    if isinstance(exc, SMTPException):
        return TransientError(f"{server}: {exc.message}")
    return TransientError(f"{server}: {exc}")


def _refused(server: str, refusals: Sequence[SMTPRecipientRefused]) -> ChannelError:
    listing = "; ".join(f"{r.recipient}: {_reply(r.code, r.message)}" for r in refusals)
    if all(r.code < 500 for r in refusals):
        return TransientError(f"{server} did not accept the recipient just now: {listing}")
    return PermanentError(f"{server} refused the recipient: {listing}")
