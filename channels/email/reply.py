"""The newly written part of a plain-text mail body: quoted history and signatures stripped.

Recognised (en, de, fr, es, hu, tr, plus the common pt / nl / it attribution lines):
- attribution lines, also wrapped over two lines: "On <date>, <name> wrote:", "Am ... schrieb ...:",
  "Le ... a écrit :", "El ... escribió:", "... ezt írta (időpont: ...):", "... tarihinde ... yazdı:";
- Outlook and forward separators ("-----Original Message-----" and its translations, "---------- Forwarded
  message ---------", "Begin forwarded message:") and Outlook header blocks ("From: ... Sent: ...",
  "Von: ... Gesendet:", "De : ... Envoyé :", "De: ... Enviado:", "Feladó: ... Elküldve:",
  "Kimden: ... Gönderildi:");
- lines quoted with ">" (removed wherever they are, so interleaved answers are kept);
- the "-- " signature separator and mobile signatures ("Sent from my iPhone", "Von meinem iPhone
  gesendet", "Envoyé de mon iPhone", "Enviado desde mi iPhone", "iPhone-ról küldve",
  "iPhone'umdan gönderildi", "Get Outlook for Android", ...).

Why hand-written: the PyPI libraries measured for this (mail-parser-reply 1.36, quotequail 0.5.4,
email-reply-parser 0.5.12, email-reply-extractor 1.1.1) cover neither Hungarian nor Turkish, and were
slower or wrong on our cases; see `bench/email_parse.py --reply` for the comparison.

The scan is line by line and stops at the first line that starts the history, so its cost follows the
length of the reply, not of the quoted thread behind it.
"""

# The typographic apostrophes (U+2019) below are what mail clients write, not typos.
# ruff: noqa: RUF001

from __future__ import annotations

import re
from typing import Final

# Lines longer than this are prose, not an attribution or header line.
_MAX_INTRO: Final = 400

_VERB: Final = r"(?:wrote|schrieb|a\s+écrit|escribió|escreveu|schreef|ha\s+scritto|írta|yazdı)"
# "On ... wrote:" and its translations: an opening word, then the verb near the end of the line.
_ATTRIBUTION_INTRO: Final = re.compile(
    rf"^(?:on|am|le|el|em|op|il)\s.*\b{_VERB}\b[^:]*:$|"
    # Hungarian and Turkish put the verb last and have no opening word (Gmail: "... ezt írta
    # (időpont: 2026. ápr. 7., K, 10:00):", Thunderbird: "... keltezéssel, Ada írta:").
    r"^.*\b(?:írta\s*(?:\([^()]*\))?|(?:tarihinde|şunu)\b.*\byazdı)\s*:$",
    re.IGNORECASE,
)
# "<name> wrote:" without an opening word: history only when it looks like an attribution.
_ATTRIBUTION_BARE: Final = re.compile(rf"^.{{1,300}}\b{_VERB}\s*(?:\([^()]*\))?\s*:$", re.IGNORECASE)
# Old Gmail: "2026-04-07 10:00 GMT+02:00 Ada Lovelace <ada@example.com>:".
_ATTRIBUTION_DATED: Final = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b.*<[^<>\s]+@[^<>\s]+>\s*:$")
_TIME_OR_ADDRESS: Final = re.compile(r"@|\d{1,2}[:.]\d{2}")
_DIGIT_OR_ADDRESS: Final = re.compile(r"@|\d")
_FORWARD_INTRO: Final = re.compile(
    r"^(?:begin forwarded message|anfang der weitergeleiteten (?:e-mail|nachricht)"
    r"|début du message réexpédié|inicio del mensaje reenviado|továbbított levél kezdete"
    r"|iletilen ileti başlangıcı)\s*:$",
    re.IGNORECASE,
)
_SEPARATOR: Final = re.compile(
    r"^-{2,}\s*(?:original message|ursprüngliche nachricht|message d['’]origine|mensaje original"
    r"|eredeti üzenet|orijinal (?:ileti|mesaj)|forwarded message|weitergeleitete nachricht"
    r"|message transféré|mensaje reenviado|továbbított üzenet|iletilen (?:ileti|mesaj))\s*-{2,}$",
    re.IGNORECASE,
)
_HEADER_FROM: Final = re.compile(r"^\*?(?:from|von|de|feladó|kimden|gönderen)\s?\*?\s?:", re.IGNORECASE)
_HEADER_NEXT: Final = re.compile(
    r"^\*?(?:sent|date|to|subject|cc|gesendet|datum|an|betreff|envoyé|à|objet|enviado(?: el)?|fecha"
    r"|para|asunto|elküldve|dátum|címzett|tárgy|gönderildi|gönderilme tarihi|tarih|kime|konu|bilgi)"
    r"\s?\*?\s?:",
    re.IGNORECASE,
)
_HEADER_FIRST_CHARS: Final = frozenset("*FfVvDdKkGg")
_DEVICE: Final = r"(?:iphone|ipad|android|samsung|galaxy|huawei|xiaomi|mobil|telefon|okostelefon)"
_MOBILE: Final = re.compile(
    r"^(?:"
    r"sent from my .{1,60}|sent from (?:mail for windows|outlook|yahoo mail|gmail|proton ?mail).{0,60}"
    r"|sent (?:via|with) .{0,40}" + _DEVICE + r".{0,30}|get outlook for (?:ios|android).{0,60}"
    r"|von meinem .{1,60} gesendet\.?|gesendet von meinem .{1,60}|gesendet mit der .{1,50} app\.?"
    r"|outlook für (?:ios|android) (?:beziehen|herunterladen).{0,40}"
    r"|envoyé (?:de|depuis) (?:mon|ma) .{1,60}|obtenir outlook pour (?:ios|android).{0,60}"
    r"|enviado desde mi .{1,60}|enviado desde (?:outlook|yahoo mail|correo).{0,60}"
    r"|obtener outlook para (?:ios|android).{0,60}"
    r"|(?:az? )?.{0,30}" + _DEVICE + r"\S*\s+küldve\.?|küldve (?:az? )?.{0,30}" + _DEVICE + r".{0,30}"
    r"|.{0,30}" + _DEVICE + r"\S*\s+gönderildi\.?|(?:ios|android) için outlook['’]u edinin.{0,40}"
    r")$",
    re.IGNORECASE,
)
_MAX_MOBILE: Final = 100
_RULE: Final = re.compile(r"^[-_=*~ ]{2,}$")
_BLANK_RUN: Final = re.compile(r"\n{3,}")


