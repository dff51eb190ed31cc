"""channels.email.reply.reply_part: quoted history and signatures stripped, per language and client."""

from __future__ import annotations

import pytest

from channels.email.parse import parse_message
from channels.email.reply import reply_part

HISTORY = "> Hello,\n> my order 1001 has not arrived.\n> Regards, Ada\n"

# (language/client, body, expected reply)
CASES: list[tuple[str, str, str]] = [
    (
        "en gmail",
        "Thanks, that fixed it!\n\nOn Tue, Apr 7, 2026 at 10:00 AM Support <support@shop.example> wrote:\n\n"
        + HISTORY,
        "Thanks, that fixed it!",
    ),
    (
        "en gmail wrapped",
        "It arrived today.\n\nOn Tue, Apr 7, 2026 at 10:00 AM Shop Support Team <support@shop.example>\n"
        "wrote:\n\n" + HISTORY,
        "It arrived today.",
    ),
    (
        "en apple mail",
        "Perfect, thank you.\n\nSent from my iPhone\n\n> On 7 Apr 2026, at 10:00, Support <support@shop.example> wrote:\n"
        ">\n" + HISTORY,
        "Perfect, thank you.",
    ),
    (
        "en outlook",
        "Please cancel the order.\n\nBest regards\nAda Lovelace\n\n-----Original Message-----\n"
        "From: Support <support@shop.example>\nSent: Tuesday, April 7, 2026 10:00 AM\n"
        "To: Ada Lovelace <ada@example.com>\nSubject: RE: Order 1001\n\nHello Ada,\nyour order has shipped.\n",
        "Please cancel the order.\n\nBest regards\nAda Lovelace",
    ),
    (
        "en outlook html-converted",
        "Yes, the address is correct.\n\nGet Outlook for Android\n________________________________\n"
        "From: Support <support@shop.example>\nSent: Tuesday, April 7, 2026 10:00:00 AM\n"
        "To: ada@example.com <ada@example.com>\nSubject: Order 1001\n\nIs your address correct?\n",
        "Yes, the address is correct.",
    ),
    (
        "de gmail",
        "Vielen Dank, das Paket ist angekommen.\n\nAm Di., 7. Apr. 2026 um 10:00 Uhr schrieb Support <"
        "support@shop.example>:\n\n" + HISTORY,
        "Vielen Dank, das Paket ist angekommen.",
    ),
    (
        "de apple mail wrapped",
        "Passt, danke!\n\nVon meinem iPhone gesendet\n\nAm 07.04.2026 um 10:00 schrieb Shop Support\n"
        "<support@shop.example>:\n\n" + HISTORY,
        "Passt, danke!",
    ),
    (
        "de outlook",
        "Bitte stornieren Sie die Bestellung.\n\nMit freundlichen Grüßen\nJürgen Müller\n\n"
        "-----Ursprüngliche Nachricht-----\nVon: Support <support@shop.example>\n"
        "Gesendet: Dienstag, 7. April 2026 10:00\nAn: Jürgen Müller <j@example.de>\nBetreff: Bestellung 1001\n\n"
        "Hallo Herr Müller,\n",
        "Bitte stornieren Sie die Bestellung.\n\nMit freundlichen Grüßen\nJürgen Müller",
    ),
    (
        "de outlook header block only",
        "Die Rechnung fehlt noch.\n\nVon: Support <support@shop.example>\nGesendet: Dienstag, 7. April 2026 10:00\n"
        "An: j@example.de\nBetreff: Bestellung 1001\n\nHallo,\n",
        "Die Rechnung fehlt noch.",
    ),
    (
        "fr gmail",
        "Merci beaucoup, tout est en ordre.\n\nLe mar. 7 avr. 2026 à 10:00, Support <support@shop.example> a"
        " écrit\u00a0:\n\n" + HISTORY,
        "Merci beaucoup, tout est en ordre.",
    ),
    (
        "fr outlook",
        "Je souhaite un remboursement.\n\nEnvoyé de mon iPhone\n\n-----Message d'origine-----\n"
        "De : Support <support@shop.example>\nEnvoyé : mardi 7 avril 2026 10:00\nÀ : Marie <m@example.fr>\n"
        "Objet : Commande 1001\n\nBonjour,\n",
        "Je souhaite un remboursement.",
    ),
    (
        "fr outlook header block only",
        "Le colis est abîmé.\n\nDe : Support <support@shop.example>\nEnvoyé : mardi 7 avril 2026 10:00\n"
        "À : m@example.fr\nObjet : Commande 1001\n\nBonjour,\n",
        "Le colis est abîmé.",
    ),
    (
        "es gmail",
        "Gracias, ya lo he recibido.\n\nEl mar, 7 abr 2026 a las 10:00, Soporte (<support@shop.example>) "
        "escribió:\n\n" + HISTORY,
        "Gracias, ya lo he recibido.",
    ),
    (
        "es outlook",
        "Necesito la factura, por favor.\n\nEnviado desde mi iPhone\n\n-----Mensaje original-----\n"
        "De: Soporte <support@shop.example>\nEnviado: martes, 7 de abril de 2026 10:00\nPara: Luis <l@example.es>\n"
        "Asunto: Pedido 1001\n\nHola Luis,\n",
        "Necesito la factura, por favor.",
    ),
    (
        "hu gmail",
        "Köszönöm, megérkezett a csomag.\n\nSupport <support@shop.example> ezt írta (időpont: 2026. ápr. 7., "
        "K, 10:00):\n\n" + HISTORY,
        "Köszönöm, megérkezett a csomag.",
    ),
    (
        "hu thunderbird",
        "Rendben, várom a számlát.\n\n2026. 04. 07. 10:00 keltezéssel, Support írta:\n" + HISTORY,
        "Rendben, várom a számlát.",
    ),
    (
        "hu outlook",
        "Kérem a rendelés törlését.\n\niPhone-ról küldve\n\n-----Eredeti üzenet-----\n"
        "Feladó: Support <support@shop.example>\nElküldve: 2026. április 7., kedd 10:00\n"
        "Címzett: Kovács Anna <anna@example.hu>\nTárgy: Rendelés 1001\n\nKedves Anna!\n",
        "Kérem a rendelés törlését.",
    ),
    (
        "tr gmail",
        "Teşekkürler, sorun çözüldü.\n\nSupport <support@shop.example>, 7 Nis 2026 Sal, 10:00 tarihinde şunu "
        "yazdı:\n\n" + HISTORY,
        "Teşekkürler, sorun çözüldü.",
    ),
    (
        "tr gmail wrapped",
        "Kargo hâlâ gelmedi.\n\n7 Nis 2026 Sal, 10:00 tarihinde Shop Support <support@shop.example>\nşunu yazdı:\n"
        + HISTORY,
        "Kargo hâlâ gelmedi.",
    ),
    (
        "tr outlook",
        "Faturayı gönderir misiniz?\n\niPhone'umdan gönderildi\n\nKimden: Support <support@shop.example>\n"
        "Gönderildi: 7 Nisan 2026 Salı 10:00\nKime: Ayşe <ayse@example.com.tr>\nKonu: Sipariş 1001\n\nMerhaba,\n",
        "Faturayı gönderir misiniz?",
    ),
    (
        "pt / nl / it attribution",
        "Obrigado!\n\nEm ter., 7 de abr. de 2026 às 10:00, Suporte <support@shop.example> escreveu:\n" + HISTORY,
        "Obrigado!",
    ),
    (
        "signature separator",
        "The tracking link is broken.\n\n-- \nAda Lovelace\nAnalytical Engines Ltd\n+44 20 7946 0000\n",
        "The tracking link is broken.",
    ),
    (
        "quote without attribution",
        "Done, thanks.\n\n" + HISTORY,
        "Done, thanks.",
    ),
    (
        "gmail forward with a note",
        "See the message from the courier below.\n\n---------- Forwarded message ---------\n"
        "From: Courier <noreply@courier.example>\nDate: Tue, Apr 7, 2026 at 9:00 AM\nSubject: Delivery failed\n"
        "To: <ada@example.com>\n\nWe could not deliver your parcel.\n",
        "See the message from the courier below.",
    ),
    (
        "interleaved answers",
        "On Tue, Apr 7, 2026 at 10:00 AM Support <support@shop.example> wrote:\n> Which size did you order?\n"
        "Size M.\n\n> And which colour?\nBlue.\n\nThanks\nAda\n",
        "Size M.\n\nBlue.\n\nThanks\nAda",
    ),
    (
        "bottom-posted",
        "> Is the package damaged?\n\nYes, the box was crushed.\n",
        "Yes, the box was crushed.",
    ),
]


