"""Telegram message text: UTF-16 length, splitting long replies at natural places, MarkdownV2 escaping."""

from __future__ import annotations

import base64
import itertools
import random
import re
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from telegram.helpers import escape_markdown

from channels.telegram.text import (
    CAPTION_LIMIT,
    TEXT_LIMIT,
    escape_markdown_v2,
    split_for_markdown_v2,
    split_markdown_v2,
    split_text,
    utf16_len,
)
from fakes.telegram import parse_markdown_v2

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # 11 UTF-16 units
FLAGS = ["\U0001f1fa\U0001f1e6", "\U0001f1e9\U0001f1ea", "\U0001f1eb\U0001f1f7", "\U0001f1ef\U0001f1f5"]
THUMBS_UP_MEDIUM = "\U0001f44d\U0001f3fd"
KEYCAP_ONE = "1\ufe0f\u20e3"
GRINNING = "\U0001f600"
RESERVED = "_*[]()~`>#+-=|{}.!\\"
NO_BREAK_SPACES = "\xa0\u2007\u202f"
WORDS = [
    *("support", "order", "parcel", "refund", "invoice", "customer", "delivery", "tracking", "number"),
    *("warehouse", "courier", "address", "payment", "receipt", "discount", "voucher", "return"),
    *("exchange", "replacement", "warranty", "battery", "charger", "screen"),
]


def _filler(length: int) -> str:
    """Words and single spaces, no sentence punctuation, exactly `length` characters, ending in a word."""
    words: list[str] = []
    size = -1
    index = 0
    while size < length:
        word = WORDS[index % len(WORDS)]
        words.append(word)
        size += len(word) + 1
        index += 1
    text = " ".join(words)[:length]
    return text[:-1] + "x" if text.endswith(" ") else text


def _is_cut_space(char: str) -> bool:
    return char.isspace() and char not in NO_BREAK_SPACES


def _assert_rejoins(text: str, parts: list[str]) -> None:
    """The parts are the text, in order, less only whitespace between them (the cut whitespace)."""
    position = 0
    for index, part in enumerate(parts):
        found = text.find(part, position)
        assert found >= 0, (index, part)
        gap = text[position:found]
        assert gap == "" or gap.isspace(), (index, gap)
        position = found + len(part)
    assert text[position:] == "" or text[position:].isspace()


def _assert_cut_whitespace_dropped(parts: list[str]) -> None:
    for index, part in enumerate(parts):
        if index > 0:
            assert not _is_cut_space(part[0]), (index, part)
        if index < len(parts) - 1:
            assert not _is_cut_space(part[-1]), (index, part)


