"""Realistic support-inbox mail for benchmarks: `realistic_messages(n, seed)`, about 5 KB each on average.

The mix (per message, drawn with the seed): customers writing in en, de, fr, es, hu or tr; trace, DKIM and
authentication headers as a receiving MX adds them; multipart/alternative text + HTML bodies; about 40 %
replies with In-Reply-To / References and quoted history (text "On ... wrote:" / Outlook blocks, HTML
blockquotes); about 8 % with a small PDF or PNG attachment; some iso-8859-1 quoted-printable bodies
and RFC 2047 subjects; about 4 % auto-replies. Deterministic: the same (n, seed) gives the same bytes.

    python -m bench.email_corpus [--n 1000] [--seed 1]   # prints size statistics
"""

from __future__ import annotations

import argparse
import base64
import quopri
import random
from datetime import UTC, datetime, timedelta
from email.header import Header
from email.utils import format_datetime

SUPPORT = "support@shop.example"

# (display name, address, language)
CUSTOMERS: tuple[tuple[str, str, str], ...] = (
    ("Ada Lovelace", "ada.lovelace@example.com", "en"),
    ("Bob Smith", "bob.smith@mail.example.net", "en"),
    ("Grace Hopper", "ghopper@navy.example.org", "en"),
    ("Jürgen Müller", "j.mueller@example.de", "de"),
    ("Anna Schäfer", "anna.schaefer@web.example.de", "de"),
    ("Marie Dubois", "marie.dubois@exemple.fr", "fr"),
    ("François Lefèvre", "f.lefevre@orange.example.fr", "fr"),
    ("Lucía García", "lucia.garcia@correo.example.es", "es"),
    ("José Martínez", "jmartinez@example.es", "es"),
    ("Kovács Anna", "kovacs.anna@freemail.example.hu", "hu"),
    ("Szabó Péter", "szabo.peter@example.hu", "hu"),
    ("Ayşe Yılmaz", "ayse.yilmaz@example.com.tr", "tr"),
    ("Mehmet Öztürk", "m.ozturk@posta.example.com.tr", "tr"),
)

SUBJECTS = {
    "en": ("Order {n} has not arrived", "Question about invoice {n}", "Refund for order {n}", "Wrong size delivered"),
    "de": ("Bestellung {n} nicht angekommen", "Frage zur Rechnung {n}", "Rücksendung Bestellung {n}", "Größe falsch"),
    "fr": ("Commande {n} non reçue", "Question sur la facture {n}", "Remboursement commande {n}", "Article abîmé"),
    "es": ("Pedido {n} no ha llegado", "Pregunta sobre la factura {n}", "Devolución del pedido {n}", "Talla equivocada"),
    "hu": ("A {n} rendelés nem érkezett meg", "Kérdés a {n} számláról", "Visszatérítés {n}", "Rossz méret"),
    "tr": ("{n} numaralı sipariş gelmedi", "{n} faturası hakkında", "{n} siparişi iadesi", "Yanlış beden"),
}