@pytest.mark.parametrize(("body", "want"), [pytest.param(b, w, id=n) for n, b, w in CASES])
def test_reply_part_strips_history_and_signatures(body: str, want: str) -> None:
    assert reply_part(body) == want
    assert reply_part(body.replace("\n", "\r\n")) == want.replace("\n", "\r\n")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(HISTORY, id="only a quote"),
        pytest.param(
            "---------- Forwarded message ---------\nFrom: Courier <noreply@courier.example>\n"
            "Date: Tue, Apr 7, 2026 at 9:00 AM\nSubject: Delivery failed\nTo: <ada@example.com>\n\nParcel lost.\n",
            id="top-quoted forward",
        ),
        pytest.param(
            "From: Courier <noreply@courier.example>\nSent: Tuesday, April 7, 2026 9:00 AM\nTo: ada@example.com\n"
            "Subject: Delivery failed\n\nParcel lost.\n",
            id="outlook forward without a note",
        ),
        pytest.param("Sent from my iPhone\n", id="only a mobile signature"),
    ],
)
def test_reply_part_never_empties_a_message(body: str) -> None:
    assert reply_part(body) == body.strip()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("Hello,\n\nmy order 1001 has not arrived yet.\n\nRegards,\nAda\n", id="plain"),
        pytest.param(
            "On the checkout page it wrote:\nError: card declined\n\nPlease help.\n", id="prose with wrote:"
        ),
        pytest.param("My route:\nFrom: Berlin\nTo: Munich\n\nIs that possible?\n", id="from/to in prose"),
        pytest.param("Steps:\n-- open the app\n-- tap Orders\n", id="double-dash list"),
        pytest.param("The technician wrote:\nall fine.\n", id="bare wrote without evidence"),
        pytest.param("Is 10 > 5?\nYes, ->  it is.\n", id="gt inside a line"),
    ],
)
def test_reply_part_keeps_ordinary_text(body: str) -> None:
    assert reply_part(body) == body.strip()