def _english_text(length: int, seed: int = 7) -> str:
    """Sentences in paragraphs, exactly `length` characters, ending with a full stop."""
    rng = random.Random(seed)
    paragraphs: list[str] = []
    size = 0
    while size < length:
        sentences = []
        for _ in range(rng.randint(3, 7)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
            words[0] = words[0].capitalize()
            sentences.append(" ".join(words) + rng.choice(".!?"))
        paragraphs.append(" ".join(sentences))
        size += len(paragraphs[-1]) + 2
    text = "\n\n".join(paragraphs)[: length - 40]
    text = text[: text.rindex(" ")]
    tail = length - len(text) - 2
    return text + " " + "z" * tail + "."


def test_limits_are_telegrams() -> None:
    assert TEXT_LIMIT == 4096
    assert CAPTION_LIMIT == 1024


def test_utf16_len_counts_code_units() -> None:
    assert utf16_len("") == 0
    assert utf16_len("hello") == 5
    assert utf16_len("é") == 1
    assert utf16_len("e\u0301") == 2
    assert utf16_len("日本語") == 3
    assert utf16_len(GRINNING) == 2
    assert utf16_len(FAMILY) == 11
    assert utf16_len(FLAGS[0]) == 4
    assert utf16_len("\ud83d") == 1  # a lone surrogate, as str can hold one


def test_empty_and_whitespace_only_have_no_parts() -> None:
    assert split_text("") == []
    assert split_text(" \n\t \n") == []
    assert split_text(" " * 10_000) == []


def test_text_within_limit_is_unchanged() -> None:
    for text in ("hello", "  indented\n\nwith trailing spaces   ", "x" * 4096, GRINNING * 2048):
        assert split_text(text) == [text]
    assert split_text("x" * 1024, CAPTION_LIMIT) == ["x" * 1024]


def test_limit_must_hold_any_character() -> None:
    with pytest.raises(ValueError, match="limit"):
        split_text("some text", 1)


def test_long_english_text_splits_in_three_at_paragraphs() -> None:
    text = _english_text(10_000)
    assert len(text) == 10_000
    parts = split_text(text)
    assert len(parts) == 3
    assert all(utf16_len(part) <= 4096 for part in parts)
    # No word cut in half: the words, in order, are the original's.
    assert [word for part in parts for word in part.split()] == text.split()
    _assert_rejoins(text, parts)
    _assert_cut_whitespace_dropped(parts)
    # Every cut at a paragraph break: the parts are whole paragraphs.
    for part in parts:
        assert text.startswith(part) or f"\n\n{part}" in text
        assert part[-1] in ".!?"
    assert "\n\n".join(parts) == text


def test_paragraph_break_is_preferred_to_line_sentence_and_word() -> None:
    text = _filler(40) + "\n\n" + _filler(30) + "\n" + _filler(10) + ". " + _filler(200)
    assert split_text(text, 100)[0] == _filler(40)


def test_line_break_is_preferred_to_sentence_and_word() -> None:
    text = _filler(40) + "\n" + _filler(30) + ". " + _filler(200)
    assert split_text(text, 100)[0] == _filler(40)
    # Whitespace around the line break goes with it.
    text = _filler(40) + "  \n  " + _filler(200)
    assert split_text(text, 100)[:2] == [_filler(40), _filler(200)[: len(split_text(text, 100)[1])]]
    assert not split_text(text, 100)[1].startswith(" ")


def test_sentence_end_is_preferred_to_word() -> None:
    text = _filler(40) + ". " + _filler(200)
    assert split_text(text, 100)[0] == _filler(40) + "."
    for end in ("!", "?", "…", "?!", "...", '."', ".)", "!»", "?”", "。"):
        text = _filler(40) + end + " " + _filler(200)
        assert split_text(text, 100)[0] == _filler(40) + end, end


def test_not_a_sentence_end() -> None:
    # A full stop inside a token (a version, a domain) is no sentence end: the cut is at the last word.
    text = _filler(40) + " v1.2.3 example.com " + _filler(200)
    first = split_text(text, 100)[0]
    assert len(first) > 80
    assert first == text[: len(first)]
    assert text[len(first)] == " "


def test_cjk_sentence_end_needs_no_space() -> None:
    sentence = "这是一个很长的句子。"
    parts = split_text(sentence * 30, 25)
    assert parts == [sentence * 2] * 15
    quoted = "他说\uff1a「我们明天发货。」"
    parts = split_text(quoted * 10, 30)
    assert all(part.endswith("」") for part in parts)
    assert "".join(parts) == quoted * 10


def test_word_cut_when_nothing_better() -> None:
    text = _filler(500)
    parts = split_text(text, 100)
    assert all(len(part) <= 100 for part in parts)
    assert [word for part in parts for word in part.split()] == text.split()
    assert " ".join(parts) == text
    # Greedy: the next word would not have fitted.
    for part, following in itertools.pairwise(parts):
        assert len(part) + 1 + len(following.split()[0]) > 100


def test_single_long_token_is_hard_cut() -> None:
    token = base64.b64encode(bytes(range(256)) * 15).decode()[:5000]
    assert split_text(token) == [token[:4096], token[4096:]]
    # A word before it is cut off first; the token is then cut hard.
    text = "See " + token + " thanks"
    assert split_text(text) == ["See", token[:4096], token[4096:] + " thanks"]


def test_emoji_count_two_units() -> None:
    text = GRINNING * 5000
    parts = split_text(text)
    assert [len(part) for part in parts] == [2048, 2048, 904]
    assert all(utf16_len(part) <= 4096 for part in parts)
    assert "".join(parts) == text
    words = " ".join(GRINNING * (1 + i % 7) + "ok" for i in range(2000))
    parts = split_text(words)
    assert all(utf16_len(part) <= 4096 for part in parts)
    assert any(utf16_len(part) > 4000 and len(part) < 4000 for part in parts)
    assert [word for part in parts for word in part.split()] == words.split()


def test_zwj_sequence_is_not_split() -> None:
    text = FAMILY * 10
    parts = split_text(text, 30)
    assert parts == [FAMILY * 2] * 5
    text = "ab" + FAMILY * 10
    parts = split_text(text, 30)
    assert parts == ["ab" + FAMILY * 2] + [FAMILY * 2] * 4
    for part in parts:
        assert not part.startswith("\u200d")
        assert not part.endswith("\u200d")


def test_flags_are_not_split() -> None:
    text = "".join(FLAGS) * 5
    parts = split_text(text, 10)
    assert "".join(parts) == text
    for part in parts:
        assert utf16_len(part) == 8
        assert part in {a + b for a in FLAGS for b in FLAGS}
    # An odd start does not shift the pairs.
    text = "a" + "".join(FLAGS) * 2
    parts = split_text(text, 14)
    assert parts == [
        "a" + FLAGS[0] + FLAGS[1] + FLAGS[2],
        FLAGS[3] + FLAGS[0] + FLAGS[1],
        FLAGS[2] + FLAGS[3],
    ]


def test_modifiers_and_keycaps_stay_with_their_base() -> None:
    assert split_text(THUMBS_UP_MEDIUM * 10, 7) == [THUMBS_UP_MEDIUM] * 10
    assert split_text(KEYCAP_ONE * 10, 7) == [KEYCAP_ONE * 2] * 5
    text_style = "\u2764\ufe0e" * 9
    assert split_text(text_style, 5) == ["\u2764\ufe0e" * 2] * 4 + ["\u2764\ufe0e"]


def test_combining_marks_stay_with_their_base() -> None:
    accented = "e\u0301"
    parts = split_text(accented * 50, 7)
    assert parts == [accented * 3] * 16 + [accented * 2]
    stacked = "a\u0301\u0323\u0302"
    parts = split_text(stacked * 20, 10)
    assert parts == [stacked * 2] * 10
    for part in parts:
        assert unicodedata.category(part[0]) == "Ll"


def test_sequence_longer_than_limit_is_still_cut() -> None:
    # The limit is Telegram's: an 11-unit family cannot go whole in 8 units.
    parts = split_text(FAMILY * 3, 8)
    assert all(0 < utf16_len(part) <= 8 for part in parts)
    assert "".join(parts) == FAMILY * 3


def test_tiny_paragraph_is_not_preferred_to_a_fuller_part() -> None:
    limit = 100
    text = "Hi there.\n\n" + _filler(300)
    first = split_text(text, limit)[0]
    assert first.startswith("Hi there.\n\n")
    assert len(first) > 90
    # The same for a tiny line and a tiny sentence.
    assert len(split_text("Hi there.\n" + _filler(300), limit)[0]) > 90
    assert len(split_text("Hi. " + _filler(300), limit)[0]) > 90
    # A paragraph break leaving limit // 4 or more is preferred.
    text = _filler(25) + "\n\n" + _filler(300)
    assert split_text(text, limit)[0] == _filler(25)
    text = _filler(24) + "\n\n" + _filler(300)
    assert len(split_text(text, limit)[0]) > 90
    # With nothing further on but a hard cut, the tiny paragraph is the part.
    text = "Hi.\n\n" + "x" * 200
    assert split_text(text, limit) == ["Hi.", "x" * 100, "x" * 100]


def test_leading_and_trailing_whitespace_of_the_text_are_kept() -> None:
    text = "  " + _filler(150) + "  "
    parts = split_text(text, 100)
    assert parts[0].startswith("  ")
    assert parts[-1].endswith("  ")
    _assert_rejoins(text, parts)
    # Leading whitespace that would fill the whole first part is dropped.
    assert split_text(" " * 300 + "hello world", 100) == ["hello world"]
    assert split_text("\xa0 " + "y" * 150, 100) == ["\xa0 " + "y" * 98, "y" * 52]
    assert split_text("\xa0" * 300, 100) == []
    # ... and so is leading whitespace that would have a sequence cut to fit with it.
    assert split_text(" " + FAMILY * 2, 11) == [FAMILY, FAMILY]


def test_no_break_space_is_not_a_cut() -> None:
    text = "a " + "b\xa0" * 60 + "c"
    parts = split_text(text, 100)
    assert parts[0] == "a"
    assert all("\xa0" in part for part in parts[1:])


def test_crlf_and_unicode_separators() -> None:
    text = _filler(40) + "\r\n" + _filler(40) + ". " + _filler(100)
    assert split_text(text, 100)[0] == _filler(40)
    text = _filler(30) + "\r\n\r\n" + _filler(40) + "\r\n" + _filler(100)
    assert split_text(text, 100)[0] == _filler(30)
    text = _filler(30) + "\u2029" + _filler(40) + "\u2028" + _filler(100)
    assert split_text(text, 100)[0] == _filler(30)


def test_a_megabyte_splits_into_full_parts() -> None:
    # How fast is measured by bench/telegram.py; here only that big input comes out right.
    text = _english_text(1_000_000, seed=3)
    parts = split_text(text)
    assert all(utf16_len(part) <= 4096 for part in parts)
    assert len(parts) < 1_000_000 / 3000
    assert " ".join(parts).split() == text.split()
    parts = split_text("y" * 1_000_000)
    assert len(parts) == 245 and "".join(parts) == "y" * 1_000_000


_PIECES = st.sampled_from(
    [
        "word",
        "a",
        "longerword",
        " ",
        "  ",
        "\t",
        "\n",
        "\n\n",
        " \n \n ",
        "\r\n",
        ". ",
        "!",
        '." ',
        "。",
        "」",
        GRINNING,
        FAMILY,
        THUMBS_UP_MEDIUM,
        KEYCAP_ONE,
        "e\u0301",
        "\u0301",
        "\u200d",
        *FLAGS,
        FLAGS[0][0],
        "\xa0",
        "x" * 40,
    ]
)
_TEXTS = st.one_of(st.lists(_PIECES, max_size=120).map("".join), st.text(max_size=400))


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXTS, limit=st.integers(min_value=8, max_value=200))
def test_split_properties(text: str, limit: int) -> None:
    parts = split_text(text, limit)
    assert all(0 < utf16_len(part) <= limit for part in parts)
    assert all(part.strip() for part in parts)
    assert "".join("".join(part.split()) for part in parts) == "".join(text.split())
    _assert_rejoins(text, parts)
    _assert_cut_whitespace_dropped(parts)
    if utf16_len(text) <= limit and text.strip():
        assert parts == [text]


