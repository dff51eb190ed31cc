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

MarkdownV2 that is already formatted (a rendered template) is split by `split_markdown_v2`, which cuts
only between blocks (at blank lines, else at line breaks) where no entity is open, so that each part
parses on its own, and says when it cannot.
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
_NON_SPACE: Final = re.compile(r"\S")


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


def split_markdown_v2(source: str, limit: int = TEXT_LIMIT) -> list[str] | None:
    """MarkdownV2 source -> parts of at most `limit` UTF-16 units of source each; None if not splittable.

    The source is measured as it is, markers and escapes included: more than Telegram counts after
    parsing, so a part is never too long for Telegram. Source within the limit is its own only part,
    unchanged and not checked (Telegram says whether it parses); empty or whitespace-only source has no
    parts. Longer source is cut only at a run of line breaks outside every entity (``*bold*``,
    ``_italic_``, ``__underline__``, ``~strike~``, ``||spoiler||``, inline code and fenced pre blocks
    between one and three backticks, ``[text](url)``, ``![emoji](url)``), read as Telegram reads them:
    a backslash escapes the next character (a line break too), and inside code and pre only a backtick
    ends the entity. A paragraph break (two or
    more line breaks) is preferred to a line break unless it leaves the part shorter than
    ``limit // 4`` while a later line break fits, as in `split_text`. The line breaks at a cut are
    dropped and nothing else: joined with them, the parts are the source again (less a whitespace-only
    tail, which Telegram would trim). Each part starts with no entity open, so parses as it would have
    inside the whole source (a ``>`` quote cut between its lines becomes two quotes).

    None when a cut is needed but impossible: a block (paragraph, code block, entity spanning lines)
    longer than the limit by itself, or an entity never closed (its part would be refused).
    """
    if limit < 2:
        raise ValueError(f"limit must be at least 2 UTF-16 units (one character of any kind), not {limit}")
    if not source or source.isspace():
        return []
    if utf16_len(source) <= limit:
        return [source]
    runs = _markdown_v2_breaks(source)
    if runs is None:
        return None
    # UTF-16 offset of each run's start and end, so that a part's length is a subtraction.
    units: dict[int, int] = {0: 0}
    position = 0
    for cut, resume in runs:
        units[cut] = units[position] + utf16_len(source[position:cut])
        units[resume] = units[cut] + (resume - cut)  # line breaks are one unit each
        position = resume
    total = units[position] + utf16_len(source[position:])
    floor = limit // 4
    size = len(source)
    parts: list[str] = []
    start = 0
    first = 0  # the first run that may end the current part
    while total - units[start] > limit:
        paragraph: tuple[int, int] | None = None
        line: tuple[int, int] | None = None
        shown = _NON_SPACE.search(source, start)
        content = size if shown is None else shown.start()
        index = first
        while index < len(runs) and units[runs[index][0]] - units[start] <= limit:
            cut, resume = runs[index]
            index += 1
            if cut <= content:
                continue  # a part must have something to show
            line = (cut, resume)
            if resume - cut >= 2:
                paragraph = line
        if line is None:
            return None
        chosen = line
        if paragraph is not None and (paragraph == line or units[paragraph[0]] - units[start] >= floor):
            chosen = paragraph
        parts.append(source[start : chosen[0]])
        start = chosen[1]
        while first < len(runs) and runs[first][0] < start:
            first += 1
    if not source[start:].isspace():
        parts.append(source[start:])
    return parts


def _markdown_v2_breaks(source: str) -> list[tuple[int, int]] | None:
    """The runs of line breaks, as (start, end), outside every entity; None if an entity is not closed.

    Reads entities as Telegram's parser does (a stack: a marker closes the innermost entity when it is
    that entity's closing marker, else opens a new one). Reserved characters that are not markers are
    not checked: Telegram refuses them, splitting does not change that.
    """
    runs: list[tuple[int, int]] = []
    stack: list[str] = []
    size = len(source)
    i = 0
    while i < size:
        char = source[i]
        if char == "\\" and i + 1 < size and 0 < ord(source[i + 1]) <= 126:
            i += 2
            continue
        top = stack[-1] if stack else None
        if top in ("code", "pre"):
            if top == "pre" and source.startswith("```", i):
                stack.pop()
                i += 3
            else:
                if top == "code" and char == "`":
                    stack.pop()
                i += 1
            continue
        if char == "\n":
            end = i + 1
            while end < size and source[end] == "\n":
                end += 1
            if not stack:
                runs.append((i, end))
            i = end
            continue
        pair = source[i : i + 2]
        if top == "link" and char == "]":
            stack.pop()
            i += 1
            if source.startswith("(", i):
                # The URL runs to the first unescaped ")".
                i += 1
                while i < size and source[i] != ")":
                    i += 2 if source[i] == "\\" and i + 1 < size and 0 < ord(source[i + 1]) <= 126 else 1
                if i >= size:
                    return None
                i += 1
            continue
        if char == "`":
            stack.append("pre" if source.startswith("```", i) else "code")
            i += 3 if stack[-1] == "pre" else 1
        elif pair == "__":
            _toggle(stack, "underline")
            i += 2
        elif char == "_":
            _toggle(stack, "italic")
            i += 1
        elif pair == "||":
            _toggle(stack, "spoiler")
            i += 2
        elif char in "*~":
            _toggle(stack, "bold" if char == "*" else "strike")
            i += 1
        elif char == "[" or pair == "![":
            stack.append("link")
            i += 1 if char == "[" else 2
        else:
            i += 1
    return None if stack else runs


def _toggle(stack: list[str], kind: str) -> None:
    """A marker closes the innermost entity if it is of its kind, else opens one."""
    if stack and stack[-1] == kind:
        stack.pop()
    else:
        stack.append(kind)


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
