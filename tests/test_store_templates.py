"""The templates store: create, find by id or shortcode, list, change, delete, and name/shortcode clashes."""

from __future__ import annotations

import pytest

from aggregator.store import Conflict, NotFound
from aggregator.store.templates import TemplateChange
from support.app import Core

VARIANTS = [{"language": "en", "subject": "Your order", "body": "Hi {{ contact.first_name }}"}]


async def test_templates_are_kept_found_changed_and_deleted(core: Core) -> None:
    ws = core.workspace.id
    store = core.store
    made = await store.create_template(ws, "Where is my order", VARIANTS, shortcode="wismo", category="orders")
    other = await store.create_template(ws, "Returns", VARIANTS, category="returns")
    assert (await store.get_template(ws, "wismo")).id == made.id
    assert (await store.get_template(ws, made.id)).variants == VARIANTS
    assert [t.name for t in await store.list_templates(ws)] == ["Where is my order", "Returns"]
    assert [t.id for t in await store.list_templates(ws, category="returns")] == [other.id]
    assert [t.id for t in await store.list_templates(ws, q="WISM")] == [made.id]
    assert await store.list_templates(ws, q="%") == []

    with pytest.raises(Conflict):
        await store.create_template(ws, "Returns", VARIANTS)
    with pytest.raises(Conflict):
        await store.update_template(ws, other.id, TemplateChange(shortcode="wismo"))

    changed = await store.update_template(ws, made.id, TemplateChange(name="WISMO", shortcode=""))
    assert (changed.name, changed.shortcode, changed.category) == ("WISMO", None, "orders")
    assert changed.updated_at >= made.updated_at

    await store.delete_template(ws, made.id)
    with pytest.raises(NotFound):
        await store.get_template(ws, made.id)


async def test_templates_of_another_workspace_are_not_seen(core: Core) -> None:
    made = await core.store.create_template(core.workspace.id, "Hello", VARIANTS, shortcode="hi")
    other, _ = await core.store.ensure_workspace("other-shop")
    with pytest.raises(NotFound):
        await core.store.get_template(other.id, made.id)
    with pytest.raises(NotFound):
        await core.store.get_template(other.id, "hi")
    assert await core.store.list_templates(other.id) == []
    # The same name and shortcode are free in another workspace.
    await core.store.create_template(other.id, "Hello", VARIANTS, shortcode="hi")
