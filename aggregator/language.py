"""The language an inbound customer message is written in: lingua on the text, then the caller's hints.

`LanguageDetector.detect(text, hints)` decides in three steps:

1. The text, with URLs, e-mail addresses, tokens holding digits (order numbers, dates, prices) and emoji
   stripped and cut to its first `MAX_CHARS` characters: when at least `min_words` words are left and
   lingua's top confidence is at least `min_confidence`, that language (source "text").
2. Else the first hint whose `base_language` is one of the configured languages (source "hint", confidence
   1.0). Callers pass, in this order, the channel's hint (Telegram `language_code`, the language of a
   marketplace's country, an e-mail's Content-Language) and then the contact's previous language.
3. Else lingua's best guess when it is at least `SHORT_CONFIDENCE` sure even though the text is short
   (source "text"), otherwise `Detection(None, 0.0, "none")`.

lingua is restricted to the configured languages (`LanguageDetectorBuilder.from_iso_codes_639_1`), which
keeps it fast, keeps its memory small, and means it never answers a language the inbox does not handle.

Accuracy mode: the detector is built with lingua's low-accuracy mode (trigram models only) by default.
Measured with `python -m bench.language` (and `--high-accuracy`) on tests/data/language_samples.jsonl for
the 12 `REQUIRED` languages: on messages of 20 or more words both modes get 100% of every language right;
the low-accuracy mode adds 22 MiB of RSS instead of 344 MiB, loads its models in 0.13 s instead of 2 s
and detects about 6,300 messages/s instead of 3,300 on one thread. lingua documents that it loses accuracy
on texts shorter than about 120 characters; on the sample's messages under 20 words (no hints) it answered
92.5% right and 3 of 160 wrong, against 88.1% and none for the high-accuracy mode. Short texts mostly fall
to the hints of step 2 anyway. Pass `low_accuracy=False` for lingua's high-accuracy mode (all its n-gram
models) where memory does not matter.

Thread safety: lingua's `LanguageDetector` may be shared by any number of threads (its models sit behind
thread-safe, process-wide caches, loaded once however many detectors are built), and `LanguageDetector`
here holds nothing mutable besides it, so one instance can serve every channel and `detect_async` can run
concurrently in the default thread pool.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lingua import ConfidenceValue, IsoCode639_1, IsoCode639_3, Language, LanguageDetectorBuilder

# ISO 639-1 codes of the languages our customers write in.
REQUIRED: tuple[str, ...] = ("en", "de", "fr", "es", "it", "hu", "tr", "pl", "nl", "pt", "cs", "te")

# Characters of the (cleaned) text that lingua looks at: enough for any language, and detection time
# grows with the length of the text.
MAX_CHARS = 300
# A best guess this confident is taken even for a text shorter than `min_words`, when no hint helps.
SHORT_CONFIDENCE = 0.9

# Subtags that are no language: undetermined, multiple, uncoded, no linguistic content.
_NOT_LANGUAGES = frozenset({"und", "mul", "mis", "zxx"})
# Withdrawn ISO 639-1 codes that old clients still send.
_DEPRECATED = {"iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro"}
_SUBTAG = re.compile(r"[-_.@\s]")

_URL = re.compile(r"(?:\b[a-z][a-z0-9+.-]*://|\bwww\.)\S+", re.IGNORECASE)
_EMAIL = re.compile(r"\S+@\S+\.\S+")
# Bare domains and paths ("shop.example.com/orders"): a dotted name ending in a top-level domain.
_DOMAIN = re.compile(
    r"\b[\w-]+(?:\.[\w-]+)*\.(?:com|net|org|info|biz|io|app|shop|store|eu|de|at|ch|fr|be|es|it|hu|tr|pl|nl"
    r"|pt|br|cz|sk|in|uk|co|us)\b(?:/\S*)?",
    re.IGNORECASE,
)
# Any token holding a digit: order and tracking numbers, dates, times, prices, phone numbers.
_DIGITS = re.compile(r"\S*\d\S*")
# Emoji and other pictographs, their modifiers, joiners and variation selectors, and regional indicators.
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\U0001f1e6-\U0001f1ff\u2600-\u27bf\u2b00-\u2bff\u2300-\u23ff"
    "\ufe0e\ufe0f\u200d\u20e3\U000e0020-\U000e007f]"
)
_SPACES = re.compile(r"\s+")
_LETTER = re.compile(r"[^\W\d_]")


@dataclass(frozen=True, slots=True)
class Detection:
    """The language of one message and where it came from."""

    language: str | None  # ISO 639-1 code, or None when nothing is known
    confidence: float  # 0..1 from the detector; 1.0 for a hint; 0.0 for none
    source: Literal["text", "hint", "none"]
    # Long enough and sure enough to change a conversation's language (not a short text's best guess).
    strong: bool = False


NO_DETECTION = Detection(None, 0.0, "none")


def base_language(tag: str | None) -> str | None:
    """The language of a language tag or locale, lower case: "de-AT", "de_AT", "DE", "de_AT.UTF-8" -> "de".

    None for None, "" and tags that name no language ("und", "mul", "zxx", "*", private use "x-...",
    "C"/"POSIX" locales). A list as in Content-Language ("de, en") gives its first entry. Three-letter
    ISO 639-2/3 codes become their ISO 639-1 code where lingua knows one ("deu" -> "de") and stay as
    they are otherwise; withdrawn codes become their replacements ("iw" -> "he").
    """
    if not tag:
        return None
    first = tag.split(",", 1)[0].strip()
    primary = _SUBTAG.split(first, 1)[0].lower()
    if not primary.isascii() or not primary.isalpha() or len(primary) not in (2, 3):
        return None
    if primary in _NOT_LANGUAGES:
        return None
    if len(primary) == 3:
        try:
            return Language.from_iso_code_639_3(IsoCode639_3.from_str(primary)).iso_code_639_1.name.lower()
        except ValueError:
            return primary
    return _DEPRECATED.get(primary, primary)


def clean_text(text: str) -> str:
    """What the detector looks at: `text` without URLs, e-mail addresses, tokens holding digits and
    emoji, whitespace collapsed, at most `MAX_CHARS` characters (cut between words)."""
    # The regexes are linear, but there is no point in running them over a pasted log file.
    text = text[: 4 * MAX_CHARS]
    for pattern in (_URL, _EMAIL, _DOMAIN, _DIGITS, _EMOJI):
        text = pattern.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    if len(text) > MAX_CHARS:
        cut = text[:MAX_CHARS]
        text = cut.rsplit(" ", 1)[0] if " " in cut else cut
    return text


def count_words(cleaned: str) -> int:
    """Words of a cleaned text: whitespace-separated tokens holding at least one letter."""
    return sum(1 for token in cleaned.split() if _LETTER.search(token))


def _supported_codes() -> list[str]:
    return sorted(language.iso_code_639_1.name.lower() for language in Language.all())


class LanguageDetector:
    """Detects the language of customer messages among `languages` (ISO 639-1 codes)."""

    def __init__(
        self,
        languages: Iterable[str] = REQUIRED,
        *,
        min_confidence: float = 0.6,
        min_words: int = 4,
        low_accuracy: bool = True,
    ) -> None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be between 0 and 1, not {min_confidence!r}")
        if min_words < 0:
            raise ValueError(f"min_words must not be negative, not {min_words!r}")
        codes = self.check_codes(languages)
        self.languages: tuple[str, ...] = tuple(codes)
        self.min_confidence = min_confidence
        self.min_words = min_words
        self.low_accuracy = low_accuracy
        builder = LanguageDetectorBuilder.from_iso_codes_639_1(*(IsoCode639_1.from_str(c) for c in codes))
        if low_accuracy:
            builder = builder.with_low_accuracy_mode()
        self._detector = builder.build()
        self._codes: dict[Language, str] = {
            Language.from_iso_code_639_1(IsoCode639_1.from_str(c)): c for c in codes
        }
        self._known = frozenset(codes)

    @staticmethod
    def check_codes(languages: Iterable[str]) -> list[str]:
        """The ISO 639-1 codes of `languages`, each once; ValueError naming any lingua does not know."""
        supported = set(_supported_codes())
        codes: list[str] = []
        unknown: list[str] = []
        for given in languages:
            code = base_language(given)
            if code is None or code not in supported:
                unknown.append(given)
            elif code not in codes:
                codes.append(code)
        if unknown:
            raise ValueError(
                f"unknown language codes: {', '.join(repr(u) for u in unknown)}; lingua supports the "
                f"ISO 639-1 codes {', '.join(_supported_codes())}"
            )
        if len(codes) < 2:
            raise ValueError(f"language detection needs at least two languages, got {codes!r}")
        return codes

    def __repr__(self) -> str:
        mode = "low" if self.low_accuracy else "high"
        return f"LanguageDetector({list(self.languages)!r}, {mode} accuracy)"

    def best_guess(self, text: str) -> tuple[str | None, float, int]:
        """(lingua's top language or None, its confidence, words) for the cleaned `text`."""
        cleaned = clean_text(text)
        words = count_words(cleaned)
        if words == 0:
            return None, 0.0, 0
        values: list[ConfidenceValue] = self._detector.compute_language_confidence_values(cleaned)
        if not values or values[0].value <= 0.0:
            return None, 0.0, words
        top = values[0]
        return self._codes.get(top.language), float(top.value), words

    def detect(self, text: str, hints: Sequence[str | None] = ()) -> Detection:
        """The language of `text`, else of the first usable hint (channel's first, then the contact's)."""
        language, confidence, words = self.best_guess(text)
        if language is not None and words >= self.min_words and confidence >= self.min_confidence:
            return Detection(language, confidence, "text", strong=True)
        for hint in hints:
            code = base_language(hint)
            if code is not None and code in self._known:
                return Detection(code, 1.0, "hint")
        if language is not None and confidence >= SHORT_CONFIDENCE:
            return Detection(language, confidence, "text")
        return NO_DETECTION

    async def detect_async(self, text: str, hints: Sequence[str | None] = ()) -> Detection:
        """`detect` in a worker thread, so that a long text does not hold up the event loop."""
        return await asyncio.to_thread(self.detect, text, hints)


class Detectors:
    """One detector per set of languages, built when first needed (workspaces usually share a set)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._built: dict[tuple[str, ...], LanguageDetector] = {}

    def get(self, languages: Iterable[str]) -> LanguageDetector:
        key = tuple(sorted(set(languages)))
        detector = self._built.get(key)
        if detector is None:
            detector = self._built[key] = LanguageDetector(key, **self._options)
        return detector
