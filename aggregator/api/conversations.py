"""Conversations, their messages and notes, read marks and attachment downloads."""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, timedelta
from typing import Annotated, Any

from aiohttp import hdrs, web
from aiohttp.helpers import content_disposition_header
from pydantic import AwareDatetime, Field, StrictFloat, StrictInt, field_validator
from pydantic.json_schema import WithJsonSchema

from aggregator.api.framework import (
    ALL_ROLES,
    STAFF,
    Api,
    ApiError,
    ApiModel,
    Call,
    ProblemDetail,
    decode_cursor,
    encode_cursor,
    json_response,
    not_null,
    parse_time_cursor,
    time_cursor,
)
from aggregator.api.schemas import (
    MAX_LABELS,
    MAX_TEXT_CHARS,
    ConversationOut,
    ConversationPage,
    Label,
    MessageOut,
    MessagePage,
)
from aggregator.bus import BusUnavailable
from aggregator.model import ConversationStatus, Event, Priority, utcnow
from aggregator.replies import compose
from aggregator.store.inbox import ConversationChange, ConversationFilter
from aggregator.templates import TemplateInvalid

log = logging.getLogger(__name__)

api = Api()

STATUS_PATTERN = r"^(all|(open|pending|snoozed|resolved)(,(open|pending|snoozed|resolved))*)$"
# Served inline only when a browser cannot run anything in them; everything else downloads.
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf"})
Id = Annotated[str, Field(min_length=1, max_length=64)]
Language = Annotated[str, Field(max_length=35, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")]
Variables = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")],
        Annotated[str, Field(max_length=10_000)] | StrictInt | StrictFloat,  # true is not 1
    ],
    Field(max_length=50, description="with `template`: values for its `{{ vars.<name> }}`"),
]


async def publish(call: Call, event: Event) -> None:
    """Live events are best effort: the record is in SQL whatever the bus does."""
    with contextlib.suppress(BusUnavailable):
        await call.bus.publish(event)


class ConversationQuery(ApiModel):
    status: str | None = Field(
        None,
        pattern=STATUS_PATTERN,
        description="one status, a comma list, or `all` (default: every status but resolved)",
    )
    channel: str | None = Field(None, max_length=64, description="a channel account id, or a channel kind")
    assignee: str | None = Field(None, max_length=64, description="`me`, `none`, or a user id")
    team: str | None = Field(None, max_length=64, description="a team id")
    label: str | None = Field(None, max_length=100)
    language: str | None = Field(None, max_length=35)
    priority: Priority | None = None
    sla_due_within: int | None = Field(
        None,
        ge=0,
        le=525_600,
        description="minutes: only conversations with a running SLA timer due within that many minutes "
        "from now (not breached yet; overdue ones not yet marked breached included)",
    )
    sla_breached: bool | None = Field(
        None, description="true: only conversations whose SLA timer was breached"
    )
    q: str | None = Field(
        None,
        max_length=200,
        description="full-text search in messages and subjects; every word must match, `word*` matches a "
        "prefix; results come newest match first and a page may hold fewer than `limit` items",
    )
    limit: int = Field(25, ge=1, le=100)
    cursor: str | None = Field(None, max_length=400)