PARAGRAPHS = {
    "en": (
        "I ordered a pair of running shoes two weeks ago and the tracking page still says the parcel is "
        "waiting at the depot. Could you please check with the courier what is going on?",
        "The invoice I received lists the wrong billing address: it should be 12 Baker Street, London "
        "NW1 6XE. Our accounting department needs a corrected copy before the end of the month.",
        "I would like to return the jacket because it is too small. The label in the parcel was torn, "
        "so I could not use it. Can you send me a new return label by email?",
        "Thank you for the quick answer last time. Unfortunately the replacement has the same problem: "
        "the zip breaks after a few days of normal use.",
    ),
    "de": (
        "ich habe vor zwei Wochen ein Paar Laufschuhe bestellt, und laut Sendungsverfolgung liegt das "
        "Paket immer noch im Depot. Könnten Sie bitte beim Paketdienst nachfragen, was los ist?",
        "Auf der Rechnung steht die falsche Anschrift: richtig wäre Hauptstraße 5, 10115 Berlin. Unsere "
        "Buchhaltung braucht bis Monatsende eine korrigierte Rechnung.",
        "Ich möchte die Jacke zurückschicken, sie ist leider zu klein. Das Rücksendeetikett im Paket war "
        "beschädigt. Können Sie mir ein neues per E-Mail schicken?",
        "Vielen Dank für die schnelle Antwort. Leider hat der Ersatzartikel dasselbe Problem: der "
        "Reißverschluss geht nach wenigen Tagen kaputt.",
    ),
    "fr": (
        "j'ai commandé une paire de chaussures il y a deux semaines et le suivi indique toujours que le "
        "colis est en attente au dépôt. Pourriez-vous vérifier auprès du transporteur ?",
        "La facture que j'ai reçue indique une mauvaise adresse : il s'agit du 3 rue de la Paix, 75002 "
        "Paris. Notre comptabilité a besoin d'une facture corrigée avant la fin du mois.",
        "Je souhaite retourner la veste car elle est trop petite. L'étiquette de retour était abîmée. "
        "Pouvez-vous m'en envoyer une nouvelle par e-mail ?",
        "Merci pour votre réponse rapide. Malheureusement, le produit de remplacement a le même défaut : "
        "la fermeture éclair casse au bout de quelques jours.",
    ),
    "es": (
        "hace dos semanas pedí unas zapatillas y el seguimiento sigue indicando que el paquete está en el "
        "almacén. ¿Podrían consultar con la empresa de transporte qué ocurre?",
        "La factura que recibí tiene una dirección incorrecta: debería ser Calle Mayor 10, 28013 Madrid. "
        "Nuestro departamento de contabilidad necesita una copia corregida antes de fin de mes.",
        "Quisiera devolver la chaqueta porque me queda pequeña. La etiqueta de devolución estaba rota. "
        "¿Me pueden enviar una nueva por correo electrónico?",
        "Gracias por la rápida respuesta. Por desgracia, el artículo de sustitución tiene el mismo "
        "problema: la cremallera se rompe a los pocos días.",
    ),
    "hu": (
        "két hete rendeltem egy futócipőt, és a csomagkövetés szerint a csomag még mindig a raktárban "
        "van. Meg tudnák kérdezni a futárszolgálatot, hogy mi a helyzet?",
        "A kapott számlán rossz a cím: helyesen Fő utca 1., 1011 Budapest. A könyvelésünknek a hónap "
        "végéig szüksége van a javított számlára.",
        "Szeretném visszaküldeni a kabátot, mert kicsi. A csomagban lévő visszaküldési címke sérült volt. "
        "Tudnának küldeni egy újat e-mailben?",
        "Köszönöm a gyors választ. Sajnos a csereterméknek ugyanaz a hibája: a cipzár néhány nap után "
        "elromlik.",
    ),
    "tr": (
        "iki hafta önce bir çift koşu ayakkabısı sipariş ettim ve kargo takip sayfası hâlâ paketin "
        "depoda beklediğini gösteriyor. Kargo firmasıyla görüşebilir misiniz?",
        "Aldığım faturada adres yanlış: doğrusu Atatürk Caddesi 5, 34000 İstanbul olmalı. Muhasebe "
        "departmanımızın ay sonundan önce düzeltilmiş bir faturaya ihtiyacı var.",
        "Ceketi iade etmek istiyorum çünkü küçük geldi. Paketteki iade etiketi yırtıktı. Bana e-posta "
        "ile yeni bir etiket gönderebilir misiniz?",
        "Hızlı cevabınız için teşekkürler. Maalesef yeni ürün de aynı sorunu yaşıyor: fermuar birkaç "
        "gün içinde bozuluyor.",
    ),
}

