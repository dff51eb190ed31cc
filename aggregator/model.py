"""Domain types shared by the core and the channel adapters."""

from __future__ import annotations

import enum
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

_id_lock = threading.Lock()
_id_last_ms = 0
_id_last_rand = 0


def new_id() -> str:
    """A new record id: 32 hex digits, time-ordered (48-bit milliseconds, then 80 bits).

    Within a millisecond the 80 bits count up from a random start, so the ids one process mints are
    strictly increasing: messages stored in one batch (same created_at) list in the order they came.
    Ids are minted for every message, contact and conversation on the ingest path, so this is kept
    to C-speed builtins (a ULID library costs about 30 microseconds an id, base32 in Python 13).
    """
    global _id_last_ms, _id_last_rand
    ms = time.time_ns() // 1_000_000
    with _id_lock:
        if ms > _id_last_ms:
            _id_last_ms = ms
            # The top bit left clear, so counting up cannot overflow into the time part.
            _id_last_rand = int.from_bytes(os.urandom(10), "big") >> 1
        else:
            _id_last_rand += 1
        return f"{_id_last_ms:012x}{_id_last_rand:020x}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Role(enum.StrEnum):
    ADMIN = "admin"
    AGENT = "agent"
    SELLER = "seller"


class ConversationStatus(enum.StrEnum):
    OPEN = "open"
    PENDING = "pending"
    SNOOZED = "snoozed"
    RESOLVED = "resolved"


class Priority(enum.StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class Direction(enum.StrEnum):
    IN = "in"
    OUT = "out"


class MessageKind(enum.StrEnum):
    MESSAGE = "message"
    NOTE = "note"
    EVENT = "event"


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


class OutboxStatus(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class ConnectionState(enum.StrEnum):
    """What admins see of a channel account's link to its service."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    TRANSIENT_DISCONNECT = "transient_disconnect"
    BAD_CREDENTIALS = "bad_credentials"
    UNKNOWN_ERROR = "unknown_error"


@dataclass(frozen=True, slots=True)
class Identity:
    """A contact's address on one channel kind (email address, Telegram user id, PSID ...)."""

    kind: str
    address: str
    display_name: str | None = None
    email: str | None = None
    # The name people know the address by, where the channel has one (a Telegram @username).
    handle: str | None = None


@dataclass(frozen=True, slots=True)
class InboundAttachment:
    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class MessageFlags:
    auto_submitted: bool = False
    bulk: bool = False
    bounce: bool = False
    echo: bool = False

    @property
    def automatic(self) -> bool:
        """True for mail that must neither reopen a conversation nor get an automatic reply."""
        return self.auto_submitted or self.bulk or self.bounce

    def as_list(self) -> list[str]:
        return [name for name in ("auto_submitted", "bulk", "bounce", "echo") if getattr(self, name)]


@dataclass(frozen=True, slots=True)
class ThreadHints:
    """How a message finds its conversation, strongest evidence first.

    1. `conversation_refs`: conversations the channel names outright (our reply token in an email
       address); `message_refs`: our own messages it answers (our Message-ID in In-Reply-To /
       References). Either joins that conversation whoever the sender is (a colleague in copy too),
       when it belongs to the same channel account.
    2. `keys`: channel keys that name a thread for anyone (chat id, order id).
    3. `contact_keys`: keys that only count for the same contact (other people's Message-IDs in
       References): two customers replying to one newsletter must not end up in one conversation.
    4. `subject_key` (a normalised subject): the same contact's latest conversation on this channel
       account with that subject, active within `subject_window`.
    5. `by_contact`: the contact's latest conversation on the same channel account.

    `external_refs` are the channel's ids of messages this one answers (a Telegram reply names the
    message it replies to): such a message on the same channel account, ours or the customer's, puts
    this one in its conversation, at the strength of step 1.

    `own_keys` (and the keys of steps 2 and 3) are registered for the conversation the message lands
    in, so later messages can find it. `thread_ref` is the channel's own name of the thread (chat id,
    API thread_id), kept on a new conversation so replies go back to the same place. `reply_refs` is
    what a reply to this message must point at, oldest first (for email: its References, then its own
    Message-ID).
    """

    keys: tuple[str, ...] = ()
    own_keys: tuple[str, ...] = ()
    by_contact: bool = True
    thread_ref: str | None = None
    conversation_refs: tuple[str, ...] = ()
    message_refs: tuple[str, ...] = ()
    contact_keys: tuple[str, ...] = ()
    subject_key: str | None = None
    subject_window: timedelta | None = None
    reply_refs: tuple[str, ...] = ()
    external_refs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """A report on one of our own sent messages (an email bounce): it becomes failed with `reason`."""

    message_id: str
    status: DeliveryStatus
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message as a channel adapter hands it to the core, before it is stored."""

    channel_account_id: str
    external_id: str
    sender: Identity
    text: str
    thread: ThreadHints = field(default_factory=ThreadHints)
    subject: str | None = None
    html: str | None = None
    recipients: tuple[Identity, ...] = ()
    attachments: tuple[InboundAttachment, ...] = ()
    sent_at: datetime | None = None
    language_hint: str | None = None
    flags: MessageFlags = field(default_factory=MessageFlags)
    raw: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The new part of the text, without quoted history and signature (None: all of `text` is new).
    reply_text: str | None = None
    # Recognise a repeat by the raw original's hash too, not only by external id (mail re-numbered
    # by its server after a UIDVALIDITY change).
    dedup_by_content: bool = False
    delivery_report: DeliveryReport | None = None
    # Set on a new version of a message the sender edited (same external id): the stored text is
    # replaced, the previous version kept. An edit of a message never stored is stored as new.
    edited_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    message_id: str
    conversation_id: str
    created: bool
    # An edit replaced the stored text (created is False then).
    updated: bool = False


@dataclass(frozen=True, slots=True)
class Reachability:
    """Whether a contact can be written to on a channel (a Telegram user who blocked the bot cannot)."""

    blocked: bool
    reason: str | None = None
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class OutboundAttachment:
    filename: str
    content_type: str
    path: str
    size: int


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A queued reply as the outbox hands it to an adapter. `message_id` is the idempotency key."""

    message_id: str
    conversation_id: str
    channel_account_id: str
    recipient: Identity
    text: str
    attempt: int
    html: str | None = None
    subject: str | None = None
    thread_ref: str | None = None
    in_reply_to: str | None = None
    attachments: tuple[OutboundAttachment, ...] = ()
    automatic: bool = False
    # What the conversation's latest inbound message asked replies to point at (ThreadHints.reply_refs).
    references: tuple[str, ...] = ()
    # The same reply as Telegram MarkdownV2, escaped (from a template): a channel that formats that way
    # sends it instead of escaping `text`; None for replies typed as plain text.
    markdown_v2: str | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    external_id: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A change that live clients and background work react to; published after commit."""

    type: str
    workspace_id: str
    data: dict[str, Any]
    conversation_id: str | None = None
    id: str = field(default_factory=new_id)