@api.endpoint(
    "GET",
    "/conversations",
    summary="The inbox: conversations, newest activity first",
    tag="conversations",
    roles=ALL_ROLES,
    query=ConversationQuery,
    response=ConversationPage,
)
async def list_conversations(call: Call) -> web.StreamResponse:
    query = call.query_as(ConversationQuery)
    statuses: tuple[str, ...] | None
    if query.status is None:
        statuses = tuple(s.value for s in ConversationStatus if s is not ConversationStatus.RESOLVED)
    elif query.status == "all":
        statuses = None
    else:
        statuses = tuple(dict.fromkeys(query.status.split(",")))
    channel_ids = None
    if query.channel is not None:
        channel_ids = await call.store.channel_ids_of_kind(call.workspace_id, query.channel)
        if not channel_ids:
            return json_response(ConversationPage(items=[], next_cursor=None))
    assignee_id = None
    unassigned = False
    if query.assignee == "me":
        assignee_id = call.caller.user_id
    elif query.assignee == "none":
        unassigned = True
    else:
        assignee_id = query.assignee
    filters = ConversationFilter(
        statuses=statuses,
        channel_account_ids=channel_ids,
        assignee_id=assignee_id,
        unassigned=unassigned,
        team_id=query.team,
        label=query.label,
        language=query.language,
        priority=query.priority.value if query.priority is not None else None,
        sla_due_before=utcnow() + timedelta(minutes=query.sla_due_within)
        if query.sla_due_within is not None
        else None,
        sla_breached=bool(query.sla_breached),
    )
    next_cursor: str | None = None
    if query.q is not None and query.q.strip():
        before = None
        if query.cursor is not None:
            (value,) = decode_cursor(query.cursor, 1)
            if not isinstance(value, int):
                raise ApiError(400, "invalid_cursor", "cursor is not one this API gave out", "cursor")
            before = value
        page = await call.store.search_conversations(
            call.workspace_id, call.caller.user_id, filters, query.q, limit=query.limit, before_rowid=before
        )
        if page.next_cursor is not None:
            next_cursor = encode_cursor(list(page.next_cursor))
    else:
        after = parse_time_cursor(query.cursor)
        page = await call.store.list_conversations(
            call.workspace_id, call.caller.user_id, filters, limit=query.limit, after=after
        )
        if page.next_cursor is not None:
            next_cursor = time_cursor(*page.next_cursor)
    return json_response(
        ConversationPage.model_validate(
            {"items": [ConversationOut.data(row) for row in page.rows], "next_cursor": next_cursor}
        )
    )


@api.endpoint(
    "GET",
    "/conversations/{id}",
    summary="One conversation",
    tag="conversations",
    roles=ALL_ROLES,
    response=ConversationOut,
)
async def get_conversation(call: Call) -> web.StreamResponse:
    row = await call.store.get_conversation(call.workspace_id, call.caller.user_id, call.path("id"))
    return json_response(ConversationOut.from_row(row))


def _enum_schema(values: type[ConversationStatus] | type[Priority]) -> WithJsonSchema:
    # Leaving a field out keeps it; null is refused, so the document must not offer it.
    return WithJsonSchema({"type": "string", "enum": [v.value for v in values]})


class ConversationPatch(ApiModel):
    status: Annotated[ConversationStatus | None, _enum_schema(ConversationStatus)] = Field(
        None, json_schema_extra=not_null
    )
    priority: Annotated[Priority | None, _enum_schema(Priority)] = Field(None, json_schema_extra=not_null)
    assignee_id: Id | None = Field(None, description="a user id, or null to unassign")
    team_id: Id | None = Field(None, description="a team id, or null")
    labels: Annotated[
        list[Label] | None,
        WithJsonSchema(
            {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": r"\S"},
                "maxItems": MAX_LABELS,
                "description": "replaces the labels",
            }
        ),
    ] = Field(None, max_length=MAX_LABELS, json_schema_extra=not_null)
    snooze_until: AwareDatetime | None = Field(
        None,
        description="snoozes the conversation until then (it reopens by itself, or on a new customer "
        "message); null ends a snooze",
    )
    language: Language | None = Field(
        None,
        description="the language replies are written in (templates choose their variant by it); set "
        "here, detection never changes it; null hands it back to detection of the next customer message",
    )

    sla_policy_id: Id | None = Field(
        None, description="an SLA policy for this conversation, or null for the first matching policy"
    )

    @field_validator("status", "priority", "labels")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("cannot be null")
        return value


