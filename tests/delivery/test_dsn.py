"""RFC 3464 delivery status notifications."""

from __future__ import annotations

import email
import email.policy

from relay.delivery.dsn import build_dsn
from relay.model import MessageMeta, RcptStatus, Recipient

HEADERS = (
    b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody that is not sent back\r\n"
)


def meta(sender: str = "a@example.com") -> MessageMeta:
    return MessageMeta(
        id="01ABCDEFGHJKMNPQRSTVWXYZ01",
        sender=sender,
        recipients=(Recipient("b@example.net"), Recipient("c@example.net")),
        created=1_700_000_000.0,
        expires=1_700_432_000.0,
        next_attempt=1_700_000_000.0,
        size=len(HEADERS),
    )


def test_rfc3464_structure_and_fields() -> None:
    failed = [
        Recipient("b@example.net", RcptStatus.BOUNCED, "550 5.1.1 no such user"),
        Recipient("c@example.net", RcptStatus.BOUNCED, "451 4.4.7 message expired"),
    ]
    raw = build_dsn(meta(), failed, HEADERS, reporting_mta="relay.test", now=1_700_000_100.0)
    assert raw is not None
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["To"].addresses[0].addr_spec == "a@example.com"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    status = raw.decode()
    assert "Final-Recipient: rfc822; b@example.net" in status
    assert "Status: 5.1.1" in status
    assert "Status: 4.4.7" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1 no such user" in status
    assert b"body that is not sent back" not in raw  # headers only (RFC 3462)


def test_no_bounce_to_null_sender() -> None:
    """RFC 5321 6.1: never a DSN about a message from <>."""
    failed = [Recipient("b@example.net", RcptStatus.BOUNCED, "550 5.1.1 no")]
    assert build_dsn(meta(sender=""), failed, HEADERS, reporting_mta="r", now=0) is None


def test_status_derived_from_basic_code_without_enhanced() -> None:
    failed = [Recipient("b@example.net", RcptStatus.BOUNCED, "554 rejected")]
    raw = build_dsn(meta(), failed, HEADERS, reporting_mta="r", now=0)
    assert raw is not None and b"Status: 5.0.0" in raw