GREETING = {"en": "Hello,", "de": "Guten Tag,", "fr": "Bonjour,", "es": "Hola:", "hu": "Tisztelt Ügyfélszolgálat!", "tr": "Merhaba,"}
CLOSING = {
    "en": "Kind regards",
    "de": "Mit freundlichen Grüßen",
    "fr": "Cordialement",
    "es": "Saludos cordiales",
    "hu": "Üdvözlettel",
    "tr": "Saygılarımla",
}
ATTRIBUTION = {
    "en": "On {date}, Shop Support <support@shop.example> wrote:",
    "de": "Am {date} schrieb Shop Support <support@shop.example>:",
    "fr": "Le {date}, Shop Support <support@shop.example> a écrit :",
    "es": "El {date}, Shop Support (<support@shop.example>) escribió:",
    "hu": "Shop Support <support@shop.example> ezt írta (időpont: {date}):",
    "tr": "{date} tarihinde Shop Support <support@shop.example> şunu yazdı:",
}
MOBILE = {
    "en": "Sent from my iPhone",
    "de": "Von meinem iPhone gesendet",
    "fr": "Envoyé de mon iPhone",
    "es": "Enviado desde mi iPhone",
    "hu": "iPhone-ról küldve",
    "tr": "iPhone'umdan gönderildi",
}
SUPPORT_ANSWER = (
    "Thank you for contacting us. We have checked your order and asked the courier for an update. "
    "You will hear from us within two working days. Your ticket number is {n}.\n\n"
    "Best regards\nShop Support Team\nshop.example | +44 20 7946 0000"
)

# Tiny but well-formed files: a PDF header plus padding, a PNG signature plus padding.
PDF_HEAD = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00"


# What Outlook puts in the <head> of every HTML mail (abridged).
OUTLOOK_STYLE = (
    "/* Font Definitions */ @font-face {font-family:\"Cambria Math\"; panose-1:2 4 5 3 5 4 6 3 2 4;} "
    "@font-face {font-family:Calibri; panose-1:2 15 5 2 2 2 4 3 2 4;} "
    "/* Style Definitions */ p.MsoNormal, li.MsoNormal, div.MsoNormal {margin:0cm; font-size:11.0pt; "
    "font-family:\"Calibri\",sans-serif; mso-ligatures:standardcontextual;} "
    "a:link, span.MsoHyperlink {mso-style-priority:99; color:#0563C1; text-decoration:underline;} "
    "span.EmailStyle17 {mso-style-type:personal-compose; font-family:\"Calibri\",sans-serif; "
    "color:windowtext;} .MsoChpDefault {mso-style-type:export-only; font-size:10.0pt; "
    "mso-ligatures:none;} @page WordSection1 {size:612.0pt 792.0pt; margin:70.85pt 70.85pt 2.0cm 70.85pt;} "
    "div.WordSection1 {page:WordSection1;}"
)


def _html(paragraphs: list[str], quoted_html: str) -> str:
    body = "".join(f'<p style="margin:0 0 12px 0">{p}</p>' for p in paragraphs)
    return (
        "<!DOCTYPE html><html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\">"
        f"<style>{OUTLOOK_STYLE}</style></head>"
        f'<body><div dir="ltr" style="font-family:Calibri,Arial,sans-serif">{body}</div>{quoted_html}</body></html>'
    )


