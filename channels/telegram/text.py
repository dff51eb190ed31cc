"""Telegram message text: length as Telegram counts it, splitting long replies, MarkdownV2 escaping.

Telegram limits a message to 4,096 characters after entity parsing (a caption to 1,024), counted in
UTF-16 code units: a character outside the BMP, such as most emoji, counts 2. A longer reply is sent
as several messages, in order, each cut at the most natural place within the limit.

How `split_text` cuts: greedy, each part filled as far as the limit allows, at the first of these
that exists within the limit, in order of preference:

1. paragraph: the last blank line (two or more line breaks, possibly with other whitespace between);
2. line: the last line break;
3. sentence: the last sentence end, ``.``, ``!``, ``?``, ``…`` (or a run of them, possibly followed by
   closing quotes and brackets, as in ``."`` or ``?)``) followed by whitespace; the CJK full stops
   (U+3002, fullwidth U+FF01, U+FF1F) end a sentence with or without whitespace after them, as CJK
   text has no spaces;
4. word: the last whitespace;
5. hard: only when a single "word" (a URL, base64) is longer than the limit, the last place that
   does not split a character sequence (see `_is_boundary`); if one such sequence (a family emoji, a
   letter with many combining marks) is itself longer than the limit, it is cut anyway: the limit
   is Telegram's and cannot be exceeded.

A preferred cut that leaves a part shorter than ``limit // 4`` is skipped when a less preferred cut
further on fits: a 100-character paragraph followed by a 4,000-character one is not sent as a short
message and a full one when the first message can be filled up to a line, sentence or word.

The whitespace at a cut (the whole run of it) is dropped: no part starts or ends with the whitespace
it was cut at. Other whitespace is kept, including the text's own leading and trailing whitespace,
except that whitespace at the start of a part is dropped when it would fill the whole part (no part is
only whitespace) or split the sequence after it. No-break spaces (U+00A0, U+2007, U+202F) are never
cut at: they ask not to be broken.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from telegram.helpers import escape_markdown

TEXT_LIMIT: Final = 4096
CAPTION_LIMIT: Final = 1024

# Whitespace, less the no-break spaces.
_W: Final = r"[^\S\xa0\u2007\u202f]"
# One line break as str.splitlines counts them (CRLF is one); U+2029, a paragraph separator, counts two.
_LB: Final = r"(?:\r\n|\r(?!\n)|[\n\v\f\x1c\x1d\x1e\x85\u2028])"
_PS: Final = "\u2029"
# Whitespace that is not a line break.
_H: Final = r"[^\S\xa0\u2007\u202f\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]"
# . ! ? … ‼ ⁇ ⁈ ⁉, then the CJK full stop, fullwidth ! and ?, halfwidth full stop.
_STOP_CHARS: Final = re.escape(".!?\u2026\u203c\u2047\u2048\u2049\u3002\uff01\uff1f\uff61")
_CJK_STOP_CHARS: Final = re.escape("\u3002\uff01\uff1f\uff61")
# Closing quotes and brackets: ASCII, typographic, guillemets, fullwidth and CJK.
_CLOSE_CHARS: Final = re.escape(
    "\"')]}\u201d\u2019\u00bb\u203a\uff09\u300d\u300f\u3011\u3009\u300b\u3015\u3017\u3019\u301b"
)

_WS_RUN: Final = re.compile(rf"{_W}+")
_ANY_SPACE_RUN: Final = re.compile(r"\s+")
# Each pattern finds the *last* place in the range searched, as the greedy prefix backtracks from its
# end. The group `ws` is where the part ends: the start of a whitespace run (the lookbehind makes it
# the start of the run, not a character inside it).
_LAST_PARAGRAPH: Final = re.compile(rf"(?s:.*)(?<!{_W})(?P<ws>{_H}*(?:{_LB}{_H}*(?:{_LB}|{_PS})|{_PS}))")
_LAST_LINE: Final = re.compile(rf"(?s:.*)(?<!{_W})(?P<ws>{_H}*(?:{_LB}|{_PS}))")
_LAST_SENTENCE: Final = re.compile(rf"(?s:.*)[{_STOP_CHARS}]+[{_CLOSE_CHARS}]*(?P<ws>{_W})")
# A CJK sentence end followed by anything but whitespace (that is a sentence end above) or more of the
# sentence end; the part ends before that next character.
_LAST_CJK_SENTENCE: Final = re.compile(
    rf"(?s:.*)[{_CJK_STOP_CHARS}]+[{_CLOSE_CHARS}]*(?P<ws>)[^\s{_STOP_CHARS}{_CLOSE_CHARS}]"
)
_LAST_WORD: Final = re.compile(rf"(?s:.*)(?<!{_W})(?P<ws>{_W})")

_ZWJ: Final = "\u200d"


def utf16_len(text: str) -> int:
    """Length as Telegram counts it (UTF-16 code units)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Parts of at most `limit` UTF-16 units each, in order, that rejoin to the text (modulo the whitespace at the cut points).

    Empty or whitespace-only text has no parts; text within the limit is its own only part, unchanged.
    The cut rules are in the module's docstring. Linear in the length of the text.
    """
    if limit < 2:
        raise ValueError(f"limit must be at least 2 UTF-16 units (one character of any kind), not {limit}")
    if not text or text.isspace():
        return []
    if utf16_len(text) <= limit:
        return [text]
    parts: list[str] = []
    start = 0
    size = len(text)
    while start < size:
        end = _fit(text, start, limit)
        # The text's own leading whitespace, or no-break spaces after a cut: a part is never only spaces.
        lead = _ANY_SPACE_RUN.match(text, start)
        content = start if lead is None else lead.end()
        if content >= end:
            start = content
            continue
        if end == size:
            parts.append(text[start:])
            break
        chosen = _choose_cut(text, start, content, end, limit)
        if chosen is None and content > start:
            # Whitespace before a sequence that cannot be cut: cut at the whitespace, drop it, try again.
            start = content
            continue
        cut, resume = (end, end) if chosen is None else chosen
        parts.append(text[start:cut])
        start = resume
    return parts


def escape_markdown_v2(text: str) -> str:
    """Plain text made safe for parse_mode MarkdownV2: every reserved character backslash-escaped."""
    return escape_markdown(text, version=2)


def split_for_markdown_v2(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Plain text -> MarkdownV2 parts, each within `limit` once Telegram has parsed it.

    The escapes do not count after parsing, so the plain text is split at `limit` and each part escaped;
    a backslash is never separated from the character it escapes.
    """
    return [escape_markdown_v2(part) for part in split_text(text, limit)]