def test_escape_markdown_v2_escapes_every_reserved_character() -> None:
    for char in RESERVED:
        assert escape_markdown_v2(char) == "\\" + char
    assert escape_markdown_v2("plain words, 123") == "plain words, 123"
    text = "Order #1001 (paid): 2*3 = 6! see [docs](https://x.example/a_b) ~ok~ `code` > quote | {x} - done."
    assert escape_markdown_v2(text) == escape_markdown(text, version=2)
    assert escape_markdown_v2(RESERVED) == "".join("\\" + char for char in RESERVED)


_ESCAPED = re.compile(r"(?:[^\\_*\[\]()~`>#+\-=|{}.!]|\\[\\_*\[\]()~`>#+\-=|{}.!])*", re.DOTALL)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


def test_split_for_markdown_v2_parts_are_escaped_and_within_the_parsed_limit() -> None:
    text = " ".join(f"Item #{i} (x{i}): 1.99! [sale] *now* - v2_beta {{ok}} {GRINNING}." for i in range(400))
    limit = 1024
    parts = split_for_markdown_v2(text, limit)
    plain = split_text(text, limit)
    assert len(parts) == len(plain) > 1
    for escaped, original in zip(parts, plain, strict=True):
        assert _ESCAPED.fullmatch(escaped), escaped
        parsed = _UNESCAPE.sub(r"\1", escaped)
        assert parsed == original
        assert utf16_len(parsed) <= limit
        assert escaped == escape_markdown(original, version=2)
    # The escapes make the sent text longer than the limit; Telegram counts it after parsing.
    assert any(utf16_len(escaped) > limit for escaped in parts)
    assert split_for_markdown_v2("") == []
    assert split_for_markdown_v2("a.b") == ["a\\.b"]


