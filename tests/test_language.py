"""Language detection of inbound messages (aggregator/language.py): accuracy on the hand-written sample
tests/data/language_samples.jsonl, the fallback to hints, base_language, restriction and validation."""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from aggregator.language import (
    MAX_CHARS,
    REQUIRED,
    SHORT_CONFIDENCE,
    Detection,
    LanguageDetector,
    base_language,
    clean_text,
    count_words,
)
from bench.language import LONG_WORDS, Sample, accuracy, accuracy_table, load_samples

pytestmark = pytest.mark.timeout(60)

GERMAN = (
    "Hallo, meine Bestellung ist seit zwei Wochen unterwegs und die Sendungsverfolgung zeigt nichts Neues an. "
    "Können Sie bitte beim Versanddienstleister nachfragen, wo das Paket gerade ist?"
)


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    return LanguageDetector()


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return load_samples()


def test_sample_is_big_and_mixed_enough(samples: list[Sample]) -> None:
    assert {s.language for s in samples} == set(REQUIRED)
    assert len({s.text for s in samples}) == len(samples), "duplicate texts"
    for lang in REQUIRED:
        words = [s.words for s in samples if s.language == lang]
        assert len(words) >= 25, lang
        assert sum(n >= LONG_WORDS for n in words) >= 15, lang
        assert sum(2 <= n <= 8 for n in words) >= 8, lang
        assert sum(10 <= n <= 25 for n in words) >= 8, lang
        assert sum(30 <= n <= 80 for n in words) >= 8, lang


def test_accuracy_on_long_messages(
    detector: LanguageDetector, samples: list[Sample], capsys: pytest.CaptureFixture[str]
) -> None:
    rows = accuracy(detector, samples)
    table = accuracy_table(rows)
    with capsys.disabled():
        print(f"\nlanguage detection on {len(samples)} sample messages ({detector!r}):\n{table}")
    assert [r.language for r in rows] == list(REQUIRED)
    poor = [r.language for r in rows if r.long_accuracy < 0.95]
    assert not poor, f"below 95% on {LONG_WORDS}+ word messages: {poor}\n{table}"


def test_short_text_falls_back_to_hints(detector: LanguageDetector) -> None:
    assert detector.detect("ok thanks", ("de-AT",)) == Detection("de", 1.0, "hint")
    assert detector.detect("ok thanks", (None, "de_AT", "fr")) == Detection("de", 1.0, "hint")
    # The channel's hint comes before the contact's previous language.
    assert detector.detect("Danke!", ("fr", "de")).language == "fr"


def test_short_text_without_hints(detector: LanguageDetector) -> None:
    for text in ("ok thanks", "Danke!", "ok", "👍", "#12345", ""):
        found = detector.detect(text)
        if found.source == "none":
            assert found == Detection(None, 0.0, "none")
        else:
            assert found.source == "text" and found.confidence >= SHORT_CONFIDENCE, (text, found)
    assert detector.detect("https://example.com/orders/4412 #4412 12.03.2025 🙏") == Detection(
        None, 0.0, "none"
    )


def test_script_decides_short_telugu(detector: LanguageDetector) -> None:
    found = detector.detect("ధన్యవాదాలు!")
    assert (found.language, found.source) == ("te", "text")
    assert found.confidence >= SHORT_CONFIDENCE


def test_hints_outside_the_languages_are_skipped(detector: LanguageDetector) -> None:
    hints = ("ja", "", None, "und", "*", "x-klingon", "C", "sv-SE", "pt_BR")
    assert detector.detect("ok", hints) == Detection("pt", 1.0, "hint")
    assert detector.detect("ok", ("ja", "zh-Hant")) == Detection(None, 0.0, "none")


def test_confident_text_beats_hints(detector: LanguageDetector) -> None:
    found = detector.detect(GERMAN, ("en", "fr"))
    assert (found.language, found.source) == ("de", "text")
    assert 0.6 <= found.confidence <= 1.0


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("de-AT", "de"),
        ("de_AT", "de"),
        ("DE", "de"),
        ("de", "de"),
        (" en-GB ", "en"),
        ("pt_BR.UTF-8", "pt"),
        ("zh-Hant-TW", "zh"),
        ("de, en;q=0.8", "de"),
        ("deu", "de"),
        ("tel", "te"),
        ("iw", "he"),
        ("fil", "fil"),
        (None, None),
        ("", None),
        ("und", None),
        ("mul", None),
        ("zxx", None),
        ("*", None),
        ("x-klingon", None),
        ("i-default", None),
        ("C", None),
        ("POSIX", None),
        ("12", None),
        ("en1", None),
    ],
)
def test_base_language(tag: str | None, expected: str | None) -> None:
    assert base_language(tag) == expected


def test_restricted_detector_never_answers_another_language(samples: list[Sample]) -> None:
    small = LanguageDetector(("en", "de"))
    assert small.languages == ("en", "de")
    answers = Counter(small.detect(s.text, ("fr", "te")).language for s in samples)
    assert set(answers) <= {"en", "de", None}, answers
    assert small.detect(GERMAN).language == "de"
    assert small.detect("ok", ("fr-FR", "en-US")) == Detection("en", 1.0, "hint")


def test_languages_are_normalised() -> None:
    assert LanguageDetector(("EN", "de-AT", "en", "deu")).languages == ("en", "de")


def test_unknown_language_code_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'xx'.*'klingon'.*supports.*\bde\b"):
        LanguageDetector(("en", "xx", "de", "klingon"))
    with pytest.raises(ValueError, match="'und'"):
        LanguageDetector(("en", "und"))
    with pytest.raises(ValueError, match="at least two"):
        LanguageDetector(("en",))
    with pytest.raises(ValueError, match="min_confidence"):
        LanguageDetector(min_confidence=1.5)


def test_clean_text_strips_what_is_no_language() -> None:
    text = (
        "Hi 👋 my order #A-55120 (see https://shop.example.com/o/55120?x=1 or www.example.org) never came, "
        "mail me at jane.doe+shop@example.co.uk or look at example.com/help 🙏🏽"
    )
    assert clean_text(text) == "Hi my order (see or never came, mail me at or look at"
    assert count_words(clean_text(text)) == 13
    assert count_words("— !! ?") == 0


def test_long_text_is_capped(detector: LanguageDetector) -> None:
    text = GERMAN + " " + "x" * 50 + " " + "und so weiter " * 20_000
    assert len(clean_text(text)) <= MAX_CHARS
    assert detector.detect(text).language == "de"


async def test_detect_async(detector: LanguageDetector) -> None:
    found = await detector.detect_async(GERMAN, ("en",))
    assert found == detector.detect(GERMAN, ("en",))
    both = await asyncio.gather(detector.detect_async("ok", ("it",)), detector.detect_async(GERMAN))
    assert [d.language for d in both] == ["it", "de"]


def test_shared_between_threads(detector: LanguageDetector, samples: list[Sample]) -> None:
    texts = [s.text for s in samples]
    expected = [detector.detect(t) for t in texts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = list(pool.map(detector.detect, texts))
    # Confidences may differ in the last bits: lingua sums probabilities in no fixed order.
    assert [(d.language, d.source) for d in found] == [(d.language, d.source) for d in expected]
    assert [d.confidence for d in found] == pytest.approx([d.confidence for d in expected], abs=1e-9)
