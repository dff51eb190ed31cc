"""The templates API on a real daemon (CRUD, validation when saved, previews) and replies made from templates."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from babel.dates import format_date, format_datetime, format_time
from babel.numbers import format_currency, format_decimal, format_percent

from aggregator.daemon import Daemon
from aggregator.model import Role, new_id
from aggregator.store import Store
from aggregator.templates import FILTERS, VARIABLES
from channels.base import Registry
from fakes.telegram import parse_markdown_v2
from support.api import ApiClient, Reply, user_with_token
from support.app import SECRET, add_channel, daemon_url, inbound, sql, sql_write

pytestmark = pytest.mark.timeout(60)

BERLIN = ZoneInfo("Europe/Berlin")
TELEGRAM = {
    "bot_token": "123456:ABCdefGHIjklMNOpqrSTUvwxYZ0123456789",
    "mode": "webhook",
    "public_url": "https://x.test",
    "formatting": "markdownv2",
}
EMAIL = {
    "address": "support@shop.test",
    "imap_host": "imap.shop.test",
    "imap_password": "imap-password",
    "smtp_host": "smtp.shop.test",
}


@dataclass
class Desk:
    """A running daemon, an API channel, and an admin and an agent of its default workspace."""

    daemon: Daemon
    http: aiohttp.ClientSession
    workspace_id: str
    channel_id: str
    admin: ApiClient
    admin_id: str
    agent: ApiClient
    agent_id: str

    @property
    def store(self) -> Store:
        return self.daemon.store

    async def conversation(
        self,
        external_id: str,
        *,
        sender: str = "anna",
        name: str | None = "Anna Example",
        text: str = "hello",
        channel_id: str | None = None,
        kind: str = "api",
        **fields: Any,
    ) -> str:
        result = await self.daemon.ingestor(
            inbound(
                channel_id or self.channel_id,
                external_id,
                sender=sender,
                name=name,
                text_body=text,
                kind=kind,
                **fields,
            )
        )
        return result.conversation_id

    async def dormant_channel(self, kind: str, values: dict[str, Any]) -> str:
        """A channel account that is stored but never started: compose reads only its kind and config."""
        config = Registry().parse_config(kind, values)
        plain, secrets = config.split_secrets()
        record = await self.store.create_channel(
            self.workspace_id, kind, f"{kind}-{new_id()}", plain, secrets, enabled=False
        )
        return record.id

    async def template(self, **body: Any) -> dict[str, Any]:
        reply = await self.admin.post("/templates", body)
        assert reply.status == 201, reply.body
        created: dict[str, Any] = reply.body
        return created

    async def render(self, template: str, conversation_id: str, **fields: Any) -> dict[str, Any]:
        reply = await self.agent.post(
            f"/templates/{template}/render", {"conversation_id": conversation_id, **fields}
        )
        assert reply.status == 200, reply.body
        rendered: dict[str, Any] = reply.body
        return rendered

    async def reply(self, conversation_id: str, **body: Any) -> dict[str, Any]:
        reply = await self.agent.post(f"/conversations/{conversation_id}/messages", body)
        assert reply.status == 202, reply.body
        message: dict[str, Any] = reply.body
        return message

    async def stored(self, message_id: str) -> Any:
        rows = await sql(
            self.store,
            "SELECT kind, text, html, subject, language, extra, sender_user_id FROM messages WHERE id = :id",
            id=message_id,
        )
        assert len(rows) == 1
        return rows[0]

    async def outbox_rows(self, message_id: str) -> int:
        rows = await sql(self.store, "SELECT count(*) FROM outbox WHERE message_id = :id", id=message_id)
        count: int = rows[0][0]
        return count


@pytest.fixture
async def desk(daemon: Daemon, http_session: aiohttp.ClientSession) -> Desk:
    assert daemon.bootstrap is not None
    workspace_id = daemon.bootstrap.workspace.id
    channel_id = await add_channel(daemon.store, workspace_id, {"secret": SECRET}, name="shop")
    admin_id, admin_token = await user_with_token(daemon.store, workspace_id, Role.ADMIN, name="Ada Admin")
    agent_id, agent_token = await user_with_token(daemon.store, workspace_id, Role.AGENT, name="Sam Agent")
    base = daemon_url(daemon)
    return Desk(
        daemon,
        http_session,
        workspace_id,
        channel_id,
        ApiClient(http_session, base, admin_token),
        admin_id,
        ApiClient(http_session, base, agent_token),
        agent_id,
    )


def error_of(reply: Reply, status: int, code: str) -> dict[str, Any]:
    assert reply.status == status, reply.body
    error: dict[str, Any] = reply.body["error"]
    assert error["code"] == code, error
    return error


def one(language: str, body: str, subject: str | None = None) -> list[dict[str, Any]]:
    return [{"language": language, "body": body, **({"subject": subject} if subject is not None else {})}]


def extra_of(row: Any) -> dict[str, Any]:
    extra: dict[str, Any] = json.loads(row.extra) if isinstance(row.extra, str) else row.extra
    return extra


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# --------------------------------------------------------------------------------------------------
# CRUD


async def test_crud_by_id_and_by_shortcode(desk: Desk) -> None:
    created = await desk.template(
        name="Where is my order",
        shortcode="wismo",
        category="orders",
        variants=[
            {"language": "en", "subject": "Your order", "body": "Hi {{ contact.first_name }}"},
            {"language": "de", "body": "Hallo {{ contact.first_name }}"},
        ],
    )
    assert created["name"] == "Where is my order"
    assert created["shortcode"] == "wismo"
    assert created["category"] == "orders"
    assert created["variants"] == [
        {"language": "en", "subject": "Your order", "body": "Hi {{ contact.first_name }}"},
        {"language": "de", "subject": None, "body": "Hallo {{ contact.first_name }}"},
    ]
    assert created["created_at"] == created["updated_at"]
    by_id = await desk.agent.get(f"/templates/{created['id']}")
    by_shortcode = await desk.agent.get("/templates/wismo")
    assert by_id.status == by_shortcode.status == 200
    assert by_id.body == by_shortcode.body == created

    renamed = await desk.admin.patch(
        "/templates/wismo",
        {"name": "Order status", "variants": [{"language": "fr", "body": "Bonjour {{ contact.name }}"}]},
    )
    assert renamed.status == 200, renamed.body
    assert renamed.body["name"] == "Order status"
    assert renamed.body["shortcode"] == "wismo"
    assert renamed.body["category"] == "orders"
    assert renamed.body["variants"] == [
        {"language": "fr", "subject": None, "body": "Bonjour {{ contact.name }}"}
    ]
    assert renamed.body["updated_at"] > created["updated_at"]
    assert renamed.body["created_at"] == created["created_at"]

    cleared = await desk.admin.patch(f"/templates/{created['id']}", {"shortcode": "", "category": ""})
    assert cleared.status == 200, cleared.body
    assert (cleared.body["shortcode"], cleared.body["category"]) == (None, None)
    assert (await desk.agent.get("/templates/wismo")).status == 404
    assert (await desk.agent.get(f"/templates/{created['id']}")).body == cleared.body

    assert (await desk.admin.delete(f"/templates/{created['id']}")).status == 204
    assert (await desk.agent.get(f"/templates/{created['id']}")).status == 404
    assert (await desk.admin.delete(f"/templates/{created['id']}")).status == 404
    assert (await desk.admin.patch(f"/templates/{created['id']}", {"name": "x"})).status == 404
    assert (await desk.agent.get("/templates")).body == {"items": []}


async def test_list_by_category_and_search(desk: Desk) -> None:
    refund = await desk.template(
        name="Refund", shortcode="refund", category="billing", variants=one("en", "a")
    )
    invoice = await desk.template(
        name="Invoice copy", shortcode="inv", category="billing", variants=one("en", "b")
    )
    sale = await desk.template(name="50% off", shortcode="sale_50", variants=one("en", "c"))
    hello = await desk.template(name="Hello", category="general", variants=one("en", "d"))

    async def names(**params: str) -> list[str]:
        reply = await desk.agent.get("/templates", **params)
        assert reply.status == 200, reply.body
        return [item["name"] for item in reply.body["items"]]

    # By category (none first), then name.
    assert await names() == [sale["name"], invoice["name"], refund["name"], hello["name"]]
    assert await names(category="billing") == ["Invoice copy", "Refund"]
    assert await names(category="nothing") == []
    assert await names(q="REF") == ["Refund"]
    assert await names(q="inv") == ["Invoice copy"]  # the shortcode
    assert await names(q="l") == ["50% off", "Hello"]  # "sale_50", "Hello"
    assert await names(q="%") == ["50% off"]  # literally, not a wildcard
    assert await names(q="_") == ["50% off"]
    assert await names(q="e", category="billing") == ["Invoice copy", "Refund"]
    assert await names(q="o", category="general") == ["Hello"]


async def test_a_name_or_shortcode_taken_is_409_and_changes_nothing(desk: Desk) -> None:
    first = await desk.template(name="Refund", shortcode="refund", variants=one("en", "a"))
    second = await desk.template(name="Invoice", shortcode="inv", variants=one("en", "b"))
    error_of(
        await desk.admin.post("/templates", {"name": "Refund", "variants": one("en", "c")}), 409, "conflict"
    )
    error_of(
        await desk.admin.post(
            "/templates", {"name": "Other", "shortcode": "refund", "variants": one("en", "c")}
        ),
        409,
        "conflict",
    )
    error_of(await desk.admin.patch(f"/templates/{second['id']}", {"name": "Refund"}), 409, "conflict")
    error_of(await desk.admin.patch("/templates/inv", {"shortcode": "refund"}), 409, "conflict")
    # The answer names only what is taken.
    both = await desk.admin.post("/templates", {"name": "Refund", "shortcode": "new", "variants": one("en", "c")})
    assert both.body["error"]["message"] == "another template of this workspace has the name 'Refund'"
    code = await desk.admin.patch("/templates/inv", {"name": "Invoice", "shortcode": "refund"})
    assert code.body["error"]["message"] == "another template of this workspace has the shortcode 'refund'"
    assert (await desk.agent.get("/templates")).body["items"] == [second, first]
    # Two templates without a shortcode do not clash.
    await desk.template(name="No code 1", variants=one("en", "x"))
    await desk.template(name="No code 2", shortcode="", variants=one("en", "y"))


async def test_another_workspaces_templates_are_404_and_not_listed(desk: Desk) -> None:
    other = await desk.store.create_workspace("other shop")
    _, other_token = await user_with_token(desk.store, other.id, Role.ADMIN)
    outsider = desk.admin.as_token(other_token)
    other_channel = await add_channel(desk.store, other.id, {"secret": SECRET}, name="theirs")
    theirs = await outsider.post(
        "/templates", {"name": "Refund", "shortcode": "refund", "variants": one("en", "x")}
    )
    assert theirs.status == 201, theirs.body
    # The same name and shortcode are free in this workspace.
    ours = await desk.template(name="Refund", shortcode="refund", variants=one("en", "ours"))
    their_id = theirs.body["id"]
    conversation = await desk.conversation("m1")
    their_conversation = (await desk.daemon.ingestor(inbound(other_channel, "o1"))).conversation_id

    path = f"/templates/{their_id}"
    error_of(await desk.agent.get(path), 404, "not_found")
    error_of(await desk.admin.patch(path, {"name": "Mine now"}), 404, "not_found")
    error_of(await desk.admin.delete(path), 404, "not_found")
    error_of(await desk.agent.post(f"{path}/render", {"conversation_id": conversation}), 404, "not_found")
    error_of(
        await desk.agent.post(f"/conversations/{conversation}/messages", {"template": their_id}),
        404,
        "not_found",
    )
    # Our shortcode names our template, theirs theirs.
    assert (await desk.agent.get("/templates/refund")).body["id"] == ours["id"]
    assert (await outsider.get("/templates/refund")).body["id"] == their_id
    assert [t["id"] for t in (await desk.agent.get("/templates")).body["items"]] == [ours["id"]]
    # Nor can a conversation of theirs be previewed with ours.
    error_of(
        await desk.agent.post("/templates/refund/render", {"conversation_id": their_conversation}),
        404,
        "not_found",
    )
    assert (await outsider.get(f"/templates/{their_id}")).body["name"] == "Refund"


async def test_agents_read_and_use_templates_only_admins_write_them(desk: Desk) -> None:
    created = await desk.template(name="Refund", shortcode="refund", variants=one("en", "x"))
    error_of(
        await desk.agent.post("/templates", {"name": "Mine", "variants": one("en", "x")}), 403, "forbidden"
    )
    error_of(await desk.agent.patch("/templates/refund", {"name": "Mine"}), 403, "forbidden")
    error_of(await desk.agent.delete("/templates/refund"), 403, "forbidden")
    assert (await desk.agent.get("/templates/refund")).body == created


# --------------------------------------------------------------------------------------------------
# Validation when saved

# A line of a body -> the messages of its problems (each reported on that line).
INVALID: list[tuple[str, list[str]]] = [
    ("{{ ''.__class__.__mro__ }}", ["not allowed: access to private attribute '__class__'"]),
    (
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        ["not allowed: access to private attribute '__class__'"],
    ),
    ("{{ cycler.__init__.__globals__ }}", ["not allowed: access to private attribute '__init__'"]),
    ("{{ self.__dict__ }}", ["not allowed: access to private attribute '__dict__'"]),
    (
        "{% for c in [].__class__.__base__.__subclasses__() %}{% endfor %}",
        ["not allowed: access to private attribute '__class__'"],
    ),
    ("{{ config }}", ["unknown variable 'config'"]),
    (
        "{{ lipsum.__globals__ }}",
        ["unknown variable 'lipsum'", "not allowed: access to private attribute '__globals__'"],
    ),
    ("{{ request }}", ["unknown variable 'request'"]),
    ("{{ contact.nmae }}", ["unknown variable 'contact.nmae'"]),
    ("{{ foo }}", ["unknown variable 'foo'"]),
    ("{{ 1234 | frobnicate }}", ["No filter named 'frobnicate'."]),
    ("{{ ''|attr('__class__') }}", ["not allowed: access to private attribute '__class__'"]),
    (
        "{{ '{0.__class__}'.format(1) }}",
        ["not allowed: access to attribute '__class__' of 'int' object is unsafe."],
    ),
]


async def test_invalid_templates_are_refused_naming_language_field_and_line(desk: Desk) -> None:
    kept = await desk.template(name="Kept", shortcode="kept", variants=one("en", "fine"))
    for case, messages in INVALID:
        body = f"Hello {{{{ contact.name }}}},\n{case}\nbye"
        variants = [{"language": "en", "body": "all fine"}, {"language": "de", "body": body}]
        for reply in (
            await desk.admin.post("/templates", {"name": "Bad", "variants": variants}),
            await desk.admin.patch("/templates/kept", {"variants": variants}),
        ):
            error = error_of(reply, 422, "invalid_template")
            assert error["field"] == "variants"
            expected = [{"language": "de", "field": "body", "line": 2, "message": m} for m in messages]
            assert error["problems"] == expected, case
            assert error["message"] == "the template has problems: " + "; ".join(
                f"de body line 2: {m}" for m in messages
            )
    # Nothing was stored, nothing changed.
    assert (await desk.agent.get("/templates")).body["items"] == [kept]


async def test_problems_in_subjects_and_several_variants_are_all_listed(desk: Desk) -> None:
    reply = await desk.admin.post(
        "/templates",
        {
            "name": "Bad",
            "shortcode": "bad",
            "variants": [
                {"language": "en", "subject": "Re: {{ conversation.subjct }}", "body": "a\nb\n{{ x }\n"},
                {"language": "de", "body": "{% if order %}\n{{ order.numbr }}\n{% endif %}"},
                {"language": "xx", "body": "fine"},
            ],
        },
    )
    error = error_of(reply, 422, "invalid_template")
    assert error["problems"] == [
        {"language": "en", "field": "body", "line": 3, "message": "syntax error: unexpected '}'"},
        {
            "language": "en",
            "field": "subject",
            "line": 1,
            "message": "unknown variable 'conversation.subjct'",
        },
        {"language": "de", "field": "body", "line": 2, "message": "unknown variable 'order.numbr'"},
        {"language": "xx", "field": "body", "message": "invalid language tag 'xx'"},  # no line
    ]
    assert (await desk.agent.get("/templates/bad")).status == 404


async def test_two_variants_of_one_language_are_400(desk: Desk) -> None:
    kept = await desk.template(name="Kept", variants=one("en", "fine"))
    for pair in (("de", "de"), ("de-AT", "de_at"), ("EN", "en")):
        variants = [{"language": pair[0], "body": "a"}, {"language": pair[1], "body": "b"}]
        for reply in (
            await desk.admin.post("/templates", {"name": "Twice", "variants": variants}),
            await desk.admin.patch(f"/templates/{kept['id']}", {"variants": variants}),
        ):
            error = error_of(reply, 400, "invalid_field")
            assert error["field"] == "variants"
            assert (
                error["message"] == f"variants: more than one variant for {pair[1].replace('_', '-').lower()}"
            )
    assert (await desk.agent.get("/templates")).body["items"] == [kept]


async def test_bodies_are_checked_field_by_field(desk: Desk) -> None:
    kept = await desk.template(name="Kept", variants=one("en", "fine"))
    x = one("en", "x")
    bad_creates: list[tuple[dict[str, Any], str, str]] = [
        ({"variants": x}, "missing_field", "name"),
        ({"name": "  ", "variants": x}, "invalid_field", "name"),
        ({"name": "No variants", "variants": []}, "invalid_field", "variants"),
        ({"name": "Bad code", "shortcode": "has space", "variants": x}, "invalid_field", "shortcode"),
        ({"name": "Bad code", "shortcode": "-dash-first", "variants": x}, "invalid_field", "shortcode"),
        ({"name": "Empty body", "variants": one("en", "")}, "invalid_field", "variants.0.body"),
        ({"name": "Bad tag", "variants": one("e1", "x")}, "invalid_field", "variants.0.language"),
        ({"name": "Unknown field", "variants": x, "colour": "red"}, "unknown_field", "colour"),
    ]
    for body, code, field in bad_creates:
        error = error_of(await desk.admin.post("/templates", body), 400, code)
        assert error["field"] == field, body
    patches: list[tuple[dict[str, Any], str]] = [
        ({"name": None}, "name"),
        ({"shortcode": None}, "shortcode"),
        ({"variants": None}, "variants"),
        ({"variants": []}, "variants"),
    ]
    for patch, field in patches:
        error = error_of(await desk.admin.patch(f"/templates/{kept['id']}", patch), 400, "invalid_field")
        assert error["field"] == field, patch
    # A body of blanks passes the length check but not validation.
    error = error_of(
        await desk.admin.post("/templates", {"name": "Blank", "variants": one("en", "  \n ")}),
        422,
        "invalid_template",
    )
    assert error["problems"] == [{"language": "en", "field": "body", "message": "the body is empty"}]
    assert (await desk.agent.get("/templates")).body["items"] == [kept]


async def test_template_variables_lists_every_variable_and_filter(desk: Desk) -> None:
    reply = await desk.agent.get("/template-variables")
    assert reply.status == 200
    assert reply.body == {
        "variables": [{"name": k, "description": v} for k, v in VARIABLES.items()],
        "filters": [{"name": k, "description": v} for k, v in FILTERS.items()],
    }


# --------------------------------------------------------------------------------------------------
# Every variable, three languages, three formats

NOTE = '<script>alert("x")</script> 5.5-1! **not bold**'
VARS = {"amount": 1234.5, "days": 14, "note": NOTE}
GREETING = {"en": "Hello", "de": "Hallo", "fr": "Bonjour"}
SUBJECT = {
    "en": "Re: {{ conversation.subject }}",
    "de": "AW: {{ conversation.subject }}",
    "fr": "RE : {{ conversation.subject }}",
}
BODY = (
    "Hello {{ contact.first_name }} ({{ contact.name }}, {{ contact.email }}, language {{ contact.language }}),\n"
    "\n"
    "about conversation {{ conversation.id }} on {{ conversation.channel }}: {{ conversation.subject }}.\n"
    "{% if order %}\n"
    "Order {{ order.number }} ({{ order.id }}, {{ order.status }}) of {{ order.placed_at | date }}: "
    "{{ order.total | currency(order.currency) }}\n"
    "{% for item in order.items %}\n"
    "- {{ item.quantity }} x {{ item.name }} ({{ item.sku }}) at {{ item.price | currency(order.currency) }}\n"
    "{% endfor %}\n"
    "{{ order.carrier }}: {{ order.tracking_url }}\n"
    "{% endif %}\n"
    "We refund **{{ vars.amount | currency('EUR') }}** within {{ vars.days }} days; "
    "you keep {{ 1234.5 | number }} points and {{ 0.1 | percent }}.\n"
    "{% if workspace.is_open %}We are at work.{% else %}We are back {{ workspace.opens_at | datetime('short') }}.{% endif %}\n"
    "Written {{ now | datetime('short') }} ({{ now | time('short') }}), {{ now | date('long') }} "
    "({{ workspace.timezone }}), in {{ language }}.\n"
    "Note: {{ vars.note }}\n"
    "\n"
    "{{ agent.signature }}\n"
    "{{ agent.name }}, {{ workspace.name }}"
)


def test_the_body_uses_every_variable_and_filter() -> None:
    for name in VARIABLES:
        if name.startswith("order.items[]."):
            assert "item." + name.removeprefix("order.items[].") in BODY, name
        elif name == "vars.<name>":
            assert "{{ vars." in BODY
        else:
            assert name in BODY, name
    for name in FILTERS:
        assert f"| {name}" in BODY, name


@dataclass
class Expected:
    conversation_id: str
    workspace_name: str
    opens_at: datetime
    contact_language: str = ""

    def parts(self, language: str, now: datetime) -> dict[str, str]:
        return {
            "amount": format_currency(1234.5, "EUR", locale=language),
            "points": format_decimal(1234.5, locale=language),
            "percent": format_percent(0.1, locale=language),
            "opens": format_datetime(self.opens_at, "short", tzinfo=BERLIN, locale=language),
            "now": format_datetime(now, "short", tzinfo=BERLIN, locale=language),
            "today": format_date(now.astimezone(BERLIN).date(), "long", locale=language),
        }

    def lines(self, language: str, now: datetime) -> list[str]:
        p = self.parts(language, now)
        return [
            f"{GREETING[language]} Anna (Anna Example, anna@example.com, language {self.contact_language}),",
            "",
            f"about conversation {self.conversation_id} on api: Refund (order #5)?.",
            f"We refund {{amount}} within 14 days; you keep {p['points']} points and {p['percent']}.",
            f"We are back {p['opens']}.",
            f"Written {p['now']} ({{time}}), {p['today']} (Europe/Berlin), in {language}.",
            f"Note: {NOTE}",
            "",
            "Sam Agent",
            "*Customer* care",
            f"Sam Agent, {self.workspace_name}",
        ]

    def text(self, language: str, now: datetime, time: str) -> str:
        p = self.parts(language, now)
        return "\n".join(self.lines(language, now)).replace("{amount}", p["amount"]).replace("{time}", time)

    def html(self, language: str, now: datetime, time: str) -> str:
        p = self.parts(language, now)

        def escape(text: str) -> str:
            return (
                text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\xa0", "&nbsp;")
            )

        lines = [escape(line) for line in self.lines(language, now)]
        lines = [
            line.replace("{amount}", f"<strong>{escape(p['amount'])}</strong>").replace(
                "{time}", escape(time)
            )
            for line in lines
        ]
        return (
            f"<p>{lines[0]}</p>\n<p>"
            + "<br>\n".join(lines[2:7])
            + "</p>\n<p>"
            + "<br>\n".join(lines[8:])
            + "</p>"
        )


def check_rendered(
    rendered: dict[str, Any], expected: Expected, language: str, before: datetime, after: datetime
) -> None:
    """The three formats of a render of BODY in `language`, made between `before` and `after`."""
    assert rendered["language"] == language
    assert rendered["subject"] == {"en": "Re: ", "de": "AW: ", "fr": "RE : "}[language] + "Refund (order #5)?"
    text = rendered["text"]
    candidates = [(now, format_time(now, "short", tzinfo=BERLIN, locale=language)) for now in (before, after)]
    matches = [(now, t) for now, t in candidates if expected.text(language, now, t) == text]
    assert matches, f"{text!r} != {expected.text(language, before, candidates[0][1])!r}"
    now, time_ = matches[0]
    assert "Order" not in text  # the conversation has no order: the {% if order %} branch is not taken
    assert rendered["html"] == expected.html(language, now, time_)
    amount = format_currency(1234.5, "EUR", locale=language)
    # MarkdownV2: Telegram reads it (nothing left unescaped) as the plain text with the amount bold.
    markdown = rendered["markdownv2"]
    shown, entities = parse_markdown_v2(markdown)
    assert shown == text
    assert entities == [
        {"type": "bold", "offset": utf16(text[: text.index(amount)]), "length": utf16(amount)}
    ]
    assert r'Note: <script\>alert\("x"\)</script\> 5\.5\-1\! \*\*not bold\*\*' in markdown
    assert r"Refund \(order \#5\)?\." in markdown
    assert "\\*Customer\\* care" in markdown


async def test_every_variable_in_three_languages_and_three_formats(desk: Desk) -> None:
    """The acceptance test: each language chosen by the request, the conversation and the contact."""
    variants = [
        {
            "language": language,
            "subject": SUBJECT[language],
            "body": BODY.replace("Hello", GREETING[language], 1),
        }
        for language in ("en", "de", "fr")
    ]
    template = await desk.template(name="Everything", shortcode="all", variants=variants)
    conversation = await desk.conversation("m1", subject="Refund (order #5)?")
    contact_id = (await desk.agent.get(f"/conversations/{conversation}")).body["contact"]["id"]
    assert (await desk.agent.patch(f"/contacts/{contact_id}", {"email": "anna@example.com"})).status == 200
    await sql_write(
        desk.store,
        "UPDATE users SET signature = :s WHERE id = :id",
        s="Sam Agent\n*Customer* care",
        id=desk.agent_id,
    )
    today = datetime.now(UTC).date()
    hours = {
        "timezone": "UTC",
        "weekly": {day: ["09:00-10:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
        "closed": [today.isoformat(), (today + timedelta(days=1)).isoformat()],
    }
    patched = await desk.admin.patch("/workspace", {"timezone": "Europe/Berlin", "hours": hours})
    assert patched.status == 200, patched.body
    # Closed today and tomorrow: back the day after at 09:00 UTC.
    opens_at = datetime.combine(today + timedelta(days=2), datetime.min.time(), UTC).replace(hour=9)
    expected = Expected(conversation, patched.body["name"], opens_at)

    async def render(language_from: str, explanation: str, used: str, **fields: Any) -> None:
        before = datetime.now(UTC)
        rendered = await desk.render("all", conversation, variables=VARS, **fields)
        after = datetime.now(UTC)
        assert rendered["template_id"] == template["id"]
        assert (rendered["language_from"], rendered["explanation"]) == (language_from, explanation)
        assert rendered["channel_formats"] == []  # an API channel takes plain text only
        check_rendered(rendered, expected, used, before, after)

    # Nothing known about the conversation's language: the workspace default.
    await render("workspace default", "no language known, used the workspace default en", "en")
    for language in ("en", "de", "fr"):
        await render("request", f"used {language}", language, language=language)
    # The contact's language.
    assert (await desk.agent.patch(f"/contacts/{contact_id}", {"language": "fr"})).status == 200
    expected.contact_language = "fr"
    await render("contact", "used fr", "fr")
    # The conversation's language comes before the contact's, the request's before both.
    assert (await desk.agent.patch(f"/conversations/{conversation}", {"language": "de"})).status == 200
    await render("conversation", "used de", "de")
    await render("request", "used en", "en", language="en")

    # Localised values really differ per language (and are Babel's, not hard-coded guesses).
    assert format_currency(1234.5, "EUR", locale="de") == "1.234,50\xa0€"
    assert format_currency(1234.5, "EUR", locale="fr") == "1\u202f234,50\xa0€"
    assert format_currency(1234.5, "EUR", locale="en") == "€1,234.50"


async def test_the_language_choice_is_explained(desk: Desk) -> None:
    await desk.template(
        name="Two",
        shortcode="two",
        variants=[{"language": "en", "body": "en"}, {"language": "de", "body": "de"}],
    )
    await desk.template(
        name="No default",
        shortcode="nodefault",
        variants=[{"language": "fr", "body": "fr"}, {"language": "it", "body": "it"}],
    )
    conversation = await desk.conversation("m1")

    async def choice(template: str, **fields: Any) -> tuple[str, str, str, str]:
        rendered = await desk.render(template, conversation, **fields)
        return rendered["language"], rendered["language_from"], rendered["explanation"], rendered["text"]

    assert await choice("two") == (
        "en",
        "workspace default",
        "no language known, used the workspace default en",
        "en",
    )
    assert await choice("nodefault") == (
        "fr",
        "workspace default",
        "no language known, the workspace default en: no variant, used the first variant fr",
        "fr",
    )
    assert (await desk.agent.patch(f"/conversations/{conversation}", {"language": "de-AT"})).status == 200
    assert await choice("two") == ("de", "conversation", "de-AT: no variant, used de", "de")
    assert await choice("two", language="pt-BR") == (
        "de",
        "conversation",
        "pt-BR: no variant, de-AT: no variant, used de",
        "de",
    )
    assert await choice("two", language="en-GB") == ("en", "request", "en-GB: no variant, used en", "en")
    assert await choice("nodefault") == (
        "fr",
        "workspace default",
        "de-AT: no variant, the workspace default en: no variant, used the first variant fr",
        "fr",
    )
    # The workspace default changes with the workspace.
    assert (await desk.admin.patch("/workspace", {"default_language": "it"})).status == 200
    assert await choice("nodefault") == (
        "it",
        "workspace default",
        "de-AT: no variant, used the workspace default it",
        "it",
    )
    error_of(
        await desk.agent.post(
            "/templates/two/render", {"conversation_id": conversation, "language": "not a tag"}
        ),
        400,
        "invalid_field",
    )


async def test_a_block_tag_ending_a_line_of_text_keeps_its_line_break(desk: Desk) -> None:
    body = (
        "Status: {% if workspace.is_open %}open{% else %}closed{% endif %}\n"
        "Next line\n"
        "  {% if true %}\n"
        "alone {# a comment #}\n"
        "{# a comment alone #}\n"
        "{% endif %}\n"
        "last"
    )
    await desk.template(name="Lines", shortcode="lines", variants=one("en", body))
    rendered = await desk.render("lines", await desk.conversation("m1"))
    assert rendered["text"] == "Status: open\nNext line\nalone\nlast"
    assert rendered["html"] == "<p>Status: open<br>\nNext line<br>\nalone<br>\nlast</p>"


# --------------------------------------------------------------------------------------------------
# What cannot be rendered here


async def test_render_failures_are_422_with_the_problem(desk: Desk) -> None:
    await desk.template(
        name="Days",
        shortcode="days",
        variants=one("en", "Hello,\n{% if true %}\nwithin {{ vars.days }} days\n{% endif %}"),
    )
    await desk.template(
        name="Order", shortcode="order", variants=one("en", "Hello,\n\nyour order {{ order.number }}")
    )
    conversation = await desk.conversation("m1")
    for reply in (
        await desk.agent.post(
            "/templates/days/render", {"conversation_id": conversation, "variables": {"day": 1}}
        ),
        await desk.agent.post(
            f"/conversations/{conversation}/messages", {"template": "days", "variables": {"day": 1}}
        ),
    ):
        error = error_of(reply, 422, "invalid_template")
        assert error["problems"] == [
            {"language": "en", "field": "body", "line": 3, "message": "no value given for 'vars.days'"}
        ]
    message = "'order.number' is not available: this conversation has no order (use it inside {% if order %})"
    for reply in (
        await desk.agent.post("/templates/order/render", {"conversation_id": conversation}),
        await desk.agent.post(f"/conversations/{conversation}/messages", {"template": "order"}),
    ):
        error = error_of(reply, 422, "invalid_template")
        assert error["problems"] == [{"language": "en", "field": "body", "line": 3, "message": message}]
    assert "order.number" in error["message"]
    # Nothing was sent.
    rows = await sql(desk.store, "SELECT count(*) FROM messages WHERE direction = 'out'")
    assert rows[0][0] == 0
    error_of(
        await desk.agent.post("/templates/nothing/render", {"conversation_id": conversation}),
        404,
        "not_found",
    )
    error_of(
        await desk.agent.post("/templates/days/render", {"conversation_id": "nothing"}), 404, "not_found"
    )


# --------------------------------------------------------------------------------------------------
# Replies made from templates

REPLY_BODY = "Hi {{ contact.first_name }}. You get **{{ vars.days }}** days - done!\n\n{{ agent.signature }}"


async def test_a_reply_from_a_template_is_what_the_preview_showed(desk: Desk) -> None:
    template = await desk.template(
        name="Days",
        shortcode="days",
        variants=[
            {"language": "en", "subject": "Re: {{ conversation.subject }}", "body": REPLY_BODY},
            {"language": "de", "body": "Hallo {{ contact.first_name }}, **{{ vars.days }}** Tage."},
        ],
    )
    conversation = await desk.conversation("m1", subject="Parcel")
    preview = await desk.render("days", conversation, variables={"days": 14})
    assert preview["text"] == "Hi Anna. You get 14 days - done!\n\nSam Agent"
    assert preview["channel_formats"] == []

    message = await desk.reply(conversation, template="days", variables={"days": 14})
    assert message["text"] == preview["text"]
    assert message["html"] is None  # an API channel takes plain text only
    assert message["subject"] == preview["subject"] == "Re: Parcel"
    assert message["language"] == "en"
    assert message["kind"] == "message"
    assert message["delivery_status"] == "queued"
    assert message["sender"] == {"type": "user", "id": desk.agent_id, "name": "Sam Agent"}
    listed = (await desk.agent.get(f"/conversations/{conversation}/messages")).body["items"]
    assert [m for m in listed if m["id"] == message["id"]] == [message]
    row = await desk.stored(message["id"])
    assert (row.kind, row.text, row.html, row.subject, row.language) == (
        "message",
        preview["text"],
        None,
        "Re: Parcel",
        "en",
    )
    assert extra_of(row) == {"template": {"id": template["id"], "language": "en"}}
    assert await desk.outbox_rows(message["id"]) == 1

    # Another language by request, by id rather than shortcode.
    german = await desk.reply(conversation, template=template["id"], variables={"days": 7}, language="de")
    assert (german["text"], german["language"], german["subject"]) == ("Hallo Anna, 7 Tage.", "de", None)
    assert extra_of(await desk.stored(german["id"])) == {"template": {"id": template["id"], "language": "de"}}


async def test_a_reply_on_telegram_in_markdown_v2_stores_it(desk: Desk) -> None:
    telegram = await desk.dormant_channel("telegram", TELEGRAM)
    plain_telegram = await desk.dormant_channel("telegram", {**TELEGRAM, "formatting": "plain"})
    template = await desk.template(name="Days", shortcode="days", variants=one("en", REPLY_BODY))
    conversation = await desk.conversation("t1", channel_id=telegram, kind="telegram", sender="4242")
    preview = await desk.render("days", conversation, variables={"days": 14})
    assert preview["channel_formats"] == ["markdownv2"]
    assert preview["markdownv2"] == r"Hi Anna\. You get *14* days \- done\!" + "\n\nSam Agent"
    assert parse_markdown_v2(preview["markdownv2"]) == (
        preview["text"],
        [{"type": "bold", "offset": 17, "length": 2}],
    )
    message = await desk.reply(conversation, template="days", variables={"days": 14})
    assert (message["text"], message["html"]) == (preview["text"], None)
    row = await desk.stored(message["id"])
    assert (row.text, row.html, row.language) == (preview["text"], None, "en")
    assert extra_of(row) == {
        "template": {"id": template["id"], "language": "en"},
        "markdown_v2": preview["markdownv2"],
    }

    # A Telegram account set to plain text gets no MarkdownV2.
    plain = await desk.conversation("t2", channel_id=plain_telegram, kind="telegram", sender="4343")
    assert (await desk.render("days", plain, variables={"days": 14}))["channel_formats"] == []
    message = await desk.reply(plain, template="days", variables={"days": 14})
    assert extra_of(await desk.stored(message["id"])) == {
        "template": {"id": template["id"], "language": "en"}
    }


async def test_a_reply_by_email_stores_the_html_and_subject(desk: Desk) -> None:
    email = await desk.dormant_channel("email", EMAIL)
    template = await desk.template(
        name="Days", shortcode="days", variants=one("en", REPLY_BODY, "Re: {{ conversation.subject }}")
    )
    conversation = await desk.conversation(
        "<m1@example.com>", channel_id=email, kind="email", sender="anna@example.com", subject="Parcel <late>"
    )
    preview = await desk.render("days", conversation, variables={"days": "<b>14</b>"})
    assert preview["channel_formats"] == ["html"]
    assert preview["text"] == "Hi Anna. You get <b>14</b> days - done!\n\nSam Agent"
    assert (
        preview["html"]
        == "<p>Hi Anna. You get <strong>&lt;b&gt;14&lt;/b&gt;</strong> days - done!</p>\n<p>Sam Agent</p>"
    )
    assert preview["subject"] == "Re: Parcel <late>"
    message = await desk.reply(conversation, template="days", variables={"days": "<b>14</b>"})
    assert (message["text"], message["html"], message["subject"]) == (
        preview["text"],
        preview["html"],
        preview["subject"],
    )
    row = await desk.stored(message["id"])
    assert (row.text, row.html, row.subject) == (preview["text"], preview["html"], preview["subject"])
    assert extra_of(row) == {"template": {"id": template["id"], "language": "en"}}


async def test_a_note_from_a_template_is_stored_and_never_sent(desk: Desk) -> None:
    telegram = await desk.dormant_channel("telegram", TELEGRAM)
    template = await desk.template(name="Days", shortcode="days", variants=one("en", REPLY_BODY))
    conversation = await desk.conversation("t1", channel_id=telegram, kind="telegram", sender="4242")
    note = await desk.reply(conversation, template="days", variables={"days": 3}, private=True)
    assert note["kind"] == "note"
    assert note["delivery_status"] is None
    assert note["text"] == "Hi Anna. You get 3 days - done!\n\nSam Agent"
    row = await desk.stored(note["id"])
    assert (row.kind, row.text, row.html, row.language) == ("note", note["text"], None, "en")
    assert extra_of(row) == {"template": {"id": template["id"], "language": "en"}}
    assert await desk.outbox_rows(note["id"]) == 0


async def test_a_reply_gives_text_or_a_template(desk: Desk) -> None:
    await desk.template(name="Days", shortcode="days", variants=one("en", REPLY_BODY))
    conversation = await desk.conversation("m1")
    path = f"/conversations/{conversation}/messages"
    error = error_of(await desk.agent.post(path, {"text": "hi", "template": "days"}), 400, "invalid_field")
    assert error["field"] == "template"
    error = error_of(await desk.agent.post(path, {}), 400, "missing_field")
    assert error["field"] == "text"
    error = error_of(await desk.agent.post(path, {"private": True}), 400, "missing_field")
    error = error_of(
        await desk.agent.post(path, {"text": "hi", "variables": {"days": 1}}), 400, "invalid_field"
    )
    assert error["field"] == "variables"
    error = error_of(await desk.agent.post(path, {"text": "hi", "language": "de"}), 400, "invalid_field")
    assert error["field"] == "language"
    error_of(await desk.agent.post(path, {"template": "nothing"}), 404, "not_found")
    error_of(
        await desk.agent.post(path, {"template": "days", "variables": {"days": [1]}}), 400, "invalid_field"
    )
    error_of(await desk.agent.post(path, {"template": "days", "variables": {"_x": 1}}), 400, "invalid_field")
    # true is not the number 1: a template prints what it is given.
    error_of(
        await desk.agent.post(path, {"template": "days", "variables": {"days": True}}), 400, "invalid_field"
    )
    render = {"conversation_id": conversation, "variables": {"days": True}}
    error_of(await desk.agent.post("/templates/days/render", render), 400, "invalid_field")
    error_of(await desk.agent.post("/conversations/nothing/messages", {"template": "days"}), 404, "not_found")
    rows = await sql(desk.store, "SELECT count(*) FROM messages WHERE direction = 'out'")
    assert rows[0][0] == 0
    # Text alone still works.
    assert (await desk.reply(conversation, text="plain reply"))["text"] == "plain reply"


async def test_the_agent_signature_else_the_agents_name(desk: Desk) -> None:
    await desk.template(
        name="Signed",
        shortcode="signed",
        variants=one("en", "Thanks!\n\n{{ agent.signature }}\n-- {{ agent.name }}"),
    )
    conversation = await desk.conversation("m1")
    rendered = await desk.render("signed", conversation)
    assert rendered["text"] == "Thanks!\n\nSam Agent\n-- Sam Agent"
    await sql_write(
        desk.store,
        "UPDATE users SET signature = :s WHERE id = :id",
        s="Sam\n*Support* team",
        id=desk.agent_id,
    )
    rendered = await desk.render("signed", conversation)
    assert rendered["text"] == "Sam\n*Support* team".join(["Thanks!\n\n", "\n-- Sam Agent"])
    assert rendered["html"] == "<p>Thanks!</p>\n<p>Sam<br>\n*Support* team<br>\n-- Sam Agent</p>"
    message = await desk.reply(conversation, template="signed")
    assert message["text"] == rendered["text"]
    # Each agent signs with their own: the admin has none, so their name.
    by_admin = await desk.admin.post(f"/conversations/{conversation}/messages", {"template": "signed"})
    assert by_admin.status == 202, by_admin.body
    assert by_admin.body["text"] == "Thanks!\n\nAda Admin\n-- Ada Admin"


# --------------------------------------------------------------------------------------------------
# Templates automatic replies use


async def test_a_template_an_automatic_reply_uses_cannot_be_deleted_or_lose_its_shortcode(desk: Desk) -> None:
    ack = await desk.template(
        name="Thanks", shortcode="ack", variants=one("en", "Thanks {{ contact.first_name }}")
    )
    other = await desk.template(name="Other", shortcode="other", variants=one("en", "Thanks"))
    auto: dict[str, Any] = {"acknowledge": {desk.channel_id: {"template": "ack"}}}
    patched = await desk.admin.patch("/workspace", {"auto_replies": auto})
    assert patched.status == 200, patched.body

    error = error_of(await desk.admin.delete("/templates/ack"), 409, "template_in_use")
    assert error["message"] == (
        f"cannot delete it: the workspace's auto_replies.acknowledge.{desk.channel_id} uses template 'Thanks'; "
        "point it at another template first (PATCH /api/v1/workspace)"
    )
    error_of(await desk.admin.delete(f"/templates/{ack['id']}"), 409, "template_in_use")
    for shortcode in ("ack2", ""):
        error = error_of(
            await desk.admin.patch("/templates/ack", {"shortcode": shortcode}), 409, "template_in_use"
        )
        assert error["message"].startswith(
            "cannot change its shortcode: the workspace's auto_replies.acknowledge."
        )
    # An automatic reply cannot fill in vars: the template may not start using them.
    error = error_of(
        await desk.admin.patch("/templates/ack", {"variants": one("en", "{{ vars.days }} {{ vars.x }}")}),
        409,
        "template_in_use",
    )
    assert error["message"].startswith(
        "cannot make it use vars.days, vars.x (an automatic reply cannot fill them in):"
    )
    assert (await desk.agent.get("/templates/ack")).body == ack
    # Renaming, re-categorising, new text and the same shortcode again are fine.
    changed = await desk.admin.patch(
        "/templates/ack",
        {"name": "Thank you", "category": "auto", "shortcode": "ack", "variants": one("de", "Danke")},
    )
    assert changed.status == 200, changed.body
    assert (changed.body["name"], changed.body["shortcode"], changed.body["category"]) == (
        "Thank you",
        "ack",
        "auto",
    )

    # Used by id: the shortcode may change, deleting still may not.
    auto = {
        "acknowledge": {desk.channel_id: {"template": ack["id"]}},
        "out_of_hours": {"template": "other"},
    }
    assert (await desk.admin.patch("/workspace", {"auto_replies": auto})).status == 200
    renamed = await desk.admin.patch(f"/templates/{ack['id']}", {"shortcode": "ack-new"})
    assert renamed.status == 200, renamed.body
    assert renamed.body["shortcode"] == "ack-new"
    error_of(await desk.admin.delete("/templates/ack-new"), 409, "template_in_use")
    # The out-of-hours reply's template too, even while that reply is off.
    error = error_of(await desk.admin.delete(f"/templates/{other['id']}"), 409, "template_in_use")
    assert "auto_replies.out_of_hours uses template 'Other'" in error["message"]

    assert (await desk.admin.patch("/workspace", {"auto_replies": {}})).status == 200
    assert (await desk.admin.delete("/templates/ack-new")).status == 204
    assert (await desk.admin.delete("/templates/other")).status == 204
    assert (await desk.agent.get("/templates")).body == {"items": []}