# ------------------------------------------------------------------------------------------------
# split_markdown_v2: MarkdownV2 already formatted, cut only between blocks outside entities


def _markdown_paragraph(length: int, seed: int = 3) -> str:
    """A MarkdownV2 paragraph of about `length` characters: escaped text, bold, italic, code, links."""
    rng = random.Random(seed)
    pieces = [
        lambda w: w,
        lambda w: f"*{w}*",
        lambda w: f"_{w}_",
        lambda w: f"`{w}`",
        lambda w: f"[{w}](https://shop.example/{w})",
        lambda w: escape_markdown_v2(f"{w}."),
    ]
    words: list[str] = []
    size = 0
    while size < length:
        words.append(rng.choice(pieces)(rng.choice(WORDS)))
        size += len(words[-1]) + 1
    return " ".join(words)


def _assert_markdown_rejoins(source: str, parts: list[str]) -> list[str]:
    """The parts are the source in order, cut only at runs of line breaks, which are all that is dropped."""
    position = 0
    gaps: list[str] = []
    for index, part in enumerate(parts):
        found = source.find(part, position)
        assert found >= 0, (index, part)
        gap = source[position:found]
        if index > 0:
            assert gap and set(gap) == {"\n"}, (index, gap)
            gaps.append(gap)
        else:
            assert gap == "", gap
        position = found + len(part)
    assert source[position:] == "" or source[position:].isspace()
    return gaps


