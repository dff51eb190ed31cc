"""Delivery status notifications: RFC 3464 reports from Postfix, Exim, Gmail, Exchange; plain bounces."""

from __future__ import annotations

import pytest

from channels.email.dsn import clean_reason
from channels.email.parse import parse_message

ORIGINAL_HEADERS = (
    b"Return-Path: <support@shop.example>\r\n"
    b"From: Shop Support <support@shop.example>\r\n"
    b"To: Bob <bob@example.com>\r\n"
    b"Subject: Re: Order 1001\r\n"
    b"Message-ID: <c0ffee.42@shop.example>\r\n"
    b"Date: Tue, 7 Apr 2026 10:00:00 +0200\r\n"
)

POSTFIX = (
    b"Return-Path: <>\r\n"
    b"Received: by mx.shop.example (Postfix) id 4F2A1C0123; Tue,  7 Apr 2026 10:00:05 +0200 (CEST)\r\n"
    b"Date: Tue,  7 Apr 2026 10:00:05 +0200 (CEST)\r\n"
    b"From: MAILER-DAEMON@mx.shop.example (Mail Delivery System)\r\n"
    b"Subject: Undelivered Mail Returned to Sender\r\n"
    b"To: support@shop.example\r\n"
    b"Auto-Submitted: auto-replied\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/report; report-type=delivery-status;\r\n"
    b'\tboundary="4F2A1C0123.1775548805/mx.shop.example"\r\n'
    b"Message-Id: <20260407080005.5B3C2C0124@mx.shop.example>\r\n"
    b"\r\n"
    b"This is a MIME-encapsulated message.\r\n"
    b"\r\n"
    b"--4F2A1C0123.1775548805/mx.shop.example\r\n"
    b"Content-Description: Notification\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"This is the mail system at host mx.shop.example.\r\n"
    b"\r\n"
    b"I'm sorry to have to inform you that your message could not\r\n"
    b"be delivered to one or more recipients. It's attached below.\r\n"
    b"\r\n"
    b"                   The mail system\r\n"
    b"\r\n"
    b"<bob@example.com>: host mx.example.com[192.0.2.10] said: 550 5.1.1\r\n"
    b"    <bob@example.com>: Recipient address rejected: User unknown in virtual\r\n"
    b"    mailbox table (in reply to RCPT TO command)\r\n"
    b"\r\n"
    b"--4F2A1C0123.1775548805/mx.shop.example\r\n"
    b"Content-Description: Delivery report\r\n"
    b"Content-Type: message/delivery-status\r\n"
    b"\r\n"
    b"Reporting-MTA: dns; mx.shop.example\r\n"
    b"X-Postfix-Queue-ID: 4F2A1C0123\r\n"
    b"X-Postfix-Sender: rfc822; support@shop.example\r\n"
    b"Arrival-Date: Tue,  7 Apr 2026 10:00:04 +0200 (CEST)\r\n"
    b"\r\n"
    b"Final-Recipient: rfc822; bob@example.com\r\n"
    b"Original-Recipient: rfc822;bob@example.com\r\n"
    b"Action: failed\r\n"
    b"Status: 5.1.1\r\n"
    b"Remote-MTA: dns; mx.example.com\r\n"
    b"Diagnostic-Code: smtp; 550 5.1.1 <bob@example.com>: Recipient address rejected:\r\n"
    b"    User unknown in virtual mailbox table\r\n"
    b"\r\n"
    b"--4F2A1C0123.1775548805/mx.shop.example\r\n"
    b"Content-Description: Undelivered Message\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n" + ORIGINAL_HEADERS + b"\r\n"
    b"Hello Bob,\r\nyour order has shipped.\r\n"
    b"\r\n"
    b"--4F2A1C0123.1775548805/mx.shop.example--\r\n"
)

