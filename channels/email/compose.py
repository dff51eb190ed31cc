"""Build the RFC 5322 message for one outbound email: headers, MIME structure, threading, loop flags.

Loop prevention: automatic mail says `Auto-Submitted: auto-replied`, the standard signal (RFC 3834 5).
Exchange and Outlook document a header of their own for it (MS-OXCMAIL), so automatic mail also says
`X-Auto-Response-Suppress: OOF, AutoReply`: an out-of-office or rule reply to our acknowledgement,
and our acknowledgement of that, is how two responders start a loop. Not `All`: that also suppresses
delivery and non-delivery reports, and a bounce is how we learn that a message never arrived. Mail an
agent writes carries neither header, so an out-of-office notice in answer still reaches the agent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email import errors as email_errors
from email import policy as email_policy
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from aggregator.model import OutboundAttachment
from aggregator.threading import normalize_subject
from channels.base import PermanentError

__all__ = [
    "POLICY",
    "ascii_address",
    "compose",
    "message_id_for",
    "normalize_subject",
    "reply_subject",
]

# Prefixes that already mark a subject as a reply (a forward prefix does not: "Re: Fwd: x" is right).
_REPLY_PREFIX = re.compile(
    r"^\s*(?:re|aw|antw|sv|vs|ynt|vá|va|ref|r)(?:\s*[\[(^]\s*\d+\s*[\])]?)?\s*[:\uff1a]",
    re.IGNORECASE,
)
_LINE_BREAKS = re.compile(r"[\r\n\t\v\f\x00]+")
# Printable ASCII without "<", ">" and space: anything else in a References value is dropped.
_MESSAGE_ID = re.compile(r"<[!-;=?-~]+>|[!-;=?-~]+")


class _MessageIdListHeader(UnstructuredHeader, BaseHeader):
    """In-Reply-To / References: folded between ids only."""

    def fold(self, *, policy: Any) -> str:
        # The stdlib folds an over-long unstructured word into RFC 2047 encoded words; a Message-ID
        # of Outlook's length would arrive as "=?utf-8?q?=3C...?=" and no longer match its message.
        limit: int = policy.max_line_length or 998
        first = f"{self.name}:"
        lines: list[str] = []
        line = first
        for item in str(self).split():
            if line != first and len(line) + 1 + len(item) > limit:
                lines.append(line)
                line = ""
            line += f" {item}"
        lines.append(line)
        linesep: str = policy.linesep
        return linesep.join(lines) + linesep


def _header_factory() -> HeaderRegistry:
    registry = HeaderRegistry()
    registry.map_to_type("in-reply-to", _MessageIdListHeader)
    registry.map_to_type("references", _MessageIdListHeader)
    return registry


# CRLF line ends (what SMTP and IMAP APPEND take), encoded words for non-ASCII headers, RFC 2231
# parameters for non-ASCII file names.
POLICY = email_policy.SMTP.clone(header_factory=_header_factory())


def message_id_for(message_id: str, domain: str) -> str:
    """Our Message-ID for one of our messages; derived from its id, so every retry sends the same one."""
    return f"<{message_id}@{domain}>"


def reply_subject(subject: str | None) -> str:
    """The subject of a reply: "Re: " in front unless it already starts with a reply prefix."""
    text = _one_line(subject or "")
    if _REPLY_PREFIX.match(text):
        return text
    return f"Re: {text}" if text else "Re:"


def ascii_address(address: str) -> str:
    """The address with its domain in IDNA form; non-ASCII domains cannot go into headers as they are."""
    local, at, domain = address.strip().rpartition("@")
    if not at:
        return address.strip()
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return address.strip()


def compose(
    *,
    message_id: str,
    domain: str,
    from_address: str,
    display_name: str | None,
    to: tuple[str, str | None],
    subject: str | None,
    text: str,
    html: str | None = None,
    reply_to: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    attachments: Sequence[OutboundAttachment] = (),
    automatic: bool = False,
    date: datetime,
) -> EmailMessage:
    """One outbound email; raises PermanentError for a recipient or attachment it cannot send."""
    to_address, to_name = to
    mail = EmailMessage(policy=POLICY)
    mail["From"] = _address(from_address, display_name, "the sender address")
    mail["To"] = _address(to_address, to_name, "the recipient address")
    if reply_to:
        mail["Reply-To"] = _address(reply_to, None, "the Reply-To address")
    parents = _message_ids(in_reply_to or "")
    parent = parents[0] if parents else None
    chain = _reference_chain(references, parent)
    replying = parent is not None or bool(chain)
    mail["Subject"] = reply_subject(subject) if replying else _one_line(subject or "")
    mail["Date"] = format_datetime(date if date.tzinfo else date.replace(tzinfo=UTC))
    mail["Message-ID"] = message_id_for(message_id, domain)
    if parent is not None:
        mail["In-Reply-To"] = parent
    if chain:
        mail["References"] = " ".join(chain)
    if automatic:
        mail["Auto-Submitted"] = "auto-replied"
        mail["X-Auto-Response-Suppress"] = "OOF, AutoReply"

    mail.set_content(text, subtype="plain", charset="utf-8")
    if html is not None:
        mail.add_alternative(html, subtype="html", charset="utf-8")
    for attachment in attachments:
        _attach(mail, attachment)
    for part in mail.iter_parts() if mail.is_multipart() else ():
        _drop_inner_mime_version(part)
    return mail


def _drop_inner_mime_version(part: MIMEPart) -> None:
    # The stdlib stamps MIME-Version on parts it adds; it belongs on the message only (RFC 2045 4).
    del part["MIME-Version"]
    for inner in part.iter_parts() if part.is_multipart() else ():
        _drop_inner_mime_version(inner)


def _one_line(value: str) -> str:
    # A line break in a header value would start a new header (header injection).
    return " ".join(_LINE_BREAKS.sub(" ", value).split())


def _address(address: str, name: str | None, what: str) -> Address:
    try:
        return Address(display_name=_one_line(name or ""), addr_spec=ascii_address(address))
    except (ValueError, email_errors.HeaderParseError) as exc:
        if any(ord(ch) > 127 for ch in address.rpartition("@")[0]):
            problem = "its part before the @ has non-ASCII characters, which needs SMTPUTF8 (not supported)"
        else:
            problem = f"it is not a valid email address ({exc})"
        raise PermanentError(f"{what} {address!r} cannot be used: {problem}") from exc


def _message_ids(value: str) -> list[str]:
    """Each id in `value`, given with or without angle brackets, with them."""
    return [f"<{item.strip('<>')}>" for item in _MESSAGE_ID.findall(value) if item.strip("<>")]


def _reference_chain(references: Sequence[str], parent: str | None) -> list[str]:
    chain: list[str] = []
    for reference in references:
        # An item may also be a whole References header value.
        for angled in _message_ids(reference):
            if angled not in chain:
                chain.append(angled)
    # RFC 5322 3.6.4: References ends with the parent's Message-ID.
    if parent is not None:
        if parent in chain:
            chain.remove(parent)
        chain.append(parent)
    return chain


def _attach(mail: EmailMessage, attachment: OutboundAttachment) -> None:
    try:
        data = Path(attachment.path).read_bytes()
    except OSError as exc:
        raise PermanentError(
            f"attachment {attachment.filename!r} cannot be read from storage ({attachment.path}): "
            f"{exc.strerror or exc}"
        ) from exc
    maintype, _, subtype = attachment.content_type.partition(";")[0].strip().lower().partition("/")
    # message/* and multipart/* parts must not be base64-encoded (RFC 2046 5.2.1, 5.1): sent as bytes.
    if not maintype or not subtype or maintype in ("message", "multipart"):
        maintype, subtype = "application", "octet-stream"
    filename = _one_line(attachment.filename) or "attachment"
    mail.add_attachment(
        data,
        maintype=maintype,
        subtype=subtype,
        filename=filename,
        # Some clients only read the legacy Content-Type name parameter.
        params={"name": filename},
    )
