"""Parse one raw RFC 5322 message into a `ParsedMail`, tolerating real-world breakage.

Parser choice (measured with `python -m bench.email_parse`): the MIME tree is built here, out of stdlib
`email.message.Message` objects (policy compat32), following compat32's rules; headers, RFC 2047 encoded
words, transfer encodings and body charsets are decoded here too. compat32's own feedparser compiles a
regular expression for every boundary, and boundaries are unique per message: on realistic 5 KB mail
it alone ran at ~2,900 msgs/s, below the ingest budget; `policy.default` is ten times slower still.
Decoding ourselves is what makes it lenient: a broken or mislabelled charset, an unknown charset or bad
base64 becomes U+FFFD or a best guess and a recorded defect, never an exception. The Rust-backed
fast-mail-parser is faster but raises on 3 of the 53 corpus messages (bad base64 in a body, a header
line starting with a space), so it would need this parser anyway.

Because the tree knows where each part lies in the raw bytes, message/* attachments (forwarded mail)
are the exact bytes that were sent, not a re-serialisation.

Body selection follows RFC 8621 section 4.1.4 (the JMAP textBody / htmlBody / attachments split):
`text` joins the text body parts (HTML-only parts converted to text), `html` joins the HTML body parts
(plain-text parts escaped), sanitised with nh3; images, audio, video, message/rfc822 and everything
else that is not a text body part are attachments.

Also read: the reply without quoted history (`reply_text`, channels.email.reply), delivery status
notifications (`delivery_report`, channels.email.dsn), Outlook's Thread-Index and RFC 3834 loop flags.

`parse_message` never raises: whatever cannot be understood is left out and named in `defects`.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.errors
import email.utils
import functools
import html as html_lib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.header import Header
from email.message import Message
from html.parser import HTMLParser
from typing import Final

import nh3

from channels.email.dsn import DeliveryReport, delivery_report
from channels.email.reply import reply_part

__all__ = ["Address", "Attachment", "DeliveryReport", "ParsedMail", "html_to_text", "parse_message", "sanitize_html"]

Address = tuple[str, str]
"""(display name, address); the name is "" when absent."""

AUTO_RESPONSE_SUPPRESS_VALUES: Final = frozenset({"all", "autoreply", "oof"})
BULK_PRECEDENCE: Final = frozenset({"bulk", "junk"})


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str | None
    content_type: str
    content: bytes
    content_id: str | None = None
    inline: bool = False

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def is_tnef(self) -> bool:
        """A Microsoft TNEF blob (winmail.dat): listed as is, not unpacked."""
        name = (self.filename or "").lower()
        return (
            self.content_type in ("application/ms-tnef", "application/vnd.ms-tnef") or name == "winmail.dat"
        )


@dataclass(frozen=True, slots=True)
class ParsedMail:
    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    subject: str
    date: datetime | None
    sender: Address | None
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    text: str
    reply_text: str
    """`text` without quoted history and signature (reply.reply_part); `text` itself when there was none."""
    html: str | None
    attachments: tuple[Attachment, ...]
    auto_submitted: bool = False
    auto_reply: bool = False
    """An automatic answer to a message (out of office, vacation); auto_submitted is then True too."""
    bulk: bool = False
    list: bool = False
    bounce: bool = False
    loop_reasons: tuple[str, ...] = ()
    thread_index: str | None = None
    """Outlook's thread id: base64 of the first 22 bytes of the Thread-Index header."""
    delivery_report: DeliveryReport | None = None
    defects: tuple[str, ...] = field(default_factory=tuple)
    language: str | None = None
    """The Content-Language header (RFC 3282), as given: a hint for short texts, e.g. "de-AT"."""

    @property
    def is_automatic(self) -> bool:
        """True when RFC 3834 says: store it, flag it, never auto-answer it, never let it reopen anything."""
        return self.auto_submitted or self.bulk or self.list or self.bounce


def _content_language(top: str | None, walk: _Walk) -> str | None:
    """Content-Language (RFC 3282) of the message, else of its text part; the first tag of a list."""
    values = [top]
    for part in (walk.text_body or [])[:1]:
        values.append(_get(part, "content-language"))
    for value in values:
        tag = (value or "").split(",")[0].strip()
        if tag and len(tag) <= 35 and all(c.isascii() and (c.isalnum() or c in "-_") for c in tag):
            return tag
    return None


# --------------------------------------------------------------------------- charsets

_CHARSET_ALIASES: Final = {
    "unknown-8bit": "utf-8",
    "x-unknown": "utf-8",
    "us-ascii": "utf-8",  # a superset; 8-bit bytes in "ascii" text are nearly always UTF-8 or cp1252
    "ascii": "utf-8",
    "iso-8859-1": "cp1252",  # what mail clients really send under that label (WHATWG encoding standard)
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "ks_c_5601-1987": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "utf8": "utf-8",
    "x-sjis": "shift_jis",
    "cp-850": "cp850",
}


@functools.lru_cache(maxsize=256)
def _codec(charset: str | None) -> str | None:
    """A Python codec name for a MIME charset label, or None when unknown."""
    if not charset:
        return None
    label = charset.strip().strip("\"'").lower()
    label = _CHARSET_ALIASES.get(label, label)
    try:
        name = codecs.lookup(label).name
    except (LookupError, ValueError):
        return None
    # Codecs that are not text encodings (e.g. "base64", "rot13") are not charsets.
    try:
        codecs.lookup(name).decode(b"")
    except Exception:
        return None
    return name


