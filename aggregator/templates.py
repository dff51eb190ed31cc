"""Reply templates: written once in light Markdown with Jinja2 variables, rendered per language and channel.

A template has one `Variant` per language. Its body is Markdown (paragraphs, **bold**, *italic*,
[links](https://...), <https://autolinks>, bullet and numbered lists, line breaks, `code`) with Jinja2
expressions; its subject (email) is Jinja2 over plain text. Anything else Markdown knows (headings,
quotes, images, tables, raw HTML) is not recognised and prints as the characters typed.

Rendering (`render`): Jinja2 runs in a sandbox (`ImmutableSandboxedEnvironment`, `StrictUndefined`) with
Babel filters that format for the variant's language, and every value a `{{ ... }}` prints is escaped for
Markdown (the environment's `finalize`), so a customer called ``Anna *VIP* [x](y)`` prints literally.
markdown-it-py then parses the result once, and it is written out as plain text, sanitised HTML (nh3) and
Telegram MarkdownV2 as asked.

Validation (`validate`), at save time: syntax errors, unknown variables and fields (also in branches a
sample render does not reach), access to private attributes, then a render of each variant against
`SAMPLE`, a complete context, in its language and every format: whatever raises there (sandbox
violations, type errors, unknown filters) is a `Problem` with its template line.

The Jinja2 sandbox stops a template from reaching Python internals (``''.__class__``,
``cycler.__init__.__globals__``, private names, list/dict mutation, str.format tricks) but limits
neither CPU nor memory. Here: `*` and `**` are bounded, `lipsum` and the padding filters ``center``,
``indent``, ``format`` and ``slice`` are not available, the output is cut off at `MAX_OUTPUT`
characters, and a render on the main thread (the API's, the automatic replies') stops after
`MAX_CPU_SECONDS` of CPU (``{% for a in range(100000) %}{% for b in range(100000) %}`` prints
nothing and would loop for hours). Memory is not bounded beyond that: a template building a large
list inside the time limit (``range`` makes at most 100,000 items) is possible, for an admin only.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import operator
import re
import signal
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, tzinfo
from decimal import Decimal
from types import TracebackType
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import nh3
from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError, nodes, pass_context
from jinja2.exceptions import SecurityError, TemplateAssertionError, TemplateRuntimeError
from jinja2.ext import Extension
from jinja2.lexer import Token as JinjaToken
from jinja2.lexer import TokenStream
from jinja2.meta import find_undeclared_variables
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing
from markdown_it import MarkdownIt
from markdown_it.token import Token
from markdown_it.tree import SyntaxTreeNode
from telegram.helpers import escape_markdown

__all__ = [
    "FILTERS",
    "MAX_OUTPUT",
    "SAMPLE",
    "VARIABLES",
    "Format",
    "Problem",
    "Record",
    "Rendered",
    "TemplateInvalid",
    "Variant",
    "build_context",
    "choose_variant",
    "render",
    "required_vars",
    "validate",
]

MAX_OUTPUT: Final = 100_000
"""Characters a body or subject may render to; beyond this rendering fails (a runaway loop)."""

_CPU_MESSAGE: Final = "rendering took more than"
MAX_CPU_SECONDS: Final = 2.0
"""CPU a body or subject may take to render (on the main thread); beyond this rendering fails."""

_MAX_REPEAT: Final = 10_000  # items or characters `"x" * n` may produce
_MAX_POWER_BITS: Final = 4_096  # bits `a ** b` may produce


class Format(enum.StrEnum):
    PLAIN = "plain"
    HTML = "html"
    MARKDOWN_V2 = "markdownv2"


@dataclass(frozen=True, slots=True)
class Variant:
    """One language of a template."""

    language: str  # BCP 47-ish tag: "en", "de", "de-AT", "pt-BR"
    body: str  # Markdown + Jinja2
    subject: str | None = None  # for email; Jinja2, plain text


@dataclass(frozen=True, slots=True)
class Problem:
    """Something that would make a variant fail or print wrongly. `line` is the template's, from 1."""

    language: str
    field: Literal["subject", "body"]
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.language} {self.field}" + (f" line {self.line}" if self.line is not None else "")
        return f"{where}: {self.message}"


class TemplateInvalid(Exception):
    """A template that cannot be saved or rendered; `problems` says why, str() lists them all."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("; ".join(str(problem) for problem in self.problems) or "invalid template")


@dataclass(frozen=True, slots=True)
class Rendered:
    language: str  # the variant's language that was used
    explanation: str  # from choose_variant
    subject: str | None
    text: str  # plain text: always
    html: str | None  # for Format.HTML targets: sanitised (nh3) HTML
    markdown_v2: str | None  # for Format.MARKDOWN_V2 targets: Telegram MarkdownV2


@functools.lru_cache(maxsize=256)
def _locale(tag: str) -> Locale:
    """Babel's locale for a BCP 47-ish tag (ValueError, UnknownLocaleError when it has none)."""
    return Locale.parse(tag.strip().replace("_", "-"), sep="-")


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


