"""Writing a batch of inbound messages in one transaction (group commit).

A handful of statements per batch, whatever its size: the per-statement cost (thread hand-off to the
SQLite driver, statement compilation) is paid once per batch instead of once per message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Select,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    text,
    update,
)

from aggregator.language import Detectors
from aggregator.model import (
    ConversationStatus,
    Direction,
    Event,
    InboundMessage,
    IngestResult,
    MessageKind,
    Priority,
    new_id,
)
from aggregator.store import schema as t
from aggregator.store.schema import EncodedJSON
from aggregator.threading import (
    Candidate,
    ContactThreads,
    choose_conversation,
    normalize_subject,
    status_after_inbound,
)

log = logging.getLogger(__name__)

SEARCH_INSERT = text(
    "INSERT INTO search_index (body, workspace_id, conversation_id, ref_id, kind) "
    "VALUES (:body, :workspace_id, :conversation_id, :ref_id, :kind)"
)


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    filename: str
    content_type: str
    size: int
    sha256: str


@dataclass(slots=True)
class PreparedInbound:
    """An inbound message whose attachments and raw original are already on disk."""

    message: InboundMessage
    workspace_id: str
    attachments: Sequence[StoredAttachment] = ()
    raw_ref: str | None = None
    # The message's `extra`, encoded once by the pipeline (the message then travels without it).
    extra_json: EncodedJSON | None = None
    # (sha256, content) of small files not written yet: the batch writer makes them durable first.
    files: tuple[tuple[str, bytes], ...] = ()
    # The message's language as the pipeline found it: "detected" from its text, or the channel's "hint".
    # `language_strong`: a detection sure enough to change the conversation's language.
    language: str | None = None
    language_source: str | None = None
    language_strong: bool = False
    # The workspace's languages, when this message's language is to be detected among them: done by
    # `detect_languages` in the batch writer (another process), not on the event loop.
    detect_among: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.language_source is None and self.message.language_hint:
            # Nothing detected (no detector): the channel's word for it.
            self.language, self.language_source = self.message.language_hint, "hint"


# The detectors of this process (the writer process has its own), one per set of languages.
_detectors = Detectors()


def detect_languages(items: Sequence[PreparedInbound]) -> None:
    """Detect what the customer wrote now (the reply part of an email), falling back to the channel hint.

    Run before the batch's transaction (it costs about 0.3 ms a message: lingua holds the interpreter
    lock, so off the event loop is where it belongs). A message detection fails on keeps its hint.
    """
    for item in items:
        if item.detect_among is None:
            continue
        message = item.message
        try:
            detector = _detectors.get(item.detect_among)
            text = message.reply_text if message.reply_text is not None else message.text
            detection = detector.detect(text, (message.language_hint,))
        except Exception:
            log.exception("language detection failed for message %s", message.external_id)
            continue
        finally:
            item.detect_among = None
        if detection.language is not None:
            item.language = detection.language
            item.language_source = "detected" if detection.source == "text" else "hint"
            item.language_strong = detection.strong


@dataclass(slots=True)
class BatchOutcome:
    results: list[IngestResult]
    events: list[Event] = field(default_factory=list)


@dataclass(slots=True)
class _Conversation:
    id: str
    status: ConversationStatus
    new: bool
    changed: bool = False
    reopened: bool = False
    added: int = 0
    preview: str | None = None
    awaiting: bool = False  # a customer's own message came (not automatic mail): it waits for an answer


def ingest_batch(conn: Connection, items: Sequence[PreparedInbound], now: datetime) -> BatchOutcome:
    """Store what is new in `items` (in order) and say where each one went."""
    m, i, c, k = t.messages, t.identities, t.conversations, t.thread_keys

    existing = _stored_by(
        conn, m.c.external_id, {(p.message.channel_account_id, p.message.external_id) for p in items}
    )
    # The same raw original seen again under another external id (mail re-numbered by its server).
    same_content = _stored_by(
        conn,
        m.c.raw_ref,
        {
            (p.message.channel_account_id, p.raw_ref)
            for p in items
            if p.message.dedup_by_content and p.raw_ref is not None
        },
    )
    fresh = [
        p
        for p in items
        if (p.message.channel_account_id, p.message.external_id) not in existing
        and not (p.message.dedup_by_content and (p.message.channel_account_id, p.raw_ref) in same_content)
    ]

    identity_keys = {(p.workspace_id, p.message.sender.kind, p.message.sender.address) for p in fresh}
    identity_of: dict[tuple[str, str, str], tuple[str, str, str | None, str | None]] = {}
    if identity_keys:
        rows = _lookup(
            conn,
            select(
                i.c.id, i.c.contact_id, i.c.workspace_id, i.c.kind, i.c.address, i.c.display_name, i.c.handle
            ),
            (i.c.workspace_id, i.c.kind),
            i.c.address,
            identity_keys,
        )
        for row in rows:
            identity_of[(row.workspace_id, row.kind, row.address)] = (
                row.id,
                row.contact_id,
                row.display_name,
                row.handle,
            )

    key_pairs = {
        (p.message.channel_account_id, key)
        for p in fresh
        for key in (*p.message.thread.keys, *p.message.thread.contact_keys)
    }
    # channel account -> key -> (conversation, its contact)
    key_matches: dict[str, dict[str, tuple[str, str]]] = {}
    if key_pairs:
        rows = _lookup(
            conn,
            select(k.c.channel_account_id, k.c.key, k.c.conversation_id, c.c.contact_id).join(
                c, c.c.id == k.c.conversation_id
            ),
            (k.c.channel_account_id,),
            k.c.key,
            key_pairs,
        )
        for row in rows:
            key_matches.setdefault(row.channel_account_id, {})[row.key] = (
                row.conversation_id,
                row.contact_id,
            )

    # Messages (ours or theirs) the channel says these answer, by their external id.
    answered = _stored_by(
        conn,
        m.c.external_id,
        {(p.message.channel_account_id, ref) for p in fresh for ref in p.message.thread.external_refs},
    )
    # The stored versions of messages that come again edited.
    edited = _stored_versions(
        conn,
        {
            (p.message.channel_account_id, p.message.external_id)
            for p in items
            if p.message.edited_at is not None
            and (p.message.channel_account_id, p.message.external_id) in existing
        },
    )

    # Conversations named outright (reply token) or through one of our messages (our Message-ID).
    conversation_refs = {ref for p in fresh for ref in p.message.thread.conversation_refs}
    message_refs = {ref for p in fresh for ref in p.message.thread.message_refs}
    report_refs = {p.message.delivery_report.message_id for p in fresh if p.message.delivery_report}
    conversation_of_message: dict[str, tuple[str, str]] = {}
    if message_refs or report_refs:
        for ours in conn.execute(
            select(m.c.id, m.c.conversation_id, m.c.channel_account_id).where(
                m.c.id.in_(list(message_refs | report_refs)), m.c.direction == Direction.OUT.value
            )
        ):
            conversation_of_message[ours.id] = (ours.conversation_id, ours.channel_account_id)
    account_of_conversation: dict[str, str] = {}
    wanted_refs = (
        conversation_refs
        | {cid for cid, _ in conversation_of_message.values()}
        | {result.conversation_id for result in answered.values()}
    )

    known_contacts = {contact_id for _, contact_id, _, _ in identity_of.values()}
    # The contacts' languages: a conversation starts in it when its message says nothing of its own.
    contact_language: dict[str, str | None] = {}
    if known_contacts:
        co = t.contacts
        for found_contact in conn.execute(
            select(co.c.id, co.c.language).where(co.c.id.in_(list(known_contacts)))
        ):
            contact_language[found_contact.id] = found_contact.language
    # (contact, channel account) -> that contact's conversations there, latest activity last.
    of_contact: dict[tuple[str, str], ContactThreads] = {}
    conversation_subjects: dict[str, str] = {}
    conversations: dict[str, _Conversation] = {}
    if known_contacts:
        for found in _candidates(conn, fresh, known_contacts, now):
            of_contact.setdefault((found.contact_id, found.channel_account_id), ContactThreads()).add(
                Candidate(found.id, found.subject_key or "", found.last_activity_at)
            )
            conversation_subjects[found.id] = found.subject_key or ""
            conversations[found.id] = _Conversation(found.id, ConversationStatus(found.status), new=False)
            account_of_conversation[found.id] = found.channel_account_id
    wanted = (
        {cid for matches in key_matches.values() for cid, _ in matches.values()} | wanted_refs
    ) - conversations.keys()
    if wanted:
        for matched in conn.execute(
            select(c.c.id, c.c.status, c.c.channel_account_id, c.c.subject_key).where(
                c.c.id.in_(list(wanted))
            )
        ):
            conversation_subjects[matched.id] = matched.subject_key or ""
            conversations[matched.id] = _Conversation(
                matched.id, ConversationStatus(matched.status), new=False
            )
            account_of_conversation[matched.id] = matched.channel_account_id

    new_contacts: list[dict[str, Any]] = []
    new_identities: list[dict[str, Any]] = []
    renamed_identities: list[dict[str, Any]] = []
    new_conversations: list[dict[str, Any]] = []
    new_messages: list[dict[str, Any]] = []
    new_attachments: list[dict[str, Any]] = []
    new_keys: dict[tuple[str, str], str] = {}
    search_rows: list[dict[str, Any]] = []
    audit_rows: list[dict[str, Any]] = []
    events: list[Event] = []
    results: list[IngestResult] = []
    done_in_batch: dict[tuple[str, str], IngestResult] = {}
    content_in_batch: dict[tuple[str, str], IngestResult] = {}
    reports: list[dict[str, Any]] = []
    # Rows of messages new in this batch, by (channel account, external id): an edit can follow.
    new_rows: dict[tuple[str, str], dict[str, Any]] = {}
    edits: dict[str, _Version] = {}
    language_changes: list[dict[str, Any]] = []
    contact_languages: dict[str, str] = {}

    for prepared in items:
        msg = prepared.message
        ws = prepared.workspace_id
        account = msg.channel_account_id
        dedup_key = (account, msg.external_id)
        repeat = existing.get(dedup_key) or done_in_batch.get(dedup_key)
        content_key = (account, prepared.raw_ref) if msg.dedup_by_content and prepared.raw_ref else None
        if repeat is None and content_key is not None:
            repeat = same_content.get(content_key) or content_in_batch.get(content_key)
        if repeat is not None:
            updated = False
            if msg.edited_at is not None:
                new_row = new_rows.get(dedup_key)
                version = _Version.of_row(new_row) if new_row is not None else edited.get(dedup_key)
                if version is not None and version.apply(msg):
                    updated = True
                    if new_row is not None:
                        version.into_row(new_row)
                    else:
                        edits[repeat.message_id] = version
                    if msg.text:
                        search_rows.append(
                            _search_row(ws, repeat.conversation_id, repeat.message_id, "message", msg.text)
                        )
                    events.append(
                        Event(
                            "message.updated",
                            ws,
                            {"message_id": repeat.message_id, "conversation_id": repeat.conversation_id},
                            repeat.conversation_id,
                        )
                    )
            results.append(
                IngestResult(repeat.message_id, repeat.conversation_id, created=False, updated=updated)
            )
            continue

        identity_key = (ws, msg.sender.kind, msg.sender.address)
        known = identity_of.get(identity_key)
        if known is None:
            contact_id, identity_id = new_id(), new_id()
            contact_language[contact_id] = prepared.language
            new_contacts.append(
                {
                    "id": contact_id,
                    "workspace_id": ws,
                    "name": msg.sender.display_name,
                    "email": msg.sender.email,
                    "language": prepared.language,
                    "attributes": {},
                    "created_at": now,
                    "updated_at": now,
                }
            )
            new_identities.append(
                {
                    "id": identity_id,
                    "workspace_id": ws,
                    "contact_id": contact_id,
                    "kind": msg.sender.kind,
                    "address": msg.sender.address,
                    "display_name": msg.sender.display_name,
                    "handle": msg.sender.handle,
                    "created_at": now,
                }
            )
            for searchable in (msg.sender.display_name, msg.sender.email, msg.sender.handle):
                if searchable:
                    search_rows.append(_search_row(ws, None, contact_id, "contact", searchable))
            identity_of[identity_key] = (identity_id, contact_id, msg.sender.display_name, msg.sender.handle)
        else:
            identity_id, contact_id, display_name, handle = known
            renamed = bool(msg.sender.display_name) and msg.sender.display_name != display_name
            new_handle = msg.sender.handle is not None and msg.sender.handle != handle
            if renamed or new_handle:
                name = msg.sender.display_name if renamed else display_name
                renamed_identities.append(
                    {
                        "b_id": identity_id,
                        "b_contact": contact_id,
                        "b_name": name,
                        "b_old": display_name,
                        "b_handle": msg.sender.handle if new_handle else handle,
                    }
                )
                # The old name stays searchable too: people search by the name they remember.
                if renamed and name:
                    search_rows.append(_search_row(ws, None, contact_id, "contact", name))
                if new_handle and msg.sender.handle:
                    search_rows.append(_search_row(ws, None, contact_id, "contact", msg.sender.handle))
                identity_of[identity_key] = (
                    identity_id,
                    contact_id,
                    name,
                    msg.sender.handle if new_handle else handle,
                )

        matches = key_matches.setdefault(account, {})
        answers = [
            answered.get((account, r)) or done_in_batch.get((account, r)) for r in msg.thread.external_refs
        ]
        refs = [
            ref
            for ref in (
                *msg.thread.conversation_refs,
                *(
                    conversation_of_message[r][0]
                    for r in msg.thread.message_refs
                    if r in conversation_of_message
                ),
                *(answer.conversation_id for answer in answers if answer is not None),
            )
            if account_of_conversation.get(ref) == account
        ]
        candidates = of_contact.setdefault((contact_id, account), ContactThreads())
        conversation_id = choose_conversation(
            msg.thread,
            contact_id=contact_id,
            now=now,
            ref_matches=refs,
            key_matches=matches,
            of_contact=candidates,
        )
        if prepared.language is not None and contact_language.get(contact_id) is None:
            contact_language[contact_id] = prepared.language
            contact_languages[contact_id] = prepared.language
        language, language_source = prepared.language, prepared.language_source
        if language is None and contact_language.get(contact_id) is not None:
            language, language_source = contact_language[contact_id], "contact"
        if conversation_id is None:
            conversation_id = new_id()
            conv = _Conversation(conversation_id, ConversationStatus.OPEN, new=True)
            conversations[conversation_id] = conv
            conversation_subjects[conversation_id] = normalize_subject(msg.subject)
            new_conversations.append(
                {
                    "id": conversation_id,
                    "workspace_id": ws,
                    "channel_account_id": account,
                    "contact_id": contact_id,
                    "identity_id": identity_id,
                    "status": ConversationStatus.OPEN.value,
                    "priority": Priority.NORMAL.value,
                    "labels": [],
                    "subject": msg.subject,
                    "subject_key": conversation_subjects[conversation_id],
                    "language": language,
                    "language_source": language_source if language is not None else None,
                    "thread_ref": msg.thread.thread_ref,
                    "last_activity_at": now,
                    "last_inbound_at": now,
                    "created_at": now,
                    "updated_at": now,
                    "status_changed_at": now,
                    "message_count": 0,
                    "inbound_count": 0,
                    "last_message_direction": Direction.IN.value,
                }
            )
            if msg.subject:
                search_rows.append(_search_row(ws, conversation_id, conversation_id, "subject", msg.subject))
            audit_rows.append(_audit(ws, conversation_id, "conversation.created", {}, now))
            events.append(
                Event("conversation.created", ws, {"conversation_id": conversation_id}, conversation_id)
            )
        else:
            conv = conversations[conversation_id]
            status = status_after_inbound(conv.status, msg.flags)
            if status is not conv.status:
                audit_rows.append(
                    _audit(ws, conversation_id, "conversation.reopened", {"from": conv.status.value}, now)
                )
                events.append(
                    Event(
                        "conversation.reopened",
                        ws,
                        {"conversation_id": conversation_id, "from": conv.status.value},
                        conversation_id,
                    )
                )
                conv.status = status
                conv.reopened = True
            conv.changed = True
            if prepared.language is not None and not msg.flags.automatic:
                language_changes.append(
                    {
                        "b_id": conversation_id,
                        "b_language": prepared.language,
                        "b_source": prepared.language_source,
                        "b_strong": prepared.language_strong,
                    }
                )
        conv.added += 1
        conv.preview = preview(msg.reply_text or msg.text)
        if not (msg.flags.automatic or msg.flags.echo):
            conv.awaiting = True
        candidates.add(Candidate(conversation_id, conversation_subjects.get(conversation_id, ""), now))
        account_of_conversation[conversation_id] = account
        for key in (*msg.thread.keys, *msg.thread.contact_keys, *msg.thread.own_keys):
            if key not in matches:
                matches[key] = (conversation_id, contact_id)
                new_keys[(account, key)] = conversation_id

        message_id = new_id()
        new_rows[dedup_key] = {
            "id": message_id,
            "workspace_id": ws,
            "conversation_id": conversation_id,
            "channel_account_id": account,
            "direction": Direction.IN.value,
            "kind": MessageKind.MESSAGE.value,
            "sender_contact_id": contact_id,
            "subject": msg.subject,
            "text": msg.text,
            "reply_text": msg.reply_text,
            "reply_refs": list(msg.thread.reply_refs) or None,
            "html": msg.html,
            "external_id": msg.external_id,
            "raw_ref": prepared.raw_ref,
            "flags": msg.flags.as_list(),
            "extra": prepared.extra_json if prepared.extra_json is not None else msg.extra,
            "language": prepared.language,
            "sent_at": msg.sent_at,
            "edited_at": msg.edited_at,
            "versions": None,
            "created_at": now,
        }
        new_messages.append(new_rows[dedup_key])
        for attachment in prepared.attachments:
            new_attachments.append(
                {
                    "id": new_id(),
                    "workspace_id": ws,
                    "message_id": message_id,
                    "filename": attachment.filename,
                    "content_type": attachment.content_type,
                    "size": attachment.size,
                    "sha256": attachment.sha256,
                    "created_at": now,
                }
            )
        if msg.text:
            search_rows.append(_search_row(ws, conversation_id, message_id, "message", msg.text))
        events.append(
            Event(
                "message.created",
                ws,
                {"message_id": message_id, "conversation_id": conversation_id, "direction": "in"},
                conversation_id,
            )
        )
        report = msg.delivery_report
        if report is not None:
            reported = conversation_of_message.get(report.message_id)
            if reported is not None and reported[1] == account:
                reports.append(
                    {
                        "b_id": report.message_id,
                        "b_status": report.status.value,
                        "b_error": report.reason,
                    }
                )
                events.append(
                    Event(
                        "message.delivery",
                        ws,
                        {
                            "message_id": report.message_id,
                            "conversation_id": reported[0],
                            "delivery_status": report.status.value,
                            "error": report.reason,
                        },
                        reported[0],
                    )
                )
        result = IngestResult(message_id, conversation_id, created=True)
        done_in_batch[dedup_key] = result
        if content_key is not None:
            content_in_batch[content_key] = result
        results.append(result)

    if new_contacts:
        conn.execute(insert(t.contacts), new_contacts)
        conn.execute(insert(t.identities), new_identities)
    if renamed_identities:
        conn.execute(
            update(i)
            .where(i.c.id == bindparam("b_id"))
            .values(display_name=bindparam("b_name"), handle=bindparam("b_handle")),
            renamed_identities,
        )
        # The contact's name follows unless someone set it to something else.
        co = t.contacts
        conn.execute(
            update(co)
            .where(
                co.c.id == bindparam("b_contact"),
                or_(co.c.name.is_(None), co.c.name == bindparam("b_old")),
            )
            .values(name=bindparam("b_name"), updated_at=now),
            renamed_identities,
        )
    if new_conversations:
        for values in new_conversations:
            conv = conversations[values["id"]]
            values["message_count"] = values["inbound_count"] = conv.added
            values["last_message_preview"] = conv.preview
        conn.execute(insert(t.conversations), new_conversations)
    if new_messages:
        conn.execute(insert(t.messages), new_messages)
    if new_attachments:
        conn.execute(insert(t.attachments), new_attachments)
    if new_keys:
        conn.execute(
            insert(k).prefix_with("OR IGNORE"),
            [
                {"channel_account_id": a, "key": key, "conversation_id": cid}
                for (a, key), cid in new_keys.items()
            ],
        )
    touched = [
        {
            "b_id": conv.id,
            "b_status": conv.status.value,
            "b_now": now,
            "b_added": conv.added,
            "b_preview": conv.preview,
        }
        for conv in conversations.values()
        if conv.changed and not conv.new
    ]
    reopened = [{"b_id": conv.id} for conv in conversations.values() if conv.reopened]
    if reopened:
        conn.execute(
            update(c)
            .where(c.c.id == bindparam("b_id"))
            .values(resolved_at=None, snoozed_until=None, status_changed_at=now),
            reopened,
        )
    if touched:
        conn.execute(
            update(c)
            .where(c.c.id == bindparam("b_id"))
            .values(
                status=bindparam("b_status"),
                last_activity_at=bindparam("b_now"),
                last_inbound_at=bindparam("b_now"),
                updated_at=bindparam("b_now"),
                message_count=c.c.message_count + bindparam("b_added"),
                inbound_count=c.c.inbound_count + bindparam("b_added"),
                last_message_preview=bindparam("b_preview"),
                last_message_direction=Direction.IN.value,
            ),
            touched,
        )
    awaiting = [{"b_id": conv.id} for conv in conversations.values() if conv.awaiting]
    if awaiting:
        # The first unanswered customer message starts the response timers (aggregator/sla.py).
        conn.execute(
            update(c)
            .where(c.c.id == bindparam("b_id"), c.c.awaiting_since.is_(None))
            .values(awaiting_since=now),
            awaiting,
        )
    if language_changes:
        # A strong detection sets the language unless an agent chose it; anything else only fills a gap.
        conn.execute(
            update(c)
            .where(
                c.c.id == bindparam("b_id"),
                or_(c.c.language_source.is_(None), c.c.language_source != "agent"),
                or_(bindparam("b_strong") == True, c.c.language.is_(None)),  # noqa: E712
                or_(c.c.language.is_(None), c.c.language != bindparam("b_language")),
            )
            .values(language=bindparam("b_language"), language_source=bindparam("b_source")),
            language_changes,
        )
    if contact_languages:
        co = t.contacts
        conn.execute(
            update(co)
            .where(co.c.id == bindparam("b_contact"), co.c.language.is_(None))
            .values(language=bindparam("b_language")),
            [{"b_contact": k, "b_language": v} for k, v in contact_languages.items()],
        )
    if reports:
        conn.execute(
            update(m)
            .where(m.c.id == bindparam("b_id"))
            .values(delivery_status=bindparam("b_status"), delivery_error=bindparam("b_error")),
            reports,
        )
    if edits:
        _store_edits(conn, edits)
    if search_rows:
        conn.execute(SEARCH_INSERT, search_rows)
    if audit_rows:
        conn.execute(insert(t.audit_events), audit_rows)
    return BatchOutcome(results, events)


def _candidates(
    conn: Connection, fresh: Sequence[PreparedInbound], contacts: set[str], now: datetime
) -> list[Any]:
    """The conversations threading may pick for these senders, oldest activity first: each sender's
    latest on each channel account of the batch, and those with one of the batch's subjects active
    within its window.

    Bounded by what threading can use, not by how many conversations a sender ever had.
    """
    c = t.conversations
    accounts = list({p.message.channel_account_id for p in fresh})
    columns = (
        c.c.id,
        c.c.contact_id,
        c.c.channel_account_id,
        c.c.status,
        c.c.subject_key,
        c.c.last_activity_at,
    )
    where = (c.c.contact_id.in_(list(contacts)), c.c.channel_account_id.in_(accounts))
    latest = (
        select(c.c.contact_id, c.c.channel_account_id, func.max(c.c.last_activity_at).label("latest"))
        .where(*where)
        .group_by(c.c.contact_id, c.c.channel_account_id)
        .subquery()
    )
    rows: dict[str, Any] = {
        row.id: row
        for row in conn.execute(
            select(*columns).join(
                latest,
                and_(
                    c.c.contact_id == latest.c.contact_id,
                    c.c.channel_account_id == latest.c.channel_account_id,
                    c.c.last_activity_at == latest.c.latest,
                ),
            )
        )
    }
    hints = [p.message.thread for p in fresh if p.message.thread.subject_key]
    if hints:
        subjects = list({h.subject_key for h in hints if h.subject_key})
        query = select(*columns).where(*where, c.c.subject_key.in_(subjects))
        if all(h.subject_window is not None for h in hints):
            widest = max(h.subject_window for h in hints if h.subject_window is not None)
            query = query.where(c.c.last_activity_at >= now - widest)
        rows.update((row.id, row) for row in conn.execute(query))
    return sorted(rows.values(), key=lambda row: (row.last_activity_at, row.id))


PREVIEW_CHARS = 200


def preview(text: str) -> str:
    """The start of a message as the inbox list shows it: one line, at most PREVIEW_CHARS characters."""
    return " ".join(text[: PREVIEW_CHARS * 2].split())[:PREVIEW_CHARS]


def _stored_by(
    conn: Connection, column: ColumnElement[Any], keys: set[tuple[str, str]]
) -> dict[tuple[str, str], IngestResult]:
    """Messages already stored, by (channel account, value of `column`): what a repeat is answered with."""
    if not keys:
        return {}
    m = t.messages
    rows = _lookup(
        conn,
        select(m.c.id, m.c.conversation_id, m.c.channel_account_id, column.label("value")),
        (m.c.channel_account_id,),
        column,
        keys,
    )
    return {
        (row.channel_account_id, row.value): IngestResult(row.id, row.conversation_id, created=False)
        for row in rows
    }


@dataclass(slots=True)
class _Version:
    """A message's current text and what it said before, as an edit changes them."""

    message_id: str
    conversation_id: str
    text: str
    reply_text: str | None
    html: str | None
    edited_at: datetime | None
    versions: list[dict[str, Any]]

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> _Version:
        return cls(
            row["id"],
            row["conversation_id"],
            row["text"],
            row["reply_text"],
            row["html"],
            row["edited_at"],
            list(row["versions"] or []),
        )

    def apply(self, msg: InboundMessage) -> bool:
        """Take `msg` as the new version unless it is older than, or the same as, the current one."""
        assert msg.edited_at is not None
        if self.edited_at is not None and msg.edited_at <= self.edited_at:
            return False
        if (msg.text, msg.html) == (self.text, self.html):
            return False
        self.versions.append({"text": self.text, "replaced_at": msg.edited_at.isoformat()})
        self.text, self.reply_text, self.html = msg.text, msg.reply_text, msg.html
        self.edited_at = msg.edited_at
        return True

    def into_row(self, row: dict[str, Any]) -> None:
        row.update(
            text=self.text,
            reply_text=self.reply_text,
            html=self.html,
            edited_at=self.edited_at,
            versions=self.versions,
        )