def test_reply_part_of_empty_text_is_empty() -> None:
    assert reply_part("") == ""
    assert reply_part("  \n\n") == ""


def test_parse_message_fills_reply_text() -> None:
    raw = (
        b"From: Ada <ada@example.com>\r\nTo: support@shop.example\r\nSubject: Re: Order 1001\r\n"
        b"Message-ID: <r1@example.com>\r\nIn-Reply-To: <s1@shop.example>\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        b"Danke!\r\n\r\nAm 07.04.2026 um 10:00 schrieb Support <support@shop.example>:\r\n> Hallo\r\n"
    )
    mail = parse_message(raw)
    assert mail.reply_text == "Danke!"
    assert "> Hallo" in mail.text


def test_parse_message_reply_text_is_text_when_nothing_is_quoted() -> None:
    raw = b"From: a@example.com\r\nSubject: x\r\n\r\nHello,\r\nwhere is my order?\r\n"
    mail = parse_message(raw)
    assert mail.reply_text == mail.text == "Hello,\r\nwhere is my order?\r\n"


def test_parse_message_reply_text_from_html_only_mail() -> None:
    raw = (
        b"From: Ada <ada@example.com>\r\nTo: support@shop.example\r\nSubject: Re: x\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n"
        b"<div>Works now.</div><div class=\"gmail_quote\">On Tue, Apr 7, 2026 at 10:00 AM Support "
        b"&lt;support@shop.example&gt; wrote:<br><blockquote>Please restart the router.</blockquote></div>"
    )
    mail = parse_message(raw)
    assert mail.reply_text == "Works now."
