"""A fake Telegram Bot API server: what python-telegram-bot and the Telegram channel talk to in the tests.

It answers `/bot<token>/<method>` and serves downloads at `/file/bot<token>/<file_path>`, on loopback,
as the channel protocol notes (CHANNELS.md, section 2) describe Telegram:

- the `{"ok": true, "result": ...}` envelope, errors as `{"ok": false, "error_code", "description",
  "parameters"?}` with that HTTP status; a wrong token answers 401, an unknown method 404;
- parameters from the query string, a form-encoded, JSON or multipart body (recorded in `calls`);
- getUpdates with offset confirmation, limit, long polling, allowed_updates (remembered), 409 while a
  webhook is set and 409 for the earlier of two overlapping polls; setWebhook, deleteWebhook,
  getWebhookInfo, and `deliver_webhook` to POST an update to the webhook set;
- sendMessage, sendPhoto and sendDocument with real MarkdownV2 (and HTML, legacy Markdown) entity
  parsing, the 4096/1024 limits counted in UTF-16 code units after parsing, reply_parameters; what it
  accepted is in `sent`; `fail_next`, `hang_next` and `blocked_chats` script refusals;
- getFile and downloads of the files registered with `add_file` (or uploaded), the 20 MB limit.

Tests feed it with `push_update`/`push_message` and read what the bot did from `sent`, `calls`,
`confirmed_offset`, `pending_updates()`.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import itertools
import json
import math
import mimetypes
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
DOWNLOAD_LIMIT = 20 * 1024 * 1024
FIRST_MESSAGE_ID = 1000
FIRST_UPDATE_ID = 100_000_001
SEND_METHODS = frozenset({"sendMessage", "sendPhoto", "sendDocument"})
# What Telegram sends when allowed_updates is empty or was never given.
NOT_SENT_BY_DEFAULT = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
DEFAULT_DESCRIPTIONS = {
    400: "Bad Request: chat not found",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
}
WEBHOOK_CONFLICT = "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"
POLL_CONFLICT = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
)
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")


class _Default(enum.Enum):
    SECRET_SET = enum.auto()


SECRET_SET = _Default.SECRET_SET
"""deliver_webhook's default secret: the one given to setWebhook."""


@dataclass(frozen=True, slots=True)
class Call:
    """One API request as it arrived: the method (as Telegram spells it), its parameters and files."""

    method: str
    params: dict[str, str]
    files: dict[str, tuple[str, bytes]]
    at: float


@dataclass(frozen=True, slots=True)
class Sent:
    """A sendMessage/sendPhoto/sendDocument that Telegram accepted.

    `text` is what the recipient sees (markers removed, escapes resolved, trimmed) of the text or the
    caption ("" for a file without caption); `raw_text` is the text or caption as posted.
    """

    method: str
    chat_id: int
    text: str
    raw_text: str | None
    parse_mode: str | None
    reply_to_message_id: int | None
    message_thread_id: int | None
    file_name: str | None
    file_content: bytes | None
    message_id: int
    at: float
    file_id: str | None = None
    entities: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class _File:
    file_id: str
    file_unique_id: str
    content: bytes
    size: int
    file_path: str
    file_name: str | None
    mime_type: str | None

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "file_size": self.size,
        }
        if self.file_name is not None:
            described["file_name"] = self.file_name
        if self.mime_type is not None:
            described["mime_type"] = self.mime_type
        return described


@dataclass(frozen=True, slots=True)
class _Upload:
    filename: str
    content: bytes
    content_type: str | None


@dataclass(frozen=True, slots=True)
class _Plan:
    status: int = 0
    retry_after: int | None = None
    description: str | None = None
    migrate_to_chat_id: int | None = None
    hang: bool = False
    passes: bool = False