def _is_attribution(line: str, next_line: str) -> bool:
    if len(line) > _MAX_INTRO:
        return False
    if _FORWARD_INTRO.match(line):
        return True
    # "On the checkout page it wrote:" or "The technician wrote:" in prose is not history: a real
    # attribution names a date, a time or an address, or the quote itself follows.
    if _ATTRIBUTION_INTRO.match(line):
        return next_line.startswith(">") or _DIGIT_OR_ADDRESS.search(line) is not None
    if _ATTRIBUTION_BARE.match(line) or _ATTRIBUTION_DATED.match(line):
        return next_line.startswith(">") or _TIME_OR_ADDRESS.search(line) is not None
    return False


def _next_nonblank(lines: list[str], start: int, limit: int = 3) -> list[str]:
    found: list[str] = []
    for line in lines[start:]:
        s = line.strip()
        if s:
            found.append(s)
            if len(found) == limit:
                break
    return found


def reply_part(text: str) -> str:
    """The text the sender wrote in this message, without quoted history or signature; never empty if `text` is not."""
    original = text
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    kept: list[str] = []
    has_content = False  # a non-blank, unquoted line has been kept
    removed = False
    prev = ""  # the previous non-blank line, for attributions wrapped over two lines
    prev_index = -1  # its index in `kept`, or -1 when it was not kept
    prev_line = -2  # its index in `lines`
    for i, line in enumerate(lines):
        s = line.strip()
        if not s:
            kept.append("")
            continue
        first = s[0]
        if first == ">":
            removed = True
            continue
        if s[-1] == ":":
            after = _next_nonblank(lines, i + 1, 1)
            following = after[0] if after else ""
            hit = _is_attribution(s, following)
            # "... tarihinde Ada <ada@example.com>" / "şunu yazdı:": the line before may be the first half.
            wrapped = (
                prev_line == i - 1
                and (not hit or _DIGIT_OR_ADDRESS.search(s) is None)
                and _is_attribution(prev + " " + s, following)
            )
            hit = hit or wrapped
            if hit:
                removed = True
                if wrapped and prev_index >= 0:
                    del kept[prev_index:]
                    has_content = any(k.strip() for k in kept)
                if has_content or not following.startswith(">"):
                    break  # everything from here on is history
                # Attribution at the top with the quote below it: bottom-posting or interleaved answers.
                prev, prev_index, prev_line = "", -1, -2
                continue
        elif first in "-_":
            if s == "--" or _SEPARATOR.match(s):
                removed = True
                break
            if first == "_" and len(s) >= 20:
                after = _next_nonblank(lines, i + 1, 1)
                if after and _HEADER_FROM.match(after[0]):
                    removed = True
                    break
        elif first in _HEADER_FIRST_CHARS and ":" in s[:16] and _HEADER_FROM.match(s):
            # Two more header lines: "From: Berlin / To: Munich" in a booking question is not a block.
            nxt = _next_nonblank(lines, i + 1, 3)
            if sum(1 for n in nxt if _HEADER_NEXT.match(n)) >= 2:
                removed = True
                break
        prev, prev_index, prev_line = s, len(kept), i
        kept.append(line)
        has_content = True

    # A mobile signature sits just before the history (or at the very end).
    seen = 0
    for j in range(len(kept) - 1, -1, -1):
        s = kept[j].strip()
        if not s:
            continue
        if len(s) <= _MAX_MOBILE and _MOBILE.match(s):
            del kept[j:]
            removed = True
            break
        seen += 1
        if seen == 3:
            break
    if not removed:
        return original.strip()
    while kept and (not kept[-1].strip() or _RULE.match(kept[-1].strip())):
        kept.pop()
    result = _BLANK_RUN.sub("\n\n", "\n".join(kept)).strip()
    if not result:
        return original.strip()
    return result.replace("\n", "\r\n") if "\r\n" in original else result