EXIM = (
    b"Return-path: <>\r\n"
    b"Received: from Debian-exim by mail.shop.example with local (Exim 4.97)\r\n"
    b"\tid 1wXyZa-000ABC-Q1; Tue, 07 Apr 2026 10:00:06 +0200\r\n"
    b"X-Failed-Recipients: carol@example.org\r\n"
    b"Auto-Submitted: auto-replied\r\n"
    b"From: Mail Delivery System <Mailer-Daemon@mail.shop.example>\r\n"
    b"To: support@shop.example\r\n"
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=1775548806-eximdsn-1804289383\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Subject: Mail delivery failed: returning message to sender\r\n"
    b"Message-Id: <E1wXyZa-000ABC-Q1@mail.shop.example>\r\n"
    b"Date: Tue, 07 Apr 2026 10:00:06 +0200\r\n"
    b"\r\n"
    b"--1775548806-eximdsn-1804289383\r\n"
    b"Content-type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"This message was created automatically by mail delivery software.\r\n"
    b"\r\n"
    b"A message that you sent could not be delivered to one or more of its\r\n"
    b"recipients. This is a permanent error. The following address(es) failed:\r\n"
    b"\r\n"
    b"  carol@example.org\r\n"
    b"    host mx.example.org [198.51.100.7]\r\n"
    b"    SMTP error from remote mail server after RCPT TO:<carol@example.org>:\r\n"
    b"    550 5.2.1 The email account that you tried to reach is disabled\r\n"
    b"\r\n"
    b"--1775548806-eximdsn-1804289383\r\n"
    b"Content-type: message/delivery-status\r\n"
    b"\r\n"
    b"Reporting-MTA: dns; mail.shop.example\r\n"
    b"\r\n"
    b"Action: failed\r\n"
    b"Final-Recipient: rfc822;carol@example.org\r\n"
    b"Status: 5.0.0\r\n"
    b"Remote-MTA: dns; mx.example.org\r\n"
    b"Diagnostic-Code: smtp; 550 5.2.1 The email account that you tried to reach is disabled\r\n"
    b"\r\n"
    b"--1775548806-eximdsn-1804289383\r\n"
    b"Content-type: message/rfc822\r\n"
    b"\r\n" + ORIGINAL_HEADERS.replace(b"bob@example.com", b"carol@example.org") + b"\r\n"
    b"Hello Carol\r\n"
    b"\r\n"
    b"--1775548806-eximdsn-1804289383--\r\n"
)

GMAIL = (
    b"Return-Path: <>\r\n"
    b"Received: by 2002:a05:6214:1d0b:b0:6f4:3c2a:1b5e with SMTP id e11csp123456qvd;\r\n"
    b"        Tue, 7 Apr 2026 01:00:07 -0700 (PDT)\r\n"
    b"From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\r\n"
    b"To: shop.support@gmail.com\r\n"
    b"Auto-Submitted: auto-replied\r\n"
    b"Subject: Delivery Status Notification (Failure)\r\n"
    b"References: <CAF1x9y=abc123@mail.gmail.com>\r\n"
    b"In-Reply-To: <CAF1x9y=abc123@mail.gmail.com>\r\n"
    b"X-Failed-Recipients: dave@example.net\r\n"
    b"Message-ID: <661f2a1b.050a0220.3c9f1.0001.GMR@mx.google.com>\r\n"
    b"Date: Tue, 07 Apr 2026 01:00:07 -0700 (PDT)\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/report; boundary="000000000000d1e2f3061a2b3c4d"; report-type=delivery-status\r\n'
    b"\r\n"
    b"--000000000000d1e2f3061a2b3c4d\r\n"
    b'Content-Type: multipart/related; boundary="000000000000d1e8a4061a2b3c5e"\r\n'
    b"\r\n"
    b"--000000000000d1e8a4061a2b3c5e\r\n"
    b'Content-Type: multipart/alternative; boundary="000000000000d1e8a5061a2b3c6f"\r\n'
    b"\r\n"
    b"--000000000000d1e8a5061a2b3c6f\r\n"
    b'Content-Type: text/plain; charset="UTF-8"\r\n'
    b"\r\n"
    b"\r\n"
    b"** Address not found **\r\n"
    b"\r\n"
    b"Your message wasn't delivered to dave@example.net because the address couldn't be found, or is "
    b"unable to receive mail.\r\n"
    b"\r\n"
    b"Learn more here: https://support.google.com/mail/?p=NoSuchUser\r\n"
    b"\r\n"
    b"The response was:\r\n"
    b"\r\n"
    b"550 5.1.1 The email account that you tried to reach does not exist.\r\n"
    b"\r\n"
    b"--000000000000d1e8a5061a2b3c6f\r\n"
    b'Content-Type: text/html; charset="UTF-8"\r\n'
    b"\r\n"
    b"<html><body><h1>Address not found</h1><p>Your message wasn't delivered to "
    b"<a>dave@example.net</a>.</p></body></html>\r\n"
    b"\r\n"
    b"--000000000000d1e8a5061a2b3c6f--\r\n"
    b"--000000000000d1e8a4061a2b3c5e--\r\n"
    b"--000000000000d1e2f3061a2b3c4d\r\n"
    b"Content-Type: message/delivery-status\r\n"
    b"\r\n"
    b"Reporting-MTA: dns; googlemail.com\r\n"
    b"Received-From-MTA: dns; shop.support@gmail.com\r\n"
    b"Arrival-Date: Tue, 07 Apr 2026 01:00:06 -0700 (PDT)\r\n"
    b"X-Original-Message-ID: <CAF1x9y=abc123@mail.gmail.com>\r\n"
    b"\r\n"
    b"Final-Recipient: rfc822; dave@example.net\r\n"
    b"Action: failed\r\n"
    b"Status: 5.1.1\r\n"
    b"Remote-MTA: dns; mx.example.net. (203.0.113.5, the server for the domain example.net.)\r\n"
    b"Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
    b" 550-5.1.1 double-checking the recipient's email address for typos or\r\n"
    b" 550-5.1.1 unnecessary spaces. For more information, go to\r\n"
    b" 550 5.1.1  https://support.google.com/mail/?p=NoSuchUser a1si1234567qkb.12 - gsmtp\r\n"
    b"Last-Attempt-Date: Tue, 07 Apr 2026 01:00:07 -0700 (PDT)\r\n"
    b"\r\n"
    b"--000000000000d1e2f3061a2b3c4d\r\n"
    b"Content-Type: text/rfc822-headers; charset=\"UTF-8\"\r\n"
    b"\r\n"
    b"MIME-Version: 1.0\r\n"
    b"From: Shop Support <shop.support@gmail.com>\r\n"
    b"Date: Tue, 7 Apr 2026 10:00:05 +0200\r\n"
    b"Message-ID:\r\n"
    b" <CAF1x9y=abc123@mail.gmail.com>\r\n"
    b"Subject: Your refund\r\n"
    b"To: dave@example.net\r\n"
    b"\r\n"
    b"--000000000000d1e2f3061a2b3c4d--\r\n"
)