def decode_bytes(data: bytes, charset: str | None, defects: list[str], where: str) -> str:
    """Decode text bytes under a declared charset that may be missing, unknown or wrong."""
    codec = _codec(charset)
    if codec is None and charset and charset.strip().lower() not in ("", "unknown-8bit"):
        defects.append(f"{where}: unknown charset {charset!r}")
    if codec is not None:
        try:
            return data.decode(codec)
        except (UnicodeDecodeError, LookupError):
            pass
        except Exception:  # some codecs raise other errors on garbage
            pass
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if codec is not None:
            defects.append(f"{where}: text is not {charset}, decoded as UTF-8")
        return text
    if codec is not None:
        defects.append(f"{where}: invalid {charset} bytes replaced")
        try:
            return data.decode(codec, errors="replace")
        except Exception:
            pass
    return data.decode("cp1252", errors="replace")


# --------------------------------------------------------------------------- headers

_ENCODED_WORD: Final = re.compile(r"=\?([^?\s]+?)\?([bBqQ])\?([^?\s]*?)\?=")
_FOLD: Final = re.compile(r"\r?\n(?=[ \t])")
_SPACE_ONLY: Final = re.compile(r"[ \t\r\n]*")
_Q_HEX: Final = re.compile(rb"=([0-9A-Fa-f]{2})")


def _b_decode(text: str, defects: list[str]) -> bytes:
    cleaned = re.sub(r"[^A-Za-z0-9+/]", "", text)
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned)
    except (binascii.Error, ValueError):
        defects.append("header: invalid base64 in encoded word")
        try:
            return base64.b64decode(cleaned[: len(cleaned) // 4 * 4 - 4] or "")
        except (binascii.Error, ValueError):
            return b""


def _q_decode(text: str) -> bytes:
    raw = text.replace("_", " ").encode("latin-1", errors="replace")
    return _Q_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def _raw_to_str(value: str) -> str:
    """compat32 keeps undecodable 8-bit header bytes as surrogate escapes: read them as UTF-8."""
    if not value.isascii() and any("\udc80" <= ch <= "\udcff" for ch in value):
        return value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    return value


def decode_words(value: str, defects: list[str]) -> str:
    """Decode RFC 2047 encoded words leniently; the whitespace between adjacent words is dropped."""
    value = _raw_to_str(value)
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: list[tuple[str | None, bytes]] = []  # adjacent words, joined by charset before decoding

    def flush() -> None:
        for charset, data in _merge(pending):
            out.append(decode_bytes(data, charset, defects, "header"))
        pending.clear()

    pos = 0
    for match in _ENCODED_WORD.finditer(value):
        between = value[pos : match.start()]
        if pending and not _SPACE_ONLY.fullmatch(between):
            flush()
        if not pending:
            out.append(between)
        charset = match.group(1).split("*", 1)[0]  # RFC 2231 language suffix
        encoding = match.group(2).upper()
        data = _b_decode(match.group(3), defects) if encoding == "B" else _q_decode(match.group(3))
        pending.append((charset, data))
        pos = match.end()
    flush()
    out.append(value[pos:])
    return "".join(out)


def _merge(words: list[tuple[str | None, bytes]]) -> list[tuple[str | None, bytes]]:
    merged: list[tuple[str | None, bytes]] = []
    for charset, data in words:
        if merged and (merged[-1][0] or "").lower() == (charset or "").lower():
            merged[-1] = (charset, merged[-1][1] + data)
        else:
            merged.append((charset, data))
    return merged


def _header_str(value: object) -> str:
    """The raw text of a header as compat32 returns it (a str, or a Header for 8-bit values)."""
    if isinstance(value, Header):
        parts: list[str] = []
        for chunk, _charset in getattr(value, "_chunks", ()):  # the raw (surrogate-escaped) text
            parts.append(str(chunk))
        return "".join(parts)
    return str(value)


def _unfold(value: str) -> str:
    if "\n" not in value and "\r" not in value:
        return value
    return _FOLD.sub("", value).replace("\r", "").replace("\n", "")


def _get(msg: Message, name: str) -> str | None:
    try:
        value = msg.get(name)
    except Exception:
        return None
    return None if value is None else _unfold(_header_str(value))


def _get_all(msg: Message, name: str) -> list[str]:
    try:
        values = msg.get_all(name) or []
    except Exception:
        return []
    return [_unfold(_header_str(v)) for v in values]


class _Fields:
    """The top-level header fields by lower-case name (Message.get scans every field on every call)."""

    __slots__ = ("_by_name",)

    def __init__(self, by_name: dict[str, list[str]]) -> None:
        self._by_name = by_name

    def first(self, name: str) -> str | None:
        values = self._by_name.get(name)
        return _unfold(values[0]) if values else None

    def all(self, name: str) -> list[str]:
        return [_unfold(v) for v in self._by_name.get(name, ())]

    def names(self) -> list[str]:
        return list(self._by_name)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name


_MSG_ID: Final = re.compile(r"<\s*([^<>\s]+)\s*>")


def _message_ids(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    found = tuple(_MSG_ID.findall(value))
    if found:
        return found
    # No angle brackets (seen from broken clients): take whitespace separated tokens.
    return tuple(t for t in value.split() if "@" in t)


# One mailbox in the forms nearly all mail uses: `Name <addr>`, `"Name, Inc." <addr>`, `<addr>`, `addr`.
_MAILBOX: Final = re.compile(
    r'[ \t]*(?:(?:"([^"\\]*)"|([^"<>()\[\],;:\\@]*?))[ \t]*<([^<>\s"()\[\],;:\\]+)>'
    r'|([^<>\s"()\[\],;:\\@]+@[^<>\s"()\[\],;:\\@]+))[ \t]*'
)


def _simple_addresses(value: str) -> list[tuple[str, str]] | None:
    """getaddresses() for the plain forms, ten times faster; None for anything else (comments, groups...)."""
    pairs: list[tuple[str, str]] = []
    pos, size = 0, len(value)
    while True:
        match = _MAILBOX.match(value, pos)
        if match is None:
            return None
        quoted, phrase, bracketed, bare = match.groups()
        if bare is not None:
            pairs.append(("", bare))
        else:
            pairs.append((quoted if quoted is not None else " ".join(phrase.split()), bracketed))
        pos = match.end()
        if pos == size:
            return pairs
        if value[pos] != ",":
            return None
        pos += 1
        while pos < size and value[pos] in " \t,":
            pos += 1
        if pos == size:
            return pairs


def _addresses(fields: _Fields, name: str, defects: list[str]) -> tuple[Address, ...]:
    raw = [_raw_to_str(v) for v in fields.all(name.lower())]
    if not raw:
        return ()
    pairs = [] if len(raw) > 1 else _simple_addresses(raw[0])
    if not pairs:
        try:
            pairs = email.utils.getaddresses(raw)
        except Exception as exc:
            defects.append(f"{name}: unparseable address list ({type(exc).__name__})")
            return ()
    result: list[Address] = []
    for display, address in pairs:
        if not address and not display:
            continue
        display, address = decode_words(display, defects).strip(), address.strip()
        if not display and "@" not in address:  # "From: Whomever": a name without an address
            display, address = address, ""
        result.append((display, address))
    if not result:
        defects.append(f"{name}: no address found in {raw[0][:80]!r}")
    return tuple(result)


def _reply_text(text: str) -> str:
    reply = reply_part(text)
    return text if reply == text.strip() else reply


def _first_date(values: list[str], defects: list[str]) -> datetime | None:
    """The first readable Date header: broken mail sometimes repeats it, the first copy garbled."""
    for value in values:
        parsed = _date(value, defects)
        if parsed is not None:
            return parsed
    return None


# "Tue, 7 Apr 2026 10:00:00 +0200": nearly every Date header; parsed here in a fifth of the time.
_PLAIN_DATE: Final = re.compile(
    r"\s*(?:[A-Za-z]{3},\s*)?(\d{1,2}) ([A-Za-z]{3}) (\d{4}) (\d{2}):(\d{2})(?::(\d{2}))? ([+-])(\d{2})(\d{2})\s*$"
)
_MONTHS: Final = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep",
                                               "oct", "nov", "dec"), 1)}


