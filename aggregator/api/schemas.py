"""Response and request shapes shared by several endpoint modules."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import nh3
from pydantic import AfterValidator, Field

from aggregator.api.framework import OutModel
from aggregator.api.keys import PREFIX
from aggregator.model import ConversationStatus, DeliveryStatus, Direction, MessageKind, Priority
from aggregator.store.inbox import unread

MAX_TEXT_CHARS = 100_000
MAX_LABELS = 50


def _label(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("a label cannot be blank")
    return value


Label = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_label)]


class ChannelRef(OutModel):
    id: str
    kind: str
    name: str


class ContactRef(OutModel):
    id: str
    name: str | None
    email: str | None


class LastMessage(OutModel):
    preview: str | None = Field(description="the start of the newest message (not notes), one line")
    direction: Direction | None
    at: datetime = Field(description="the conversation's last activity")


class SlaOut(OutModel):
    policy_id: str | None = Field(description="the SLA policy of the timer")
    metric: Literal["first_response", "next_response", "resolution"] | None = Field(
        description="the timer due first: `first_response`, `next_response` or `resolution`"
    )
    due_at: datetime | None = Field(description="when it runs out (null while paused)")
    state: Literal["running", "paused", "breached"]
    breached_at: datetime | None


def sla_data(row: Any) -> dict[str, Any] | None:
    if row.sla_state is None:
        return None
    return {
        "policy_id": getattr(row, "sla_timer_policy_id", None),
        "metric": getattr(row, "sla_metric", None),
        "due_at": row.sla_due_at,
        "state": row.sla_state,
        "breached_at": row.sla_breached_at,
    }


LanguageSource = Literal["agent", "detected", "hint", "contact"]


class ConversationOut(OutModel):
    id: str
    status: ConversationStatus
    priority: Priority
    channel: ChannelRef
    contact: ContactRef
    assignee_id: str | None
    team_id: str | None
    labels: list[str]
    language: str | None
    language_source: LanguageSource | None = Field(
        description="who set `language`: `agent` (detection leaves it alone), `detected` (from the customer's "
        "text), `hint` (the channel's: Telegram's language_code, email Content-Language) or `contact` (the "
        "contact's earlier language)"
    )
    subject: str | None
    last_message: LastMessage
    unread_count: int = Field(description="customer messages this user has not read yet")
    message_count: int
    sla_due_at: datetime | None = Field(description="when the first running SLA timer runs out")
    sla: SlaOut | None = Field(description="the SLA timer due first; null when no SLA policy applies")
    sla_policy_id: str | None = Field(
        description="the SLA policy chosen for it by an agent or a rule; null: the first matching policy"
    )
    snoozed_until: datetime | None
    resolved_at: datetime | None
    first_response_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> ConversationOut:
        return cls.model_validate(cls.data(row))

    @staticmethod
    def data(row: Any) -> dict[str, Any]:
        """The item as plain data: a page validates all of them in one call (100 model inits cost 0.6 ms)."""
        return {
            "id": row.id,
            "status": row.status,
            "priority": row.priority,
            "channel": {"id": row.channel_account_id, "kind": row.channel_kind, "name": row.channel_name},
            "contact": {"id": row.contact_id, "name": row.contact_name, "email": row.contact_email},
            "assignee_id": row.assignee_id,
            "team_id": row.team_id,
            "labels": row.labels or [],
            "language": row.language,
            "language_source": row.language_source,
            "subject": row.subject,
            "last_message": {
                "preview": row.last_message_preview,
                "direction": row.last_message_direction,
                "at": row.last_activity_at,
            },
            "unread_count": unread(row),
            "message_count": row.message_count,
            "sla_due_at": row.sla_due_at,
            "sla": sla_data(row),
            "sla_policy_id": row.sla_policy_id,
            "snoozed_until": row.snoozed_until,
            "resolved_at": row.resolved_at,
            "first_response_at": row.first_response_at,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }


class ConversationPage(OutModel):
    items: list[ConversationOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last one")


class Sender(OutModel):
    type: Literal["contact", "user", "system"]
    id: str | None
    name: str | None


class AttachmentOut(OutModel):
    id: str
    filename: str
    content_type: str
    size: int
    url: str = Field(description="download URL (needs the same bearer token)")


class MessageVersion(OutModel):
    text: str
    replaced_at: datetime = Field(description="when the sender replaced this text by an edit")


class MessageOut(OutModel):
    id: str
    conversation_id: str
    direction: Direction
    kind: MessageKind
    sender: Sender
    subject: str | None
    text: str
    reply_text: str = Field(
        description="the new part of the text: quoted history and signature left out (the preview)"
    )
    html: str | None = Field(description="sanitised HTML (scripts, styles and event handlers removed)")
    attachments: list[AttachmentOut]
    raw_url: str | None = Field(
        description="download URL of the original as received (e.g. the .eml), when it was kept"
    )
    delivery_status: DeliveryStatus | None
    delivery_error: str | None
    flags: list[str]
    language: str | None
    sent_at: datetime | None
    edited_at: datetime | None = Field(description="when the sender last edited the message")
    versions: list[MessageVersion] = Field(
        description="what the message said before each edit, oldest first; empty when never edited"
    )
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any, files: list[Any]) -> MessageOut:
        if row.sender_contact_id is not None:
            sender = Sender(type="contact", id=row.sender_contact_id, name=row.contact_name)
        elif row.sender_user_id is not None:
            sender = Sender(type="user", id=row.sender_user_id, name=row.user_name)
        else:
            sender = Sender(type="system", id=None, name=None)
        return cls(
            id=row.id,
            conversation_id=row.conversation_id,
            direction=row.direction,
            kind=row.kind,
            sender=sender,
            subject=row.subject,
            text=row.text,
            reply_text=row.reply_text if row.reply_text is not None else row.text,
            html=nh3.clean(row.html) if row.html else None,
            raw_url=f"{PREFIX}/messages/{row.id}/raw" if row.raw_ref else None,
            attachments=[
                AttachmentOut(
                    id=f.id,
                    filename=f.filename,
                    content_type=f.content_type,
                    size=f.size,
                    url=f"{PREFIX}/attachments/{f.id}",
                )
                for f in files
            ],
            delivery_status=row.delivery_status,
            delivery_error=row.delivery_error,
            flags=list(row.flags or []),
            language=row.language,
            sent_at=row.sent_at,
            edited_at=row.edited_at,
            versions=[MessageVersion(**version) for version in row.versions or []],
            created_at=row.created_at,
        )


class MessagePage(OutModel):
    items: list[MessageOut] = Field(description="oldest first within the page")
    next_cursor: str | None = Field(description="pass as `cursor` for the page of older messages")
