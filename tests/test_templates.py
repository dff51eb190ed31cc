"""Reply templates (aggregator/templates.py): validation, language choice, rendering in every format."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from aggregator.templates import (
    FILTERS,
    MAX_CPU_SECONDS,
    SAMPLE,
    VARIABLES,
    Format,
    Problem,
    Record,
    TemplateInvalid,
    Variant,
    build_context,
    choose_variant,
    render,
    required_vars,
    validate,
)
from fakes.telegram import parse_markdown_v2, visible_text

ALL = tuple(Format)
NOW = datetime(2024, 5, 2, 14, 30, tzinfo=UTC)

# Every variable and every filter.
FULL_BODY = """Hello {{ contact.first_name }} ({{ contact.name }}, {{ contact.email }}, {{ contact.language }}),

thank you for writing about **order {{ order.number }}** (id {{ order.id }}, *{{ order.status }}*), placed {{ order.placed_at | date("long") }} at {{ order.placed_at | time("short") }}:
{% for item in order.items %}
- {{ item.quantity }} x {{ item.name }} (`{{ item.sku }}`) at {{ item.price | currency(order.currency) }}
{% endfor %}

Total: **{{ order.total | currency(order.currency) }}**, {{ 1234.5 | number }} points, {{ vars.discount | percent }} off with code `{{ vars.code }}`.
It ships with {{ order.carrier }}: [track your parcel]({{ order.tracking_url }}).

Conversation {{ conversation.id }} ({{ conversation.subject }}) on {{ conversation.channel }}, answered {{ now | datetime("short") }} ({{ now | date }}, {{ workspace.timezone }}) in {{ language }}.

{{ agent.signature }}
{{ agent.name }}, {{ workspace.name }}"""
FULL_SUBJECT = "Re: {{ conversation.subject }} [{{ order.number }}] {{ now | date('short') }}"

ORDER: dict[str, Any] = {
    "id": "A-77",
    "number": "100234",
    "status": "shipped",
    "total": Decimal("1234.50"),
    "currency": "EUR",
    "placed_at": datetime(2024, 4, 28, 22, 15, tzinfo=UTC),  # 00:15 on the 29th in Berlin
    "items": [
        {"name": "Espresso machine", "quantity": 1, "price": Decimal("1199.00"), "sku": "EM-1"},
        {"name": "Descaler", "quantity": 2, "price": Decimal("17.75"), "sku": "DS_2"},
    ],
    "tracking_url": "https://track.example.com/p?id=0034&lang=en",
    "carrier": "DHL",
}


def context(**changes: Any) -> dict[str, Any]:
    given: dict[str, Any] = {
        "contact": {"name": "Anna Kovács", "email": "anna@example.com", "language": "hu"},
        "conversation": {"id": 1042, "subject": "Where is my order?", "channel": "email"},
        "agent": {"name": "Sam Agent", "signature": "Sam Agent\nCustomer care"},
        "workspace": {"name": "Example Shop", "timezone": "Europe/Berlin"},
        "order": ORDER,
        "now": NOW,
        "language": "en",
        "variables": {"discount": "0.1", "code": "SPRING-10"},
    }
    given.update(changes)
    return build_context(**given)


def problems_of(body: str, language: str = "en", subject: str | None = None) -> list[Problem]:
    return validate([Variant(language, body, subject)])


# --------------------------------------------------------------------------------------------------
# Every variable, three languages, three formats

EXPECTED_EN_TEXT = """Hello Anna (Anna Kovács, anna@example.com, hu),

thank you for writing about order 100234 (id A-77, shipped), placed April 29, 2024 at 12:15\u202fAM:

• 1 x Espresso machine (EM-1) at €1,199.00
• 2 x Descaler (DS_2) at €17.75