def _fit(text: str, start: int, limit: int) -> int:
    """The largest end such that text[start:end] is at most `limit` UTF-16 units."""
    end = min(len(text), start + limit)
    units = utf16_len(text[start:end])
    while units > limit:
        # Each character is 1 or 2 units: at least half the excess must go, and never more than needed.
        drop = (units - limit + 1) // 2
        units -= utf16_len(text[end - drop : end])
        end -= drop
    return end


def _choose_cut(text: str, start: int, content: int, end: int, limit: int) -> tuple[int, int] | None:
    """Where the part starting at `start` ends and where the next one starts; None if nowhere.

    `content` is the first non-whitespace position at or after `start`; text[start:end] fits the limit
    and the text goes on after `end`. A cut ends the part at or before `end`, after `content`.
    """
    lowest = content + 1
    candidates: list[int | None] = []
    for pattern in (_LAST_PARAGRAPH, _LAST_LINE, _LAST_SENTENCE, _LAST_WORD):
        # The whitespace may start at `end` itself: the part is then as long as it can be.
        found = pattern.match(text, lowest, end + 1)
        candidates.append(found.start("ws") if found is not None else None)
    cjk = _LAST_CJK_SENTENCE.match(text, lowest, end + 1)
    if (
        cjk is not None
        and (candidates[2] is None or cjk.start("ws") > candidates[2])
        and _is_boundary(text, start, cjk.start("ws"))
    ):
        candidates[2] = cjk.start("ws")
    floor = limit // 4
    for level, cut in enumerate(candidates):
        if cut is None:
            continue
        further = any(other is not None and other > cut for other in candidates[level + 1 :])
        if not further or utf16_len(text[start:cut]) >= floor:
            run = _WS_RUN.match(text, cut)
            return cut, cut if run is None else run.end()
    cut = _hard_cut(text, start, lowest, end)
    return None if cut is None else (cut, cut)


def _hard_cut(text: str, start: int, lowest: int, end: int) -> int | None:
    """The last position in [lowest, end] that does not split a character sequence, if any."""
    for position in range(end, lowest - 1, -1):
        if _is_boundary(text, start, position):
            return position
    return None


def _is_boundary(text: str, start: int, position: int) -> bool:
    """Whether the text may be cut before text[position] without splitting what shows as one character.

    A simple rule in place of full grapheme clusters: not before a combining mark (category M*, which
    includes the variation selectors U+FE0E/U+FE0F and the keycap U+20E3), an emoji skin-tone modifier
    or a tag character (subdivision flags); not on either side of a zero-width joiner; not inside a
    pair of regional indicators (a flag), pairs counted from `start`, itself a boundary; not inside
    a surrogate pair or a CRLF.
    """
    before, after = text[position - 1], text[position]
    code = ord(after)
    if unicodedata.category(after).startswith("M") or _ZWJ in (before, after):
        return False
    if 0x1F3FB <= code <= 0x1F3FF or 0xE0020 <= code <= 0xE007F:
        return False
    if ("\ud800" <= before <= "\udbff" and "\udc00" <= after <= "\udfff") or (before, after) == ("\r", "\n"):
        return False
    if _is_regional_indicator(after) and _is_regional_indicator(before):
        count = 0
        index = position - 1
        while index >= start and _is_regional_indicator(text[index]):
            count += 1
            index -= 1
        return count % 2 == 0
    return True


def _is_regional_indicator(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"
