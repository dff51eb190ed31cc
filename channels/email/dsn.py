"""Delivery status notifications: RFC 3464 multipart/report, plus the common non-standard bounces.

Standard reports (Postfix, Exim 4.8+, Gmail, Exchange, Sendmail) carry a message/delivery-status part
with one field block per recipient, and the original as message/rfc822 or text/rfc822-headers. Older
or simpler mailers (qmail, Exim's plain bounce) only write text and, sometimes, X-Failed-Recipients;
for those the report is read from the text, and is only made when the evidence is clear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.header import Header
from email.message import Message
from typing import Final

# Most severe first: the report speaks for the recipients with the most severe action.
_ACTION_ORDER: Final = ("failed", "delayed", "delivered", "relayed", "expanded")
_STATUS: Final = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_MESSAGE_ID_HEADER: Final = re.compile(r"^message-id:[ \t]*(?:\r?\n[ \t]+)?<([^<>\s]+)>", re.IGNORECASE | re.MULTILINE)
_FIELD: Final = re.compile(r"^([A-Za-z0-9-]+)[ \t]*:[ \t]*(.*)$")
_SPACE: Final = re.compile(r"\s+")
_SMTP_REPLY: Final = re.compile(r"^([245]\d\d)[- ]((?:[245]\.\d{1,3}\.\d{1,3})\s)?")
_QMAIL_RECIPIENT: Final = re.compile(r"^<([^<>\s@]+@[^<>\s]+)>:[ \t]*$", re.MULTILINE)
_QMAIL_REASON: Final = re.compile(r"^Remote host said:[ \t]*(.+)$", re.MULTILINE)
_EXIM_REASON: Final = re.compile(
    r"(?:SMTP error from remote mail server after [^\n]*:|host [^\n]+ said:)[ \t]*\n?[ \t]*([^\n]+)", re.IGNORECASE
)
_SMTP_LINE: Final = re.compile(r"^[ \t]*([245]\d\d[ -][^\n]{4,})$", re.MULTILINE)
_COPY_MARKERS: Final = re.compile(
    r"copy of the message|below this line is a copy|original message follows|original message headers"
    r"|message headers follow|undelivered message",
    re.IGNORECASE,
)
_DELAYED_WORDS: Final = re.compile(
    r"has not yet been delivered|not been delivered yet|will (?:keep|continue) trying|still trying|\bdelayed\b",
    re.IGNORECASE,
)
_BOUNCE_WORDS: Final = re.compile(
    r"could not be delivered|wasn't able to deliver|was not delivered|undeliver|delivery (?:has )?failed"
    r"|permanent (?:error|failure)|returned to sender|delivery status notification|not yet been delivered"
    r"|mailbox (?:unavailable|full)|user unknown|no such user|address rejected",
    re.IGNORECASE,
)
_REPORT_TYPES: Final = ("message/delivery-status", "message/global-delivery-status", "text/delivery-status")
_HEADER_TYPES: Final = ("text/rfc822-headers", "message/rfc822-headers", "message/global-headers")
_MAX_REASON: Final = 300


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    original_message_id: str | None
    """Message-ID of the mail that was (or was not) delivered, without angle brackets."""
    action: str
    """RFC 3464 Action of the reported recipients: 'failed', 'delayed', 'delivered', 'relayed', 'expanded'."""
    status: str | None
    """RFC 3463 status code such as '5.1.1'."""
    recipients: tuple[str, ...]
    """The recipients the action applies to."""
    reason: str
    """Why, for an agent to read: the remote server's reply or the report's own words."""

    @property
    def failed(self) -> bool:
        """True only for a permanent failure; 'delayed' is reported as such and left to the caller."""
        return self.action == "failed"


def _text(value: object) -> str:
    if isinstance(value, Header):
        return "".join(str(chunk) for chunk, _ in getattr(value, "_chunks", ()))
    return str(value)


def _payload_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        charset = part.get_content_charset() or "utf-8"
        try:
            return payload.decode(charset, errors="replace")
        except LookupError:
            return payload.decode("utf-8", errors="replace")
    raw = part.get_payload()
    return raw if isinstance(raw, str) else ""


def _blocks_from_text(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    name = ""
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
            current, name = {}, ""
            continue
        if line[0] in " \t" and name:
            current[name] += " " + line.strip()
            continue
        match = _FIELD.match(line)
        if match:
            name = match.group(1).lower()
            current.setdefault(name, match.group(2).strip())
    if current:
        blocks.append(current)
    return blocks


def _status_blocks(part: Message) -> list[dict[str, str]]:
    payload = part.get_payload()
    if isinstance(payload, list):
        cte = _text(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if cte in ("base64", "quoted-printable"):
            return []  # compat32 read field blocks out of the encoded text: nothing to trust
        # compat32 already split message/delivery-status into one Message per field block.
        return [
            {k.lower(): _SPACE.sub(" ", _text(v)).strip() for k, v in block.items()}
            for block in payload
            if isinstance(block, Message)
        ]
    return _blocks_from_text(_payload_text(part))


def _typed_value(value: str) -> str:
    """'rfc822; bob@example.com' -> 'bob@example.com', 'smtp; 550 ...' -> '550 ...' (RFC 3464 2.1.2)."""
    kind, sep, rest = value.partition(";")
    return rest.strip() if sep and " " not in kind.strip() else value.strip()


def clean_reason(text: str) -> str:
    """One readable line from a (multi-line) SMTP reply or report text, at most 300 characters."""
    text = _SPACE.sub(" ", text).strip()
    match = _SMTP_REPLY.match(text)
    if match:
        code, enhanced = match.group(1), (match.group(2) or "").strip()
        head = f"{code} {enhanced} " if enhanced else f"{code} "
        rest = text[match.end() :]
        # Continuation lines of a multi-line reply repeat the codes: "550-5.1.1 ..." once is enough.
        repeat = re.compile(rf"\s{code}[- ](?:{re.escape(enhanced)}\s)?" if enhanced else rf"\s{code}[- ]")
        text = head + _SPACE.sub(" ", repeat.sub(" ", " " + rest)).strip()
    if len(text) > _MAX_REASON:
        text = text[: _MAX_REASON - 1].rstrip() + "…"
    return text


def _bare_address(value: str) -> str:
    return value.strip().strip("<>").strip()


def _original_message_id(parts: list[Message], text: str) -> str | None:
    for part in parts:
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                found = _MESSAGE_ID_HEADER.search("Message-ID: " + _text(inner[0].get("Message-ID", "")))
                if found:
                    return found.group(1)
            elif isinstance(inner, str):
                found = _MESSAGE_ID_HEADER.search(inner)
                if found:
                    return found.group(1)
        elif ctype in _HEADER_TYPES:
            found = _MESSAGE_ID_HEADER.search(_payload_text(part))
            if found:
                return found.group(1)
    # Plain bounces quote the original after a marker line; the report's own text has no such header.
    marker = _COPY_MARKERS.search(text)
    found = _MESSAGE_ID_HEADER.search(text, marker.end() if marker else 0)
    return found.group(1) if found else None


def _human_reason(text: str) -> str:
    for pattern in (_QMAIL_REASON, _EXIM_REASON, _SMTP_LINE):
        match = pattern.search(text)
        if match:
            return clean_reason(match.group(1))
    for paragraph in re.split(r"\n\s*\n", text):
        if paragraph.strip():
            return clean_reason(paragraph)
    return ""


def _all_parts(msg: Message, depth: int = 0) -> list[Message]:
    found: list[Message] = []
    payload = msg.get_payload()
    if isinstance(payload, list) and msg.get_content_maintype() == "multipart" and depth < 8:
        for part in payload:
            if isinstance(part, Message):
                found.append(part)
                found.extend(_all_parts(part, depth + 1))
    return found


def delivery_report(msg: Message, text: str, bounce_sender: bool) -> DeliveryReport | None:
    """The delivery report in `msg` (parsed by compat32; `text` is its decoded body text), else None."""
    text = text.replace("\r\n", "\n")
    parts = _all_parts(msg)
    status_part = next((p for p in parts if p.get_content_type() in _REPORT_TYPES), None)
    if status_part is not None:
        return _standard(status_part, parts, text)
    failed_header = msg.get_all("X-Failed-Recipients") or []
    if failed_header or bounce_sender:
        return _non_standard(parts, text, [_text(v) for v in failed_header])
    return None


def _standard(status_part: Message, parts: list[Message], text: str) -> DeliveryReport:
    recipients = [b for b in _status_blocks(status_part) if "action" in b or "final-recipient" in b]
    by_action: dict[str, list[dict[str, str]]] = {}
    for block in recipients:
        words = block.get("action", "").split()
        by_action.setdefault(words[0].lower() if words else "failed", []).append(block)
    action = next((a for a in _ACTION_ORDER if a in by_action), next(iter(by_action), "failed"))
    chosen = by_action.get(action, [])
    addresses = tuple(
        addr
        for b in chosen
        if (addr := _bare_address(_typed_value(b.get("final-recipient") or b.get("original-recipient") or "")))
    )
    status = None
    for block in chosen:
        found = _STATUS.search(block.get("status", ""))
        if found:
            status = found.group(1)
            break
    reason = next((clean_reason(_typed_value(b["diagnostic-code"])) for b in chosen if b.get("diagnostic-code")), "")
    if not reason:
        reason = _human_reason(text)
    if status is None:
        found = _STATUS.search(reason)
        status = found.group(1) if found else None
    return DeliveryReport(
        original_message_id=_original_message_id(parts, text),
        action=action,
        status=status,
        recipients=addresses,
        reason=reason,
    )


def _non_standard(parts: list[Message], text: str, failed_header: list[str]) -> DeliveryReport | None:
    recipients = [_bare_address(a) for v in failed_header for a in v.split(",") if a.strip()]
    if not recipients:
        recipients = _QMAIL_RECIPIENT.findall(text)
    reason = _human_reason(text)
    status_match = _STATUS.search(reason) or _STATUS.search(text)
    if not failed_header and not recipients and (status_match is None or not _BOUNCE_WORDS.search(text)):
        return None  # a human writing from postmaster@, not a bounce
    action = "failed" if failed_header or not _DELAYED_WORDS.search(text) else "delayed"
    return DeliveryReport(
        original_message_id=_original_message_id(parts, text),
        action=action,
        status=status_match.group(1) if status_match else None,
        recipients=tuple(dict.fromkeys(recipients)),
        reason=reason,
    )