def _assert_parts_parse(parts: list[str], limit: int) -> None:
    for part in parts:
        assert utf16_len(part) <= limit, utf16_len(part)
        parse_markdown_v2(part)  # raises EntityError when Telegram would refuse it


def test_split_markdown_v2_short_source_is_one_part() -> None:
    source = _markdown_paragraph(300) + "\n\n" + _markdown_paragraph(300, seed=4)
    assert split_markdown_v2(source) == [source]
    assert split_markdown_v2("*exactly at the limit*", limit=22) == ["*exactly at the limit*"]
    assert split_markdown_v2("") == []
    assert split_markdown_v2(" \n\n ") == []
    # Within the limit the source is not checked: Telegram says whether it parses.
    assert split_markdown_v2("*not closed") == ["*not closed"]


def test_split_markdown_v2_long_source_splits_at_paragraphs() -> None:
    paragraphs = [_markdown_paragraph(700, seed=n) for n in range(20)]
    source = "\n\n".join(paragraphs)
    parse_markdown_v2(source)
    parts = split_markdown_v2(source)
    assert parts is not None and len(parts) >= 4
    _assert_parts_parse(parts, TEXT_LIMIT)
    assert "\n\n".join(parts) == source
    assert _assert_markdown_rejoins(source, parts) == ["\n\n"] * (len(parts) - 1)
    # Greedy: each part is as full as whole paragraphs allow.
    for part, after in itertools.pairwise(parts):
        assert utf16_len(part) + 2 + utf16_len(after.split("\n\n")[0]) > TEXT_LIMIT
    # Paragraphs stay whole.
    assert [p for part in parts for p in part.split("\n\n")] == paragraphs


def test_split_markdown_v2_cuts_at_a_line_when_no_paragraph_fits() -> None:
    lines = [_markdown_paragraph(60, seed=n) for n in range(10)]
    source = "\n".join(lines) + "\n\n" + _markdown_paragraph(60, seed=99)
    parts = split_markdown_v2(source, limit=250)
    assert parts is not None and len(parts) > 1
    _assert_parts_parse(parts, 250)
    gaps = _assert_markdown_rejoins(source, parts)
    assert "\n" in gaps
    assert [line for part in parts for line in part.split("\n") if line] == [
        line for line in source.split("\n") if line
    ]


def test_split_markdown_v2_prefers_a_paragraph_break_unless_it_leaves_a_short_part() -> None:
    first = "\n".join(["line " + "a" * 40] * 3)  # 136 characters
    second = "\n".join(["line " + "b" * 40] * 3)
    parts = split_markdown_v2(first + "\n\n" + second, limit=200)
    assert parts == [first, second]
    # A 10-character paragraph before a 200-line block: the first part is filled up to a line instead.
    short = "tiny para"
    source = short + "\n\n" + "\n".join(f"line {n} " + "c" * 30 for n in range(12))
    parts = split_markdown_v2(source, limit=200)
    assert parts is not None and parts[0].startswith(short + "\n\nline 0") and utf16_len(parts[0]) > 150
    _assert_markdown_rejoins(source, parts)


def test_split_markdown_v2_never_cuts_inside_a_fenced_code_block() -> None:
    before = _markdown_paragraph(30)
    code = "```python\nfirst = 1\n\nsecond = 2\n\n\nthird = [x * 2 for x in range(3)]\n```"
    after = _markdown_paragraph(30, seed=5)
    assert max(len(before), len(after)) < len(code)
    source = "\n\n".join([before, code, after])
    for limit in range(len(code), len(source)):
        parts = split_markdown_v2(source, limit=limit)
        assert parts is not None, limit
        assert any(code in part for part in parts), (limit, parts)
        _assert_parts_parse(parts, limit)
        _assert_markdown_rejoins(source, parts)
    # Smaller than the code block: it cannot be sent whole.
    assert split_markdown_v2(source, limit=len(code) - 1) is None


