"""Delivery status notifications (RFC 3464) for permanent failures and expiry.

A bounce is an ordinary message from the null reverse-path `<>` to the original
envelope sender; it re-enters through ingest like any other mail.  No DSN is ever
sent about a message whose sender was `<>` (RFC 5321 6.1: no bounce loops).  The
report carries the original headers only (RFC 3462 text/rfc822-headers), so a
bounce never re-sends a large body.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence

from relay.ingest import header_block
from relay.model import MessageMeta, Recipient

_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
MAX_HEADER_BYTES = 64 * 1024


def _status_of(reply: str) -> str:
    m = _ENHANCED.search(reply)
    if m:
        return m.group(1)
    code = reply[:1]
    return f"{code}.0.0" if code in ("4", "5") else "5.0.0"


def _diagnostic(reply: str) -> str:
    return " ".join(reply.split())[:900]


def build_dsn(
    meta: MessageMeta,
    failed: Sequence[Recipient],
    original_headers: bytes,
    *,
    reporting_mta: str,
    now: float,
    boundary: str | None = None,
) -> bytes | None:
    """The bounce for `failed` recipients of `meta`, or None when none is due."""
    if not meta.sender or not failed:
        return None
    boundary = boundary or f"=_relay_dsn_{meta.id}"
    date = email.utils.formatdate(now, usegmt=True)
    lines_human = [
        "This is the mail system at host " + reporting_mta + ".",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients.",
        "",
    ]
    per_recipient = []
    for rcpt in failed:
        lines_human.append(f"<{rcpt.address}>: {_diagnostic(rcpt.reply) or 'delivery failed'}")
        status = _status_of(rcpt.reply)
        block = [
            f"Final-Recipient: rfc822; {rcpt.address}",
            "Action: failed",
            f"Status: {status}",
        ]
        if rcpt.reply:
            block.append(f"Diagnostic-Code: smtp; {_diagnostic(rcpt.reply)}")
        per_recipient.append("\r\n".join(block))
    per_message = "\r\n".join(
        [
            f"Reporting-MTA: dns; {reporting_mta}",
            f"X-Relay-Queue-ID: {meta.id}",
            f"Arrival-Date: {email.utils.formatdate(meta.created, usegmt=True)}",
        ]
    )
    headers = (
        header_block(original_headers)[:MAX_HEADER_BYTES]
        .replace(b"\r\n", b"\n")
        .replace(b"\n", b"\r\n")
    )
    head = "\r\n".join(
        [
            f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
            f"To: <{meta.sender}>",
            "Subject: Undelivered Mail Returned to Sender",
            f"Date: {date}",
            f"Message-ID: <{meta.id}.dsn@{reporting_mta}>",
            "Auto-Submitted: auto-replied",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
            "",
            "This is a MIME-encapsulated message.",
            "",
            f"--{boundary}",
            "Content-Type: text/plain; charset=us-ascii",
            "",
            *lines_human,
            "",
            f"--{boundary}",
            "Content-Type: message/delivery-status",
            "",
            per_message,
            "",
            "\r\n\r\n".join(per_recipient),
            "",
            f"--{boundary}",
            "Content-Type: text/rfc822-headers",
            "",
            "",
        ]
    )
    tail = f"\r\n\r\n--{boundary}--\r\n"
    return head.encode("utf-8", "replace") + headers + tail.encode()
