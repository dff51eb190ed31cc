"""Contacts: search, details, edits and explicit merges."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import insert, literal, select, text, tuple_, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from aggregator.model import new_id
from aggregator.store import schema as t
from aggregator.store.base import Invalid, NotFound, StoreBase
from aggregator.store.inbox import SEARCH_CHUNK, SEARCH_CHUNKS_PER_PAGE, fts_query
from aggregator.store.ingest_batch import SEARCH_INSERT

# GET /contacts/{id} lists at most this many conversations, newest activity first.
CONTACT_CONVERSATIONS = 100
# Merges are explicit and checked, so chains stay short; the bound only guards against a loop.
MAX_MERGE_CHAIN = 50
# Just above every code point: `prefix <= address < prefix + END` is "address starts with prefix".
PREFIX_END = "\U0010ffff"
# Messages minted this long before a merge's unlocked scan are certainly committed and seen by it.
MERGE_SCAN_MARGIN_SECONDS = 10
IN_CHUNK = 500

_KINDS = text(
    # Skip-scan over the unique (workspace_id, kind, address) index: one seek per kind, not a scan.
    "WITH RECURSIVE k(kind) AS ("
    " SELECT (SELECT min(kind) FROM identities WHERE workspace_id = :ws)"
    " UNION ALL"
    " SELECT (SELECT min(kind) FROM identities WHERE workspace_id = :ws AND kind > k.kind)"
    " FROM k WHERE k.kind IS NOT NULL"
    ") SELECT kind FROM k WHERE kind IS NOT NULL"
)


@dataclass(frozen=True, slots=True)
class ContactRecord:
    """A contact row with its identities (oldest first)."""

    row: Any
    identities: list[Any]


@dataclass(frozen=True, slots=True)
class ContactDetails:
    contact: ContactRecord
    conversations: list[Any]


@dataclass(frozen=True, slots=True)
class SearchPosition:
    """Where a search page ended: after an identity (by id), or at an FTS rowid (newest first)."""

    phase: Literal["identity", "name"]
    identity_id: str = ""
    rowid: int = 0


@dataclass(frozen=True, slots=True)
class ContactPage:
    items: list[ContactRecord]
    next_cursor: tuple[datetime, str] | None = None
    next_position: SearchPosition | None = None


@dataclass(slots=True)
class ContactChange:
    """The fields a PATCH sets; `fields` lists which ones were given (None clears)."""

    fields: set[str] = field(default_factory=set)
    name: str | None = None
    email: str | None = None
    language: str | None = None
    attributes: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    identities: int
    conversation_ids: list[str]
    messages: int


def _chunks(values: Sequence[str], size: int = IN_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _id_floor(seconds_ago: float) -> str:
    """The smallest id new_id() could have minted `seconds_ago` seconds ago."""
    ms = time.time_ns() // 1_000_000 - int(seconds_ago * 1000)
    return (max(ms, 0).to_bytes(6, "big") + bytes(10)).hex()


class _Prefixes:
    """The address prefixes a search term stands for: as typed, and in lower case."""

    def __init__(self, q: str) -> None:
        self.values = list(dict.fromkeys([q, q.lower()]))

    def variant(self, address: str) -> int | None:
        for index, prefix in enumerate(self.values):
            if prefix <= address < prefix + PREFIX_END:
                return index
        return None

    def position(self, kind: str, address: str) -> tuple[str, int, str] | None:
        """Where the identity comes in the identity phase's order, or None when it does not match."""
        index = self.variant(address)
        return None if index is None else (kind, index, address)


