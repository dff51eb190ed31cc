"""Contacts: the list and search, one contact with its identities and conversations, edits and merges."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, field_validator
from pydantic.json_schema import WithJsonSchema

from aggregator.api.conversations import publish
from aggregator.api.framework import (
    ALL_ROLES,
    STAFF,
    Api,
    ApiModel,
    Call,
    OutModel,
    decode_cursor,
    encode_cursor,
    invalid_cursor,
    json_response,
    not_null,
    parse_time_cursor,
    time_cursor,
)
from aggregator.api.schemas import ChannelRef
from aggregator.model import ConversationStatus, Event, utcnow
from aggregator.store.contacts import (
    CONTACT_CONVERSATIONS,
    ContactChange,
    ContactDetails,
    ContactRecord,
    SearchPosition,
)

api = Api()

MAX_ATTRIBUTE_KEYS = 100
MAX_ATTRIBUTES_BYTES = 16 * 1024
Id = Annotated[str, Field(min_length=1, max_length=64)]
# Documented without null: null is refused (the validator says what to send instead).
Attributes = Annotated[
    dict[str, Any] | None,
    WithJsonSchema({"type": "object", "maxProperties": MAX_ATTRIBUTE_KEYS, "additionalProperties": True}),
]


class IdentityOut(OutModel):
    id: str
    kind: str = Field(description="the channel kind the address belongs to (api, email, telegram ...)")
    address: str = Field(description="the contact's address on that kind of channel")
    display_name: str | None
    handle: str | None = Field(description="the channel's user name for the address (Telegram @username)")
    blocked_at: datetime | None = Field(
        description="set while the contact cannot be written to on this channel (e.g. blocked the bot)"
    )
    blocked_reason: str | None


class ContactOut(OutModel):
    id: str
    name: str | None
    email: str | None
    language: str | None
    attributes: dict[str, Any]
    merged_into: str | None = Field(
        description="set once this contact was merged into another: the id of the contact to follow"
    )
    created_at: datetime
    updated_at: datetime
    identities: list[IdentityOut] = Field(description="oldest first; empty once merged into another")

    @classmethod
    def fields_of(cls, record: ContactRecord) -> dict[str, Any]:
        """The fields of a contact record, for this model and those extending it."""
        row = record.row
        return {
            "id": row.id,
            "name": row.name,
            "email": row.email,
            "language": row.language,
            "attributes": dict(row.attributes or {}),
            "merged_into": row.merged_into,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "identities": [
                IdentityOut(
                    id=i.id,
                    kind=i.kind,
                    address=i.address,
                    display_name=i.display_name,
                    handle=i.handle,
                    blocked_at=i.blocked_at,
                    blocked_reason=i.blocked_reason,
                )
                for i in record.identities
            ],
        }

    @classmethod
    def from_record(cls, record: ContactRecord) -> ContactOut:
        """The contact as a list shows it."""
        return cls(**cls.fields_of(record))


class ContactPage(OutModel):
    items: list[ContactOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last one")


class ContactConversation(OutModel):
    id: str
    status: ConversationStatus
    channel: ChannelRef
    subject: str | None
    last_activity_at: datetime


class ContactDetail(ContactOut):
    conversations: list[ContactConversation] = Field(
        description=f"the newest {CONTACT_CONVERSATIONS} by last activity; empty once merged into another"
    )

    @classmethod
    def from_details(cls, details: ContactDetails) -> ContactDetail:
        """The contact with its conversations."""
        return cls(
            **ContactOut.fields_of(details.contact),
            conversations=[
                ContactConversation(
                    id=c.id,
                    status=c.status,
                    channel=ChannelRef(id=c.channel_account_id, kind=c.channel_kind, name=c.channel_name),
                    subject=c.subject,
                    last_activity_at=c.last_activity_at,
                )
                for c in details.conversations
            ],
        )


def _search_cursor(position: SearchPosition) -> str:
    if position.phase == "identity":
        return encode_cursor(["i", position.identity_id])
    return encode_cursor(["n", position.rowid])


def _parse_search_cursor(cursor: str) -> SearchPosition:
    phase, value = decode_cursor(cursor, 2)
    if phase == "i" and isinstance(value, str) and value:
        return SearchPosition("identity", identity_id=value)
    if phase == "n" and isinstance(value, int) and value > 0:
        return SearchPosition("name", rowid=value)
    raise invalid_cursor()


class ContactQuery(ApiModel):
    q: str | None = Field(
        None,
        max_length=200,
        description="finds contacts whose identity address starts with `q` (as typed or in lower case; "
        "an exact address too), listed first, then contacts whose name or email matches `q` as in the "
        "conversation search (every word must match, `word*` matches a prefix; old names count too), "
        "newest match first; a page may hold fewer than `limit` items",
    )
    limit: int = Field(25, ge=1, le=100)
    cursor: str | None = Field(None, max_length=400)


@api.endpoint(
    "GET",
    "/contacts",
    summary="Contacts, newest first, or those matching `q`",
    tag="contacts",
    roles=ALL_ROLES,
    query=ContactQuery,
    response=ContactPage,
    description="Contacts merged into another are not listed (their identities and conversations are on "
    "the contact they were merged into). A cursor is only valid with the same `q` it was given with.",
)
async def list_contacts(call: Call) -> web.StreamResponse:
    query = call.query_as(ContactQuery)
    next_cursor: str | None = None
    if query.q is not None and query.q.strip():
        after = _parse_search_cursor(query.cursor) if query.cursor is not None else None
        page = await call.store.search_contacts(call.workspace_id, query.q, limit=query.limit, after=after)
        if page.next_position is not None:
            next_cursor = _search_cursor(page.next_position)
    else:
        since = parse_time_cursor(query.cursor)
        page = await call.store.list_contacts(call.workspace_id, limit=query.limit, after=since)
        if page.next_cursor is not None:
            next_cursor = time_cursor(*page.next_cursor)
    return json_response(
        ContactPage(items=[ContactOut.from_record(r) for r in page.items], next_cursor=next_cursor)
    )


@api.endpoint(
    "GET",
    "/contacts/{id}",
    summary="One contact with its identities and conversations",
    tag="contacts",
    roles=ALL_ROLES,
    response=ContactDetail,
    description="A contact merged into another answers 200 with `merged_into` set and empty identities "
    "and conversations: follow `merged_into` to the contact that has them now.",
)
async def get_contact(call: Call) -> web.StreamResponse:
    details = await call.store.get_contact(call.workspace_id, call.path("id"))
    return json_response(ContactDetail.from_details(details))


class ContactPatch(ApiModel):
    name: str | None = Field(None, max_length=400, pattern=r"\S", description="null clears the name")
    email: str | None = Field(
        None, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$", description="null clears the email"
    )
    language: str | None = Field(
        None,
        max_length=35,
        pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$",
        description="a language tag (e.g. `de`, `pt-BR`); null clears it",
    )
    attributes: Attributes = Field(
        None,
        description=f"replaces the attributes (send {{}} to clear them); at most {MAX_ATTRIBUTE_KEYS} keys "
        f"and {MAX_ATTRIBUTES_BYTES} bytes as JSON",
        json_schema_extra=not_null,
    )

    @field_validator("name")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        return value.strip() if value is not None else None

    @field_validator("attributes")
    @classmethod
    def _bounded(cls, value: dict[str, Any] | None) -> dict[str, Any]:
        if value is None:
            raise ValueError("cannot be null (send {} to clear the attributes)")
        if len(value) > MAX_ATTRIBUTE_KEYS:
            raise ValueError(f"{len(value)} keys, over the limit of {MAX_ATTRIBUTE_KEYS}")
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_ATTRIBUTES_BYTES:
            raise ValueError(f"{size} bytes as JSON, over the limit of {MAX_ATTRIBUTES_BYTES}")
        return value


@api.endpoint(
    "PATCH",
    "/contacts/{id}",
    summary="Change a contact's name, email, language or attributes",
    tag="contacts",
    roles=STAFF,
    body=ContactPatch,
    response=ContactDetail,
    description="Fields not sent stay as they are. A new name or email is searchable at once, and the old "
    "ones stay searchable. A contact merged into another cannot be changed (400 naming `id`).",
)
async def patch_contact(call: Call) -> web.StreamResponse:
    body = call.body_as(ContactPatch)
    contact_id = call.path("id")
    change = ContactChange(
        fields=set(body.model_fields_set),
        name=body.name,
        email=body.email,
        language=body.language,
        attributes=body.attributes,
    )
    changed = await call.store.update_contact(
        call.workspace_id, contact_id, change, f"user:{call.caller.user_id}", utcnow()
    )
    if changed:
        await publish(
            call,
            Event(
                "contact.updated",
                call.workspace_id,
                {"contact_id": contact_id, "changed": sorted(changed), "by": call.caller.user_id},
            ),
        )
    details = await call.store.get_contact(call.workspace_id, contact_id)
    return json_response(ContactDetail.from_details(details))


class MergeBody(ApiModel):
    other_id: Id = Field(description="the contact merged into this one (it then has `merged_into` set)")


@api.endpoint(
    "POST",
    "/contacts/{id}/merge",
    summary="Merge another contact into this one",
    tag="contacts",
    roles=STAFF,
    body=MergeBody,
    response=ContactDetail,
    description="In one transaction, the other contact's identities, conversations and messages move to "
    "this one, and its name, email and language fill this one's empty fields; attributes are merged, this "
    "contact's values winning. New messages from the other's identities then arrive on this contact. The "
    "other contact stays, with `merged_into` set. 400 naming `other_id` when it is this contact, unknown "
    "in this workspace or merged already; 400 naming `id` when this contact was merged into another.",
)
async def merge_contact(call: Call) -> web.StreamResponse:
    body = call.body_as(MergeBody)
    contact_id = call.path("id")
    outcome = await call.store.merge_contacts(
        call.workspace_id, contact_id, body.other_id, f"user:{call.caller.user_id}", utcnow()
    )
    by = call.caller.user_id
    await publish(
        call,
        Event(
            "contact.merged",
            call.workspace_id,
            {"contact_id": contact_id, "merged_id": body.other_id, "by": by},
        ),
    )
    for conversation_id in outcome.conversation_ids:
        await publish(
            call,
            Event(
                "conversation.updated",
                call.workspace_id,
                {"conversation_id": conversation_id, "changed": ["contact_id"], "by": by},
                conversation_id,
            ),
        )
    details = await call.store.get_contact(call.workspace_id, contact_id)
    return json_response(ContactDetail.from_details(details))
