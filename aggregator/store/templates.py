"""Reply templates of a workspace: name, optional shortcode, category and language variants.

The variants are validated by aggregator.templates before they reach the store; the store keeps them
as one JSON list, so a template and all its languages change in one statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from aggregator.model import new_id, utcnow
from aggregator.store import schema as t
from aggregator.store.base import Conflict, NotFound, StoreBase


@dataclass(frozen=True, slots=True)
class TemplateRecord:
    id: str
    workspace_id: str
    name: str
    shortcode: str | None
    category: str | None
    variants: list[dict[str, Any]]  # [{"language", "subject", "body"}]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TemplateChange:
    """The fields a PATCH sets; None leaves a field as it is ("" clears shortcode and category)."""

    name: str | None = None
    shortcode: str | None = None
    category: str | None = None
    variants: list[dict[str, Any]] | None = None


def _record(row: Any) -> TemplateRecord:
    return TemplateRecord(
        row.id,
        row.workspace_id,
        row.name,
        row.shortcode,
        row.category,
        list(row.variants or []),
        row.created_at,
        row.updated_at,
    )


def _clash(name: str | None, shortcode: str | None) -> Conflict:
    parts = []
    if name:
        parts.append(f"the name {name!r}")
    if shortcode:
        parts.append(f"the shortcode {shortcode!r}")
    return Conflict(f"another template of this workspace has {' or '.join(parts) or 'these values'}")


class TemplateQueries(StoreBase):
    async def _clash(
        self, workspace_id: str, own_id: str | None, name: str | None, shortcode: str | None
    ) -> Conflict:
        """The conflict naming only what another template of the workspace already has."""
        tt = t.templates
        taken_name = taken_code = False
        async with self.read() as conn:
            if own_id is not None:
                own_id = (await self._get_template(conn, workspace_id, own_id)).id
            for column, value in ((tt.c.name, name), (tt.c.shortcode, shortcode or None)):
                if value is None:
                    continue
                query = select(tt.c.id).where(tt.c.workspace_id == workspace_id, column == value)
                if own_id is not None:
                    query = query.where(tt.c.id != own_id)
                if (await conn.execute(query.limit(1))).first() is not None:
                    if column is tt.c.name:
                        taken_name = True
                    else:
                        taken_code = True
        if not (taken_name or taken_code):
            return _clash(name, shortcode)
        return _clash(name if taken_name else None, shortcode if taken_code else None)

    async def _get_template(self, conn: AsyncConnection, workspace_id: str, ref: str) -> TemplateRecord:
        tt = t.templates
        row = (
            await conn.execute(
                select(tt).where(
                    tt.c.workspace_id == workspace_id, or_(tt.c.id == ref, tt.c.shortcode == ref)
                )
            )
        ).first()
        if row is None:
            raise NotFound(f"no template with id or shortcode {ref!r}")
        return _record(row)

    async def get_template(self, workspace_id: str, ref: str) -> TemplateRecord:
        """By id or by shortcode."""
        async with self.read() as conn:
            return await self._get_template(conn, workspace_id, ref)

    async def list_templates(
        self, workspace_id: str, *, category: str | None = None, q: str | None = None
    ) -> list[TemplateRecord]:
        """By category then name; `q` matches name or shortcode, case-insensitively."""
        tt = t.templates
        query = select(tt).where(tt.c.workspace_id == workspace_id)
        if category is not None:
            query = query.where(tt.c.category == category)
        if q:
            pattern = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            query = query.where(
                or_(tt.c.name.ilike(pattern, escape="\\"), tt.c.shortcode.ilike(pattern, escape="\\"))
            )
        query = query.order_by(tt.c.category, tt.c.name, tt.c.id)
        async with self.read() as conn:
            return [_record(row) for row in (await conn.execute(query)).all()]

    async def create_template(
        self,
        workspace_id: str,
        name: str,
        variants: Sequence[dict[str, Any]],
        *,
        shortcode: str | None = None,
        category: str | None = None,
    ) -> TemplateRecord:
        template_id = new_id()
        now = utcnow()
        try:
            async with self.write() as conn:
                await conn.execute(
                    insert(t.templates).values(
                        id=template_id,
                        workspace_id=workspace_id,
                        name=name,
                        shortcode=shortcode or None,
                        category=category or None,
                        variants=list(variants),
                        created_at=now,
                        updated_at=now,
                    )
                )
                return await self._get_template(conn, workspace_id, template_id)
        except IntegrityError as exc:
            raise await self._clash(workspace_id, None, name, shortcode) from exc

    async def update_template(self, workspace_id: str, template_id: str, change: TemplateChange) -> TemplateRecord:
        values: dict[str, Any] = {}
        if change.name is not None:
            values["name"] = change.name
        if change.shortcode is not None:
            values["shortcode"] = change.shortcode or None
        if change.category is not None:
            values["category"] = change.category or None
        if change.variants is not None:
            values["variants"] = list(change.variants)
        tt = t.templates
        try:
            async with self.write() as conn:
                current = await self._get_template(conn, workspace_id, template_id)
                if values:
                    values["updated_at"] = utcnow()
                    await conn.execute(update(tt).where(tt.c.id == current.id).values(**values))
                return await self._get_template(conn, workspace_id, current.id)
        except IntegrityError as exc:
            raise await self._clash(workspace_id, template_id, change.name, change.shortcode) from exc

    async def delete_template(self, workspace_id: str, template_id: str) -> None:
        tt = t.templates
        async with self.write() as conn:
            current = await self._get_template(conn, workspace_id, template_id)
            await conn.execute(delete(tt).where(tt.c.id == current.id))