EXCHANGE = (
    b"From: Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@shop.example>\r\n"
    b"To: <support@shop.example>\r\n"
    b"Date: Tue, 7 Apr 2026 08:00:09 +0000\r\n"
    b"Content-Type: multipart/report; report-type=delivery-status;\r\n"
    b'\tboundary="a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"\r\n'
    b"X-MS-Exchange-Message-Is-Ndr:\r\n"
    b"Content-Language: en-US\r\n"
    b"Message-ID: <a9f0e1d2-c3b4-4a59-8678-9a0b1c2d3e4f@DB9PR01MB1234.eurprd01.prod.exchangelabs.com>\r\n"
    b"In-Reply-To: <c0ffee.42@shop.example>\r\n"
    b"References: <c0ffee.42@shop.example>\r\n"
    b"Thread-Topic: Re: Order 1001\r\n"
    b"Thread-Index: AQHcxPmQ7k3r2Yy0TkK8lJ0f3cG4mQ==\r\n"
    b"Subject: Undeliverable: Re: Order 1001\r\n"
    b"Auto-Submitted: auto-replied\r\n"
    b"MIME-Version: 1.0\r\n"
    b"\r\n"
    b"--a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d\r\n"
    b'Content-Type: multipart/alternative; differences=Content-Type;\r\n'
    b'\tboundary="b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e"\r\n'
    b"\r\n"
    b"--b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e\r\n"
    b"Content-Type: text/plain; charset=\"us-ascii\"\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Your message to erin@example.com couldn't be delivered.\r\n"
    b"erin wasn't found at example.com.\r\n"
    b"\r\n"
    b"Action Required                                                  Recipient\r\n"
    b"Unknown To address\r\n"
    b"\r\n"
    b"--b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e\r\n"
    b"Content-Type: text/html; charset=\"us-ascii\"\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"<html><body><p>Your message to <b>erin@example.com</b> couldn=27t be delivered.</p></body></html>\r\n"
    b"\r\n"
    b"--b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e--\r\n"
    b"\r\n"
    b"--a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d\r\n"
    b"Content-Type: message/delivery-status\r\n"
    b"\r\n"
    b"Reporting-MTA: dns;DB9PR01MB1234.eurprd01.prod.exchangelabs.com\r\n"
    b"Received-From-MTA: dns;DB9PR01MB5678.eurprd01.prod.exchangelabs.com\r\n"
    b"Arrival-Date: Tue, 7 Apr 2026 08:00:08 +0000\r\n"
    b"\r\n"
    b"Final-Recipient: rfc822;erin@example.com\r\n"
    b"Action: failed\r\n"
    b"Status: 5.1.10\r\n"
    b"Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup\r\n"
    b"\r\n"
    b"--a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d\r\n"
    b"Content-Type: text/rfc822-headers\r\n"
    b"\r\n" + ORIGINAL_HEADERS.replace(b"bob@example.com", b"erin@example.com") + b"\r\n"
    b"--a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d--\r\n"
)