@api.endpoint(
    "PATCH",
    "/conversations/{id}",
    summary="Change status, priority, assignee, team, labels, snooze, language or SLA policy",
    tag="conversations",
    roles=STAFF,
    body=ConversationPatch,
    response=ConversationOut,
)
async def patch_conversation(call: Call) -> web.StreamResponse:
    body = call.body_as(ConversationPatch)
    given = set(body.model_fields_set)
    now = utcnow()
    if body.snooze_until is not None:
        if "status" in given and body.status is not ConversationStatus.SNOOZED:
            raise ApiError(
                400,
                "invalid_field",
                "snooze_until: cannot be set with a status other than snoozed",
                "snooze_until",
            )
        if body.snooze_until <= now:
            raise ApiError(400, "invalid_field", "snooze_until: must be in the future", "snooze_until")
    elif body.status is ConversationStatus.SNOOZED:
        raise ApiError(400, "missing_field", "snooze_until: required to snooze (until when?)", "snooze_until")
    change = ConversationChange(
        fields=given,
        status=body.status.value if body.status is not None else None,
        priority=body.priority.value if body.priority is not None else None,
        assignee_id=body.assignee_id,
        team_id=body.team_id,
        labels=list(body.labels) if body.labels is not None else None,
        snooze_until=body.snooze_until.astimezone(UTC) if body.snooze_until is not None else None,
        language=body.language,
        sla_policy_id=body.sla_policy_id,
    )
    conversation_id = call.path("id")
    changed = await call.store.update_conversation(
        call.workspace_id, conversation_id, change, f"user:{call.caller.user_id}", now
    )
    if changed:
        await publish(
            call,
            Event(
                "conversation.updated",
                call.workspace_id,
                {
                    "conversation_id": conversation_id,
                    "changed": sorted(changed),
                    "by": call.caller.user_id,
                },
                conversation_id,
            ),
        )
    row = await call.store.get_conversation(call.workspace_id, call.caller.user_id, conversation_id)
    return json_response(ConversationOut.from_row(row))


class MessageQuery(ApiModel):
    limit: int = Field(50, ge=1, le=100)
    cursor: str | None = Field(None, max_length=400)


@api.endpoint(
    "GET",
    "/conversations/{id}/messages",
    summary="Messages, notes and events of a conversation: the newest page first, oldest first within it",
    tag="conversations",
    roles=ALL_ROLES,
    query=MessageQuery,
    response=MessagePage,
)
async def list_messages(call: Call) -> web.StreamResponse:
    query = call.query_as(MessageQuery)
    before = parse_time_cursor(query.cursor)
    rows, files, cursor = await call.store.list_messages(
        call.workspace_id, call.path("id"), limit=query.limit, before=before
    )
    return json_response(
        MessagePage(
            items=[MessageOut.from_row(row, files.get(row.id, [])) for row in rows],
            next_cursor=time_cursor(*cursor) if cursor is not None else None,
        )
    )


class NewMessage(ApiModel):
    text: str | None = Field(
        None, min_length=1, max_length=MAX_TEXT_CHARS, description="the reply or note; or give `template`"
    )
    private: bool = Field(False, description="true: an internal note, never sent to the customer")
    template: Id | None = Field(
        None,
        description="reply with this template (id or shortcode) instead of `text`: rendered in the "
        "conversation's language for its channel, as POST /templates/{id}/render previews it",
    )
    variables: Variables = Field(default_factory=dict)
    language: Language | None = Field(None, description="with `template`: this language instead of the conversation's")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("cannot be blank")
        return value


@api.endpoint(
    "POST",
    "/conversations/{id}/messages",
    summary="Reply to the customer (202, delivered through the outbox) or add a private note",
    tag="conversations",
    roles=STAFF,
    body=NewMessage,
    response=MessageOut,
    status=202,
    errors=(422,),
    description="A reply answers 202 with the message in delivery_status `queued`; its delivery status "
    "then changes on the live stream (`message.delivery`). A note (`private: true`) answers 202 too and "
    "is never sent. Give `text`, or `template` (with `variables`) to reply from a template: 422 "
    "`invalid_template` when it cannot be rendered for this conversation.",
)
async def post_message(call: Call) -> web.StreamResponse:
    body = call.body_as(NewMessage)
    conversation_id = call.path("id")
    if body.text is None and body.template is None:
        raise ApiError(400, "missing_field", "text: give either text or template (one of them)", "text")
    if body.text is not None and body.template is not None:
        raise ApiError(400, "invalid_field", "template: give either text or template, not both", "template")
    if body.template is None and (body.variables or body.language is not None):
        field = "variables" if body.variables else "language"
        raise ApiError(400, "invalid_field", f"{field}: only used with template", field)
    html = subject = language = None
    extra: dict[str, Any] = {}
    if body.template is not None:
        try:
            composed = await compose(
                call.store,
                call.channels.registry,
                call.workspace_id,
                conversation_id,
                body.template,
                variables=body.variables,
                user_id=call.caller.user_id,
                language=body.language,
            )
        except TemplateInvalid as exc:
            raise ApiError(
                422,
                "invalid_template",
                f"template {body.template!r} cannot be rendered for this conversation: {exc}",
                "template",
                [
                    ProblemDetail(language=p.language, field=p.field, line=p.line, message=p.message)
                    for p in exc.problems
                ],
            ) from exc
        text_body, html, subject, extra = composed.message_fields()
        if body.private:
            html, extra = None, {"template": extra["template"]}
        language = composed.rendered.language
    else:
        assert body.text is not None
        text_body = body.text
    message_id, outbox_id = await call.store.create_message(
        call.workspace_id,
        conversation_id,
        text_body,
        user_id=call.caller.user_id,
        private=body.private,
        html=html,
        subject=subject,
        language=language,
        extra=extra,
    )
    if outbox_id is not None:
        await call.enqueue_outbox(outbox_id)
    await publish(
        call,
        Event(
            "message.created",
            call.workspace_id,
            {
                "conversation_id": conversation_id,
                "message_id": message_id,
                "direction": "out",
                "kind": "note" if body.private else "message",
            },
            conversation_id,
        ),
    )
    row, files = await call.store.get_message_row(call.workspace_id, message_id)
    return json_response(MessageOut.from_row(row, files), status=202)


