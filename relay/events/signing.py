"""Webhook signatures: HMAC-SHA256 over the timestamp and the body.

Every POST carries ``X-Relay-Signature: t=<unix seconds>,v1=<hex digest>`` where
the digest is HMAC-SHA256 keyed with the endpoint's secret over the ASCII
timestamp, a full stop and the raw request body (``b"1700000000." + body``).  A
receiver recomputes it over the bytes it received, compares in constant time and
refuses timestamps too far from its clock (replays).  The scheme is the one Stripe
documents, so existing verification code fits; ``v1`` leaves room for another
scheme later (a receiver accepts a header when any ``v1`` entry matches).
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Relay-Signature"
#: Receivers should refuse signatures older or newer than this (seconds).
DEFAULT_TOLERANCE = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>." + body`` keyed with `secret`."""
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The value of the X-Relay-Signature header for `body` sent at `timestamp`."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """True if `header` signs `body` with `secret` at a time within `tolerance`."""
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, c) for c in candidates)
