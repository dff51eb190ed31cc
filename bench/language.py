"""Language detection of customer messages (aggregator/language.py): speed, memory and accuracy.

    python -m bench.language [--seconds 3] [--high-accuracy] [--samples FILE]

On tests/data/language_samples.jsonl (hand-written support messages, {"language": ..., "text": ...} a
line), with a detector for the 12 required languages:

1. detections/s: `detect(text)` over the sample again and again on one thread for about --seconds;
2. the RSS the detector adds: VmRSS after building it and running one detection per language, minus
   VmRSS before building it (the lingua module already imported). lingua loads its models lazily and
   caches them per process, so this is measured once, in a fresh process;
3. per language: messages, how many of the ones with 20 or more words `detect` gets right without hints,
   and, for information, the same for the shorter ones, with how many of those it gets wrong (an answer
   that is not the right language; without hints most short ones get no answer at all).

--high-accuracy measures lingua's high-accuracy mode instead of the low-accuracy mode the detector uses
by default. tests/test_language.py asserts the accuracy of this table (>= 95% on 20+ words).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aggregator.language import REQUIRED, LanguageDetector
from bench._common import mib, print_table, proc_status

SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "language_samples.jsonl"
LONG_WORDS = 20  # messages with at least this many words (split on whitespace) count as long


@dataclass(frozen=True, slots=True)
class Sample:
    language: str
    text: str

    @property
    def words(self) -> int:
        return len(self.text.split())


@dataclass(frozen=True, slots=True)
class Accuracy:
    """How `detect(text)` (no hints) does on one language's samples."""

    language: str
    n: int
    long_n: int
    long_correct: int
    short_n: int
    short_correct: int
    short_wrong: int

    @property
    def long_accuracy(self) -> float:
        return self.long_correct / self.long_n if self.long_n else 0.0

    @property
    def short_accuracy(self) -> float:
        return self.short_correct / self.short_n if self.short_n else 0.0


def load_samples(path: Path = SAMPLES) -> list[Sample]:
    samples = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                item = json.loads(line)
                samples.append(Sample(item["language"], item["text"]))
    return samples


def accuracy(detector: LanguageDetector, samples: Iterable[Sample]) -> list[Accuracy]:
    """Per language of the samples, in `REQUIRED` order first, then any others alphabetically."""
    counts: dict[str, Counter[str]] = {}
    for sample in samples:
        found = detector.detect(sample.text).language
        row = counts.setdefault(sample.language, Counter())
        kind = "long" if sample.words >= LONG_WORDS else "short"
        row[f"{kind}_n"] += 1
        row[f"{kind}_correct"] += found == sample.language
        row[f"{kind}_wrong"] += found is not None and found != sample.language
    order = [lang for lang in REQUIRED if lang in counts] + sorted(set(counts) - set(REQUIRED))
    return [
        Accuracy(
            language=lang,
            n=counts[lang]["long_n"] + counts[lang]["short_n"],
            long_n=counts[lang]["long_n"],
            long_correct=counts[lang]["long_correct"],
            short_n=counts[lang]["short_n"],
            short_correct=counts[lang]["short_correct"],
            short_wrong=counts[lang]["short_wrong"],
        )
        for lang in order
    ]


def accuracy_table(rows: Sequence[Accuracy]) -> str:
    """The accuracy table as `print_table` prints it, with a total line."""
    total = Accuracy(
        "all",
        sum(r.n for r in rows),
        sum(r.long_n for r in rows),
        sum(r.long_correct for r in rows),
        sum(r.short_n for r in rows),
        sum(r.short_correct for r in rows),
        sum(r.short_wrong for r in rows),
    )
    cells = [
        [
            r.language,
            str(r.n),
            str(r.long_n),
            str(r.long_correct),
            f"{r.long_accuracy:.1%}",
            str(r.short_n),
            f"{r.short_accuracy:.1%}",
            str(r.short_wrong),
        ]
        for r in [*rows, total]
    ]
    header = [
        "lang",
        "n",
        f"{LONG_WORDS}+ words",
        "correct",
        "accuracy",
        f"<{LONG_WORDS} words",
        "accuracy",
        "wrong",
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_table(cells, header)
    return out.getvalue().rstrip("\n")


def rss() -> int:
    return proc_status(os.getpid())["VmRSS"]


def detections_per_second(detector: LanguageDetector, texts: Sequence[str], seconds: float) -> float:
    """detect() calls per second over whole passes through `texts`, at least one pass."""
    count = 0
    start = time.perf_counter()
    while True:
        for text in texts:
            detector.detect(text)
        count += len(texts)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.language", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent detecting (default 3)")
    parser.add_argument("--high-accuracy", action="store_true", help="lingua's high-accuracy mode")
    parser.add_argument("--samples", type=Path, default=SAMPLES, help="JSONL of {language, text}")
    args = parser.parse_args(argv)
    samples = load_samples(args.samples)
    mode = "high" if args.high_accuracy else "low"

    before = rss()
    started = time.perf_counter()
    detector = LanguageDetector(REQUIRED, low_accuracy=not args.high_accuracy)
    built = time.perf_counter() - started
    first: dict[str, str] = {}
    for sample in samples:
        if sample.words >= LONG_WORDS:
            first.setdefault(sample.language, sample.text)
    for text in first.values():
        detector.detect(text)
    warm = time.perf_counter() - started
    added = rss() - before

    texts = [s.text for s in samples]
    rate = detections_per_second(detector, texts, args.seconds)
    chars = sum(len(t) for t in texts) / len(texts)
    print(
        f"{len(samples)} messages ({chars:.0f} characters on average), {len(REQUIRED)} languages, "
        f"{mode}-accuracy mode"
    )
    print(f"detections/s (one thread):  {rate:,.0f}  ({1e6 / rate:,.0f} us per message)")
    print(
        f"RSS added by the detector:  {mib(added)}  (built in {built * 1000:.1f} ms, "
        f"models loaded by one detection per language: {warm:.2f} s)"
    )
    print()
    print(accuracy_table(accuracy(detector, samples)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