# --------------------------------------------------------------------------------------------------
# What a template sees


class Record:
    """A group of fields (`contact`, `order`, ...) as a template sees it: `contact.name`, `contact["name"]`.

    Fields are attributes rather than dict keys so that `order.items` is the order's items and not
    `dict.items`, and so that an unknown field is reported by its full name (`contact.nmae`).
    """

    __slots__ = ("_fields", "_path")

    def __init__(self, path: str, fields: Mapping[str, Any]) -> None:
        self._path = path
        self._fields = dict(fields)

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not real attributes: the fields.
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(name) from None

    def _unknown(self, name: object) -> str:
        return f"unknown variable '{self._path}.{name}'"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return type(self) is type(other) and self._path == other._path and self._fields == other._fields

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._path!r}, {self._fields!r})"


class _Absent(Record):
    """`order` in a conversation without one: false in `{% if order %}`, and any field of it fails."""

    __slots__ = ()

    def __init__(self, path: str) -> None:
        super().__init__(path, {})

    def __bool__(self) -> bool:
        return False

    def _unknown(self, name: object) -> str:
        return (
            f"'{self._path}.{name}' is not available: this conversation has no {self._path} "
            f"(use it inside {{% if {self._path} %}})"
        )


class _Vars(Record):
    """`vars`: the values the agent gives for this reply."""

    __slots__ = ()

    def _unknown(self, name: object) -> str:
        return f"no value given for 'vars.{name}'"