def _stored_versions(conn: Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], _Version]:
    if not keys:
        return {}
    m = t.messages
    rows = _lookup(
        conn,
        select(
            m.c.id,
            m.c.conversation_id,
            m.c.channel_account_id,
            m.c.external_id,
            m.c.text,
            m.c.reply_text,
            m.c.html,
            m.c.edited_at,
            m.c.versions,
        ),
        (m.c.channel_account_id,),
        m.c.external_id,
        keys,
    )
    return {
        (row.channel_account_id, row.external_id): _Version(
            row.id,
            row.conversation_id,
            row.text,
            row.reply_text,
            row.html,
            row.edited_at,
            list(row.versions or []),
        )
        for row in rows
    }


def _store_edits(conn: Connection, edits: dict[str, _Version]) -> None:
    m, c = t.messages, t.conversations
    conn.execute(
        update(m)
        .where(m.c.id == bindparam("b_id"))
        .values(
            text=bindparam("b_text"),
            reply_text=bindparam("b_reply"),
            html=bindparam("b_html"),
            edited_at=bindparam("b_at"),
            versions=bindparam("b_versions", type_=m.c.versions.type),
        ),
        [
            {
                "b_id": v.message_id,
                "b_text": v.text,
                "b_reply": v.reply_text,
                "b_html": v.html,
                "b_at": v.edited_at,
                "b_versions": v.versions,
            }
            for v in edits.values()
        ],
    )
    # The inbox preview follows when the edited message is the conversation's latest.
    latest = (
        select(m.c.id)
        .where(m.c.conversation_id == bindparam("b_conv"))
        .order_by(m.c.created_at.desc(), m.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    conn.execute(
        update(c)
        .where(c.c.id == bindparam("b_conv"), latest == bindparam("b_id"))
        .values(last_message_preview=bindparam("b_preview")),
        [
            {"b_conv": v.conversation_id, "b_id": v.message_id, "b_preview": preview(v.reply_text or v.text)}
            for v in edits.values()
        ],
    )


def _lookup(
    conn: Connection,
    query: Select[Any],
    prefix: tuple[ColumnElement[Any], ...],
    last: ColumnElement[Any],
    keys: Iterable[tuple[str, ...]],
) -> list[Row[Any]]:
    """Rows whose (prefix..., last) is one of `keys`, one query per distinct prefix.

    Not `tuple_(...).in_(...)`: SQLite plans a row-value IN over a VALUES list as a full table scan,
    which made ingest slow down in step with the size of the table. `a = ? AND b IN (...)` uses the
    unique index.
    """
    groups: dict[tuple[str, ...], list[str]] = {}
    for key in keys:
        groups.setdefault(key[:-1], []).append(key[-1])
    rows: list[Row[Any]] = []
    for values, lasts in groups.items():
        conditions = [column == value for column, value in zip(prefix, values, strict=True)]
        rows.extend(conn.execute(query.where(*conditions, last.in_(lasts))))
    return rows


def _search_row(
    workspace_id: str, conversation_id: str | None, ref_id: str, kind: str, body: str
) -> dict[str, Any]:
    return {
        "body": body,
        "workspace_id": workspace_id,
        "conversation_id": conversation_id,
        "ref_id": ref_id,
        "kind": kind,
    }


def _audit(
    workspace_id: str, conversation_id: str, kind: str, data: dict[str, Any], now: datetime
) -> dict[str, Any]:
    return {
        "id": new_id(),
        "workspace_id": workspace_id,
        "conversation_id": conversation_id,
        "actor": "system",
        "type": kind,
        "data": data,
        "created_at": now,
    }
