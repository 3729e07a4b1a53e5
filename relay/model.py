"""Plain data shared by every layer (a leaf module: imports nothing from relay).

Message ids are ULID-like: 48 bits of milliseconds since the epoch followed by 80
random bits, written as 26 characters of Crockford base32, so they sort by time
as strings and as bytes.  They are what the SMTP `250` and the HTTP API hand back.
"""

from __future__ import annotations

import enum
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two base32 characters per 10 bits: 13 table look-ups per id instead of 26 steps.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_POOL_SIZE = 4000  # random bytes drawn per os.urandom call (400 ids)
_pool = b""
_pool_pos = 0
_pool_lock = threading.Lock()


def _reset_pool() -> None:
    """Forget the random pool (in a forked child, so no two processes share ids)."""
    global _pool, _pool_pos
    _pool, _pool_pos = b"", 0


os.register_at_fork(after_in_child=_reset_pool)


def _random80() -> int:
    """80 random bits, from a pool refilled by os.urandom every 400 calls.

    One syscall per message released the GIL to the spool's writer thread on
    every store; pooling keeps the randomness and removes those switches.
    """
    global _pool, _pool_pos
    with _pool_lock:
        if _pool_pos + 10 > len(_pool):
            _pool, _pool_pos = os.urandom(_POOL_SIZE), 0
        start = _pool_pos
        _pool_pos = start + 10
        return int.from_bytes(_pool[start : start + 10], "big")


def new_message_id(now: float | None = None) -> str:
    """A new 26-character, time-sortable message id."""
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    value = (ms << 80) | _random80()
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in range(120, -10, -10)])


def message_id_time(message_id: str) -> float:
    """The creation time (seconds since the epoch) encoded in a message id."""
    value = 0
    for ch in message_id[:10]:
        value = (value << 5) | _CROCKFORD.index(ch)
    return value / 1000.0


def domain_of(address: str) -> str:
    """The lower-cased domain of an address ('' for the null path or no '@')."""
    at = address.rfind("@")
    return address[at + 1 :].lower() if at >= 0 else ""


class RcptStatus(enum.IntEnum):
    """Where one recipient of a message stands."""

    PENDING = 0  # not tried yet
    DEFERRED = 1  # transient failure; will be retried
    DELIVERED = 2  # final: 2xx from the destination
    BOUNCED = 3  # final: permanent failure or expiry

    @property
    def is_final(self) -> bool:
        return self >= RcptStatus.DELIVERED


@dataclass(frozen=True, slots=True)
class Recipient:
    """One recipient of a spooled message and its state."""

    address: str
    status: RcptStatus = RcptStatus.PENDING
    reply: str = ""  # the last reply, e.g. "450 4.2.0 mailbox busy"
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt, for the message's history."""

    at: float
    mx: str
    recipients: tuple[str, ...]
    reply: str
    duration: float = 0.0


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """The outcome of one delivery attempt for one recipient."""

    address: str
    status: RcptStatus  # DELIVERED, DEFERRED or BOUNCED
    reply: str
    mx: str = ""


@dataclass(frozen=True, slots=True)
class NewMessage:
    """What ingest hands to the spool: an envelope and complete content."""

    sender: str  # reverse-path without brackets; "" is the null path <>
    recipients: tuple[str, ...]
    content: bytes  # the complete RFC 5322 message with CRLF line endings
    tenant: str = ""
    campaign: str = ""
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    send_at: float | None = None  # not before this time (seconds since the epoch)
    smtputf8: bool = False
    body_8bit: bool = False
    message_id: str | None = None  # pre-assigned id (ingest may assign it to add headers)


@dataclass(frozen=True, slots=True)
class MessageMeta:
    """A spooled message without its content: what the spool keeps per message."""

    id: str
    sender: str
    recipients: tuple[Recipient, ...]
    created: float
    expires: float
    next_attempt: float
    size: int
    attempts: int = 0
    tenant: str = ""
    campaign: str = ""
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    send_at: float | None = None
    smtputf8: bool = False
    body_8bit: bool = False
    history: tuple[Attempt, ...] = ()

    @property
    def is_final(self) -> bool:
        return all(r.status.is_final for r in self.recipients)

    def pending(self) -> tuple[Recipient, ...]:
        """Recipients still to be delivered (PENDING or DEFERRED)."""
        return tuple(r for r in self.recipients if not r.status.is_final)


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """What the scheduler needs of a queued message: no content, no addresses.

    The spool keeps one per queued message in its schedule index, so recovery
    reads these without decoding full metadata.
    """

    id: str
    next_attempt: float
    expires: float
    tenant: str
    campaign: str
    domains: tuple[str, ...]  # recipient domains with recipients not yet final


class TlsMode(enum.StrEnum):
    """How outbound delivery uses STARTTLS (per route or destination domain)."""

    DISABLED = "disabled"  # never start TLS
    OPPORTUNISTIC = "opportunistic"  # TLS when offered, no certificate check; clear on failure
    REQUIRED = "required"  # TLS or no delivery; certificate not checked
    REQUIRED_VERIFY = "required-verify"  # TLS with the certificate and host name verified