class _AnyVars(_Vars):
    """`vars` for validation: whatever the agent may give later, any name has a (numeric-looking) value."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return "1"


class _Undefined(StrictUndefined):
    """StrictUndefined whose message names the variable as the template wrote it."""

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: type[TemplateRuntimeError] = UndefinedError,
    ) -> None:
        if hint is None:
            if isinstance(obj, Record):
                hint = obj._unknown(name)
            elif obj is missing and name is not None:
                hint = f"unknown variable '{name}'"
        super().__init__(hint, obj, name, exc)


_ITEM_FIELDS: Final = ("name", "quantity", "price", "sku")

VARIABLES: Final[Mapping[str, str]] = {
    "contact.name": "the customer's full name ('' when unknown)",
    "contact.first_name": "the customer's first name: given, else the first word of the name",
    "contact.email": "the customer's email address ('' when unknown)",
    "contact.language": "the customer's language tag, e.g. 'de-AT' ('' when unknown)",
    "conversation.id": "the conversation's id",
    "conversation.subject": "the conversation's subject ('' when it has none)",
    "conversation.channel": "the kind of channel: 'email', 'telegram', ...",
    "agent.name": "the replying agent's name (the workspace name for an automatic reply)",
    "agent.signature": "the agent's signature, may span lines (else the agent's name)",
    "workspace.name": "the workspace's (shop's) name",
    "workspace.timezone": "the IANA time zone dates and times are shown in, e.g. 'Europe/Berlin' (default UTC)",
    "workspace.is_open": "true while the team is at work (its business hours; true when none are set)",
    "workspace.opens_at": "when the team is next at work, for out-of-hours replies: "
    "{{ workspace.opens_at | datetime('short') }} (empty while open or without business hours)",
    "order": "the order the conversation is about; may be missing: use its fields inside {% if order %}",
    "order.id": "the order's id in the marketplace or shop",
    "order.number": "the order number the customer knows",
    "order.status": "the order's status as the marketplace names it",
    "order.total": "the order's total, a number: {{ order.total | currency(order.currency) }}",
    "order.currency": "the ISO 4217 code of the total, e.g. 'EUR'",
    "order.placed_at": "when the order was placed: {{ order.placed_at | date }}",
    "order.items": "the ordered items: {% for item in order.items %}...{% endfor %}",
    "order.items[].name": "an item's name",
    "order.items[].quantity": "how many of the item",
    "order.items[].price": "an item's unit price, a number",
    "order.items[].sku": "an item's SKU ('' when unknown)",
    "order.tracking_url": "the parcel's tracking link ('' when not shipped)",
    "order.carrier": "the carrier delivering the parcel ('' when not shipped)",
    "now": "the time of the reply: {{ now | datetime }}",
    "language": "the language tag of the variant being rendered",
    "vars.<name>": "a value the agent gives for this reply (text or a number)",
}
"""What a template may use: name -> description (for the API to show)."""

FILTERS: Final[Mapping[str, str]] = {
    "date": "{{ x | date }}, {{ x | date('long') }}: a date ('short', 'medium', 'long', 'full' or a CLDR pattern)",
    "datetime": "{{ x | datetime }}, {{ x | datetime('short') }}: date and time in the workspace's time zone",
    "time": "{{ x | time }}, {{ x | time('short') }}: a time of day in the workspace's time zone",
    "number": "{{ 1234.5 | number }}: a number with the language's separators",
    "currency": "{{ order.total | currency(order.currency) }}: an amount of money",
    "percent": "{{ 0.25 | percent }}: a fraction as a percentage",
}
"""The formatting filters (besides Jinja2's own), all formatting for the variant's language."""

_LOCALE: Final = "@locale"  # hidden context keys: not names a template can write
_TZ: Final = "@tz"
_MARKDOWN: Final = "@markdown"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _fields(given: Mapping[str, Any] | None, names: Sequence[str], text: Collection[str]) -> dict[str, Any]:
    given = given or {}
    return {name: (_text(given.get(name)) if name in text else given.get(name)) for name in names}


def build_context(
    *,
    contact: Mapping[str, Any],
    conversation: Mapping[str, Any],
    agent: Mapping[str, Any] | None,
    workspace: Mapping[str, Any],
    order: Mapping[str, Any] | None,
    now: datetime,
    language: str,
    variables: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The context a template sees (see `VARIABLES`); fields not listed there are not passed on.

    Missing text fields are '' (so `{{ contact.name | upper }}` never prints "NONE"); a missing number or
    date is None, which prints as ''; `order.placed_at` given as ISO 8601 text becomes a datetime. `language`
    is the language the reply is meant to be in (`{{ language }}`); `render` sets it to the variant's.
    Raises ValueError for a naive `now`, an unknown time zone, an unreadable `placed_at`, a variable name
    that is empty or starts with '_', or a variable value that is not text or a number.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    workspace_name = _text(workspace.get("name"))
    timezone = _text(workspace.get("timezone")) or "UTC"
    _zone(timezone)
    contact_fields = _fields(
        contact, ("name", "first_name", "email", "language"), ("name", "first_name", "email", "language")
    )
    if not contact_fields["first_name"]:
        words = contact_fields["name"].split()
        contact_fields["first_name"] = words[0] if words else ""
    agent_name = _text((agent or {}).get("name")) or workspace_name
    agent_fields = {"name": agent_name, "signature": _text((agent or {}).get("signature")) or agent_name}
    order_record: Record
    if order is None:
        order_record = _Absent("order")
    else:
        text = ("number", "status", "currency", "tracking_url", "carrier")
        order_fields = _fields(
            order,
            ("id", "number", "status", "total", "currency", "placed_at", "tracking_url", "carrier"),
            text,
        )
        if isinstance(order_fields["placed_at"], str):  # ISO 8601 from a marketplace's JSON
            order_fields["placed_at"] = datetime.fromisoformat(order_fields["placed_at"])
        order_fields["items"] = [
            Record("order.items[]", _fields(item, _ITEM_FIELDS, ("name", "sku")))
            for item in order.get("items") or ()
        ]
        order_record = Record("order", order_fields)
    given = dict(variables or {})
    for name in given:
        if not isinstance(name, str) or not name or name.startswith("_"):
            raise ValueError(f"invalid variable name {name!r}")
        if isinstance(given[name], bool) or not isinstance(given[name], str | int | float | Decimal):
            raise ValueError(f"variable {name!r} must be text or a number, not {type(given[name]).__name__}")
    return {
        "contact": Record("contact", contact_fields),
        "conversation": Record(
            "conversation", _fields(conversation, ("id", "subject", "channel"), ("subject", "channel"))
        ),
        "agent": Record("agent", agent_fields),
        "workspace": Record(
            "workspace",
            {
                "name": workspace_name,
                "timezone": timezone,
                "is_open": bool(workspace.get("is_open", True)),
                "opens_at": workspace.get("opens_at"),
            },
        ),
        "order": order_record,
        "now": now,
        "language": language,
        "vars": _Vars("vars", given),
    }


def _sample() -> dict[str, Any]:
    context = build_context(
        contact={"name": "Anna Example", "email": "anna@example.com", "language": "en"},
        conversation={"id": 1042, "subject": "Where is my order?", "channel": "email"},
        agent={"name": "Sam Agent", "signature": "Sam Agent\nCustomer care"},
        workspace={
            "name": "Example Shop",
            "timezone": "Europe/Berlin",
            "is_open": False,
            "opens_at": datetime(2024, 5, 3, 7, 0, tzinfo=UTC),
        },
        order={
            "id": "A-77123",
            "number": "100234",
            "status": "shipped",
            "total": Decimal("1234.50"),
            "currency": "EUR",
            "placed_at": datetime(2024, 4, 28, 9, 15, tzinfo=UTC),
            "items": [
                {"name": "Espresso machine", "quantity": 1, "price": Decimal("1199.00"), "sku": "EM-1"},
                {"name": "Descaler", "quantity": 2, "price": Decimal("17.75"), "sku": "DS-2"},
            ],
            "tracking_url": "https://tracking.example.com/parcel/00340434161094042557",
            "carrier": "DHL",
        },
        now=datetime(2024, 5, 2, 14, 30, tzinfo=UTC),
        language="en",
    )
    context["vars"] = _AnyVars("vars", {})
    return context


SAMPLE: Final[Mapping[str, Any]] = _sample()
"""A complete context (every field set, any `vars.<name>` is "1"): what `validate` renders against."""


# --------------------------------------------------------------------------------------------------
# The Jinja2 environment


def _number(value: Any) -> int | float | Decimal:
    if isinstance(value, bool) or value is None:
        raise TypeError(f"not a number: {value!r}")
    if isinstance(value, int | float | Decimal):
        return value
    if isinstance(value, str):
        return Decimal(value.strip())  # an agent's "12.50"
    raise TypeError(f"not a number: {value!r}")


def _moment(value: Any) -> datetime | date | time:
    if isinstance(value, datetime | date | time):
        return value
    if isinstance(value, str):
        return datetime.fromisoformat(value.strip())
    raise TypeError(f"not a date or time: {value!r}")


def _aware(value: datetime, zone: tzinfo) -> datetime:
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(zone)


@pass_context
def _date(context: Context, value: Any, format: str = "medium") -> str:
    if value is None:
        return ""  # a missing value prints as nothing, as it does without the filter
    moment = _moment(value)
    if isinstance(moment, time):
        raise TypeError(f"not a date: {value!r}")
    if isinstance(moment, datetime):
        moment = _aware(moment, context[_TZ]).date()
    return babel_dates.format_date(moment, format, locale=context[_LOCALE])


@pass_context
def _datetime(context: Context, value: Any, format: str = "medium") -> str:
    if value is None:
        return ""  # a missing value prints as nothing, as it does without the filter
    moment = _moment(value)
    if not isinstance(moment, datetime):
        raise TypeError(f"not a date and time: {value!r}")
    return babel_dates.format_datetime(_aware(moment, context[_TZ]), format, locale=context[_LOCALE])


@pass_context
def _time(context: Context, value: Any, format: str = "medium") -> str:
    if value is None:
        return ""  # a missing value prints as nothing, as it does without the filter
    moment = _moment(value)
    if isinstance(moment, datetime):
        moment = _aware(moment, context[_TZ])
    elif isinstance(moment, date):
        raise TypeError(f"not a time: {value!r}")
    return babel_dates.format_time(moment, format, locale=context[_LOCALE])


@pass_context
def _format_number(context: Context, value: Any, format: str | None = None) -> str:
    if value is None:
        return ""  # a missing value prints as nothing, as it does without the filter
    return babel_numbers.format_decimal(_number(value), format, locale=context[_LOCALE])


@pass_context
def _currency(context: Context, value: Any, currency: str, format: str | None = None) -> str:
    if value is None:
        return ""
    if not isinstance(currency, str) or not currency:
        raise TypeError(f"not a currency code: {currency!r}")
    return babel_numbers.format_currency(_number(value), currency, format, locale=context[_LOCALE])


@pass_context
def _percent(context: Context, value: Any, format: str | None = None) -> str:
    if value is None:
        return ""  # a missing value prints as nothing, as it does without the filter
    return babel_numbers.format_percent(_number(value), format, locale=context[_LOCALE])


# All ASCII punctuation: CommonMark lets a backslash escape any of it, in text and in link destinations.
_MARKDOWN_SPECIAL: Final = re.compile(r"([!-/:-@\[-`{-~])")
_MARKDOWN_ESCAPED: Final = re.compile(r"\\([!-/:-@\[-`{-~])")


@pass_context
def _finalize(context: Context, value: Any) -> str:
    """How a `{{ ... }}` prints: None as '', dates in the language, escaped for Markdown in a body."""
    if value is None:
        return ""
    if isinstance(value, Record):
        raise TypeError(f"'{value._path}' is a group of fields: print one of them, e.g. {value._path}.name")
    if isinstance(value, list | tuple | dict | set | frozenset):
        raise TypeError(
            f"a {type(value).__name__} prints as Python writes it: loop over it ({{% for x in ... %}}) "
            "or join it (| join(', '))"
        )
    if isinstance(value, datetime):
        text = babel_dates.format_datetime(_aware(value, context[_TZ]), locale=context[_LOCALE])
    elif isinstance(value, date):
        text = babel_dates.format_date(value, locale=context[_LOCALE])
    else:
        text = str(value)
    if context[_MARKDOWN]:
        return _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    return text


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, with `*` and `**` bounded (`'x' * 10**9` would allocate a gigabyte at compile time)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            for seq, count in ((left, right), (right, left)):
                repeated = isinstance(seq, str | list | tuple) and isinstance(count, int)
                if repeated and len(seq) * count > _MAX_REPEAT:
                    raise SecurityError(f"a repetition longer than {_MAX_REPEAT}")
            return operator.mul(left, right)
        if operator_ == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() * right > _MAX_POWER_BITS
            ):
                raise SecurityError(f"a power of more than {_MAX_POWER_BITS} bits")
            return operator.pow(left, right)
        return super().call_binop(context, operator_, left, right)


class _LoneTagLines(Extension):
    """A line holding only block tags and comments (`{% if order %}`, `{% endfor %}`) leaves no line behind.

    Jinja2's `trim_blocks` removes the line break after every block tag, also after one ending a line
    of text: `Open: {% if x %}yes{% else %}no{% endif %}` + line break + `Next` would print as one line.
    This removes it only where the tags stand alone on their line (`lstrip_blocks` has already taken
    the spaces before them); `+%}` keeps it, as with `trim_blocks`.
    """

    def filter_stream(self, stream: TokenStream) -> Iterator[JinjaToken]:
        alone = True  # nothing but tags since the last line break
        tagged = False  # a block tag or comment since the last line break
        kept = False  # the last block tag ended with +%}
        previous = ""
        for token in stream:
            if token.type == "data":
                value = token.value
                lineno = token.lineno
                if previous == "data":  # a comment (or raw marker) was between the two
                    tagged, kept = True, False
                if alone and tagged and not kept and value.startswith("\n"):
                    value, lineno = value[1:], lineno + 1
                if "\n" in value:
                    alone = not value.rsplit("\n", 1)[1].strip(" \t")
                    tagged = False
                elif value:
                    alone = False
                if value:
                    yield JinjaToken(lineno, "data", value)
            else:
                if token.type == "block_end":
                    tagged, kept = True, str(token.value).startswith("+")
                elif token.type == "variable_begin":
                    alone = False
                yield token
            previous = token.type


def _environment() -> _Environment:
    env = _Environment(
        undefined=_Undefined,
        autoescape=False,
        finalize=_finalize,
        lstrip_blocks=True,
        cache_size=0,
        extensions=[_LoneTagLines],
    )
    for name in ("center", "indent", "format", "slice"):  # padding to any width, iterating any count
        del env.filters[name]
    del env.globals["lipsum"]  # n=100000 paragraphs of filler text: no use in a reply
    added: dict[str, Callable[..., str]] = {
        "date": _date,
        "datetime": _datetime,
        "time": _time,
        "number": _format_number,
        "currency": _currency,
        "percent": _percent,
    }
    for name, function in added.items():
        function.__name__ = function.__qualname__ = name  # "currency() missing 1 required argument"
    env.filters.update(added)
    return env


_ENV: Final = _environment()
_KNOWN_NAMES: Final = frozenset(SAMPLE) | frozenset(_ENV.globals)


@functools.lru_cache(maxsize=1024)
def _compiled(source: str) -> Template:
    return _ENV.from_string(source)


class _TooLong(Exception):
    pass


@contextlib.contextmanager
def _cpu_limit(seconds: float) -> Iterator[None]:
    """Raise _TooLong in the code running here once it has used `seconds` of CPU (SIGPROF).

    A sandboxed template can still loop for ever without printing anything (`range` nested in
    `range`): this bounds it. Only on the main thread (where the API and the automatic replies
    render), where signals are delivered; elsewhere the output cap is the only bound.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise _TooLong(f"{_CPU_MESSAGE} {seconds:g} s of CPU (a loop too large?)")

    previous = signal.signal(signal.SIGPROF, expired)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def _run(template: Template, context: Mapping[str, Any]) -> str:
    parts: list[str] = []
    size = 0
    with _cpu_limit(MAX_CPU_SECONDS):
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise _TooLong(f"the output is longer than {MAX_OUTPUT} characters")
            parts.append(chunk)
    return "".join(parts)


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line of the innermost template frame (Jinja2 rewrites tracebacks to have them)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _problem(exc: Exception, language: str, field: Literal["subject", "body"]) -> Problem:
    if isinstance(exc, TemplateAssertionError):  # an unknown filter or test: "No filter named 'x'."
        return Problem(language, field, exc.lineno, str(exc.message))
    if isinstance(exc, TemplateSyntaxError):
        return Problem(language, field, exc.lineno, f"syntax error: {exc.message}")
    line = _template_line(exc.__traceback__)
    if isinstance(exc, SecurityError):
        message = f"not allowed: {exc}"
    elif isinstance(exc, UndefinedError | _TooLong):
        message = str(exc)
    else:
        message = f"{type(exc).__name__}: {exc}"
    return Problem(language, field, line, message)


# --------------------------------------------------------------------------------------------------
# Markdown -> plain, HTML, MarkdownV2

_MD: Final = MarkdownIt(
    "zero", {"breaks": True, "html": False, "linkify": False, "typographer": False}
).enable(["list", "newline", "escape", "backticks", "emphasis", "link", "autolink"])


def _parse(source: str) -> list[Token]:
    tokens = _MD.parse(source)
    for block in tokens:
        for token in block.children or ():
            if token.type == "code_inline":
                # Inside a code span CommonMark keeps backslashes: drop the ones `_finalize` added to
                # values (`{{ order.number }}` in backticks). A backslash before punctuation that the
                # author typed in a code span goes too.
                token.content = _MARKDOWN_ESCAPED.sub(r"\1", token.content)
    return tokens


def _href(node: SyntaxTreeNode) -> str:
    return str(node.attrs.get("href", ""))


def _inline_plain(nodes_: Sequence[SyntaxTreeNode]) -> str:
    out: list[str] = []
    for node in nodes_:
        kind = node.type
        if kind == "text":
            out.append(node.content)
        elif kind in ("softbreak", "hardbreak"):
            out.append("\n")
        elif kind == "code_inline":
            out.append(node.content)
        elif kind == "link":
            label = _inline_plain(node.children)
            href = _href(node)
            out.append(label if href in (label, f"mailto:{label}") or not href else f"{label} ({href})")
        else:  # strong, em
            out.append(_inline_plain(node.children))
    return "".join(out)


class _MarkdownV2:
    """Inline nodes -> Telegram MarkdownV2: text escaped, entities for bold, italic, code and links."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.bold = 0
        self.italic = 0

    def marker(self, char: str) -> None:
        # Telegram reads "__" as underline: an italic closing right before another opening is split by
        # "\r", which Telegram ignores.
        if char == "_" and self.out and self.out[-1] == "_":
            self.out.append("\r")
        self.out.append(char)

    def inline(self, nodes_: Sequence[SyntaxTreeNode]) -> None:
        out = self.out
        for node in nodes_:
            kind = node.type
            if kind == "text":
                out.append(escape_markdown(node.content, version=2))
            elif kind in ("softbreak", "hardbreak"):
                out.append("\n")
            elif kind == "code_inline":
                out.append("`" + escape_markdown(node.content, version=2, entity_type="code") + "`")
            elif kind == "link":
                out.append("[")
                self.inline(node.children)
                out.append("](" + escape_markdown(_href(node), version=2, entity_type="text_link") + ")")
            elif kind == "strong":
                self.nested(node, "*", "bold")
            elif kind == "em":
                self.nested(node, "_", "italic")
            else:
                self.inline(node.children)

    def nested(self, node: SyntaxTreeNode, char: str, depth: Literal["bold", "italic"]) -> None:
        outer = getattr(self, depth) == 0  # bold inside bold is just bold
        if outer:
            self.marker(char)
        setattr(self, depth, getattr(self, depth) + 1)
        self.inline(node.children)
        setattr(self, depth, getattr(self, depth) - 1)
        if outer:
            self.marker(char)


def _inline_markdown_v2(nodes_: Sequence[SyntaxTreeNode]) -> str:
    writer = _MarkdownV2()
    writer.inline(nodes_)
    return "".join(writer.out)


def _blocks(
    nodes_: Sequence[SyntaxTreeNode],
    inline: Callable[[Sequence[SyntaxTreeNode]], str],
    marker: Callable[[str], str],
) -> Iterator[str]:
    """Each block (paragraph, list) as text; list items as "• item" / "1. item" lines, nested indented."""
    for node in nodes_:
        if node.type == "paragraph":
            yield inline(node.children[0].children if node.children else [])
        elif node.type in ("bullet_list", "ordered_list"):
            number = int(str(node.attrs.get("start", 1)))
            lines: list[str] = []
            for item in node.children:
                prefix = "• " if node.type == "bullet_list" else marker(f"{number}.") + " "
                number += 1
                indent = " " * len(prefix.replace("\\", ""))
                body = "\n".join(_blocks(item.children, inline, marker)).split("\n")
                lines.append(prefix + body[0])
                lines.extend(indent + line if line else line for line in body[1:])
            yield "\n".join(lines)
        elif node.children:
            yield from _blocks(node.children, inline, marker)


def _plain(tree: SyntaxTreeNode) -> str:
    return "\n\n".join(_blocks(tree.children, _inline_plain, str))


def _markdown_v2(tree: SyntaxTreeNode) -> str:
    return "\n\n".join(
        _blocks(tree.children, _inline_markdown_v2, lambda text: escape_markdown(text, version=2))
    )


def _html(tokens: Sequence[Token]) -> str:
    html: str = _MD.renderer.render(tokens, _MD.options, {})
    return nh3.clean(html).strip()


# --------------------------------------------------------------------------------------------------
# Rendering


def _timezone_of(context: Mapping[str, Any]) -> tzinfo:
    workspace = context.get("workspace")
    name = getattr(workspace, "timezone", None) if isinstance(workspace, Record) else None
    if name is None and isinstance(workspace, Mapping):
        name = workspace.get("timezone")
    return _zone(str(name or "UTC"))


def render(
    variant: Variant, context: Mapping[str, Any], formats: Collection[Format], *, explanation: str = ""
) -> Rendered:
    """Render a variant for `context` (from `build_context`): plain text always, HTML and MarkdownV2 as asked.

    Raises TemplateInvalid (one Problem, with the template line where known) when the template fails:
    a variable missing from this context (`vars.<name>` not given, `order` absent), a sandbox violation,
    a filter given the wrong type, ...
    """
    try:
        locale = _locale(variant.language)
    except (ValueError, UnknownLocaleError) as exc:
        raise TemplateInvalid(
            [Problem(variant.language, "body", None, f"invalid language tag: {exc}")]
        ) from None
    hidden = {_LOCALE: locale, _TZ: _timezone_of(context), "language": variant.language}
    subject = None
    if variant.subject is not None:
        try:
            subject = " ".join(
                _run(_compiled(variant.subject), {**context, **hidden, _MARKDOWN: False}).split()
            )
        except Exception as exc:
            raise TemplateInvalid([_problem(exc, variant.language, "subject")]) from exc
    try:
        source = _run(_compiled(variant.body), {**context, **hidden, _MARKDOWN: True})
    except Exception as exc:
        raise TemplateInvalid([_problem(exc, variant.language, "body")]) from exc
    tokens = _parse(source)
    tree = SyntaxTreeNode(tokens)
    return Rendered(
        language=variant.language,
        explanation=explanation,
        subject=subject,
        text=_plain(tree),
        html=_html(tokens) if Format.HTML in formats else None,
        markdown_v2=_markdown_v2(tree) if Format.MARKDOWN_V2 in formats else None,
    )


# --------------------------------------------------------------------------------------------------
# Validation


def _chain(node: nodes.Node) -> tuple[str, list[str]] | None:
    """`contact.name` / `order["items"]` as ("contact", ["name"]); None when not a plain lookup chain."""
    names: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            names.append(node.attr)
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            names.append(node.arg.value)
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            return node.name, names[::-1]
        else:
            return None
        node = node.node


def _looked_up(node: nodes.Node) -> str | None:
    """The attribute a `x.name`, `x["name"]` or `x | attr("name")` node looks up, when it is a constant."""
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        return node.arg.value if isinstance(node.arg.value, str) else None
    if isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
        argument = node.args[0]
        if isinstance(argument, nodes.Const) and isinstance(argument.value, str):
            return argument.value
    return None


def _private_inside(node: nodes.Node) -> bool:
    """Whether a lookup further in (`''.__class__` in `''.__class__.__mro__`) is already private."""
    inner = getattr(node, "node", None)
    while isinstance(inner, nodes.Getattr | nodes.Getitem | nodes.Filter | nodes.Call):
        if (attribute := _looked_up(inner)) is not None and attribute.startswith("_"):
            return True
        inner = inner.node
    return False


def _static_problems(ast: nodes.Template, language: str, field: Literal["subject", "body"]) -> list[Problem]:
    """Unknown names and fields, private attributes: wherever they are, reached by the sample or not.

    Raises TemplateAssertionError (an unknown filter or test) from Jinja2's own analysis.
    """
    problems: list[Problem] = []
    undeclared = find_undeclared_variables(ast) - _KNOWN_NAMES
    assigned = {node.name for node in ast.find_all(nodes.Name) if node.ctx != "load"}
    for name_node in ast.find_all(nodes.Name):
        if name_node.ctx == "load" and name_node.name in undeclared:
            problems.append(
                Problem(language, field, name_node.lineno, f"unknown variable '{name_node.name}'")
            )
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        attribute = _looked_up(node)
        if attribute is not None and attribute.startswith("_"):
            if not _private_inside(node):
                message = f"not allowed: access to private attribute '{attribute}'"
                problems.append(Problem(language, field, node.lineno, message))
            continue
        chain = _chain(node)
        if chain is None or chain[0] in assigned or chain[0] not in SAMPLE:
            continue
        value: Any = SAMPLE[chain[0]]
        for name in chain[1]:
            if not isinstance(value, Record) or isinstance(value, _AnyVars):
                break
            if name not in value._fields:
                problems.append(Problem(language, field, node.lineno, value._unknown(name)))
                break
            value = value._fields[name]
    return problems


def _check_source(source: str, language: str, field: Literal["subject", "body"]) -> list[Problem]:
    try:
        return _static_problems(_ENV.parse(source), language, field)
    except TemplateSyntaxError as exc:
        return [_problem(exc, language, field)]


def validate(variants: Sequence[Variant]) -> list[Problem]:
    """Everything wrong with a template's variants, for the author to fix before saving (empty: fine).

    Per variant: its language tag (Babel must know it; no two variants with the same language), an empty
    body or subject, syntax errors, unknown variables and fields and private attributes anywhere in the
    source, then a render against `SAMPLE` in its language and every format, whose first error (sandbox
    violation, type error, ...) is reported with its line unless that line already has a problem.
    """
    if not variants:
        return [Problem("", "body", None, "a template needs at least one language")]
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    too_slow = False  # once one variant hit the CPU limit, the others are not rendered (time adds up)
    for index, variant in enumerate(variants):
        language = variant.language
        key = language.strip().replace("_", "-").lower()
        if key in seen:
            problems.append(
                Problem(language, "body", None, f"duplicate language '{language}' (variant {seen[key] + 1})")
            )
        seen.setdefault(key, index)
        try:
            _locale(language)
        except (ValueError, UnknownLocaleError, TypeError):
            problems.append(Problem(language, "body", None, f"invalid language tag '{language}'"))
            continue
        found: list[Problem] = []
        if not variant.body.strip():
            found.append(Problem(language, "body", None, "the body is empty"))
        else:
            found += _check_source(variant.body, language, "body")
        if variant.subject is not None:
            if not variant.subject.strip():
                found.append(Problem(language, "subject", None, "the subject is empty"))
            else:
                found += _check_source(variant.subject, language, "subject")
        if not too_slow and not any(problem.message.startswith("syntax error") for problem in found):
            try:
                render(variant, SAMPLE, tuple(Format))
            except TemplateInvalid as exc:
                for problem in exc.problems:
                    too_slow = too_slow or problem.message.startswith(_CPU_MESSAGE)
                    if not any(p.field == problem.field and p.line == problem.line for p in found):
                        found.append(problem)
        for problem in found:
            if problem not in problems:
                problems.append(problem)
    return problems


def required_vars(variant: Variant) -> list[str]:
    """The `vars.<name>` a variant uses, in order of first use: what to ask the agent for before sending."""
    names: list[str] = []
    for source in (variant.subject, variant.body):
        if not source:
            continue
        try:
            ast = _ENV.parse(source)
        except TemplateSyntaxError:
            continue
        for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
            chain = _chain(node)
            if chain is not None and chain[0] == "vars" and chain[1] and chain[1][0] not in names:
                names.append(chain[1][0])
    return names


# --------------------------------------------------------------------------------------------------
# Choosing the language


def _key(tag: str) -> str:
    return tag.strip().replace("_", "-").lower()


def _parents(tag: str) -> Iterator[str]:
    """ "zh-Hant-TW" -> "zh-Hant-TW", "zh-Hant", "zh"."""
    parts = tag.strip().replace("_", "-").split("-")
    for end in range(len(parts), 0, -1):
        yield "-".join(parts[:end])


def choose_variant(
    variants: Sequence[Variant], wanted: Sequence[str | None], default: str
) -> tuple[Variant, str]:
    """The variant to reply with, and why (for the agent to see).

    For each wanted language in turn (None skipped): its variant, else its parent's (de-AT -> de), else one
    of the same language in another region (de-CH -> de-AT). Then the workspace default (and its parents),
    then the first variant. Raises ValueError without variants.
    """
    if not variants:
        raise ValueError("a template needs at least one variant")
    by_key: dict[str, Variant] = {}
    for variant in variants:
        by_key.setdefault(_key(variant.language), variant)
    misses: list[str] = []

    def said(used: str) -> str:
        return ", ".join([*misses, used])

    for tag in wanted:
        if not tag or not tag.strip():
            continue
        for candidate in _parents(tag):
            if (found := by_key.get(_key(candidate))) is not None:
                exact = _key(candidate) == _key(tag)
                return found, said(
                    f"used {found.language}" if exact else f"{tag}: no variant, used {found.language}"
                )
        base = _key(tag).split("-")[0]
        for variant in variants:
            if _key(variant.language).split("-")[0] == base:
                return variant, said(f"{tag}: no variant, used {variant.language}")
        misses.append(f"{tag}: no variant")
    if not misses:
        misses.append("no language known")
    for candidate in _parents(default):
        if (found := by_key.get(_key(candidate))) is not None:
            detail = "" if _key(candidate) == _key(default) else f" (for {default})"
            return found, said(f"used the workspace default {found.language}{detail}")
    first = variants[0]
    return first, said(
        f"the workspace default {default}: no variant, used the first variant {first.language}"
    )