def _encode_text(text: str, charset: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, encoded body) as common clients choose them."""
    data = text.encode(charset)
    if all(b < 128 for b in data):
        return "7bit", data
    if charset == "iso-8859-1":
        return "quoted-printable", quopri.encodestring(data)
    return "base64", base64.encodebytes(data)


MAILERS = (
    "Microsoft Outlook 16.0",
    "Apple Mail (2.3774.500.171.1.1)",
    "Mozilla Thunderbird 128.4.2",
    "iPhone Mail (22D82)",
    "Gmail",
)


def _folded_b64(rng: random.Random, size: int) -> str:
    data = base64.b64encode(rng.randbytes(size)).decode()
    return "\r\n\t ".join(data[i : i + 72] for i in range(0, len(data), 72))


def _headers(rng: random.Random, name: str, address: str, subject: str, date: datetime, msg_id: str) -> list[str]:
    ip = f"203.0.113.{rng.randrange(1, 255)}"
    domain = address.rsplit("@", 1)[1]
    bh = base64.b64encode(rng.randbytes(32)).decode()
    headers: list[str] = []
    if rng.random() < 0.35:  # relayed through a big provider: an ARC set (RFC 8617) as Gmail adds it
        headers += [
            f"ARC-Seal: i=1; a=rsa-sha256; t={int(date.timestamp())}; cv=none; d=google.com; s=arc-20240605;\r\n"
            f"\tb={_folded_b64(rng, 256)}",
            f"ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed; d=google.com; s=arc-20240605;\r\n"
            f"\th=to:subject:message-id:date:from:mime-version:dkim-signature;\r\n\tbh={bh};\r\n"
            f"\tb={_folded_b64(rng, 256)}",
            f"ARC-Authentication-Results: i=1; mx.google.com;\r\n\tdkim=pass header.i=@{domain};\r\n"
            f"\tspf=pass (google.com: domain of {address} designates {ip} as permitted sender) "
            f"smtp.mailfrom={address};\r\n\tdmarc=pass (p=NONE sp=NONE dis=NONE) header.from={domain}",
        ]
    return [
        *headers,
        f"Return-Path: <{address}>",
        f"Delivered-To: {SUPPORT}",
        f"Received: from mail.{domain} (mail.{domain} [{ip}])\r\n\tby mx1.shop.example (Postfix) with ESMTPS "
        f"id {rng.randrange(16**10):010X}\r\n\tfor <{SUPPORT}>; {format_datetime(date + timedelta(seconds=2))}",
        f"Received: by mail.{domain} with SMTP id {rng.randrange(16**12):012x};\r\n\t{format_datetime(date)}",
        f"Authentication-Results: mx1.shop.example;\r\n\tdkim=pass (2048-bit key) header.d={domain};\r\n"
        f"\tspf=pass smtp.mailfrom={address};\r\n\tdmarc=pass header.from={domain}",
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=s2026;\r\n"
        f"\th=from:to:subject:date:message-id:mime-version;\r\n\tbh={bh};\r\n"
        f"\tb={_folded_b64(rng, 256)}",
        f"X-Mailer: {rng.choice(MAILERS)}",
        f"From: {Header(name, 'utf-8').encode() if not name.isascii() else name} <{address}>",
        f"To: Shop Support <{SUPPORT}>",
        f"Subject: {subject}",
        f"Date: {format_datetime(date)}",
        f"Message-ID: <{msg_id}>",
        "MIME-Version: 1.0",
    ]


def _message(rng: random.Random, index: int) -> bytes:
    name, address, lang = rng.choice(CUSTOMERS)
    order = rng.randrange(100000, 999999)
    date = datetime(2026, 1, 1, 8, 0, tzinfo=UTC) + timedelta(minutes=index * 7 + rng.randrange(7))
    msg_id = f"{rng.randrange(16**16):016x}.{index}@{address.rsplit('@', 1)[1]}"
    is_reply = rng.random() < 0.4
    auto = rng.random() < 0.04
    raw_subject = rng.choice(SUBJECTS[lang]).format(n=order)
    if auto:
        raw_subject = {"de": "Abwesenheitsnotiz: ", "fr": "Réponse automatique : "}.get(lang, "Automatic reply: ") + raw_subject
    elif is_reply:
        raw_subject = ("AW: " if lang == "de" else "Re: ") + raw_subject
    charset = "iso-8859-1" if lang in ("de", "fr", "es") and rng.random() < 0.3 else "utf-8"
    # Non-ASCII subjects are RFC 2047 encoded: Q for iso-8859-1, B for UTF-8, as common clients do.
    subject = raw_subject if raw_subject.isascii() else Header(raw_subject, charset).encode()

    headers = _headers(rng, name, address, subject, date, msg_id)
    if is_reply:
        parent = f"ticket-{order}.{rng.randrange(10**6)}@shop.example"
        headers.append(f"In-Reply-To: <{parent}>")
        headers.append(f"References: <{msg_id[:8]}.root@{address.rsplit('@', 1)[1]}>\r\n <{parent}>")
    if auto:
        headers += ["Auto-Submitted: auto-replied", "X-Auto-Response-Suppress: All"]
    if rng.random() < 0.15:
        headers.append("Thread-Index: " + base64.b64encode(rng.randbytes(22 + 5 * rng.randrange(3))).decode())

    paragraphs = [GREETING[lang], *rng.sample(PARAGRAPHS[lang], rng.randrange(1, 4)), f"{CLOSING[lang]}\n{name}"]
    text = "\n\n".join(paragraphs) + "\n"
    quoted_html = ""
    if is_reply:
        answer = SUPPORT_ANSWER.format(n=order)
        if rng.random() < 0.6:  # the whole thread comes back: our answer and the customer's first mail
            earlier = "\n\n".join([GREETING[lang], *rng.sample(PARAGRAPHS[lang], 2), f"{CLOSING[lang]}\n{name}"])
            answer += "\n\n" + ATTRIBUTION[lang].replace("Shop Support <support@shop.example>", f"{name} <{address}>").format(
                date=format_datetime(date - timedelta(days=3))
            ) + "\n" + "".join(f"> {ln}\n" for ln in earlier.split("\n"))
        when = format_datetime(date - timedelta(days=1))
        if rng.random() < 0.3:
            text += f"\n{MOBILE[lang]}\n"
        if rng.random() < 0.7:
            text += "\n" + ATTRIBUTION[lang].format(date=when) + "\n" + "".join(f"> {ln}\n" for ln in answer.split("\n"))
        else:
            text += f"\n-----Original Message-----\nFrom: Shop Support <{SUPPORT}>\nSent: {when}\nTo: {name} <{address}>\nSubject: {raw_subject}\n\n{answer}\n"
        quoted_html = (
            '<div class="gmail_quote"><div dir="ltr" class="gmail_attr">'
            + ATTRIBUTION[lang].format(date=when).replace("<", "&lt;").replace(">", "&gt;")
            + '</div><blockquote class="gmail_quote" style="margin:0 0 0 .8ex;border-left:1px #ccc solid;padding-left:1ex">'
            + answer.replace("\n", "<br>")
            + "</blockquote></div>"
        )
    if auto:
        text = {"de": "Ich bin bis 20.04. nicht im Büro.\n", "fr": "Je suis absent jusqu'au 20/04.\n"}.get(
            lang, "I am out of the office until 20 April with limited access to email.\n"
        )
    text_cte, text_body = _encode_text(text, charset)
    html_cte, html_body = _encode_text(_html(paragraphs, quoted_html), "utf-8")
    if html_cte == "base64" and rng.random() < 0.5:
        html_cte, html_body = "quoted-printable", quopri.encodestring(_html(paragraphs, quoted_html).encode())

    alt = f"000000000000{rng.randrange(16**12):012x}"
    alternative = (
        f'--{alt}\r\nContent-Type: text/plain; charset="{charset}"\r\nContent-Transfer-Encoding: {text_cte}\r\n\r\n'.encode()
        + text_body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        + f'\r\n--{alt}\r\nContent-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: {html_cte}\r\n\r\n'.encode()
        + html_body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        + f"\r\n--{alt}--\r\n".encode()
    )
    if rng.random() < 0.08 and not auto:
        mixed = f"000000000000{rng.randrange(16**12):012x}"
        if rng.random() < 0.5:
            filename, ctype, content = f"invoice-{order}.pdf", "application/pdf", PDF_HEAD + rng.randbytes(rng.randrange(2000, 6000))
        else:
            filename, ctype, content = "photo.png", "image/png", PNG_HEAD + rng.randbytes(rng.randrange(1500, 5000))
        headers.append(f'Content-Type: multipart/mixed; boundary="{mixed}"')
        body = (
            f'--{mixed}\r\nContent-Type: multipart/alternative; boundary="{alt}"\r\n\r\n'.encode()
            + alternative
            + f'\r\n--{mixed}\r\nContent-Type: {ctype}; name="{filename}"\r\n'
            f'Content-Disposition: attachment; filename="{filename}"\r\nContent-Transfer-Encoding: base64\r\n\r\n'.encode()
            + base64.encodebytes(content).replace(b"\n", b"\r\n")
            + f"--{mixed}--\r\n".encode()
        )
    else:
        headers.append(f'Content-Type: multipart/alternative; boundary="{alt}"')
        body = alternative
    return "\r\n".join(headers).encode() + b"\r\n\r\n" + body


def realistic_messages(n: int, seed: int = 1) -> list[bytes]:
    """`n` raw support mails, about 5 KB each on average, the same for the same seed."""
    rng = random.Random(seed)
    return [_message(rng, i) for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.email_corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    raws = realistic_messages(args.n, args.seed)
    sizes = sorted(len(r) for r in raws)
    print(
        f"{len(raws)} messages: average {sum(sizes) / len(sizes) / 1024:.1f} KiB, median "
        f"{sizes[len(sizes) // 2] / 1024:.1f} KiB, max {sizes[-1] / 1024:.1f} KiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