def test_split_markdown_v2_never_cuts_inside_an_entity_spanning_lines() -> None:
    bold = "*bold from here\n\nacross a blank line\nand a line*"
    link = "[link text\n\nover two paragraphs](https://shop.example/a_b)"
    code = "`inline code\n\nwith a *star* and _underscore_`"
    for entity in (bold, link, code):
        source = "\n\n".join(["a" * 50, entity, "b" * 50, "c" * 50])
        parts = split_markdown_v2(source, limit=len(entity) + 10)
        assert parts is not None
        assert entity in parts, (entity, parts)
        _assert_parts_parse(parts, len(entity) + 10)
        _assert_markdown_rejoins(source, parts)


def test_split_markdown_v2_escaped_markers_are_not_entities() -> None:
    # \* \_ \` \[ are plain characters: nothing is open at the blank lines.
    source = "\n\n".join(["price \\*\\_\\`\\[ " + "a" * 40, "b" * 50, "end \\] " + "c" * 40])
    assert split_markdown_v2(source, limit=60) == source.split("\n\n")
    # An escaped backslash does not escape the star after it: that star opens bold.
    source = "x \\\\*bold\n\nstill bold* " + "d" * 30 + "\n\n" + "e" * 30
    parts = split_markdown_v2(source, limit=60)
    assert parts == ["x \\\\*bold\n\nstill bold* " + "d" * 30, "e" * 30]
    # An escaped line break is text, not a place to cut.
    assert split_markdown_v2("f" * 30 + "\\\n" + "g" * 30, limit=40) is None
    # In code only ` and \ matter: a \` inside does not end it.
    source = "`code \\` and * _\n\nstill code`\n\n" + "h" * 30
    assert split_markdown_v2(source, limit=40) == ["`code \\` and * _\n\nstill code`", "h" * 30]


def test_split_markdown_v2_unsplittable_is_none() -> None:
    long_paragraph = _markdown_paragraph(5000)
    assert "\n" not in long_paragraph
    assert split_markdown_v2(long_paragraph) is None
    assert split_markdown_v2("intro\n\n" + long_paragraph + "\n\noutro") is None
    # An entity never closed, in source that must be split.
    assert split_markdown_v2("\n\n".join(["a" * 30, "*b" + "b" * 30, "c" * 30]), limit=40) is None
    assert split_markdown_v2("\n\n".join(["a" * 30, "[link](https://x.example" + "c" * 30]), limit=40) is None
    with pytest.raises(ValueError):
        split_markdown_v2("ab", limit=1)


def test_split_markdown_v2_counts_utf16_units() -> None:
    block = GRINNING * 20  # 40 units, 20 characters
    source = "\n\n".join([block] * 3)
    assert split_markdown_v2(source, limit=84) == [block + "\n\n" + block, block]
    assert split_markdown_v2(source, limit=81) == [block] * 3


_MARKDOWN_PIECES = st.sampled_from(
    [
        "word",
        "two words",
        "*bold*",
        "*bold\nover lines*",
        "_italic_",
        "__under__",
        "~strike~",
        "||spoiler||",
        "`code * _`",
        "`code\n\nblank`",
        "```\nA\n\nB\n```",
        "```py\nx = 1\n```",
        "[link](https://shop.example/a_\\)b)",
        "[link\n\ntext](https://shop.example/)",
        "\\*not bold\\*",
        "a \\\\ b",
        "1\\. item",
        f"{GRINNING} emoji",
        "*bold _italic_ and `code`*",
    ]
)
_SEPARATORS = st.sampled_from([" ", "\n", "\n\n", "\n\n\n"])


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.tuples(_MARKDOWN_PIECES, _SEPARATORS), min_size=1, max_size=60),
    limit=st.integers(min_value=20, max_value=300),
)
def test_split_markdown_v2_properties(pieces: list[tuple[str, str]], limit: int) -> None:
    source = "".join(piece + separator for piece, separator in pieces).rstrip("\n ")
    shown, _ = parse_markdown_v2(source)
    parts = split_markdown_v2(source, limit)
    if parts is None:
        assert utf16_len(source) > limit
        return
    _assert_parts_parse(parts, limit)
    _assert_markdown_rejoins(source, parts)
    # What the recipient sees, all of it, once.
    seen = "".join(parse_markdown_v2(part)[0] for part in parts)
    assert "".join(seen.split()) == "".join(shown.split())