Total: €1,234.50, 1,234.5 points, 10% off with code SPRING-10.
It ships with DHL: track your parcel (https://track.example.com/p?id=0034&lang=en).

Conversation 1042 (Where is my order?) on email, answered 5/2/24, 4:30\u202fPM (May 2, 2024, Europe/Berlin) in en.

Sam Agent
Customer care
Sam Agent, Example Shop"""

EXPECTED_EN_MARKDOWN_V2 = r"""Hello Anna \(Anna Kovács, anna@example\.com, hu\),

thank you for writing about *order 100234* \(id A\-77, _shipped_\), placed April 29, 2024 at 12:15 AM:

• 1 x Espresso machine \(`EM-1`\) at €1,199\.00
• 2 x Descaler \(`DS_2`\) at €17\.75

Total: *€1,234\.50*, 1,234\.5 points, 10% off with code `SPRING-10`\.
It ships with DHL: [track your parcel](https://track.example.com/p?id=0034&lang=en)\.

Conversation 1042 \(Where is my order?\) on email, answered 5/2/24, 4:30 PM \(May 2, 2024, Europe/Berlin\) in en\.

Sam Agent
Customer care
Sam Agent, Example Shop""".replace("12:15 AM", "12:15\u202fAM").replace("4:30 PM", "4:30\u202fPM")

EXPECTED_EN_HTML = (
    "<p>Hello Anna (Anna Kovács, anna@example.com, hu),</p>\n"
    "<p>thank you for writing about <strong>order 100234</strong> (id A-77, <em>shipped</em>), "
    "placed April 29, 2024 at 12:15\u202fAM:</p>\n"
    "<ul>\n"
    "<li>1 x Espresso machine (<code>EM-1</code>) at €1,199.00</li>\n"
    "<li>2 x Descaler (<code>DS_2</code>) at €17.75</li>\n"
    "</ul>\n"
    "<p>Total: <strong>€1,234.50</strong>, 1,234.5 points, 10% off with code <code>SPRING-10</code>.<br>\n"
    'It ships with DHL: <a href="https://track.example.com/p?id=0034&amp;lang=en" rel="noopener noreferrer">'
    "track your parcel</a>.</p>\n"
    "<p>Conversation 1042 (Where is my order?) on email, answered 5/2/24, 4:30\u202fPM "
    "(May 2, 2024, Europe/Berlin) in en.</p>\n"
    "<p>Sam Agent<br>\nCustomer care<br>\nSam Agent, Example Shop</p>"
)

# What Babel says for each language: currency, plain number, percent, long date, short time, subject date.
LOCALE_FACTS = {
    "en": [
        "€1,234.50",
        "€17.75",
        "1,234.5 points",
        "10% off",
        "April 29, 2024 at 12:15\u202fAM",
        "5/2/24, 4:30\u202fPM",
    ],
    "de": [
        "1.234,50\xa0€",
        "17,75\xa0€",
        "1.234,5 points",
        "10\xa0% off",
        "29. April 2024 at 00:15",
        "02.05.24, 16:30",
    ],
    "hu": [
        "1\xa0234,50\xa0EUR",
        "17,75\xa0EUR",
        "1\xa0234,5 points",
        "10% off",
        "2024. április 29. at 0:15",
        "2024. 05. 02. 16:30",
    ],
}
SUBJECTS = {
    "en": "Re: Where is my order? [100234] 5/2/24",
    "de": "Re: Where is my order? [100234] 02.05.24",
    "hu": "Re: Where is my order? [100234] 2024. 05. 02.",
}


def test_every_variable_validates_in_every_language() -> None:
    assert validate([Variant(language, FULL_BODY, FULL_SUBJECT) for language in LOCALE_FACTS]) == []


def test_every_variable_renders_exactly_in_english() -> None:
    rendered = render(Variant("en", FULL_BODY, FULL_SUBJECT), context(), ALL, explanation="used en")
    assert rendered.language == "en"
    assert rendered.explanation == "used en"
    assert rendered.subject == SUBJECTS["en"]
    assert rendered.text == EXPECTED_EN_TEXT
    assert rendered.markdown_v2 == EXPECTED_EN_MARKDOWN_V2
    assert rendered.html == EXPECTED_EN_HTML


@pytest.mark.parametrize("language", sorted(LOCALE_FACTS))
def test_every_variable_renders_locale_correctly(language: str) -> None:
    rendered = render(Variant(language, FULL_BODY, FULL_SUBJECT), context(), ALL)
    assert rendered.subject == SUBJECTS[language]
    assert rendered.html is not None and rendered.markdown_v2 is not None
    shown, entities = visible_text(rendered.markdown_v2, "MarkdownV2")
    html_text = rendered.html.replace("&nbsp;", "\xa0")
    for fact in LOCALE_FACTS[language]:
        assert fact in rendered.text
        assert fact in html_text
        assert fact in shown
    assert f"in {language}." in rendered.text
    # Telegram sees the same text as the plain version, less the link's URL (it is in the entity).
    assert shown == rendered.text.replace(" (https://track.example.com/p?id=0034&lang=en)", "")
    kinds = {entity["type"] for entity in entities}
    assert kinds == {"bold", "italic", "code", "text_link"}
    assert {e["url"] for e in entities if e["type"] == "text_link"} == {ORDER["tracking_url"]}


def test_formats_not_asked_for_are_not_rendered() -> None:
    rendered = render(Variant("en", "Hi **there**"), context(), [Format.PLAIN])
    assert (rendered.text, rendered.html, rendered.markdown_v2, rendered.subject) == (
        "Hi there",
        None,
        None,
        None,
    )
    assert render(Variant("en", "Hi"), context(), [Format.HTML]).markdown_v2 is None


def test_datetimes_in_the_workspace_time_zone_default_utc() -> None:
    variant = Variant("en", "{{ now | time('short') }} {{ now | datetime('short') }} {{ now }}")
    utc = render(variant, context(workspace={"name": "Shop"}), ALL)
    assert utc.text == "2:30\u202fPM 5/2/24, 2:30\u202fPM May 2, 2024, 2:30:00\u202fPM"
    tokyo = render(variant, context(workspace={"name": "Shop", "timezone": "Asia/Tokyo"}), ALL)
    assert tokyo.text.startswith("11:30\u202fPM 5/2/24, 11:30\u202fPM")


# --------------------------------------------------------------------------------------------------
# Validation


def test_unknown_field_reported_with_its_line_and_name() -> None:
    problems = problems_of("Hello,\n\n{{ contact.nmae }}")
    assert problems == [Problem("en", "body", 3, "unknown variable 'contact.nmae'")]
    invalid = TemplateInvalid(validate([Variant("de", "a\nb\n{{ contact.nmae }}")]))
    assert str(invalid) == "de body line 3: unknown variable 'contact.nmae'"


def test_syntax_error_reported_with_its_line() -> None:
    assert problems_of("Hi\nthere\n{{ contact.name }\nbye") == [
        Problem("en", "body", 3, "syntax error: unexpected '}'")
    ]
    [problem] = problems_of("{% if contact.name %}\nHi\n", subject=None)
    assert problem.message.startswith("syntax error: ") and "endif" in problem.message


def test_unknown_top_level_variable() -> None:
    assert problems_of("Dear {{ customer }}") == [Problem("en", "body", 1, "unknown variable 'customer'")]


def test_unknown_names_found_in_branches_the_sample_does_not_take() -> None:
    body = "{% if contact.language == 'xx' %}\n{{ order.trackingurl }}\n{{ agent.fullname }}\n{% endif %}"
    assert [(p.line, p.message) for p in problems_of(body)] == [
        (2, "unknown variable 'order.trackingurl'"),
        (3, "unknown variable 'agent.fullname'"),
    ]


def test_loop_variables_are_checked_by_the_sample_render() -> None:
    body = "{% for item in order.items %}\n{{ item.nmae }}\n{% endfor %}"
    assert problems_of(body) == [Problem("en", "body", 2, "unknown variable 'order.items[].nmae'")]


def test_subject_problems_are_the_subjects() -> None:
    assert problems_of("Hi", subject="Order {{ order.numbr }}") == [
        Problem("en", "subject", 1, "unknown variable 'order.numbr'")
    ]


def test_other_send_time_failures_are_problems() -> None:
    [missing_argument] = problems_of("{{ order.total | currency }}")
    assert (
        missing_argument.line == 1
        and "currency() missing 1 required positional argument" in missing_argument.message
    )
    [unknown_filter] = problems_of("{{ contact.name | shout }}")
    assert unknown_filter.message == "No filter named 'shout'."
    [group] = problems_of("x\n{{ contact }}")
    assert group.line == 2 and "'contact' is a group of fields" in group.message
    [type_error] = problems_of("{{ order.total + 'x' }}")
    assert type_error.message.startswith("TypeError: ")
    [include] = problems_of("{% include 'other' %}")
    assert "no loader" in include.message


def test_language_tags_duplicates_and_empty_bodies() -> None:
    problems = validate(
        [
            Variant("en", "Hi"),
            Variant("EN", "Hello"),
            Variant("xx-!!", "Hallo"),
            Variant("de", "  \n"),
            Variant("fr", "Bonjour", subject=" "),
        ]
    )
    assert [str(problem) for problem in problems] == [
        "EN body: duplicate language 'EN' (variant 1)",
        "xx-!! body: invalid language tag 'xx-!!'",
        "de body: the body is empty",
        "fr subject: the subject is empty",
    ]
    assert validate([]) == [Problem("", "body", None, "a template needs at least one language")]
    assert (
        validate([Variant("pt-BR", "Olá"), Variant("de_AT", "Servus"), Variant("zh-Hant-TW", "你好")]) == []
    )


SANDBOX_ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ self._TemplateReference__context }}",
    "{{ lipsum.__globals__ }}",
    "{{ ''.format.__self__ }}",
    "{{ range.__call__ }}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{% endfor %}",
    "{{ contact.name | attr('__class__') }}",
    "{{ contact['__class__'] }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ '{0._fields}'.format(contact) }}",
    "{{ order.items.append(1) }}",
    "{{ {}.update(a=1) }}",
    "{{ 'x' * 100000000 }}",
    "{{ 9 ** 999999 }}",
    "{% for a in range(1000) %}{% for b in range(1000) %}xx{% endfor %}{% endfor %}",
]


@pytest.mark.parametrize("body", SANDBOX_ESCAPES)
def test_sandbox_escapes_are_rejected_and_render_nothing(body: str) -> None:
    problems = problems_of("Hello\n" + body)
    assert problems, body
    assert all(problem.line in (2, None) for problem in problems)
    with pytest.raises(TemplateInvalid):
        render(Variant("en", "Hello\n" + body), context(), ALL)


def test_what_the_sandbox_says() -> None:
    assert problems_of("{{ ''.__class__ }}") == [
        Problem("en", "body", 1, "not allowed: access to private attribute '__class__'")
    ]
    [format_trick] = problems_of("{{ '{0.__class__}'.format('') }}")
    assert format_trick.message == "not allowed: access to attribute '__class__' of 'str' object is unsafe."
    [mutation] = problems_of("{{ order.items.append(1) }}")
    assert mutation.message == "not allowed: access to attribute 'append' of 'list' object is unsafe."


def test_private_names_found_in_branches_the_sample_does_not_take() -> None:
    assert problems_of("{% if false %}\n{{ cycler.__init__ }}\n{% endif %}") == [
        Problem("en", "body", 2, "not allowed: access to private attribute '__init__'")
    ]


# --------------------------------------------------------------------------------------------------
# Values are text, not Markdown

HOSTILE = "Anna *VIP* _x_ [x](y) ~a~ `c` > # + - = | { } . ! \\ <script>alert(1)</script> &amp; 1."


def test_values_print_literally_in_every_format() -> None:
    body = "Hi {{ contact.name }}!\n\n{{ contact.name }}\n\n- {{ contact.name }}\n\n**{{ contact.name }}** [{{ contact.name }}](https://example.com)"
    rendered = render(Variant("en", body), context(contact={"name": HOSTILE}), ALL)
    assert rendered.text == (
        f"Hi {HOSTILE}!\n\n{HOSTILE}\n\n• {HOSTILE}\n\n{HOSTILE} {HOSTILE} (https://example.com)"
    )
    assert rendered.html is not None and rendered.markdown_v2 is not None
    assert "<script" not in rendered.html and "<em>" not in rendered.html and 'href="y"' not in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp;amp; 1." in rendered.html
    assert rendered.html.count("<strong>") == 1 and rendered.html.count("<a ") == 1
    shown, entities = parse_markdown_v2(rendered.markdown_v2)  # raises on any unescaped reserved character
    assert shown == rendered.text.replace(" (https://example.com)", "")
    assert sorted(entity["type"] for entity in entities) == ["bold", "text_link"]


def test_value_at_a_line_start_is_no_list_or_heading() -> None:
    rendered = render(
        Variant("en", "{{ vars.a }}\n{{ vars.b }}"), context(variables={"a": "- x", "b": "1. y"}), ALL
    )
    assert rendered.text == "- x\n1. y"
    assert rendered.html == "<p>- x<br>\n1. y</p>"
    assert rendered.markdown_v2 == "\\- x\n1\\. y"


def test_value_in_a_code_span_and_a_link_url() -> None:
    variables = {"code": "A-1_b*", "url": "https://example.com/a_(b)?x=1&y=*"}
    body = "Code `{{ vars.code }}`, [link]({{ vars.url }})"
    rendered = render(Variant("en", body), context(variables=variables), ALL)
    assert rendered.text == "Code A-1_b*, link (https://example.com/a_(b)?x=1&y=*)"
    assert rendered.html == (
        '<p>Code <code>A-1_b*</code>, <a href="https://example.com/a_(b)?x=1&amp;y=*" '
        'rel="noopener noreferrer">link</a></p>'
    )
    assert rendered.markdown_v2 == "Code `A-1_b*`, [link](https://example.com/a_(b\\)?x=1&y=*)"
    _, entities = parse_markdown_v2(rendered.markdown_v2)
    assert entities[1]["url"] == variables["url"]


def test_multi_line_values_keep_their_lines() -> None:
    rendered = render(
        Variant("en", "Thanks,\n{{ agent.signature }}"),
        context(agent={"name": "Sam", "signature": "Sam\n*Support*"}),
        ALL,
    )
    assert rendered.text == "Thanks,\nSam\n*Support*"
    assert rendered.markdown_v2 == "Thanks,\nSam\n\\*Support\\*"


# --------------------------------------------------------------------------------------------------
# Markdown per format


def test_bold_italic_code_per_format() -> None:
    rendered = render(Variant("en", "**bold** *it* _it2_ ***both*** `a*b` a\\*b"), context(), ALL)
    assert rendered.text == "bold it it2 both a*b a*b"
    assert rendered.html == (
        "<p><strong>bold</strong> <em>it</em> <em>it2</em> <em><strong>both</strong></em> <code>a*b</code> a*b</p>"
    )
    assert rendered.markdown_v2 == "*bold* _it_ _it2_ _*both*_ `a*b` a\\*b"
    assert parse_markdown_v2(rendered.markdown_v2)[0] == rendered.text


def test_adjacent_italics_are_not_underline_in_markdown_v2() -> None:
    rendered = render(Variant("en", "*a*_b_"), context(), ALL)
    assert rendered.markdown_v2 == "_a_\r_b_"  # Telegram ignores \r; "__" would be underline


def test_links_per_format() -> None:
    body = "See [our FAQ](https://example.com/faq), <https://example.com/x> and <help@example.com>."
    rendered = render(Variant("en", body), context(), ALL)
    assert (
        rendered.text == "See our FAQ (https://example.com/faq), https://example.com/x and help@example.com."
    )
    assert rendered.html == (
        '<p>See <a href="https://example.com/faq" rel="noopener noreferrer">our FAQ</a>, '
        '<a href="https://example.com/x" rel="noopener noreferrer">https://example.com/x</a> and '
        '<a href="mailto:help@example.com" rel="noopener noreferrer">help@example.com</a>.</p>'
    )
    assert rendered.markdown_v2 == (
        "See [our FAQ](https://example.com/faq), [https://example\\.com/x](https://example.com/x) and "
        "[help@example\\.com](mailto:help@example.com)\\."
    )
    _, entities = parse_markdown_v2(rendered.markdown_v2)
    assert [entity["url"] for entity in entities] == [
        "https://example.com/faq",
        "https://example.com/x",
        "mailto:help@example.com",
    ]


def test_unsafe_links_are_not_links() -> None:
    rendered = render(Variant("en", "[x](javascript:alert(1)) [y](data:text/html,hi)"), context(), ALL)
    assert rendered.html is not None and "href" not in rendered.html
    assert rendered.text == "[x](javascript:alert(1)) [y](data:text/html,hi)"


def test_lists_per_format() -> None:
    body = "Steps:\n\n1. Open **Orders**\n2. Choose the order\n   - then *Return*\n   - or [call](tel:+491234)\n\nDone:\n- a\n- b"
    rendered = render(Variant("en", body), context(), ALL)
    assert rendered.text == (
        "Steps:\n\n1. Open Orders\n2. Choose the order\n   • then Return\n   • or call (tel:+491234)\n\nDone:\n\n• a\n• b"
    )
    assert rendered.markdown_v2 == (
        "Steps:\n\n1\\. Open *Orders*\n2\\. Choose the order\n   • then _Return_\n   • or [call](tel:+491234)\n\n"
        "Done:\n\n• a\n• b"
    )
    assert rendered.html == (
        "<p>Steps:</p>\n<ol>\n<li>Open <strong>Orders</strong></li>\n<li>Choose the order\n<ul>\n"
        "<li>then <em>Return</em></li>\n"
        '<li>or <a href="tel:+491234" rel="noopener noreferrer">call</a></li>\n'
        "</ul>\n</li>\n</ol>\n<p>Done:</p>\n<ul>\n<li>a</li>\n"
        "<li>b</li>\n</ul>"
    )
    parse_markdown_v2(rendered.markdown_v2)


def test_list_starting_elsewhere_than_one() -> None:
    rendered = render(Variant("en", "3. three\n4. four"), context(), ALL)
    assert rendered.text == "3. three\n4. four"
    assert rendered.html == '<ol start="3">\n<li>three</li>\n<li>four</li>\n</ol>'


def test_line_breaks_and_paragraphs() -> None:
    rendered = render(Variant("en", "one\ntwo\n\n\nthree"), context(), ALL)
    assert rendered.text == "one\ntwo\n\nthree"
    assert rendered.html == "<p>one<br>\ntwo</p>\n<p>three</p>"
    assert rendered.markdown_v2 == "one\ntwo\n\nthree"


def test_raw_html_and_other_markdown_print_as_typed() -> None:
    body = "# Title\n\n> quoted <b>bold</b> ![img](https://example.com/i.png)"
    rendered = render(Variant("en", body), context(), ALL)
    # No images either: "!" and a link.
    assert rendered.text == "# Title\n\n> quoted <b>bold</b> !img (https://example.com/i.png)"
    assert rendered.html == (
        "<p># Title</p>\n<p>&gt; quoted &lt;b&gt;bold&lt;/b&gt; !"
        '<a href="https://example.com/i.png" rel="noopener noreferrer">img</a></p>'
    )
    assert parse_markdown_v2(rendered.markdown_v2 or "")[0] == "# Title\n\n> quoted <b>bold</b> !img"


def test_block_tags_leave_no_blank_lines() -> None:
    body = "Items:\n{% for item in order.items %}\n- {{ item.name }}\n{% endfor %}\n\nThanks"
    assert (
        render(Variant("en", body), context(), ALL).text
        == "Items:\n\n• Espresso machine\n• Descaler\n\nThanks"
    )


# --------------------------------------------------------------------------------------------------
# Context


def test_build_context_fields_and_fallbacks() -> None:
    built = build_context(
        contact={"name": "  Ludwig van Beethoven ", "phone": "+49"},
        conversation={"id": 7, "channel": "telegram"},
        agent=None,
        workspace={"name": "Acme"},
        order=None,
        now=NOW,
        language="de",
    )
    assert built["contact"] == Record(
        "contact", {"name": "  Ludwig van Beethoven ", "first_name": "Ludwig", "email": "", "language": ""}
    )
    assert built["agent"] == Record("agent", {"name": "Acme", "signature": "Acme"})
    assert built["workspace"] == Record(
        "workspace", {"name": "Acme", "timezone": "UTC", "is_open": True, "opens_at": None}
    )
    assert built["conversation"] == Record("conversation", {"id": 7, "subject": "", "channel": "telegram"})
    assert not built["order"]
    assert built["language"] == "de"
    given = build_context(
        contact={"name": "Anna Kovács", "first_name": "Anni"},
        conversation={},
        agent={"name": "Sam"},
        workspace={"name": "Acme"},
        order={"number": 5},
        now=NOW,
        language="en",
    )
    assert given["contact"].first_name == "Anni"
    assert given["agent"].signature == "Sam"
    assert given["order"].items == [] and given["order"].number == "5" and given["order"].total is None


def test_build_context_rejects_bad_input() -> None:
    common: dict[str, Any] = {
        "contact": {},
        "conversation": {},
        "agent": None,
        "order": None,
        "language": "en",
    }
    with pytest.raises(ValueError, match="aware"):
        build_context(**common, workspace={"name": "x"}, now=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="time zone"):
        build_context(**common, workspace={"name": "x", "timezone": "Mars/Olympus"}, now=NOW)
    with pytest.raises(ValueError, match="variable name"):
        build_context(**common, workspace={"name": "x"}, now=NOW, variables={"_x": 1})
    with pytest.raises(ValueError, match="text or a number"):
        build_context(**common, workspace={"name": "x"}, now=NOW, variables={"x": ["a"]})


def test_order_placed_at_as_iso_text() -> None:
    built = context(order={**ORDER, "placed_at": "2024-04-28T22:15:00+00:00"})
    assert built["order"].placed_at == ORDER["placed_at"]
    rendered = render(Variant("de", "{{ order.placed_at | date('long') }}"), built, ALL)
    assert rendered.text == "29. April 2024"


def test_order_is_safe_only_inside_if_order() -> None:
    body = "{% if order %}Order {{ order.number }}{% else %}No order{% endif %}"
    assert render(Variant("en", body), context(order=None), ALL).text == "No order"
    assert render(Variant("en", body), context(), ALL).text == "Order 100234"
    with pytest.raises(TemplateInvalid) as raised:
        render(Variant("en", "Hi\n{{ order.number }}"), context(order=None), ALL)
    assert raised.value.problems == [
        Problem(
            "en",
            "body",
            2,
            "'order.number' is not available: this conversation has no order (use it inside {% if order %})",
        )
    ]


def test_vars_are_given_per_reply() -> None:
    variant = Variant(
        "en", "Use {{ vars.code }} for {{ vars['amount'] | currency('EUR') }}", "{{ vars.subject }}"
    )
    assert validate([variant]) == []
    assert required_vars(variant) == ["subject", "code", "amount"]
    rendered = render(variant, context(variables={"code": "X1", "amount": "12.5", "subject": "Hi"}), ALL)
    assert (rendered.subject, rendered.text) == ("Hi", "Use X1 for €12.50")
    with pytest.raises(TemplateInvalid, match=r"en body line 1: no value given for 'vars.code'"):
        render(variant, context(variables={"subject": "Hi"}), ALL)


def test_none_prints_as_nothing_and_missing_text_is_empty() -> None:
    rendered = render(
        Variant("en", "[{{ order.total }}][{{ contact.email | upper }}]"),
        context(order={}, contact={"name": "A"}),
        ALL,
    )
    assert rendered.text == "[][]"


def test_variables_documentation_matches_the_sample() -> None:
    documented = {name.split(".")[0] for name in VARIABLES}
    assert documented == set(SAMPLE)
    for name in VARIABLES:
        parts = name.replace("[]", "").split(".")
        if parts[0] == "vars" or len(parts) == 1:
            continue
        value = SAMPLE[parts[0]]
        for part in parts[1:]:
            value = getattr(value[0] if isinstance(value, list) else value, part)
    for record in ("contact", "conversation", "agent", "workspace", "order"):
        for field in SAMPLE[record]._fields:
            assert f"{record}.{field}" in VARIABLES
    assert set(FILTERS) == {"date", "datetime", "time", "number", "currency", "percent"}


def test_sample_renders_in_every_format_for_any_variable() -> None:
    body = " ".join(
        f"{{{{ {name} }}}}" for name in VARIABLES if "[]" not in name and name not in ("order", "order.items")
    )
    body = body.replace("vars.<name>", "vars.anything")
    assert validate([Variant("de", body)]) == []


# --------------------------------------------------------------------------------------------------
# Choosing the variant

VARIANTS = [Variant("en", "Hi"), Variant("de", "Hallo"), Variant("pt", "Olá"), Variant("fr", "Salut")]


@pytest.mark.parametrize(
    ("variants", "wanted", "default", "language", "explanation"),
    [
        (VARIANTS, ["de", None], "en", "de", "used de"),
        (VARIANTS, ["de-AT", None], "en", "de", "de-AT: no variant, used de"),
        (VARIANTS, [None, "de-AT"], "en", "de", "de-AT: no variant, used de"),
        (VARIANTS, ["pt-BR", "en"], "en", "pt", "pt-BR: no variant, used pt"),
        ([Variant("pt", "Olá"), Variant("en", "Hi")], ["pt-BR"], "en", "pt", "pt-BR: no variant, used pt"),
        (VARIANTS, ["hu", "fr"], "en", "fr", "hu: no variant, used fr"),
        (VARIANTS, ["hu", "ro"], "en", "en", "hu: no variant, ro: no variant, used the workspace default en"),
        (VARIANTS, [None, None], "de", "de", "no language known, used the workspace default de"),
        (VARIANTS, ["hu"], "de-CH", "de", "hu: no variant, used the workspace default de (for de-CH)"),
        (
            VARIANTS,
            ["hu"],
            "ro",
            "en",
            "hu: no variant, the workspace default ro: no variant, used the first variant en",
        ),
        (
            [Variant("de-AT", "Servus"), Variant("en", "Hi")],
            ["de-CH"],
            "en",
            "de-AT",
            "de-CH: no variant, used de-AT",
        ),
        ([Variant("pt-BR", "Olá"), Variant("en", "Hi")], ["PT_br"], "en", "pt-BR", "used pt-BR"),
        (
            [Variant("zh-Hant", "你好"), Variant("en", "Hi")],
            ["zh-Hant-TW"],
            "en",
            "zh-Hant",
            "zh-Hant-TW: no variant, used zh-Hant",
        ),
    ],
)
def test_choose_variant(
    variants: list[Variant], wanted: list[str | None], default: str, language: str, explanation: str
) -> None:
    variant, said = choose_variant(variants, wanted, default)
    assert (variant.language, said) == (language, explanation)


def test_choose_variant_needs_variants() -> None:
    with pytest.raises(ValueError):
        choose_variant([], ["en"], "en")


def test_chosen_variant_renders_in_its_language() -> None:
    variants = [
        Variant("en", "{{ order.total | currency('EUR') }}"),
        Variant("de", "{{ order.total | currency('EUR') }}"),
    ]
    variant, said = choose_variant(variants, ["de-AT", "en"], "en")
    rendered = render(variant, context(language="de-AT"), ALL, explanation=said)
    assert (rendered.language, rendered.text, rendered.explanation) == (
        "de",
        "1.234,50\xa0€",
        "de-AT: no variant, used de",
    )


def test_a_template_that_loops_without_output_is_stopped_by_the_cpu_limit() -> None:
    bomb = "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}done"
    started = time.process_time()
    problems = validate([Variant("en", bomb, subject=bomb), Variant("de", bomb)])
    spent = time.process_time() - started
    assert [(p.language, p.field, p.line) for p in problems] == [("en", "subject", 1)]
    assert problems[0].message == "rendering took more than 2 s of CPU (a loop too large?)"
    # One limit's worth, not one per variant and field.
    assert spent < 3 * MAX_CPU_SECONDS
    # The limit is lifted afterwards: ordinary templates render as before.
    assert validate([Variant("en", "Hello {{ contact.name }}")]) == []


def test_filters_print_a_missing_value_as_nothing() -> None:
    body = "[{{ workspace.opens_at | datetime('short') }}|{{ workspace.opens_at | date }}|{{ workspace.opens_at | time }}]"
    body += "[{{ order.total | number }}|{{ order.total | currency('EUR') }}|{{ order.total | percent }}]"
    built = build_context(
        contact={},
        conversation={"id": "c"},
        agent=None,
        workspace={"name": "S"},
        order={"id": "o"},
        now=datetime(2026, 1, 1, tzinfo=UTC),
        language="en",
    )
    assert render(Variant("en", body), built, ()).text == "[||][||]"
