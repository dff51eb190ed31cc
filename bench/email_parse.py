"""Parse-only throughput of email parsers (issue 4): the stalwart corpus and realistic support mail.

    python -m bench.email_parse [--corpus DIR] [--seconds 2] [--parser NAME ...] [--realistic 10000]

1. Corpus: parses every `eml/**/*.eml` under --corpus repeatedly, for about --seconds per parser, and prints
   messages/s for: stdlib `email` with policy.compat32 (tree only), with policy.default (tree only, plus
   get_body(), which is where it re-parses headers), `channels.email.parse.parse_message` (tree plus all
   header, charset, body and attachment decoding, HTML sanitising, reply extraction, DSN reading) and,
   when it is importable, fast-mail-parser (Rust; counted over the messages it parses without raising).
2. Realistic: compat32 (tree only) and `parse_message` over --realistic messages from `bench.email_corpus.realistic_messages`
   (about 5 KB each), one pass, best of three; then `reply_part` alone on their text bodies, and the
   reply parsers from PyPI that are importable (mail-parser-reply, email-reply-parser, quotequail,
   email-reply-extractor) on the same texts, for comparison.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.email_corpus import realistic_messages
from channels.email.parse import parse_message
from channels.email.reply import reply_part

DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora" / "email-stalwart"


def _compat32(raw: bytes) -> Any:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def _default(raw: bytes) -> Any:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    return msg.get_body(("plain", "html"))  # type: ignore[attr-defined]


def _fast_mail_parser() -> Callable[[bytes], Any] | None:
    try:
        import fast_mail_parser  # type: ignore[import-not-found]
    except ImportError:
        return None
    parse: Callable[[bytes], Any] = fast_mail_parser.parse_email
    return parse


def measure(parse: Callable[[bytes], Any], raws: list[bytes], seconds: float) -> tuple[float, int]:
    """(messages/s, messages that raised) over whole passes through the corpus, at least one pass."""
    failures = 0
    count = 0
    start = time.perf_counter()
    while True:
        for raw in raws:
            try:
                parse(raw)
            except Exception:
                failures += 1
            count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            passes = count // len(raws)
            return count / elapsed, failures // passes


def _reply_parsers() -> dict[str, Callable[[str], Any] | None]:
    """Third-party reply extractors, when installed (none is a dependency of the project)."""
    found: dict[str, Callable[[str], Any] | None] = {}
    try:
        from mailparser_reply import EmailReplyParser  # type: ignore[import-not-found]

        mpr = EmailReplyParser(languages=["en", "de", "fr", "es"])
        found["mail-parser-reply"] = mpr.parse_reply
    except ImportError:
        found["mail-parser-reply"] = None
    try:
        from email_reply_parser import EmailReplyParser as Erp  # type: ignore[import-not-found]

        found["email-reply-parser"] = Erp.parse_reply
    except ImportError:
        found["email-reply-parser"] = None
    try:
        import quotequail  # type: ignore[import-not-found]

        found["quotequail"] = quotequail.quote
    except ImportError:
        found["quotequail"] = None
    try:
        from email_reply_extractor import extract_new_text  # type: ignore[import-not-found]

        found["email-reply-extractor"] = extract_new_text
    except ImportError:
        found["email-reply-extractor"] = None
    return found


def one_pass(parse: Callable[[Any], Any], items: list[Any], repeat: int = 3) -> float:
    """Items per second of the best of `repeat` passes (the others absorb warm-up and noise)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            parse(item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def realistic(n: int) -> None:
    """Print parse_message and reply-extraction throughput on `n` realistic support mails."""
    raws = realistic_messages(n)
    size = sum(len(r) for r in raws)
    print(f"realistic support mail: {n} messages, {size / n / 1024:.1f} KiB average (bench.email_corpus, seed 1)")
    # compat32's feedparser compiles a regex per boundary: on unique boundaries (real mail) it is much
    # slower than on the corpus, whose boundaries its regex cache has seen before.
    rate = one_pass(_compat32, raws)
    print(f"{'compat32 (tree only)':<22} {rate:>10,.0f} msgs/s  ({1e6 / rate:,.0f} us per message)")
    rate = one_pass(parse_message, raws)
    print(f"{'parse_message':<22} {rate:>10,.0f} msgs/s  ({1e6 / rate:,.0f} us per message)")
    texts = [parse_message(r).text for r in raws]
    rate = one_pass(reply_part, texts)
    print(f"{'reply_part':<22} {rate:>10,.0f} texts/s  ({1e6 / rate:,.1f} us per text)")
    for name, parse in _reply_parsers().items():
        if parse is None:
            print(f"{name:<22} {'not installed':>10}")
            continue
        sample = texts[: max(1, n // 10)]  # some are slow: a tenth is enough for a rate
        rate = one_pass(parse, sample, repeat=1)
        print(f"{name:<22} {rate:>10,.0f} texts/s  ({1e6 / rate:,.1f} us per text)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.email_parse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="directory holding eml/**/*.eml")
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent per parser (default 2)")
    parser.add_argument(
        "--parser",
        action="append",
        choices=["compat32", "default", "parse_message", "fast-mail-parser"],
        help="measure only these (repeatable; default all available)",
    )
    parser.add_argument(
        "--realistic", type=int, default=10_000, help="realistic messages to parse (default 10000; 0: skip)"
    )
    args = parser.parse_args(argv)
    raws = [p.read_bytes() for p in sorted(args.corpus.glob("eml/**/*.eml"))]
    if not raws:
        parser.error(f"no .eml files under {args.corpus}/eml")
    candidates: dict[str, Callable[[bytes], Any] | None] = {
        "compat32": _compat32,
        "default": _default,
        "parse_message": parse_message,
        "fast-mail-parser": _fast_mail_parser(),
    }
    size = sum(len(r) for r in raws)
    print(f"{len(raws)} messages, {size / len(raws) / 1024:.1f} KiB average, {args.seconds:g} s per parser")
    print(f"{'parser':<18} {'msgs/s':>10} {'raised':>8}")
    for name in args.parser or list(candidates):
        parse = candidates[name]
        if parse is None:
            print(f"{name:<18} {'not installed':>10}")
            continue
        rate, failures = measure(parse, raws, args.seconds)
        print(f"{name:<18} {rate:>10,.0f} {failures:>5}/{len(raws)}")
    if args.realistic:
        print()
        realistic(args.realistic)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