def _plain_date(value: str) -> datetime | None:
    match = _PLAIN_DATE.match(value)
    month = _MONTHS.get(match.group(2).lower()) if match else None
    if match is None or month is None:
        return None
    day, _, year, hour, minute, second, sign, off_h, off_m = match.groups()
    offset = timedelta(hours=int(off_h), minutes=int(off_m))
    zone = timezone(-offset if sign == "-" else offset)  # "-0000" is UTC too (RFC 5322 3.3)
    try:
        return datetime(int(year), month, int(day), int(hour), int(minute), int(second or 0), tzinfo=zone)
    except ValueError:
        return None


def _date(value: str | None, defects: list[str]) -> datetime | None:
    if not value:
        return None
    fast = _plain_date(value)
    if fast is not None:
        return fast
    try:
        parsed = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        defects.append(f"Date: unparseable {value[:60]!r}")
        return None
    if parsed.tzinfo is None:  # "-0000": UTC, source zone unknown (RFC 5322 3.3)
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


# --------------------------------------------------------------------------- HTML

_URL_SCHEMES: Final = set(nh3.ALLOWED_URL_SCHEMES) | {"cid", "data"}


@functools.cache
def _cleaner() -> nh3.Cleaner:
    return nh3.Cleaner(url_schemes=_URL_SCHEMES)  # built once: building it costs more than a clean


def sanitize_html(markup: str) -> str:
    """HTML safe to show to an agent: no script, style, event handlers or javascript: URLs."""
    return _cleaner().clean(markup)


_BLOCK_TAGS: Final = frozenset(
    {
        *("address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "fieldset", "figcaption"),
        *("figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main"),
        *("nav", "ol", "p", "pre", "section", "table", "tbody", "thead", "tfoot", "tr", "ul"),
    }
)
_SKIP_TAGS: Final = frozenset({"script", "style", "head", "title", "template"})


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self.skip += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")
            if tag == "li":
                self.parts.append("- ")
            elif tag == "pre":
                self.pre += 1
        elif tag in ("td", "th"):
            self.parts.append("\t")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br" or tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")
            if tag == "pre":
                self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        self.parts.append(data if self.pre else re.sub(r"[ \t\r\n]+", " ", data))