class ContactQueries(StoreBase):
    async def _identities(self, conn: AsyncConnection, contact_ids: Sequence[str]) -> dict[str, list[Any]]:
        i = t.identities
        found: dict[str, list[Any]] = {cid: [] for cid in contact_ids}
        for chunk in _chunks(list(contact_ids)):
            rows = await conn.execute(
                select(
                    i.c.id,
                    i.c.contact_id,
                    i.c.kind,
                    i.c.address,
                    i.c.display_name,
                    i.c.handle,
                    i.c.blocked_at,
                    i.c.blocked_reason,
                )
                .where(i.c.contact_id.in_(chunk))
                .order_by(i.c.created_at, i.c.id)
            )
            for row in rows:
                found[row.contact_id].append(row)
        return found

    async def _records(self, conn: AsyncConnection, rows: Sequence[Row[Any]]) -> list[ContactRecord]:
        identities = await self._identities(conn, [row.id for row in rows])
        return [ContactRecord(row, identities[row.id]) for row in rows]

    async def _contacts_by_id(
        self, conn: AsyncConnection, workspace_id: str, contact_ids: Sequence[str]
    ) -> dict[str, Row[Any]]:
        co = t.contacts
        found: dict[str, Row[Any]] = {}
        for chunk in _chunks(list(dict.fromkeys(contact_ids))):
            # The workspace is checked here, not in SQL: with it there and more than a few ids, SQLite
            # (without statistics) reads the whole workspace through its index instead of the ids.
            rows = await conn.execute(select(co).where(co.c.id.in_(chunk)))
            found.update((row.id, row) for row in rows if row.workspace_id == workspace_id)
        return found

    async def _resolve(
        self, conn: AsyncConnection, workspace_id: str, contact_ids: Iterable[str]
    ) -> dict[str, str]:
        """{contact id: the contact it ends up merged into (itself when not merged)} for ids in the workspace."""
        resolved: dict[str, str] = {}
        pending = {cid: cid for cid in contact_ids}
        for _ in range(MAX_MERGE_CHAIN):
            if not pending:
                break
            rows = await self._contacts_by_id(conn, workspace_id, list(set(pending.values())))
            following: dict[str, str] = {}
            for original, current in pending.items():
                row = rows.get(current)
                if row is None:
                    continue
                if row.merged_into is None:
                    resolved[original] = current
                else:
                    following[original] = row.merged_into
            pending = following
        return resolved

    async def list_contacts(
        self, workspace_id: str, *, limit: int, after: tuple[datetime, str] | None = None
    ) -> ContactPage:
        """Contacts not merged into another, newest first; `after` is where the previous page ended."""
        co = t.contacts
        query = select(co).where(co.c.workspace_id == workspace_id, co.c.merged_into.is_(None))
        if after is not None:
            query = query.where(
                tuple_(co.c.created_at, co.c.id)
                < tuple_(literal(after[0], t.UTCDateTime()), literal(after[1]))
            )
        query = query.order_by(co.c.created_at.desc(), co.c.id.desc()).limit(limit + 1)
        async with self.read() as conn:
            rows = list((await conn.execute(query)).all())
            more = len(rows) > limit
            rows = rows[:limit]
            records = await self._records(conn, rows)
        cursor = (rows[-1].created_at, rows[-1].id) if more else None
        return ContactPage(records, next_cursor=cursor)

    async def search_contacts(
        self, workspace_id: str, q: str, *, limit: int, after: SearchPosition | None = None
    ) -> ContactPage:
        """Contacts whose identity address starts with `q`, then those whose name or email matches it."""
        # Address matches come first, in (kind, address) order, each contact at its first matching
        # identity: the unique (workspace_id, kind, address) index serves them, one range per kind and
        # prefix (it is case-sensitive, hence `q` as typed and in lower case). Name and email matches
        # follow, newest match first, read from the FTS index in bounded chunks as the conversation
        # search does (a page may hold fewer than `limit` items). Search rows of a merged contact count
        # for the contact it was merged into: rewriting them would scan the whole FTS index.
        q = q.strip()
        prefixes = _Prefixes(q)
        found: list[tuple[SearchPosition, str]] = []
        next_position: SearchPosition | None = None
        async with self.read() as conn:
            start_rowid: int | None = None
            if after is None or after.phase == "identity":
                await self._search_identities(conn, workspace_id, prefixes, limit, after, found)
            else:
                start_rowid = after.rowid
            if len(found) <= limit:
                match = fts_query(q)
                if match is not None:
                    next_position = await self._search_names(
                        conn, workspace_id, match, prefixes, limit, start_rowid, found
                    )
            if len(found) > limit:
                found = found[:limit]
                next_position = found[-1][0]
            by_id = await self._contacts_by_id(conn, workspace_id, [cid for _, cid in found])
            records = await self._records(conn, [by_id[cid] for _, cid in found])
        return ContactPage(records, next_position=next_position)

    async def _search_identities(
        self,
        conn: AsyncConnection,
        workspace_id: str,
        prefixes: _Prefixes,
        limit: int,
        after: SearchPosition | None,
        found: list[tuple[SearchPosition, str]],
    ) -> None:
        i = t.identities
        resume: tuple[str, int, str] | None = None
        if after is not None:
            at = (
                await conn.execute(
                    select(i.c.kind, i.c.address).where(
                        i.c.id == after.identity_id, i.c.workspace_id == workspace_id
                    )
                )
            ).first()
            resume = prefixes.position(at.kind, at.address) if at is not None else None
            if resume is None:
                raise Invalid("cursor", "cursor is not one this search gave out; start again without it")
        kinds = list((await conn.execute(_KINDS, {"ws": workspace_id})).scalars())
        ranges = [(kind, index) for kind in kinds for index in range(len(prefixes.values))]
        chunk_size = limit + 1
        for kind, index in ranges:
            if resume is not None and (kind, index) < resume[:2]:
                continue
            prefix = prefixes.values[index]
            last = resume[2] if resume is not None and (kind, index) == resume[:2] else None
            while len(found) <= limit:
                query = select(i.c.id, i.c.contact_id, i.c.address).where(
                    i.c.workspace_id == workspace_id,
                    i.c.kind == kind,
                    i.c.address >= prefix,
                    i.c.address < prefix + PREFIX_END,
                )
                if last is not None:
                    query = query.where(i.c.address > last)
                rows = list((await conn.execute(query.order_by(i.c.address).limit(chunk_size))).all())
                if not rows:
                    break
                contacts = await self._contacts_by_id(conn, workspace_id, [r.contact_id for r in rows])
                identities = await self._identities(conn, list({r.contact_id for r in rows}))
                for row in rows:
                    contact = contacts.get(row.contact_id)
                    if contact is None or contact.merged_into is not None:
                        continue
                    first = min(
                        (
                            p
                            for p in (
                                prefixes.position(o.kind, o.address) for o in identities[row.contact_id]
                            )
                            if p is not None
                        ),
                        default=None,
                    )
                    # Listed once, at its first matching identity.
                    if first == (kind, index, row.address):
                        found.append((SearchPosition("identity", identity_id=row.id), row.contact_id))
                        if len(found) > limit:
                            return
                last = rows[-1].address
                if len(rows) < chunk_size:
                    break
            if len(found) > limit:
                return

    async def _search_names(
        self,
        conn: AsyncConnection,
        workspace_id: str,
        match: str,
        prefixes: _Prefixes,
        limit: int,
        start_rowid: int | None,
        found: list[tuple[SearchPosition, str]],
    ) -> SearchPosition | None:
        """Append name matches to `found`; the position to go on from, or None when all were read."""
        seen: set[str] = set()
        shown: set[str] | None = None
        position = start_rowid
        for _ in range(SEARCH_CHUNKS_PER_PAGE):
            params: dict[str, Any] = {"q": match, "n": SEARCH_CHUNK}
            bound = ""
            if position is not None:
                bound = "AND rowid < :before "
                params["before"] = position
            # No filter on workspace or kind in SQL: with LIMIT, SQLite would read every match of a
            # word common in messages to find a few contacts. Filtering here keeps a chunk bounded.
            chunk = (
                await conn.execute(
                    text(
                        "SELECT rowid, workspace_id, kind, ref_id FROM search_index "
                        f"WHERE search_index MATCH :q {bound}ORDER BY rowid DESC LIMIT :n"
                    ),
                    params,
                )
            ).all()
            if not chunk:
                return None
            position = int(chunk[-1][0])
            rows = [(int(r[0]), str(r[3])) for r in chunk if r[1] == workspace_id and r[2] == "contact"]
            resolved = await self._resolve(conn, workspace_id, {ref for _, ref in rows})
            ordered: dict[str, int] = {}
            for rowid, ref in rows:
                final = resolved.get(ref)
                if final is not None and final not in seen:
                    seen.add(final)
                    ordered[final] = rowid
            if ordered and start_rowid is not None:
                if shown is None:
                    # Listed on an earlier page already: it has a newer match than where this page began.
                    earlier = await conn.execute(
                        text(
                            "SELECT DISTINCT ref_id FROM search_index WHERE search_index MATCH :q "
                            "AND rowid >= :start AND workspace_id = :ws AND kind = 'contact'"
                        ),
                        {"q": match, "start": start_rowid, "ws": workspace_id},
                    )
                    shown = set((await self._resolve(conn, workspace_id, [r[0] for r in earlier])).values())
                ordered = {cid: rowid for cid, rowid in ordered.items() if cid not in shown}
            if ordered:
                identities = await self._identities(conn, list(ordered))
                for contact_id, rowid in ordered.items():
                    # Listed among the address matches already.
                    if any(prefixes.variant(o.address) is not None for o in identities[contact_id]):
                        continue
                    found.append((SearchPosition("name", rowid=rowid), contact_id))
            if len(found) > limit:
                return None
            if len(chunk) < SEARCH_CHUNK:
                return None
        return SearchPosition("name", rowid=position) if position is not None else None

    async def get_contact(self, workspace_id: str, contact_id: str) -> ContactDetails:
        """The contact, its identities and its newest conversations (none once merged into another)."""
        co, c, ca = t.contacts, t.conversations, t.channel_accounts
        async with self.read() as conn:
            row = (
                await conn.execute(select(co).where(co.c.id == contact_id, co.c.workspace_id == workspace_id))
            ).first()
            if row is None:
                raise NotFound(f"no contact with id {contact_id!r}")
            (record,) = await self._records(conn, [row])
            conversations = list(
                (
                    await conn.execute(
                        select(
                            c.c.id,
                            c.c.status,
                            c.c.subject,
                            c.c.last_activity_at,
                            c.c.channel_account_id,
                            ca.c.kind.label("channel_kind"),
                            ca.c.name.label("channel_name"),
                        )
                        .join(ca, ca.c.id == c.c.channel_account_id)
                        # The contact is this workspace's, and so are its conversations. Filtering on the
                        # workspace too would let the planner walk the workspace's activity index (to skip
                        # the sort) through every conversation of the workspace; SQLite ignores with_hint.
                        .where(c.c.contact_id == contact_id)
                        .order_by(c.c.last_activity_at.desc(), c.c.id.desc())
                        .limit(CONTACT_CONVERSATIONS)
                    )
                ).all()
            )
        return ContactDetails(record, conversations)

    async def update_contact(
        self, workspace_id: str, contact_id: str, change: ContactChange, actor: str, now: datetime
    ) -> dict[str, Any]:
        """Apply the change with its audit event and search rows; returns {field: new value} changed."""
        co = t.contacts
        async with self.write() as conn:
            current = (
                await conn.execute(select(co).where(co.c.id == contact_id, co.c.workspace_id == workspace_id))
            ).first()
            if current is None:
                raise NotFound(f"no contact with id {contact_id!r}")
            if current.merged_into is not None:
                raise Invalid(
                    "id", f"contact {contact_id!r} was merged into {current.merged_into!r}: change that one"
                )
            changed: dict[str, Any] = {}
            for name in ("name", "email", "language", "attributes"):
                if name in change.fields and getattr(change, name) != getattr(current, name):
                    changed[name] = getattr(change, name)
            if not changed:
                return {}
            await conn.execute(update(co).where(co.c.id == contact_id).values(**changed, updated_at=now))
            # Old names and emails stay searchable, as on ingest: people search by what they remember.
            searchable = [changed[name] for name in ("name", "email") if changed.get(name)]
            if searchable:
                await conn.execute(
                    SEARCH_INSERT,
                    [
                        {
                            "body": body,
                            "workspace_id": workspace_id,
                            "conversation_id": None,
                            "ref_id": contact_id,
                            "kind": "contact",
                        }
                        for body in searchable
                    ],
                )
            await conn.execute(
                insert(t.audit_events).values(
                    id=new_id(),
                    workspace_id=workspace_id,
                    conversation_id=None,
                    actor=actor,
                    type="contact.updated",
                    data={"contact_id": contact_id, **changed},
                    created_at=now,
                )
            )
        return changed

    async def merge_contacts(
        self, workspace_id: str, keep_id: str, other_id: str, actor: str, now: datetime
    ) -> MergeOutcome:
        """Merge `other_id` into `keep_id` in one transaction: identities, conversations and messages move."""
        co, i, c, m = t.contacts, t.identities, t.conversations, t.messages
        if keep_id == other_id:
            raise Invalid("other_id", "cannot merge a contact into itself")
        # Messages have no index on their sender, and a contact's messages may sit in other contacts'
        # conversations (a shared thread). Find them before taking the write lock, so the scan does not
        # stall ingest; the transaction then catches what arrived since, by the time-ordered id.
        floor = _id_floor(MERGE_SCAN_MARGIN_SECONDS)
        async with self.read() as conn:
            await self._check_merge(conn, workspace_id, keep_id, other_id)
            scanned = list(
                (
                    await conn.execute(
                        select(m.c.id).where(
                            m.c.sender_contact_id == other_id, m.c.workspace_id == workspace_id
                        )
                    )
                ).scalars()
            )
        async with self.write() as conn:
            keep, other = await self._check_merge(conn, workspace_id, keep_id, other_id)
            identities = await conn.execute(
                update(i).where(i.c.contact_id == other_id).values(contact_id=keep_id)
            )
            conversation_ids = list(
                (await conn.execute(select(c.c.id).where(c.c.contact_id == other_id))).scalars()
            )
            for chunk in _chunks(conversation_ids):
                await conn.execute(
                    update(c).where(c.c.id.in_(chunk)).values(contact_id=keep_id, updated_at=now)
                )
            moved = 0
            for chunk in _chunks(scanned):
                result = await conn.execute(
                    update(m)
                    .where(m.c.id.in_(chunk), m.c.sender_contact_id == other_id)
                    .values(sender_contact_id=keep_id)
                )
                moved += result.rowcount
            recent = await conn.execute(
                update(m)
                .where(m.c.id >= floor, m.c.sender_contact_id == other_id)
                .values(sender_contact_id=keep_id)
            )
            moved += recent.rowcount
            values: dict[str, Any] = {
                name: getattr(other, name)
                for name in ("name", "email", "language")
                if not getattr(keep, name) and getattr(other, name)
            }
            attributes = {**(other.attributes or {}), **(keep.attributes or {})}
            if attributes != keep.attributes:
                values["attributes"] = attributes
            await conn.execute(update(co).where(co.c.id == keep_id).values(**values, updated_at=now))
            await conn.execute(
                update(co).where(co.c.id == other_id).values(merged_into=keep_id, updated_at=now)
            )
            outcome = MergeOutcome(identities.rowcount, conversation_ids, moved)
            await conn.execute(
                insert(t.audit_events).values(
                    id=new_id(),
                    workspace_id=workspace_id,
                    conversation_id=None,
                    actor=actor,
                    type="contact.merged",
                    data={
                        "contact_id": keep_id,
                        "merged_id": other_id,
                        "identities": outcome.identities,
                        "conversation_ids": conversation_ids,
                        "messages": moved,
                        "filled": sorted(values),
                    },
                    created_at=now,
                )
            )
        return outcome

    async def _check_merge(
        self, conn: AsyncConnection, workspace_id: str, keep_id: str, other_id: str
    ) -> tuple[Row[Any], Row[Any]]:
        rows = await self._contacts_by_id(conn, workspace_id, [keep_id, other_id])
        keep, other = rows.get(keep_id), rows.get(other_id)
        if keep is None:
            raise NotFound(f"no contact with id {keep_id!r}")
        if keep.merged_into is not None:
            raise Invalid(
                "id", f"contact {keep_id!r} was merged into {keep.merged_into!r}: merge into that one"
            )
        if other is None:
            raise Invalid("other_id", f"no contact with id {other_id!r} in this workspace")
        if other.merged_into is not None:
            raise Invalid("other_id", f"contact {other_id!r} was merged into {other.merged_into!r} already")
        return keep, other


__all__: Sequence[str] = [
    "ContactChange",
    "ContactDetails",
    "ContactPage",
    "ContactQueries",
    "ContactRecord",
    "MergeOutcome",
    "SearchPosition",
]