@api.endpoint(
    "POST",
    "/conversations/{id}/read",
    summary="Mark the conversation read for the calling user",
    tag="conversations",
    roles=ALL_ROLES,
    status=204,
)
async def mark_read(call: Call) -> web.StreamResponse:
    conversation_id = call.path("id")
    await call.store.mark_read(call.workspace_id, conversation_id, call.caller.user_id, utcnow())
    await publish(
        call,
        Event(
            "conversation.read",
            call.workspace_id,
            {"conversation_id": conversation_id, "user_id": call.caller.user_id},
            conversation_id,
        ),
    )
    return web.Response(status=204)


@api.endpoint(
    "GET",
    "/attachments/{id}",
    summary="Download an attachment",
    tag="conversations",
    roles=ALL_ROLES,
    content_type="*/*",
    description="Served with its type, `X-Content-Type-Options: nosniff` and a sandboxing CSP; only images "
    "and PDF are inline, everything else (HTML above all) is a download.",
)
async def get_attachment(call: Call) -> web.StreamResponse:
    row = await call.store.get_attachment(call.workspace_id, call.path("id"))
    path = call.attachments.path_for(row.sha256)
    if not path.exists():
        raise ApiError(
            404, "file_missing", f"the file of attachment {row.id!r} is missing from the data directory"
        )
    content_type = row.content_type.split(";")[0].strip().lower() or "application/octet-stream"
    inline = content_type in INLINE_TYPES
    response = web.FileResponse(path)
    response.content_type = content_type if inline else "application/octet-stream"
    response.headers[hdrs.CONTENT_DISPOSITION] = content_disposition_header(
        "inline" if inline else "attachment", filename=row.filename or "attachment"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    return response


@api.endpoint(
    "GET",
    "/messages/{id}/raw",
    summary="Download a message as it was received",
    tag="conversations",
    roles=ALL_ROLES,
    content_type="*/*",
    description="The original bytes (for email the .eml, headers included), always as a download "
    "(`message/rfc822` for email) with `nosniff` and a sandboxing CSP.",
)
async def get_raw_message(call: Call) -> web.StreamResponse:
    row, _ = await call.store.get_message_row(call.workspace_id, call.path("id"))
    if not row.raw_ref:
        raise ApiError(404, "no_raw", f"message {row.id!r} has no original kept (it was not received as one)")
    path = call.attachments.path_for(row.raw_ref)
    if not path.exists():
        raise ApiError(404, "file_missing", f"the original of message {row.id!r} is missing from the data directory")
    kind = await call.store.channel_kind(row.channel_account_id)
    response = web.FileResponse(path)
    response.content_type = "message/rfc822" if kind == "email" else "application/octet-stream"
    response.headers[hdrs.CONTENT_DISPOSITION] = content_disposition_header(
        "attachment", filename=f"{row.id}.eml" if kind == "email" else f"{row.id}.raw"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    return response