DELAYED = (
    b"Return-Path: <>\r\n"
    b"From: MAILER-DAEMON@mx.shop.example (Mail Delivery System)\r\n"
    b"Subject: Delayed Mail (still being retried)\r\n"
    b"To: support@shop.example\r\n"
    b"Auto-Submitted: auto-replied\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
    b"\r\n"
    b"--B\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"This is the mail system at host mx.shop.example.\r\n\r\n"
    b"####################################################################\r\n"
    b"# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n"
    b"####################################################################\r\n\r\n"
    b"<frank@example.com>: connect to mx.example.com[192.0.2.20]:25: Connection timed out\r\n"
    b"--B\r\n"
    b"Content-Type: message/delivery-status\r\n"
    b"\r\n"
    b"Reporting-MTA: dns; mx.shop.example\r\n"
    b"\r\n"
    b"Final-Recipient: rfc822; frank@example.com\r\n"
    b"Action: delayed\r\n"
    b"Status: 4.4.1\r\n"
    b"Diagnostic-Code: X-Postfix; connect to mx.example.com[192.0.2.20]:25: Connection timed out\r\n"
    b"Will-Retry-Until: Tue, 14 Apr 2026 10:00:04 +0200 (CEST)\r\n"
    b"\r\n"
    b"--B\r\n"
    b"Content-Type: text/rfc822-headers\r\n"
    b"\r\n"
    b"Message-ID: <delay.7@shop.example>\r\n"
    b"Subject: Order 1002\r\n"
    b"\r\n"
    b"--B--\r\n"
)

QMAIL = (
    b"Return-Path: <>\r\n"
    b"Date: 7 Apr 2026 08:00:10 -0000\r\n"
    b"From: MAILER-DAEMON@mail.example.biz\r\n"
    b"To: support@shop.example\r\n"
    b"Subject: failure notice\r\n"
    b"\r\n"
    b"Hi. This is the qmail-send program at mail.example.biz.\r\n"
    b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
    b"This is a permanent error; I've given up. Sorry it didn't work out.\r\n"
    b"\r\n"
    b"<grace@example.biz>:\r\n"
    b"192.0.2.30 does not like recipient.\r\n"
    b"Remote host said: 550 5.1.1 <grace@example.biz>... User unknown\r\n"
    b"Giving up on 192.0.2.30.\r\n"
    b"\r\n"
    b"--- Below this line is a copy of the message.\r\n"
    b"\r\n" + ORIGINAL_HEADERS.replace(b"bob@example.com", b"grace@example.biz") + b"\r\n"
    b"Hello Grace\r\n"
)

EXIM_PLAIN = (
    b"Return-path: <>\r\n"
    b"X-Failed-Recipients: heidi@example.co.uk\r\n"
    b"From: Mail Delivery System <Mailer-Daemon@relay.example.co.uk>\r\n"
    b"To: support@shop.example\r\n"
    b"Subject: Mail delivery failed: returning message to sender\r\n"
    b"\r\n"
    b"This message was created automatically by mail delivery software.\r\n"
    b"\r\n"
    b"A message that you sent could not be delivered to one or more of its\r\n"
    b"recipients. This is a permanent error. The following address(es) failed:\r\n"
    b"\r\n"
    b"  heidi@example.co.uk\r\n"
    b"    SMTP error from remote mail server after RCPT TO:<heidi@example.co.uk>:\r\n"
    b"    host mx.example.co.uk [192.0.2.40]: 552 5.2.2 Mailbox full\r\n"
    b"\r\n"
    b"------ This is a copy of the message, including all the headers. ------\r\n"
    b"\r\n" + ORIGINAL_HEADERS.replace(b"bob@example.com", b"heidi@example.co.uk") + b"\r\n"
    b"Hello Heidi\r\n"
)


@pytest.mark.parametrize(
    ("raw", "recipient", "status", "reason"),
    [
        pytest.param(
            POSTFIX,
            "bob@example.com",
            "5.1.1",
            "550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
            id="postfix",
        ),
        pytest.param(
            EXIM,
            "carol@example.org",
            "5.0.0",
            "550 5.2.1 The email account that you tried to reach is disabled",
            id="exim",
        ),
        pytest.param(
            EXCHANGE,
            "erin@example.com",
            "5.1.10",
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
            id="exchange",
        ),
    ],
)
def test_standard_failure_reports(raw: bytes, recipient: str, status: str, reason: str) -> None:
    mail = parse_message(raw)
    report = mail.delivery_report
    assert report is not None
    assert report.action == "failed" and report.failed
    assert report.recipients == (recipient,)
    assert report.status == status
    assert report.reason == reason
    assert report.original_message_id == "c0ffee.42@shop.example"
    assert mail.bounce and mail.is_automatic