class ApiError(Exception):
    """An error answer of the Bot API: raised inside a method, answered with `status`."""

    def __init__(self, status: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def response(self) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return web.json_response(body, status=self.status)


class EntityError(ValueError):
    """Text that Telegram cannot parse in the given parse_mode (the message follows "can't parse entities: ")."""


# ------------------------------------------------------------------------------------------------
# Text: entity parsing as Telegram (tdlib) does it


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units: how Telegram counts characters and entity offsets."""
    return len(text.encode("utf-16-le")) // 2


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode())


_MARKDOWN_V2_RESERVED = "_*[]()~`>#+-=|{}.!"
_CODE_KINDS = frozenset({"Code", "Pre", "PreCode"})
_ENTITY_TYPES = {
    "Bold": "bold",
    "Italic": "italic",
    "Underline": "underline",
    "Strikethrough": "strikethrough",
    "Spoiler": "spoiler",
    "Code": "code",
    "Pre": "pre",
    "PreCode": "pre",
    "TextUrl": "text_link",
    "CustomEmoji": "custom_emoji",
    "BlockQuote": "blockquote",
}
_URL = re.compile(r"(?i)(?:[a-z][a-z0-9+.-]*://\S+|mailto:\S+|[^\s/:@]+\.[a-z]{2,}(?:[/:?#]\S*)?)")
_EMOJI_URL = re.compile(r"tg://emoji\?id=(\d+)")


@dataclass(slots=True)
class _Open:
    kind: str
    offset: int  # UTF-16 offset in the visible text
    index: int  # where the marker starts in the source
    begin: int  # visible characters before it (a link's text, used as its URL when no (url) follows)
    argument: str = ""


def _reserved(char: str) -> EntityError:
    return EntityError(f"Character '{char}' is reserved and must be escaped with the preceding '\\'")


def _entity(kind: str, offset: int, length: int, argument: str) -> dict[str, Any]:
    entity: dict[str, Any] = {"type": _ENTITY_TYPES[kind], "offset": offset, "length": length}
    if kind == "PreCode":
        entity["language"] = argument
    elif kind == "TextUrl":
        entity["url"] = argument
    elif kind == "CustomEmoji":
        entity["custom_emoji_id"] = argument
    return entity


def _skip_pre_newline(text: str, i: int) -> int:
    """tdlib skips one line break (\\n, \\r, \\r\\n or \\n\\r) right after ``` and its language."""
    if i < len(text) and text[i] in "\r\n":
        if i + 1 < len(text) and text[i + 1] in "\r\n" and text[i] != text[i + 1]:
            return i + 2
        return i + 1
    return i


def parse_markdown_v2(text: str) -> tuple[str, list[dict[str, Any]]]:
    """The visible text and entities of MarkdownV2 `text`, as Telegram's tdlib parses it.

    `\\` escapes any ASCII character 1-126; *bold* _italic_ __underline__ ~strike~ ||spoiler||
    `code` ```pre``` (with a language on its first line), [text](url), ![emoji](tg://emoji?id=N) and
    `>` quotes at line starts; any other reserved character raises EntityError, as does an entity
    not closed. (The `**>` expandable quote is not supported.)
    """
    out: list[str] = []
    u16 = 0
    stack: list[_Open] = []
    entities: list[dict[str, Any]] = []
    quote_start: int | None = None
    n = len(text)

    def at(j: int) -> str:
        return text[j] if j < n else "\0"

    def escapes(j: int) -> bool:
        return text[j] == "\\" and j + 1 < n and 0 < ord(text[j + 1]) <= 126

    i = 0
    while i < n:
        c = text[i]
        in_code = bool(stack) and stack[-1].kind in _CODE_KINDS
        if not in_code and (i == 0 or text[i - 1] == "\n"):
            if c == ">":
                if quote_start is None:
                    quote_start = u16
                i += 1
                continue
            if quote_start is not None:
                # The quote ends with the line before this one (its line break is not quoted).
                if u16 - 1 > quote_start:
                    entities.append(_entity("BlockQuote", quote_start, u16 - 1 - quote_start, ""))
                quote_start = None
        if escapes(i):
            out.append(text[i + 1])
            u16 += 1
            i += 2
            continue
        if c not in ("`" if in_code else _MARKDOWN_V2_RESERVED):
            out.append(c)
            u16 += utf16_len(c)
            i += 1
            continue

        top = stack[-1] if stack else None
        closes = False
        if top is not None:
            closes = {
                "Bold": c == "*",
                "Italic": c == "_" and at(i + 1) != "_",
                "Code": c == "`",
                "Pre": text.startswith("```", i),
                "PreCode": text.startswith("```", i),
                "TextUrl": c == "]",
                "CustomEmoji": c == "]",
                "Underline": text.startswith("__", i),
                "Strikethrough": c == "~",
                "Spoiler": text.startswith("||", i),
            }[top.kind]
        if not closes:
            start, argument = i, ""
            if c == "_":
                kind = "Underline" if at(i + 1) == "_" else "Italic"
                i += kind == "Underline"
            elif c == "*":
                kind = "Bold"
            elif c == "~":
                kind = "Strikethrough"
            elif c == "|":
                if at(i + 1) != "|":
                    raise _reserved(c)
                kind = "Spoiler"
                i += 1
            elif c == "[":
                kind = "TextUrl"
            elif c == "!":
                if at(i + 1) != "[":
                    raise _reserved(c)
                kind = "CustomEmoji"
                i += 1
            elif c == "`":
                if text.startswith("```", i):
                    i += 3
                    kind = "Pre"
                    end = i
                    while end < n and not text[end].isspace() and text[end] != "`":
                        end += 1
                    if end != i and end < n and text[end] != "`":
                        kind, argument, i = "PreCode", text[i:end], end
                    i = _skip_pre_newline(text, i) - 1
                else:
                    kind = "Code"
            else:
                raise _reserved(c)
            stack.append(_Open(kind, u16, start, len(out), argument))
            i += 1
            continue

        assert top is not None
        stack.pop()
        skip = u16 == top.offset
        argument = top.argument
        if top.kind in ("Underline", "Spoiler"):
            i += 1
        elif top.kind in _CODE_KINDS - {"Code"}:
            i += 2
        elif top.kind in ("TextUrl", "CustomEmoji"):
            if at(i + 1) != "(":
                url = "".join(out[top.begin :])
            else:
                i += 2
                url_start = i
                chars: list[str] = []
                while i < n and text[i] != ")":
                    if escapes(i):
                        chars.append(text[i + 1])
                        i += 2
                    else:
                        chars.append(text[i])
                        i += 1
                if i >= n:
                    raise EntityError(
                        f"Can't find end of a URL at byte offset {_byte_offset(text, url_start)}"
                    )
                url = "".join(chars)
            if top.kind == "CustomEmoji":
                emoji = _EMOJI_URL.fullmatch(url)
                if emoji is None:
                    raise EntityError("Custom emoji entity must contain a tg://emoji URL")
                argument = emoji.group(1)
            elif _URL.fullmatch(url):
                argument = url
            else:
                skip = True  # Telegram keeps the text and drops a link it finds invalid
        if not skip:
            entities.append(_entity(top.kind, top.offset, u16 - top.offset, argument))
        i += 1

    if stack:
        top = stack[-1]
        raise EntityError(
            f"Can't find end of {top.kind} entity at byte offset {_byte_offset(text, top.index)}"
        )
    if quote_start is not None and u16 > quote_start:
        entities.append(_entity("BlockQuote", quote_start, u16 - quote_start, ""))
    return "".join(out), entities


def parse_markdown(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Legacy Markdown: *bold* _italic_ `code` ```pre``` [text](url); `\\` escapes only _ * ` [."""
    out: list[str] = []
    u16 = 0
    entities: list[dict[str, Any]] = []
    n = len(text)
    i = 0
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "_*`[":
            out.append(text[i + 1])
            u16 += 1
            i += 2
            continue
        if c not in "_*`[":
            out.append(c)
            u16 += utf16_len(c)
            i += 1
            continue
        begin, end_char, is_pre, language = i, "]" if c == "[" else c, False, ""
        i += 1
        if c == "`" and text.startswith("``", i):
            i += 2
            is_pre = True
            end = i
            while end < n and not text[end].isspace() and text[end] != "`":
                end += 1
            if end != i and end < n and text[end] != "`":
                language, i = text[i:end], end
            i = _skip_pre_newline(text, i)
        start = u16
        while i < n and (text[i] != end_char or (is_pre and not text.startswith("```", i))):
            out.append(text[i])
            u16 += utf16_len(text[i])
            i += 1
        if i >= n:
            raise EntityError(
                f"Can't find end of the entity starting at byte offset {_byte_offset(text, begin)}"
            )
        kind, argument = {"_": "Italic", "*": "Bold", "`": "Pre" if is_pre else "Code", "[": "TextUrl"}[c], ""
        if is_pre:
            if language:
                kind, argument = "PreCode", language
            i += 2
        if c == "[":
            url: list[str] = []
            if i + 1 < n and text[i + 1] == "(":
                i += 2
                while i < n and text[i] != ")":
                    url.append(text[i])
                    i += 1
            argument = "".join(url)
        if u16 != start and (c != "[" or _URL.fullmatch(argument)):
            entities.append(_entity(kind, start, u16 - start, argument))
        i += 1
    return "".join(out), entities


_HTML_ENTITY_TAGS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
}


@dataclass(slots=True)
class _Tag:
    name: str
    attrs: dict[str, str | None]
    offset: int
    language: str | None = None


class _HtmlText(HTMLParser):
    """Telegram's HTML: tags removed, character references resolved, the known tags as entities."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.u16 = 0
        self.stack: list[_Tag] = []
        self.entities: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack.append(_Tag(tag, dict(attrs), self.u16))

    def handle_endtag(self, tag: str) -> None:
        for k in range(len(self.stack) - 1, -1, -1):
            if self.stack[k].name == tag:
                opened = self.stack.pop(k)
                break
        else:
            return
        length = self.u16 - opened.offset
        css = opened.attrs.get("class") or ""
        if tag == "code" and self.stack and self.stack[-1].name == "pre" and css.startswith("language-"):
            self.stack[-1].language = css.removeprefix("language-")
            return
        kind: str | None = _HTML_ENTITY_TAGS.get(tag)
        extra: dict[str, Any] = {}
        if tag == "span" and css == "tg-spoiler":
            kind = "spoiler"
        elif tag == "a" and opened.attrs.get("href"):
            kind, extra = "text_link", {"url": opened.attrs["href"]}
        elif tag == "tg-emoji" and opened.attrs.get("emoji-id"):
            kind, extra = "custom_emoji", {"custom_emoji_id": opened.attrs["emoji-id"]}
        elif tag == "blockquote" and "expandable" in opened.attrs:
            kind = "expandable_blockquote"
        elif tag == "pre" and opened.language:
            extra = {"language": opened.language}
        if kind is not None and length > 0:
            self.entities.append({"type": kind, "offset": opened.offset, "length": length, **extra})

    def handle_data(self, data: str) -> None:
        self.out.append(data)
        self.u16 += utf16_len(data)


def parse_html(text: str) -> tuple[str, list[dict[str, Any]]]:
    """The visible text of Telegram HTML and its entities (no validation of the tags)."""
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    return "".join(parser.out), parser.entities


def _strip(text: str, entities: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Telegram trims leading and trailing white space from a text; entities shift and shrink along."""
    stripped = text.strip()
    if stripped == text:
        return text, entities
    lead = utf16_len(text[: len(text) - len(text.lstrip())])
    total = utf16_len(stripped)
    kept = []
    for entity in entities:
        start = max(entity["offset"] - lead, 0)
        end = min(entity["offset"] + entity["length"] - lead, total)
        if end > start:
            kept.append({**entity, "offset": start, "length": end - start})
    return stripped, kept


def visible_text(text: str, parse_mode: str | None) -> tuple[str, list[dict[str, Any]]]:
    """The text a recipient sees, and its entities, of `text` sent with `parse_mode` (raises ApiError)."""
    mode = (parse_mode or "").lower()
    parsers: dict[str, Callable[[str], tuple[str, list[dict[str, Any]]]]] = {
        "markdownv2": parse_markdown_v2,
        "markdown": parse_markdown,
        "html": parse_html,
    }
    entities: list[dict[str, Any]] = []
    if not mode:
        shown = text
    elif mode in parsers:
        try:
            shown, entities = parsers[mode](text)
        except EntityError as exc:
            raise ApiError(400, f"Bad Request: can't parse entities: {exc}") from None
    else:
        raise ApiError(400, "Bad Request: unsupported parse_mode")
    shown, entities = _strip(shown, entities)
    return shown, sorted(entities, key=lambda e: (e["offset"], -e["length"]))


# ------------------------------------------------------------------------------------------------
# Parameters


def _present(params: dict[str, str], name: str) -> str | None:
    value = params.get(name)
    return None if value is None or value in ("", "null") else value


def _int(params: dict[str, str], name: str, error: str | None = None) -> int | None:
    value = _present(params, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        try:
            number = float(value)
        except ValueError:
            raise ApiError(400, error or f"Bad Request: invalid {name} specified") from None
        if not number.is_integer():
            raise ApiError(400, error or f"Bad Request: invalid {name} specified") from None
        return int(number)


def _bool(params: dict[str, str], name: str) -> bool:
    return (_present(params, name) or "false").lower() in ("true", "1")


def _json(params: dict[str, str], name: str, what: str) -> Any:
    value = _present(params, name)
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        raise ApiError(400, f"Bad Request: can't parse {what} JSON object") from None


def _chat_id(params: dict[str, str]) -> int:
    value = _present(params, "chat_id")
    if value is None:
        raise ApiError(400, "Bad Request: chat_id is empty")
    try:
        chat_id = int(value)
    except ValueError:
        raise ApiError(400, "Bad Request: chat not found") from None
    if not -(2**63) <= chat_id < 2**63 or chat_id == 0:
        raise ApiError(400, "Bad Request: chat not found")
    return chat_id


def _kind_of(update: dict[str, Any]) -> str:
    return next((key for key in update if key != "update_id"), "")


def _wanted(kind: str, allowed: list[str] | None) -> bool:
    return kind in allowed if allowed else kind not in NOT_SENT_BY_DEFAULT


async def _read_params(request: web.Request) -> tuple[dict[str, str], dict[str, _Upload]]:
    """Query string and body parameters (a later source wins), as strings; uploaded files apart."""
    params: dict[str, str] = dict(request.query)
    uploads: dict[str, _Upload] = {}
    if request.content_type == "application/json":
        raw = await request.read()
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                raise ApiError(400, "Bad Request: can't parse JSON object") from None
            if not isinstance(body, dict):
                raise ApiError(400, "Bad Request: JSON object expected")
            for key, value in body.items():
                if value is not None:
                    params[key] = value if isinstance(value, str) else json.dumps(value)
    elif request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                uploads[key] = _Upload(value.filename, value.file.read(), value.content_type)
            else:
                params[key] = value if isinstance(value, str) else bytes(value).decode()
    return params, uploads


# ------------------------------------------------------------------------------------------------
# The server

Method = Callable[[dict[str, str], dict[str, _Upload]], Awaitable[Any]]


class FakeTelegram:
    """The Bot API of one bot (`token`, `bot_id`, `username`) at `url`; use `async with` or start/close.

    Point python-telegram-bot at it with `Bot(fake.token, base_url=fake.base_url,
    base_file_url=fake.file_base_url)`. Every request is recorded in `calls` (also with a wrong token);
    the sends Telegram accepted are in `sent`. Update ids start at 100000001, message ids at 1000 in
    each chat (one sequence per chat for messages pushed and sent, as in Telegram).
    """

    def __init__(
        self,
        token: str = "123456:TEST-token-abcdefghijklmnopqrstuvwxyz",
        *,
        bot_id: int = 123456,
        username: str = "support_bot",
    ) -> None:
        self.token = token
        self.bot_id = bot_id
        self.username = username
        # Inbound side.
        self.confirmed_offset = 0
        self.poll_delay = 0.0
        self.allowed_updates: list[str] | None = None  # the last list getUpdates was given
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self.webhook_allowed_updates: list[str] | None = None
        self.webhook_max_connections: int | None = None
        self.last_error_date: int | None = None
        self.last_error_message: str | None = None
        self._queue: list[dict[str, Any]] = []
        self._next_update_id = FIRST_UPDATE_ID
        self._acknowledged: set[int] = set()  # updates a webhook answered with a 2xx
        self._poll_generation = 0
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Condition()
        # Outbound side.
        self.sent: list[Sent] = []
        self.calls: list[Call] = []
        self.blocked_chats: set[int] = set()
        self.downloads: list[str] = []  # file paths fetched from /file/bot<token>/
        self._plans: deque[_Plan] = deque()
        self._release = asyncio.Event()
        self._closing = False
        # Chats, messages and files.
        self._chats: dict[int, dict[str, Any]] = {}
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._next_message_id: dict[int, int] = {}
        self._files: dict[str, _File] = {}
        self._paths: dict[str, _File] = {}
        self._file_numbers = itertools.count(1)
        self._methods: dict[str, tuple[str, Method]] = {
            name.lower(): (name, handler)
            for name, handler in {
                "getMe": self._get_me,
                "getUpdates": self._get_updates,
                "setWebhook": self._set_webhook,
                "deleteWebhook": self._delete_webhook,
                "getWebhookInfo": self._get_webhook_info,
                "sendMessage": self._send_message,
                "sendPhoto": self._send_photo,
                "sendDocument": self._send_document,
                "getFile": self._get_file,
            }.items()
        }
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = TestServer(app, host="127.0.0.1")

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._server.start_server()

    async def close(self) -> None:
        """Answer what still waits (long polls with [], hanging sends with 502) and stop the server."""
        self._closing = True
        self._release.set()
        self._wake()
        await self._server.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        if self._server.port is None:
            raise RuntimeError("FakeTelegram is not started")
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/bot"

    @property
    def file_base_url(self) -> str:
        return self.url + "/file/bot"

    @property
    def bot_user(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Support", "username": self.username}

    # -- inbound side ---------------------------------------------------------------------------

    def push_update(self, update: dict[str, Any]) -> int:
        """Queue an update (given the next update_id when it has none), wake long polls; its update_id."""
        update_id = update.get("update_id")
        if update_id is None:
            update_id = self._next_update_id
        self._next_update_id = max(self._next_update_id, int(update_id) + 1)
        queued = {"update_id": int(update_id), **{k: v for k, v in update.items() if k != "update_id"}}
        position = len(self._queue)
        while position and self._queue[position - 1]["update_id"] > queued["update_id"]:
            position -= 1
        self._queue.insert(position, queued)
        self._wake()
        return int(update_id)

    def push_message(
        self,
        chat_id: int,
        text: str | None = None,
        *,
        user_id: int | None = None,
        message_id: int | None = None,
        first_name: str = "Anna",
        last_name: str | None = None,
        username: str | None = None,
        language_code: str | None = None,
        chat_type: str = "private",
        reply_to_message_id: int | None = None,
        date: int | None = None,
        edited: bool = False,
        **fields: Any,
    ) -> dict[str, Any]:
        """A customer's message (or its edit, `edited=True`) as Telegram delivers it; pushed; the Update.

        `fields` go into the message (photo=[...], document={...}, caption=..., message_thread_id=...),
        except `title`, the group's title in `chat` (groups get "Group chat" when none is given). A
        reply carries the message it answers when this fake knows it (pushed or sent), else a stub.
        """
        sender: dict[str, Any] = {"id": chat_id if user_id is None else user_id, "is_bot": False}
        sender["first_name"] = first_name
        if last_name is not None:
            sender["last_name"] = last_name
        if username is not None:
            sender["username"] = username
        if language_code is not None:
            sender["language_code"] = language_code
        if chat_type == "private":
            chat = {k: v for k, v in sender.items() if k in ("first_name", "last_name", "username")}
            chat = {"id": chat_id, "type": "private", **chat}
        else:
            chat = {"id": chat_id, "type": chat_type, "title": fields.pop("title", "Group chat")}
        self._chats[chat_id] = chat
        if message_id is None:
            message_id = self._take_message_id(chat_id)
        else:
            self._next_message_id[chat_id] = max(
                self._next_message_id.get(chat_id, FIRST_MESSAGE_ID), message_id + 1
            )
        sent_at = int(time.time()) if date is None else date
        message: dict[str, Any] = {"message_id": message_id, "from": sender, "chat": chat, "date": sent_at}
        if edited:
            message["edit_date"] = max(int(time.time()), sent_at)
        if reply_to_message_id is not None:
            message["reply_to_message"] = self._replied(chat_id, reply_to_message_id)
        if text is not None:
            message["text"] = text
        message.update(fields)
        self._messages[(chat_id, message_id)] = message
        update: dict[str, Any] = {"update_id": self._next_update_id}
        update["edited_message" if edited else "message"] = message
        self.push_update(update)
        return update

    def add_file(
        self,
        content: bytes,
        *,
        file_name: str | None = None,
        mime_type: str | None = None,
        declared_size: int | None = None,
    ) -> dict[str, Any]:
        """Register a downloadable file: {file_id, file_unique_id, file_size, file_name?, mime_type?}.

        `declared_size` is the file_size Telegram claims (a 25 MB video without its bytes); getFile
        refuses files declared over 20 MB.
        """
        return self._register(
            content, file_name=file_name, mime_type=mime_type, declared_size=declared_size
        ).describe()

    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates queued and not yet confirmed (by getUpdates' offset or a webhook's 2xx), in order."""
        return list(self._queue)

    async def wait_confirmed(self, update_id: int, within: float = 10.0) -> None:
        """Until a getUpdates came with offset > update_id (or a webhook took it with a 2xx)."""

        def confirmed() -> bool:
            return self.confirmed_offset > update_id or update_id in self._acknowledged

        try:
            async with asyncio.timeout(within), self._progress:
                await self._progress.wait_for(confirmed)
        except TimeoutError:
            polls = self.calls_to("getUpdates")
            last = f"the last getUpdates had {polls[-1].params}" if polls else "no getUpdates came"
            raise AssertionError(
                f"update {update_id} not confirmed within {within}s: confirmed offset {self.confirmed_offset}, "
                f"{len(self._queue)} updates pending, {last}"
            ) from None

    async def deliver_webhook(
        self,
        update: dict[str, Any] | None = None,
        *,
        secret: str | _Default | None = SECRET_SET,
        session: aiohttp.ClientSession | None = None,
    ) -> int:
        """POST `update` (the next pending one when None) as JSON to the webhook set; the HTTP status.

        The secret header carries `secret` (by default the setWebhook secret_token; None sends none).
        A 2xx confirms the update (it leaves the queue); anything else, or no answer (status 0), is
        recorded as getWebhookInfo's last_error_date/last_error_message.
        """
        if self.webhook_url is None:
            raise AssertionError("no webhook is set (setWebhook was not called, or deleteWebhook was)")
        if update is None:
            wanted = [u for u in self._queue if _wanted(_kind_of(u), self.webhook_allowed_updates)]
            if not wanted:
                raise AssertionError("no pending update to deliver to the webhook")
            update = wanted[0]
        token = self.webhook_secret if secret is SECRET_SET else secret
        headers = {SECRET_HEADER: token} if isinstance(token, str) else {}
        try:
            if session is None:
                async with aiohttp.ClientSession() as own:
                    status, reason = await self._post_webhook(own, update, headers)
            else:
                status, reason = await self._post_webhook(session, update, headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.last_error_date = int(time.time())
            self.last_error_message = (
                "Connection refused" if isinstance(exc, aiohttp.ClientConnectorError) else str(exc)
            )
            return 0
        if 200 <= status < 300:
            update_id = update.get("update_id")
            if isinstance(update_id, int):
                self._queue = [u for u in self._queue if u["update_id"] != update_id]
                async with self._progress:
                    self._acknowledged.add(update_id)
                    self._progress.notify_all()
        else:
            self.last_error_date = int(time.time())
            self.last_error_message = f"Wrong response from the webhook: {status} {reason}"
        return status

    async def _post_webhook(
        self, session: aiohttp.ClientSession, update: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, str]:
        assert self.webhook_url is not None
        timeout = aiohttp.ClientTimeout(total=10)
        async with session.post(self.webhook_url, json=update, headers=headers, timeout=timeout) as response:
            await response.read()
            return response.status, response.reason or ""

    def set_webhook_externally(self, url: str) -> None:
        """Another program set a webhook for this bot (getUpdates now answers 409)."""
        self.webhook_url = url
        self.webhook_secret = None
        self.webhook_allowed_updates = None
        self.webhook_max_connections = 40
        self._wake()

    # -- outbound side --------------------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def delivered_texts(self) -> list[str]:
        """Visible texts of the sendMessage calls Telegram accepted, in order."""
        return [s.text for s in self.sent if s.method == "sendMessage"]

    def fail_next(
        self,
        status: int,
        times: int = 1,
        retry_after: str | None = None,
        description: str | None = None,
        *,
        after: int = 0,
        migrate_to_chat_id: int | None = None,
    ) -> None:
        """The next `times` sends (after `after` more that go through) answer `status`.

        The body is Telegram's error: the description given or the one Telegram writes for the
        status, with parameters.retry_after (seconds, when `retry_after` is given) and
        parameters.migrate_to_chat_id (when given).
        """
        seconds = None if retry_after is None else math.ceil(float(retry_after))
        self._plans.extend(_Plan(passes=True) for _ in range(after))
        self._plans.extend(_Plan(status, seconds, description, migrate_to_chat_id) for _ in range(times))

    def hang_next(self, times: int = 1) -> None:
        """The next `times` sends get no answer until the server closes (the sender must time out)."""
        self._plans.extend(_Plan(hang=True) for _ in range(times))

    # -- internals ------------------------------------------------------------------------------

    def _wake(self) -> None:
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    def _take_message_id(self, chat_id: int) -> int:
        message_id = self._next_message_id.get(chat_id, FIRST_MESSAGE_ID)
        self._next_message_id[chat_id] = message_id + 1
        return message_id

    def _chat(self, chat_id: int) -> dict[str, Any]:
        return self._chats.get(chat_id) or {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"}

    def _replied(self, chat_id: int, message_id: int) -> dict[str, Any]:
        known = self._messages.get((chat_id, message_id))
        if known is None:
            return {"message_id": message_id, "chat": self._chat(chat_id), "date": int(time.time())}
        return {k: v for k, v in known.items() if k != "reply_to_message"}

    def _register(
        self,
        content: bytes,
        *,
        file_name: str | None,
        mime_type: str | None,
        declared_size: int | None = None,
        photo: bool = False,
    ) -> _File:
        number = next(self._file_numbers)
        digest = hashlib.sha256(b"%d:" % number + content[:4096]).digest()
        prefix = "AgACAgIAAxkBAAI" if photo else "BQACAgIAAxkBAAI"
        file_id = prefix + base64.urlsafe_b64encode(digest).decode().rstrip("=")[:48]
        unique = "AQAD" + base64.urlsafe_b64encode(digest[-9:]).decode()
        if photo:
            path = f"photos/file_{number}.jpg"
        else:
            suffix = ""
            if file_name and "." in file_name:
                suffix = "." + file_name.rsplit(".", 1)[1]
            elif mime_type:
                suffix = mimetypes.guess_extension(mime_type) or ""
            folder = "voice" if (mime_type or "").startswith("audio/ogg") else "documents"
            path = f"{folder}/file_{number}{suffix}"
        stored = _File(
            file_id=file_id,
            file_unique_id=unique,
            content=content,
            size=len(content) if declared_size is None else declared_size,
            file_path=path,
            file_name=file_name,
            mime_type=mime_type,
        )
        self._files[file_id] = stored
        self._paths[path] = stored
        return stored

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/file/bot"):
            return self._download(path.removeprefix("/file/bot"))
        if not path.startswith("/bot"):
            return ApiError(404, "Not Found").response()
        token, _, name = path.removeprefix("/bot").partition("/")
        canonical, handler = self._methods.get(name.lower(), (name, None))
        try:
            params, uploads = await _read_params(request)
        except ApiError as exc:
            self.calls.append(Call(canonical, {}, {}, time.monotonic()))
            return exc.response()
        files = {key: (upload.filename, upload.content) for key, upload in uploads.items()}
        self.calls.append(Call(canonical, params, files, time.monotonic()))
        if token != self.token:
            return ApiError(401, "Unauthorized").response()
        if handler is None:
            return ApiError(404, "Not Found").response()
        try:
            if canonical in SEND_METHODS:
                await self._scripted(params)
            result = await handler(params, uploads)
        except ApiError as exc:
            return exc.response()
        return web.json_response({"ok": True, "result": result})

    async def _scripted(self, params: dict[str, str]) -> None:
        """What fail_next/hang_next/blocked_chats make of this send (raises ApiError, or hangs)."""
        plan = self._plans.popleft() if self._plans else None
        if plan is not None and plan.hang:
            await self._release.wait()
            raise ApiError(502, "Bad Gateway")
        if plan is not None and not plan.passes:
            parameters: dict[str, Any] = {}
            if plan.retry_after is not None:
                parameters["retry_after"] = plan.retry_after
            if plan.migrate_to_chat_id is not None:
                parameters["migrate_to_chat_id"] = plan.migrate_to_chat_id
            description = plan.description
            if description is None:
                if plan.status == 429 and plan.retry_after is not None:
                    description = f"Too Many Requests: retry after {plan.retry_after}"
                elif plan.migrate_to_chat_id is not None:
                    description = "Bad Request: group chat was upgraded to a supergroup chat"
                else:
                    description = DEFAULT_DESCRIPTIONS.get(plan.status) or _phrase(plan.status)
            raise ApiError(plan.status, description, parameters or None)
        if _chat_id(params) in self.blocked_chats:
            raise ApiError(403, "Forbidden: bot was blocked by the user")

    def _download(self, rest: str) -> web.StreamResponse:
        token, _, file_path = rest.partition("/")
        if token != self.token:
            return ApiError(401, "Unauthorized").response()
        stored = self._paths.get(file_path)
        if stored is None:
            return ApiError(404, "Not Found").response()
        self.downloads.append(file_path)
        return web.Response(body=stored.content, content_type=stored.mime_type or "application/octet-stream")

    # -- methods --------------------------------------------------------------------------------

    async def _get_me(self, params: dict[str, str], uploads: dict[str, _Upload]) -> Any:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def _get_updates(self, params: dict[str, str], uploads: dict[str, _Upload]) -> Any:
        if self.webhook_url is not None:
            raise ApiError(409, WEBHOOK_CONFLICT)
        offset = _int(params, "offset")
        limit = _int(params, "limit")
        limit = 100 if limit is None else limit
        if not 1 <= limit <= 100:
            raise ApiError(400, "Bad Request: limit must be between 1 and 100")
        try:
            timeout = max(float(_present(params, "timeout") or 0), 0.0)
        except ValueError:
            raise ApiError(400, "Bad Request: invalid timeout specified") from None
        allowed = _json(params, "allowed_updates", "allowed updates")
        if allowed is not None:
            if not isinstance(allowed, list) or not all(isinstance(kind, str) for kind in allowed):
                raise ApiError(400, "Bad Request: can't parse allowed updates JSON object")
            self.allowed_updates = list(allowed)

        # This request ends any earlier one still waiting (it answers 409).
        self._poll_generation += 1
        generation = self._poll_generation
        self._wake()
        if offset is not None and offset > 0:
            self._queue = [u for u in self._queue if u["update_id"] >= offset]
            async with self._progress:
                self.confirmed_offset = max(self.confirmed_offset, offset)
                self._progress.notify_all()
        elif offset is not None and offset < 0:
            self._queue = self._queue[offset:]

        loop = asyncio.get_running_loop()
        if self.poll_delay > 0:
            await self._wait_wakeups(loop.time() + self.poll_delay, generation, until_deadline=True)
        deadline = loop.time() + timeout
        while True:
            if self._closing:
                return []
            if generation != self._poll_generation:
                raise ApiError(409, POLL_CONFLICT)
            if self.webhook_url is not None:
                raise ApiError(409, WEBHOOK_CONFLICT)
            batch = [u for u in self._queue if _wanted(_kind_of(u), self.allowed_updates)][:limit]
            if batch or loop.time() >= deadline:
                return batch
            await self._wait_wakeups(deadline, generation)

    async def _wait_wakeups(self, deadline: float, generation: int, *, until_deadline: bool = False) -> None:
        """Wait for a push (or, with until_deadline, for the deadline, unless this poll is ended)."""
        loop = asyncio.get_running_loop()
        while (remaining := deadline - loop.time()) > 0:
            event = self._wakeup
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                return
            if not until_deadline or self._closing or generation != self._poll_generation:
                return

    async def _set_webhook(self, params: dict[str, str], uploads: dict[str, _Upload]) -> Any:
        url = params.get("url")
        if url is None:
            raise ApiError(400, 'Bad Request: parameter "url" is required')
        if url == "":
            return await self._delete_webhook(params, uploads)
        if not re.match(r"(?i)https?://[^/\s]+", url):
            raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        secret = _present(params, "secret_token")
        if secret is not None and not _SECRET_TOKEN.fullmatch(secret):
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")
        allowed = _json(params, "allowed_updates", "allowed updates")
        if allowed is not None and not isinstance(allowed, list):
            raise ApiError(400, "Bad Request: can't parse allowed updates JSON object")
        max_connections = _int(params, "max_connections")
        if max_connections is not None and not 1 <= max_connections <= 100:
            raise ApiError(400, "Bad Request: bad webhook: max_connections must be between 1 and 100")
        if _bool(params, "drop_pending_updates"):
            self._queue.clear()
        self.webhook_url = url
        self.webhook_secret = secret
        self.webhook_allowed_updates = allowed
        self.webhook_max_connections = max_connections or 40
        self._wake()
        return True

    async def _delete_webhook(self, params: dict[str, str], uploads: dict[str, _Upload]) -> Any:
        if _bool(params, "drop_pending_updates"):
            self._queue.clear()
        self.webhook_url = None
        self.webhook_secret = None
        self.webhook_allowed_updates = None
        self.webhook_max_connections = None
        return True

    async def _get_webhook_info(self, params: dict[str, str], uploads: dict[str, _Upload]) -> Any:
        info: dict[str, Any] = {
            "url": self.webhook_url or "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._queue),
        }
        if self.webhook_url is not None:
            info["max_connections"] = self.webhook_max_connections or 40
            if self.webhook_allowed_updates is not None:
                info["allowed_updates"] = self.webhook_allowed_updates
        if self.last_error_date is not None:
            info["last_error_date"] = self.last_error_date
            info["last_error_message"] = self.last_error_message
        return info

    def _reply_to(self, chat_id: int, params: dict[str, str]) -> int | None:
        """The message_id this send answers (reply_parameters, or the older reply_to_message_id)."""
        reply = _json(params, "reply_parameters", "reply parameters")
        if reply is not None:
            if not isinstance(reply, dict) or not isinstance(reply.get("message_id"), int):
                raise ApiError(400, "Bad Request: can't parse reply parameters JSON object")
            message_id: int = reply["message_id"]
            allow = bool(reply.get("allow_sending_without_reply"))
            if "chat_id" in reply:
                return message_id  # a reply in another chat: not checked
        else:
            legacy = _int(params, "reply_to_message_id")
            if legacy is None:
                return None
            message_id, allow = legacy, _bool(params, "allow_sending_without_reply")
        if (chat_id, message_id) not in self._messages and not allow:
            raise ApiError(400, "Bad Request: message to be replied not found")
        return message_id

    def _message(
        self, chat_id: int, params: dict[str, str], reply_to: int | None, content: dict[str, Any]
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "message_id": self._take_message_id(chat_id),
            "from": self.bot_user,
            "chat": self._chat(chat_id),
            "date": int(time.time()),
        }
        thread = _int(params, "message_thread_id")
        if thread is not None:
            message["message_thread_id"] = thread
        if reply_to is not None and (chat_id, reply_to) in self._messages:
            message["reply_to_message"] = self._replied(chat_id, reply_to)
        message.update(content)
        self._messages[(chat_id, message["message_id"])] = message
        return message

    async def _send_message(self, params: dict[str, str], uploads: dict[str, _Upload]) -> Any:
        chat_id = _chat_id(params)
        raw = params.get("text")
        parse_mode = _present(params, "parse_mode")
        text, entities = visible_text(raw or "", parse_mode)
        if not text:
            raise ApiError(400, "Bad Request: message text is empty")
        if utf16_len(text) > TEXT_LIMIT:
            raise ApiError(400, "Bad Request: message is too long")
        _json(params, "link_preview_options", "link preview options")
        reply_to = self._reply_to(chat_id, params)
        content: dict[str, Any] = {"text": text}
        if entities:
            content["entities"] = entities
        message = self._message(chat_id, params, reply_to, content)
        self.sent.append(
            Sent(
                method="sendMessage",
                chat_id=chat_id,
                text=text,
                raw_text=raw,
                parse_mode=parse_mode,
                reply_to_message_id=reply_to,
                message_thread_id=_int(params, "message_thread_id"),
                file_name=None,
                file_content=None,
                message_id=message["message_id"],
                at=time.monotonic(),
                entities=tuple(entities),
            )
        )
        return message

    async def _send_photo(self, params: dict[str, str], uploads: dict[str, _Upload]) -> Any:
        return await self._send_file("sendPhoto", "photo", params, uploads)

    async def _send_document(self, params: dict[str, str], uploads: dict[str, _Upload]) -> Any:
        return await self._send_file("sendDocument", "document", params, uploads)

    async def _send_file(
        self, method: str, kind: str, params: dict[str, str], uploads: dict[str, _Upload]
    ) -> Any:
        chat_id = _chat_id(params)
        upload = uploads.get(kind)
        reference = params.get(kind)
        if upload is None and reference is not None and reference.startswith("attach://"):
            upload = uploads.get(reference.removeprefix("attach://"))
            if upload is None:
                raise ApiError(400, f"Bad Request: wrong file identifier/HTTP URL specified for {kind}")
        if upload is not None:
            if not upload.content:
                raise ApiError(400, "Bad Request: file must be non-empty")
            mime_type = upload.content_type
            if not mime_type or mime_type == "application/octet-stream":
                mime_type = mimetypes.guess_type(upload.filename)[0] or mime_type
            stored = self._register(
                upload.content, file_name=upload.filename, mime_type=mime_type, photo=kind == "photo"
            )
        elif reference:
            known = self._files.get(reference)
            if known is None:
                if re.match(r"(?i)https?://", reference):
                    raise ApiError(400, "Bad Request: failed to get HTTP URL content")
                raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
            stored = known
        else:
            raise ApiError(400, f"Bad Request: there is no {kind} in the request")
        raw = params.get("caption")
        parse_mode = _present(params, "parse_mode")
        caption, entities = visible_text(raw or "", parse_mode)
        if utf16_len(caption) > CAPTION_LIMIT:
            raise ApiError(400, "Bad Request: message caption is too long")
        reply_to = self._reply_to(chat_id, params)
        content: dict[str, Any] = {}
        if kind == "photo":
            content["photo"] = [
                {
                    "file_id": stored.file_id,
                    "file_unique_id": stored.file_unique_id,
                    "file_size": stored.size,
                    "width": 800,
                    "height": 600,
                }
            ]
        else:
            content["document"] = stored.describe()
        if caption:
            content["caption"] = caption
            if entities:
                content["caption_entities"] = entities
        message = self._message(chat_id, params, reply_to, content)
        self.sent.append(
            Sent(
                method=method,
                chat_id=chat_id,
                text=caption,
                raw_text=raw,
                parse_mode=parse_mode,
                reply_to_message_id=reply_to,
                message_thread_id=_int(params, "message_thread_id"),
                file_name=upload.filename if upload is not None else stored.file_name,
                file_content=upload.content if upload is not None else None,
                message_id=message["message_id"],
                at=time.monotonic(),
                file_id=stored.file_id,
                entities=tuple(entities),
            )
        )
        return message

    async def _get_file(self, params: dict[str, str], uploads: dict[str, _Upload]) -> Any:
        file_id = _present(params, "file_id")
        stored = self._files.get(file_id or "")
        if stored is None:
            raise ApiError(400, "Bad Request: invalid file_id")
        if stored.size > DOWNLOAD_LIMIT:
            raise ApiError(400, "Bad Request: file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.size,
            "file_path": stored.file_path,
        }


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"Error {status}"


__all__ = [
    "SECRET_HEADER",
    "SECRET_SET",
    "ApiError",
    "Call",
    "EntityError",
    "FakeTelegram",
    "Sent",
    "parse_html",
    "parse_markdown",
    "parse_markdown_v2",
    "utf16_len",
    "visible_text",
]