def html_to_text(markup: str) -> str:
    """Readable plain text from HTML: block elements become line breaks, script and style are dropped."""
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # HTMLParser is lenient, but never let a body break parsing
        return re.sub(r"<[^>]*>", " ", markup)
    text = "".join(parser.parts)
    lines = [line.strip(" ") for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + ("\n" if text.strip() else "")


def _text_to_html(text: str) -> str:
    return '<div style="white-space: pre-wrap">' + html_lib.escape(text) + "</div>"


# --------------------------------------------------------------------------- MIME structure

_INLINE_MEDIA: Final = ("image/", "audio/", "video/")


def _filename(part: Message, defects: list[str]) -> str | None:
    try:
        name = part.get_filename()
    except Exception as exc:
        defects.append(f"attachment filename unreadable ({type(exc).__name__})")
        name = None
    if name is None:
        return None
    name = decode_words(name, defects)  # RFC 2047 in a parameter: not standard, very common
    return name.replace("\x00", "").strip() or None


def _info(part: Message, tree: _Tree) -> _PartInfo:
    return tree.info.get(id(part)) or _NO_INFO


def _content_type(part: Message, tree: _Tree) -> str:
    return _info(part, tree).ctype


_B64_RUN: Final = re.compile(rb"[A-Za-z0-9+/ \t\r\n]*(?:=[ \t\r\n]*){0,2}")


def _b64_lenient(encoded: bytes, defects: list[str]) -> bytes:
    """Base64 as mail readers decode it: strict if possible, else the decodable part, else as sent."""
    compact = encoded.translate(None, b" \t\r\n")
    try:
        return binascii.a2b_base64(compact, strict_mode=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.b64decode(compact.rstrip(b"="), validate=True)
    except (binascii.Error, ValueError):
        pass
    # A valid run followed by junk ("ecO2dMOkIHZhYW4uCg== ignored"): decode the run when it is most
    # of the body; placeholder text that merely contains letters stays as sent.
    found = _B64_RUN.match(encoded)
    run = found.group().translate(None, b" \t\r\n") if found else b""
    usable = run.rstrip(b"=")
    usable = usable[: len(usable) // 4 * 4] if not run.endswith(b"=") else run
    if len(usable) >= 4 and len(run) * 2 >= len(compact):
        try:
            decoded = binascii.a2b_base64(usable, strict_mode=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if decoded:
            defects.append("invalid base64 body: leading valid part decoded, rest dropped")
            return decoded
    # Nothing decodable: keep the content as it was sent rather than compat32's garbage.
    defects.append("invalid base64 body kept undecoded")
    return encoded


def _payload_bytes(part: Message, tree: _Tree, defects: list[str]) -> bytes:
    """The decoded body of a leaf part."""
    span = tree.body.get(id(part))
    if span is None:
        return b""
    sent = tree.raw[span[0] : span[1]]
    # "quoted-printable   \r" and "8bit\t\t" occur: compat32 compares the raw value and gives up, so the
    # transfer encoding is read (stripped) and applied here.
    cte = _info(part, tree).cte
    if cte == "base64":
        return _b64_lenient(sent, defects)
    if cte == "quoted-printable":
        return binascii.a2b_qp(sent)
    if "uue" in cte:
        try:
            data = part.get_payload(decode=True)
        except Exception as exc:
            defects.append(f"body undecodable ({type(exc).__name__})")
            data = None
        if isinstance(data, bytes):
            return data
    return sent  # 7bit, 8bit, binary and unknown values: no transfer decoding


@dataclass(slots=True)
class _Walk:
    text_body: list[Message] | None = field(default_factory=list)
    html_body: list[Message] | None = field(default_factory=list)
    attachments: list[Message] = field(default_factory=list)


def _structure(
    parts: list[Message],
    multipart_type: str,
    in_alternative: bool,
    text_body: list[Message] | None,
    html_body: list[Message] | None,
    attachments: list[Message],
    tree: _Tree,
    depth: int = 0,
) -> None:
    """RFC 8621 4.1.4 parseStructure, with inline media always listed as attachments too."""
    text_len = len(text_body) if text_body is not None else -1
    html_len = len(html_body) if html_body is not None else -1
    for i, part in enumerate(parts):
        info = _info(part, tree)
        ctype = info.ctype
        is_media = ctype.startswith(_INLINE_MEDIA)
        has_name = info.has_name
        if part.is_multipart() and ctype.startswith("multipart/"):
            sub = ctype.split("/", 1)[1]
            payload = part.get_payload()
            _structure(
                [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else [],
                sub,
                in_alternative or sub == "alternative",
                text_body,
                html_body,
                attachments,
                tree,
                depth + 1,
            )
            continue
        is_inline = (
            info.disposition != "attachment"
            and (ctype in ("text/plain", "text/html") or is_media)
            and (i == 0 or (multipart_type != "related" and (is_media or not has_name)))
        )
        if not is_inline:
            attachments.append(part)
            continue
        if is_media:
            attachments.append(part)
            continue
        if multipart_type == "alternative":
            if ctype == "text/plain" and text_body is not None:
                text_body.append(part)
            elif ctype == "text/html" and html_body is not None:
                html_body.append(part)
            continue
        if in_alternative:
            if ctype == "text/plain":
                html_body = None
            if ctype == "text/html":
                text_body = None
        if text_body is not None:
            text_body.append(part)
        if html_body is not None:
            html_body.append(part)
    if multipart_type == "alternative" and text_body is not None and html_body is not None:
        if text_len == len(text_body) and html_len != len(html_body):
            text_body.extend(html_body[html_len:])
        if html_len == len(html_body) and text_len != len(text_body):
            html_body.extend(text_body[text_len:])


def _select(msg: Message, tree: _Tree) -> _Walk:
    walk = _Walk()
    assert walk.text_body is not None and walk.html_body is not None
    ctype = _content_type(msg, tree)
    payload = msg.get_payload()
    if ctype.startswith("multipart/") and isinstance(payload, list):
        parts = [p for p in payload if isinstance(p, Message)]
        sub = ctype.split("/", 1)[1]
        _structure(parts, sub, sub == "alternative", walk.text_body, walk.html_body, walk.attachments, tree)
    else:
        _structure([msg], "mixed", False, walk.text_body, walk.html_body, walk.attachments, tree)
    return walk


def _part_text(part: Message, tree: _Tree, defects: list[str]) -> str:
    info = _info(part, tree)
    data = _payload_bytes(part, tree, defects)
    return decode_bytes(data, info.params.get("charset"), defects, info.ctype)


# --------------------------------------------------------------------------- MIME tree
#
# compat32's feedparser compiles a regular expression for every boundary it meets, and boundaries are
# unique per message: that alone cost more than the whole budget for a 5 KB mail. So the tree is built
# here, with the same rules (RFC 2046 5.1.1 delimiter lines; a delimiter of an enclosing multipart ends
# the inner parts; one line break before a delimiter belongs to it; repeated delimiter lines make no
# empty parts), out of compat32 Message objects, and it knows where each part's body lies in the raw
# bytes. It is also more lenient where other mail readers are: folded or ';'-less boundary parameters,
# a close delimiter glued to the last line, and whitespace before a header colon (RFC 5322 4.5.2).

_BOUNDARY_PARAM: Final = re.compile(r'boundary\s*=\s*(?:"([^"]*)"|([^\s;"]+))', re.IGNORECASE)
_MAX_DEPTH: Final = 50
_STATUS_TYPES: Final = ("message/delivery-status",)


_HEADER_BLOCK: Final = re.compile(
    r"(?:(?:From |[\x21-\x39\x3b-\x7e]*:|[\x21-\x39\x3b-\x7e]+[ \t]+:|[\t ])[^\r\n]*(?:\r\n|\r|\n|\Z))*"
)
_PARAM: Final = re.compile(r';[ \t\r\n]*([^\s=;"]+)[ \t\r\n]*=[ \t\r\n]*(?:"((?:[^"\\]|\\.)*)"|([^;]*))')
_QUOTED_PAIR: Final = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class _PartInfo:
    """A part's Content-* fields, read once."""

    ctype: str
    params: dict[str, str]
    disposition: str | None
    has_name: bool
    cte: str
    content_id: str | None


_NO_INFO: Final = _PartInfo("text/plain", {}, None, False, "", None)


@dataclass(slots=True)
class _Tree:
    """What the tree builder learnt besides the Message objects, by id() of the part."""

    raw: bytes
    text: str
    body: dict[int, tuple[int, int]] = field(default_factory=dict)  # (start, end) of the body in raw
    info: dict[int, _PartInfo] = field(default_factory=dict)
    root_fields: dict[str, list[str]] = field(default_factory=dict)
    defects: list[str] = field(default_factory=list)


def _params(value: str) -> tuple[str, dict[str, str]]:
    """(lower-case value before ';', lower-case parameter name -> unquoted value); RFC 2231 names kept as sent."""
    head, sep, _ = value.partition(";")
    params: dict[str, str] = {}
    if sep:
        for match in _PARAM.finditer(value, len(head)):
            quoted = match.group(2)
            params.setdefault(
                match.group(1).lower(),
                (_QUOTED_PAIR.sub(r"\1", quoted) if "\\" in quoted else quoted)
                if quoted is not None
                else match.group(3).strip(),
            )
    return head.strip().lower(), params


def _has_param(params: dict[str, str], name: str) -> bool:
    return name in params or any(k.split("*", 1)[0] == name for k in params)


def _read_headers(text: str, start: int, end: int, msg: Message, fields: dict[str, list[str]]) -> int:
    """Parse the header block at text[start:end] into `msg` as compat32 would; return where the body starts."""
    if text.startswith(("\r\n", "\n"), start, end):
        return start + (2 if text.startswith("\r\n", start, end) else 1)
    # Fast path: up to the first empty line, every line is a field or a continuation line.
    ends = [i for i in (text.find("\n\n", start, end), text.find("\n\r\n", start, end)) if i >= 0]
    block_end = min(ends) + 1 if ends else end
    pairs = _plain_fields(text[start:block_end])
    if pairs:
        for name, value in pairs:
            msg.set_raw(name, value)
            fields.setdefault(name.lower(), []).append(value)
        if block_end == end:
            return end
        return block_end + (2 if text.startswith("\r\n", block_end, end) else 1)
    block = _HEADER_BLOCK.match(text, start, end)
    pos = block.end() if block else start
    _read_headers_slowly(text[start:pos], msg, fields)
    if pos < end:
        if text.startswith("\r\n", pos, end):
            return pos + 2
        if text[pos] in "\r\n":
            return pos + 1
        msg.defects.append(email.errors.MissingHeaderBodySeparatorDefect())
    return pos


def _plain_fields(block: str) -> list[tuple[str, str]] | None:
    """(name, value) of each field when every line is a field or a continuation, else None."""
    if "\r" in block and block.count("\r") != block.count("\r\n"):
        return None  # bare CR line breaks: the careful path
    pairs: list[tuple[str, list[str]]] = []
    for line in block.split("\n"):
        if not line:
            continue
        if line[0] in " \t":
            if not pairs:
                return None
            pairs[-1][1].append(line)
            continue
        colon = line.find(":")
        if colon <= 0:
            return None
        name = line[:colon]
        if name[-1] in " \t":
            name = name.rstrip(" \t")  # obsolete syntax: whitespace before the colon
        if " " in name or not name.isascii() or not name.isprintable():
            return None
        pairs.append((name, [line[colon + 1 :].lstrip(" \t")]))
    # compat32 keeps the line breaks inside a folded value and strips the last one.
    return [
        (name, lines[0].rstrip("\r") if len(lines) == 1 else "\n".join(lines).rstrip("\r\n"))
        for name, lines in pairs
    ]


def _read_headers_slowly(header: str, msg: Message, fields: dict[str, list[str]]) -> None:
    """compat32's line-by-line rules, for header blocks with continuation, envelope or nameless lines."""
    name = ""
    value: list[str] = []
    first = True

    def store() -> None:
        joined = "".join(value).rstrip("\r\n")
        msg.set_raw(name, joined)
        fields.setdefault(name.lower(), []).append(joined)

    for line in header.splitlines(keepends=True):
        if line[0] in " \t":
            if name:
                value.append(line)
            elif first:
                msg.defects.append(email.errors.FirstHeaderLineIsContinuationDefect(line))
            continue
        if name:
            store()
            name = ""
        if line.startswith("From "):
            if first:
                msg.set_unixfrom(line.rstrip("\r\n"))
            else:
                msg.defects.append(email.errors.MisplacedEnvelopeHeaderDefect(line))
            first = False
            continue
        first = False
        colon = line.find(":")
        if colon <= 0:
            msg.defects.append(email.errors.InvalidHeaderDefect("Missing header name."))
            continue
        name = line[:colon].rstrip(" \t")
        value = [line[colon + 1 :].lstrip(" \t")]
    if name:
        store()


def _eol_before(text: str, pos: int, floor: int) -> int:
    if pos - 2 >= floor and text.startswith("\r\n", pos - 2):
        return pos - 2
    if pos - 1 >= floor and text[pos - 1] in "\r\n":
        return pos - 1
    return pos


def _split(text: str, start: int, end: int, boundary: str, tree: _Tree) -> tuple[list[tuple[int, int]], bool] | None:
    """Spans of the body parts of text[start:end] and whether the close delimiter was seen; None if no part."""
    marker = "--" + boundary
    size = len(marker)
    delimiters: list[tuple[int, int, bool]] = []  # (line start, after its line break, close)
    pos = start
    while True:
        i = text.find(marker, pos, end)
        if i < 0:
            break
        pos = i + 1
        if i != start and text[i - 1] not in "\r\n":
            continue
        k = i + size
        close = text.startswith("--", k, end)
        if close:
            k += 2
        while k < end and text[k] in " \t":
            k += 1
        if k < end and text[k] not in "\r\n":
            continue
        after = k + 2 if text.startswith("\r\n", k, end) else (k + 1 if k < end else k)
        delimiters.append((i, after, close))
        if close:
            break
        pos = after
    if not delimiters or delimiters[0][2]:
        return None
    spans: list[tuple[int, int]] = []
    closed = False
    index = 0
    while index < len(delimiters):
        _, after, _ = delimiters[index]
        # Delimiter lines right after one another open no empty parts (compat32 consumes them).
        while index + 1 < len(delimiters) and delimiters[index + 1][0] == after:
            index += 1
            after = delimiters[index][1]
        index += 1
        if index < len(delimiters):
            line_start, _, closed = delimiters[index]
            spans.append((after, max(after, _eol_before(text, line_start, after))))
            if closed:
                break
        else:
            part_end = end
            glued = text.rfind(marker + "--", after, end)
            if glued > after and not text[glued + size + 2 : end].strip():
                # "invalid--1--": the close delimiter lost its line break; it still ends the part.
                tree.defects.append("close delimiter not on a line of its own")
                part_end, closed = glued, True
            spans.append((after, max(after, _eol_before(text, part_end, after))))
    return spans, closed


def _lenient_boundary(content_type: str) -> str | None:
    """The boundary a lenient reader sees: unfolded, and found even without the ';' before it."""
    match = _BOUNDARY_PARAM.search(_unfold(content_type))
    if match is None:
        return None
    boundary = (match.group(1) if match.group(1) is not None else match.group(2)).rstrip()
    return boundary or None


def _build(tree: _Tree, start: int, end: int, depth: int = 0, default_type: str = "text/plain") -> Message:
    """The compat32 Message for the entity at text[start:end], its parts built recursively."""
    text = tree.text
    msg = Message()
    fields: dict[str, list[str]] = {}
    if depth == 0:
        tree.root_fields = fields
    body = _read_headers(text, start, end, msg, fields)
    tree.body[id(msg)] = (body, end)
    if default_type != "text/plain":
        msg.set_default_type(default_type)
    raw_ctype = fields["content-type"][0] if "content-type" in fields else None
    params: dict[str, str]
    if raw_ctype is None:
        ctype, params = default_type, {}
    else:
        ctype, params = _params(_raw_to_str(raw_ctype))
        # compat32: anything but one '/' is text/plain; "multipart/mixed\n\tboundary=..." (no ';') keeps
        # its first word.
        ctype = ctype.split(None, 1)[0] if ctype.strip() else "text/plain"
        if ctype.count("/") != 1:
            ctype = "text/plain"
    raw_disposition = fields["content-disposition"][0] if "content-disposition" in fields else None
    disposition, disposition_params = _params(raw_disposition) if raw_disposition is not None else (None, {})
    cte = fields["content-transfer-encoding"][0].strip().lower() if "content-transfer-encoding" in fields else ""
    cid = _unfold(fields["content-id"][0]).strip().strip("<>") if "content-id" in fields else None

    def info(kind: str) -> None:
        tree.info[id(msg)] = _PartInfo(
            ctype=kind,
            params=params,
            disposition=disposition or None,
            has_name=_has_param(params, "name") or _has_param(disposition_params, "filename"),
            cte=cte,
            content_id=cid or None,
        )

    info(ctype)
    if depth >= _MAX_DEPTH and ctype.startswith(("multipart/", "message/")):
        tree.defects.append("MIME nesting too deep; deeper parts kept as text")
        msg.set_payload(text[body:end])
        return msg
    if ctype.startswith("multipart/"):
        boundary = params.get("boundary")
        if boundary is None and any(k.startswith("boundary*") for k in params):
            boundary = msg.get_boundary()  # RFC 2231 encoded: rare enough to let compat32 decode it
        boundary = boundary.rstrip() if boundary else None
        found = _split(text, body, end, boundary, tree) if boundary else None
        if found is None:
            msg.defects.append(
                email.errors.StartBoundaryNotFoundDefect()
                if boundary
                else email.errors.NoBoundaryInMultipartDefect()
            )
            lenient = _lenient_boundary(raw_ctype or "")
            if lenient and lenient != boundary:
                found = _split(text, body, end, lenient, tree)
                if found is not None:
                    tree.defects.append(f"multipart boundary {lenient[:40]!r} recovered leniently")
        if found is None:
            msg.set_payload(text[body:end])
            info("text/plain")  # no usable boundary: the body is shown as text
            return msg
        spans, closed = found
        if not closed:
            msg.defects.append(email.errors.CloseBoundaryNotFoundDefect())
        sub_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"  # RFC 2046 5.1.5
        msg.set_payload([_build(tree, a, b, depth + 1, sub_default) for a, b in spans])
        return msg
    if ctype.startswith("message/") and ctype not in _STATUS_TYPES:
        msg.set_payload([_build(tree, body, end, depth + 1)])
        return msg
    msg.set_payload(text[body:end])
    return msg


# --------------------------------------------------------------------------- Outlook, auto-replies

_THREAD_INDEX_ID_BYTES: Final = 22  # FILETIME (6 bytes) + GUID (16): the thread; 5-byte child blocks follow


def _thread_index(value: str | None) -> str | None:
    if not value:
        return None
    compact = "".join(value.split())
    try:
        decoded = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(decoded) < _THREAD_INDEX_ID_BYTES:
        return None
    return base64.b64encode(decoded[:_THREAD_INDEX_ID_BYTES]).decode("ascii")


# Subject prefixes of out-of-office and vacation replies (Outlook, Exchange, Gmail, Apple, Thunderbird).
_AUTO_REPLY_SUBJECT: Final = re.compile(
    r"^(?:automatic reply|auto(?:matic)?[- ]?reply|out of (?:the )?office(?: reply)?|autoreply"
    r"|automatische antwort|abwesenheitsnotiz|abwesend|réponse automatique|absence du bureau"
    r"|respuesta automática|fuera de la oficina|automatikus válasz|házon kívül"
    r"|otomatik yanıt|ofis dışında"
    r"|resposta automática|risposta automatica|automatisch antwoord)\s*:",
    re.IGNORECASE,
)


def _auto_reply(fields: _Fields, subject: str) -> tuple[bool, str | None]:
    """(is an automatic reply such as out-of-office, the reason when no loop header already names it)."""
    auto_submitted = (fields.first("auto-submitted") or "").strip().lower()
    if auto_submitted.split(";", 1)[0].strip() == "auto-replied":
        return True, None
    if "x-autoreply" in fields or "x-autorespond" in fields:
        return True, None
    if (fields.first("precedence") or "").strip().lower() == "auto_reply":
        return True, "Precedence: auto_reply"
    if _AUTO_REPLY_SUBJECT.match(subject):
        return True, f"auto-reply subject {subject[:60]!r}"
    return False, None


# --------------------------------------------------------------------------- loop prevention


def _loop_flags(
    fields: _Fields, sender: Address | None, ctype: str, report_type: str | None
) -> tuple[bool, bool, bool, bool, tuple[str, ...]]:
    reasons: list[str] = []
    auto = bulk = is_list = bounce = False
    auto_submitted = (fields.first("auto-submitted") or "").strip().lower()
    if auto_submitted and auto_submitted.split(";", 1)[0].strip() != "no":
        auto = True
        reasons.append(f"Auto-Submitted: {auto_submitted}")
    suppress = (fields.first("x-auto-response-suppress") or "").lower()
    if {v.strip() for v in suppress.split(",")} & AUTO_RESPONSE_SUPPRESS_VALUES:
        auto = True
        reasons.append(f"X-Auto-Response-Suppress: {suppress}")
    if "x-autoreply" in fields or "x-autorespond" in fields:
        auto = True
        reasons.append("X-Autoreply")
    precedence = (fields.first("precedence") or "").strip().lower()
    if precedence in BULK_PRECEDENCE:
        bulk = True
        reasons.append(f"Precedence: {precedence}")
    elif precedence == "list":
        is_list = True
        reasons.append("Precedence: list")
    list_headers = sorted(k for k in fields.names() if k.startswith("list-"))
    if list_headers:
        is_list = True
        reasons.append("List-* headers: " + ", ".join(list_headers))
    return_paths = fields.all("return-path")
    if any(rp.strip() in ("<>", "") for rp in return_paths):
        bounce = True
        reasons.append("Return-Path: <>")
    local = sender[1].rsplit("@", 1)[0].lower() if sender and sender[1] else ""
    if local in ("mailer-daemon", "postmaster") or (sender and "mailer-daemon" in sender[0].lower()):
        bounce = True
        reasons.append(f"sender {sender[1] if sender else ''}")
    elif local.startswith("owner-") or local.endswith("-request") or local.endswith("-owner"):
        is_list = True
        reasons.append(f"list administrative sender {sender[1] if sender else ''}")
    if ctype == "multipart/report" and report_type in ("delivery-status", "disposition-notification"):
        if report_type == "delivery-status":
            bounce = True
        else:
            auto = True
        reasons.append(f"multipart/report; report-type={report_type}")
    return auto, bulk, is_list, bounce, tuple(reasons)


# --------------------------------------------------------------------------- entry point


def _defect_names(msg: Message) -> list[str]:
    names: list[str] = []
    try:
        for part in msg.walk():
            for defect in getattr(part, "defects", ()):
                names.append(f"{type(defect).__name__}: {defect}" if str(defect) else type(defect).__name__)
    except Exception:  # walk() over a broken tree
        pass
    return names


def parse_message(raw: bytes) -> ParsedMail:
    """Parse raw RFC 5322 bytes. Never raises: unreadable pieces are left out and listed in `defects`."""
    try:
        return _parse(raw)
    except Exception as exc:  # last resort: a stored message with its defect beats a dropped one
        text = raw.decode("utf-8", errors="replace")
        return ParsedMail(
            message_id=None,
            in_reply_to=None,
            references=(),
            subject="",
            date=None,
            sender=None,
            to=(),
            cc=(),
            reply_to=(),
            text=text,
            reply_text=text,
            html=None,
            attachments=(),
            defects=(f"unparseable message: {type(exc).__name__}: {exc}",),
        )


def _parse(raw: bytes) -> ParsedMail:
    defects: list[str] = []
    tree = _Tree(raw, raw.decode("ascii", errors="surrogateescape"))  # one char per byte, as compat32 reads it
    msg = _build(tree, 0, len(tree.text))
    defects.extend(_defect_names(msg))
    defects.extend(tree.defects)
    fields = _Fields(tree.root_fields)

    message_ids = _message_ids(fields.first("message-id"))
    reply_ids = _message_ids(fields.first("in-reply-to"))
    references = tuple(dict.fromkeys(i for v in fields.all("references") for i in _message_ids(v)))
    subject = decode_words(fields.first("subject") or "", defects).strip()
    date = _first_date(fields.all("date"), defects)
    senders = _addresses(fields, "From", defects) or _addresses(fields, "Sender", defects)
    sender = senders[0] if senders else None
    if sender is None:
        defects.append("no From address")

    walk = _select(msg, tree)
    text_parts: list[str] = []
    for part in walk.text_body or []:
        body = _part_text(part, tree, defects)
        text_parts.append(html_to_text(body) if _content_type(part, tree) == "text/html" else body)
    html: str | None = None
    html_body = walk.html_body or []
    if any(_content_type(p, tree) == "text/html" for p in html_body):
        chunks = [
            _part_text(p, tree, defects)
            if _content_type(p, tree) == "text/html"
            else _text_to_html(_part_text(p, tree, defects))
            for p in html_body
        ]
        html = sanitize_html("\n".join(chunks))
        if not any(t.strip() for t in text_parts):
            # No text part, or an empty one beside real HTML: the agent should still see the words.
            text_parts = [html_to_text("\n".join(chunks))]

    attachments: list[Attachment] = []
    for part in walk.attachments:
        info = _info(part, tree)
        content = _payload_bytes(part, tree, defects)
        attachments.append(
            Attachment(
                filename=_filename(part, defects),
                content_type=info.ctype,
                content=content,
                content_id=info.content_id,
                inline=info.disposition == "inline",
            )
        )

    ctype = _content_type(msg, tree)
    report_type = _info(msg, tree).params.get("report-type")
    auto, bulk, is_list, bounce, reasons = _loop_flags(
        fields, sender, ctype, report_type.lower() if isinstance(report_type, str) else None
    )
    auto_reply, auto_reply_reason = _auto_reply(fields, subject)
    if auto_reply_reason:
        auto = True
        reasons = (*reasons, auto_reply_reason)
    text = "\n".join(text_parts)

    report: DeliveryReport | None = None
    is_dsn = ctype == "multipart/report" and isinstance(report_type, str) and report_type.lower() == "delivery-status"
    if is_dsn or bounce or "x-failed-recipients" in fields:
        try:
            report = delivery_report(msg, text, bounce_sender=bounce)
        except Exception as exc:  # a report we cannot read is still a stored message
            defects.append(f"delivery report unreadable ({type(exc).__name__})")
        if report is not None and not bounce:
            bounce = True
            reasons = (*reasons, "delivery report (X-Failed-Recipients)")

    return ParsedMail(
        message_id=message_ids[0] if message_ids else None,
        in_reply_to=reply_ids[0] if reply_ids else None,
        references=references,
        subject=subject,
        date=date,
        sender=sender,
        to=_addresses(fields, "To", defects),
        cc=_addresses(fields, "Cc", defects),
        reply_to=_addresses(fields, "Reply-To", defects),
        text=text,
        reply_text=_reply_text(text),
        html=html,
        attachments=tuple(attachments),
        auto_submitted=auto,
        auto_reply=auto_reply,
        bulk=bulk,
        list=is_list,
        bounce=bounce,
        loop_reasons=reasons,
        thread_index=_thread_index(fields.first("thread-index")),
        delivery_report=report,
        defects=tuple(defects),
        language=_content_language(fields.first("content-language"), walk),
    )