def test_gmail_report_joins_multiline_reply_and_reads_folded_header_copy() -> None:
    mail = parse_message(GMAIL)
    report = mail.delivery_report
    assert report is not None
    assert (report.action, report.status, report.recipients) == ("failed", "5.1.1", ("dave@example.net",))
    assert report.original_message_id == "CAF1x9y=abc123@mail.gmail.com"
    assert report.reason.startswith(
        "550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking"
    )
    assert "550-5.1.1" not in report.reason and "gsmtp" in report.reason
    assert "Address not found" in mail.text


def test_delayed_report_is_reported_as_delayed_not_failed() -> None:
    mail = parse_message(DELAYED)
    report = mail.delivery_report
    assert report is not None
    assert report.action == "delayed" and not report.failed
    assert report.status == "4.4.1"
    assert report.recipients == ("frank@example.com",)
    assert report.reason == "connect to mx.example.com[192.0.2.20]:25: Connection timed out"
    assert report.original_message_id == "delay.7@shop.example"
    assert mail.bounce


def test_mixed_recipients_report_the_failed_ones() -> None:
    raw = POSTFIX.replace(
        b"Final-Recipient: rfc822; bob@example.com\r\n",
        b"Final-Recipient: rfc822; ok@example.com\r\nAction: delivered\r\nStatus: 2.0.0\r\n\r\n"
        b"Final-Recipient: rfc822; bob@example.com\r\n",
    )
    report = parse_message(raw).delivery_report
    assert report is not None
    assert report.action == "failed"
    assert report.recipients == ("bob@example.com",)


def test_qmail_plain_bounce() -> None:
    mail = parse_message(QMAIL)
    report = mail.delivery_report
    assert report is not None
    assert report.action == "failed"
    assert report.recipients == ("grace@example.biz",)
    assert report.status == "5.1.1"
    assert report.reason == "550 5.1.1 <grace@example.biz>... User unknown"
    assert report.original_message_id == "c0ffee.42@shop.example"
    assert mail.bounce


def test_exim_plain_bounce_with_x_failed_recipients() -> None:
    mail = parse_message(EXIM_PLAIN)
    report = mail.delivery_report
    assert report is not None
    assert report.action == "failed"
    assert report.recipients == ("heidi@example.co.uk",)
    assert report.status == "5.2.2"
    assert report.reason == "host mx.example.co.uk [192.0.2.40]: 552 5.2.2 Mailbox full"
    assert report.original_message_id == "c0ffee.42@shop.example"


def test_x_failed_recipients_alone_makes_a_bounce() -> None:
    raw = EXIM_PLAIN.replace(b"Return-path: <>\r\n", b"").replace(b"Mailer-Daemon@", b"relay@")
    mail = parse_message(raw)
    assert mail.delivery_report is not None
    assert mail.bounce
    assert any("X-Failed-Recipients" in r for r in mail.loop_reasons)


def test_human_mail_from_postmaster_is_not_a_report() -> None:
    raw = (
        b"From: postmaster@example.com\r\nTo: support@shop.example\r\nSubject: question\r\n\r\n"
        b"Hello, we upgraded to version 4.2.1 yesterday. Can you check our account?\r\n"
    )
    mail = parse_message(raw)
    assert mail.delivery_report is None
    assert mail.bounce  # still never auto-answered: RFC 3834 by sender


def test_ordinary_mail_has_no_report() -> None:
    raw = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: 5.1.1 failed\r\n\r\nAction: failed\r\n"
    assert parse_message(raw).delivery_report is None


def test_broken_report_never_raises() -> None:
    raw = (
        b"From: MAILER-DAEMON@x\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\n\r\n--b--\r\n"
    )
    mail = parse_message(raw)
    assert mail.bounce
    assert mail.delivery_report is not None
    assert mail.delivery_report.action == "failed"
    assert mail.delivery_report.original_message_id is None


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("550-5.7.1 first\n 550-5.7.1 second\n 550 5.7.1 third", "550 5.7.1 first second third"),
        ("421-Too many\n 421 connections", "421 Too many connections"),
        ("Host unreachable", "Host unreachable"),
        ("x" * 400, "x" * 299 + "…"),
    ],
)
def test_clean_reason(raw: str, want: str) -> None:
    assert clean_reason(raw) == want
