"""Reply template throughput (aggregator/templates.py): renders/s per format and validations/s.

    python -m bench.templates [--seconds 1] [--language de]

A typical reply: a greeting with the first name, two paragraphs, the order number in bold and its
total as currency, a tracking link, the agent's signature, plus an email subject. Each row is the
best of three runs of about --seconds each, in one process:

- render, one target format (plain text is always produced, so "plain" is the base cost, "html"
  adds markdown-it's HTML and nh3, "markdownv2" the Telegram conversion), and all three at once;
- render of a template not seen before (Jinja2 compiles it: a new source each time, the cache missed);
- validate: one variant (syntax, static names, a render against SAMPLE in all formats, compile included:
  a new source each time).
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from aggregator.templates import Format, Variant, build_context, render, validate
from bench._common import print_table

SUBJECT = "Your order {{ order.number }}"
BODY = """Hello {{ contact.first_name }},

thank you for your message. Your order **{{ order.number }}** over {{ order.total | currency(order.currency) }}
left our warehouse on {{ order.placed_at | date("long") }} and is on its way with {{ order.carrier }}.

You can [follow your parcel here]({{ order.tracking_url }}). If anything is missing, just answer this
message and we will sort it out.

{{ agent.signature }}"""


def context() -> dict[str, object]:
    return build_context(
        contact={"name": "Anna Kovács", "email": "anna@example.com", "language": "de"},
        conversation={"id": 1042, "subject": "Wo ist meine Bestellung?", "channel": "email"},
        agent={"name": "Sam Agent", "signature": "Sam Agent\nExample Shop customer care"},
        workspace={"name": "Example Shop", "timezone": "Europe/Berlin"},
        order={
            "id": "A-77123",
            "number": "100234",
            "total": Decimal("1234.50"),
            "currency": "EUR",
            "placed_at": datetime(2024, 4, 28, 9, 15, tzinfo=UTC),
            "tracking_url": "https://tracking.example.com/parcel/00340434161094042557",
            "carrier": "DHL",
        },
        now=datetime.now(UTC),
        language="de",
    )


def rate(work: Callable[[], object], seconds: float) -> float:
    """Calls per second, best of three runs of about `seconds` each."""
    best = 0.0
    for _ in range(3):
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(20):
                work()
            count += 20
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, count / (now - start))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.templates", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per run, best of 3 (default 1)")
    parser.add_argument("--language", default="de", help="the variant's language (default de)")
    args = parser.parse_args(argv)
    ctx = context()
    variant = Variant(args.language, BODY, SUBJECT)
    counter = itertools.count()

    def fresh() -> Variant:
        # A source Jinja2 has not compiled yet: the same template with a different trailing comment.
        return Variant(args.language, f"{BODY}{{# {next(counter)} #}}", SUBJECT)

    assert validate([variant]) == []
    rows: list[list[str]] = []

    def row(name: str, work: Callable[[], object]) -> None:
        per_second = rate(work, args.seconds)
        rows.append([name, f"{per_second:,.0f}", f"{1e6 / per_second:,.0f} us"])

    for target in Format:
        row(f"render {target.value}", lambda target=target: render(variant, ctx, (target,)))
    row("render all three", lambda: render(variant, ctx, tuple(Format)))
    row("render all three, not compiled", lambda: render(fresh(), ctx, tuple(Format)))
    row("validate (1 variant)", lambda: validate([fresh()]))
    print(f"typical reply, {len(BODY)} characters of template, language {args.language}")
    print_table(rows, header=["operation", "per second", "each"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
