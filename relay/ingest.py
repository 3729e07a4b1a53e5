"""The one door for new mail: SMTP submission, the HTTP API and bounces all come here.

Theory of operation: `Ingest.accept()` checks the envelope against the limits it was
given, prepares the content (a `Received:` trace header first, RFC 5321 4.4, and
`Message-ID`/`Date` when the message lacks them, RFC 5322 3.6), lets an optional
signer (DKIM) add its header, stores the message durably through the spool and only
then tells the scheduler and returns the stored metadata, whose id is what the caller
hands back (`250 2.0.0 Ok: queued as <id>` / HTTP 202).  Nothing is acknowledged
before the spool transaction holding it has committed with sync.  Only the header
block is examined; the body is never copied more than once (the prepend).
"""

from __future__ import annotations

import email.utils
import functools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from relay.errors import RelayError
from relay.log import get_logger
from relay.model import MessageMeta, NewMessage, new_message_id

log = get_logger("ingest")


class IngestRejected(RelayError):
    """The message breaks a limit; carries the SMTP reply (the HTTP side maps it)."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text


class MessageStore(Protocol):
    """What ingest needs of the spool."""

    async def store(self, msg: NewMessage, *, timeout: float = ...) -> MessageMeta: ...


@dataclass(frozen=True, slots=True)
class Trace:
    """Where a message came from, for its Received header (RFC 5321 4.4, RFC 3848)."""

    helo: str = ""
    client_ip: str = ""
    protocol: str = "ESMTP"  # SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, HTTP
    tls_version: str = ""
    tls_cipher: str = ""
    auth_user: str = ""  # never written into the header (RFC 4954 leaves it optional)


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """Limits applied to every message whichever door it came through."""

    max_message_size: int = 50 << 20
    max_recipients: int = 1000


@dataclass(slots=True)
class IngestStatistics:
    """Counters since start: messages stored, refused by a limit, failed in the spool."""

    accepted: int = 0
    rejected: int = 0  # IngestRejected raised (limits, rate)
    failed: int = 0  # the spool did not store the message
    bytes: int = 0  # stored, headers included
    by_source: dict[str, int] = field(default_factory=dict)  # accepted, by Trace.protocol


# The header section ends at the first empty line (RFC 5322 2.1); a bare LF is
# tolerated here because the HTTP API may hand over LF-only text.
_BLANK_LINE = re.compile(rb"\n\r?\n")
_HEADER_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)
# What a HELO name may show in a trace header: a domain or an address literal.
_HELO_UNSAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")


def header_end(content: bytes) -> int:
    """The offset where the header section ends, just after its last line's line
    ending: the blank line and the body follow.  `len(content)` when there is no
    blank line (a message without a body), 0 when the message starts with one."""
    if content.startswith((b"\r\n", b"\n")):
        return 0
    m = _BLANK_LINE.search(content)
    return m.start() + 1 if m else len(content)


def header_block(content: bytes) -> bytes:
    """The header section of a message, without the line ending of its last line
    (the whole message when it has no blank line)."""
    end = header_end(content)
    if end == len(content):
        return content
    cut = 2 if content[end - 2 : end] == b"\r\n" else 1
    return content[: max(end - cut, 0)]


def header_names(content: bytes) -> set[bytes]:
    """Lower-cased names of the fields in the header section."""
    return {m.group(1).lower() for m in _HEADER_NAME.finditer(header_block(content))}


@functools.lru_cache(maxsize=64)
def _field_pattern(name: str) -> re.Pattern[bytes]:
    """A field called `name` (any case) with its folded continuation lines."""
    return re.compile(
        rb"^" + re.escape(name.encode()) + rb"[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.MULTILINE | re.I
    )


def _unfold(raw: bytes) -> str:
    return re.sub(rb"\r?\n[ \t]", b" ", raw).strip().decode("utf-8", "replace")


def header_values(content: bytes, name: str) -> list[str]:
    """The unfolded values of every header field called `name`, in order."""
    return [_unfold(m.group(1)) for m in _field_pattern(name).finditer(header_block(content))]


def header_value(content: bytes, name: str) -> str | None:
    """The unfolded value of the first header field called `name`, or None."""
    m = _field_pattern(name).search(header_block(content))
    return None if m is None else _unfold(m.group(1))


@functools.lru_cache(maxsize=16)
def _removal_pattern(names: tuple[str, ...]) -> re.Pattern[bytes]:
    alternatives = b"|".join(re.escape(n.encode()) for n in names)
    return re.compile(
        rb"^(?:" + alternatives + rb")[ \t]*:.*(?:\r?\n[ \t].*)*(?:\r?\n|$)", re.M | re.I
    )


def _strip_fields(head: bytes, names: Sequence[str]) -> bytes:
    """A header section without the fields called `names` (and their folded lines)."""
    return _removal_pattern(tuple(names)).sub(b"", head) if names else head


def remove_headers(content: bytes, names: Sequence[str]) -> bytes:
    """The message without the header fields called `names` (and their folded lines)."""
    if not names:
        return content
    end = header_end(content)
    return _strip_fields(content[:end], names) + content[end:]


def _trace_helo(helo: str) -> str:
    """The client's HELO name made safe for a header (it is whatever the client sent)."""
    return _HELO_UNSAFE.sub("?", helo[:255]) if helo else "unknown"


def _address_literal(ip: str) -> str:
    """RFC 5321 4.1.3: [192.0.2.1] or [IPv6:2001:db8::1]."""
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def received_header(
    trace: Trace, hostname: str, message_id: str, recipient: str | None, now: float
) -> bytes:
    """A Received field (RFC 5321 4.4) with the TLS details RFC 3848 users expect."""
    from_part = f"from {_trace_helo(trace.helo)}"
    if trace.client_ip:
        from_part += f" ({_address_literal(trace.client_ip)})"
    tls = ""
    if trace.tls_version:
        tls = f"\r\n\t(using {trace.tls_version} with cipher {trace.tls_cipher})"
    rcpt = f"\r\n\tfor <{recipient}>" if recipient else ""
    date = email.utils.formatdate(now, localtime=False, usegmt=True)
    value = f"{from_part}\r\n\tby {hostname} (relay) with {trace.protocol} id {message_id}{tls}{rcpt};\r\n\t{date}"
    return f"Received: {value}\r\n".encode("utf-8", "replace")


class Ingest:
    """Validates, completes, signs and durably stores new mail; then schedules it."""

    def __init__(
        self,
        spool: MessageStore,
        *,
        hostname: str,
        limits: IngestLimits = IngestLimits(),
        on_stored: Callable[[MessageMeta], None] | None = None,
        signer: Callable[[bytes, str], bytes] | None = None,
        write_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._spool = spool
        self._hostname = hostname
        self.limits = limits
        self._on_stored = on_stored
        self._signer = signer
        self._write_timeout = write_timeout
        self._clock = clock
        self.statistics = IngestStatistics()
        self._rates: dict[str, tuple[int, int, int]] = {}

    def set_on_stored(self, callback: Callable[[MessageMeta], None]) -> None:
        """Register the scheduler's hook (set once at composition time)."""
        self._on_stored = callback

    def check_recipients(self, count: int) -> None:
        """Raise IngestRejected if `count` recipients is over the limit (RFC 5321 4.5.3.1.8)."""
        if count > self.limits.max_recipients:
            self.statistics.rejected += 1
            raise IngestRejected(452, "4.5.3", "Too many recipients")

    def check_rate(self, account: str, per_minute: int) -> None:
        """Count one message for `account`; IngestRejected (450 4.7.1) over its rate.

        A sliding window of one minute approximated by two fixed windows, so the
        cost is O(1) per message and memory is two integers per active account.
        """
        if per_minute <= 0:
            return
        now = self._clock()
        window = int(now // 60)
        start, current, previous = self._rates.get(account, (window, 0, 0))
        if window != start:
            previous = current if window == start + 1 else 0
            start, current = window, 0
        weight = 1.0 - (now % 60) / 60.0
        if current + previous * weight >= per_minute:
            self._rates[account] = (start, current, previous)
            self.statistics.rejected += 1
            raise IngestRejected(450, "4.7.1", "Message rate limit exceeded, try again later")
        self._rates[account] = (start, current + 1, previous)

    def check_size(self, size: int) -> None:
        """Raise IngestRejected if `size` bytes is over the limit (RFC 1870)."""
        if size > self.limits.max_message_size:
            self.statistics.rejected += 1
            raise IngestRejected(552, "5.3.4", "Message size exceeds fixed maximum message size")

    def prepare(
        self,
        content: bytes,
        *,
        message_id: str,
        sender: str,
        recipients: Sequence[str],
        trace: Trace,
        strip_headers: Sequence[str] = (),
    ) -> bytes:
        """Trace header first, then Message-ID/Date when missing, then the signature.

        The body is copied once (into the result); only the header section is
        examined and rebuilt.
        """
        now = self._clock()
        end = header_end(content)
        head = _strip_fields(content[:end], strip_headers)
        names = {m.group(1).lower() for m in _HEADER_NAME.finditer(head)}
        rcpt = recipients[0] if len(recipients) == 1 else None
        pieces: list[bytes | memoryview] = [
            received_header(trace, self._hostname, message_id, rcpt, now)
        ]
        if b"message-id" not in names:
            pieces.append(f"Message-ID: <{message_id}@{self._hostname}>\r\n".encode())
        if b"date" not in names:
            pieces.append(f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n".encode())
        pieces.append(head)
        if end < len(content):
            pieces.append(memoryview(content)[end:])
        prepared = b"".join(pieces)
        if self._signer is not None:
            prepared = self._signer(prepared, sender)
        return prepared

    async def accept(
        self,
        sender: str,
        recipients: Sequence[str],
        content: bytes,
        *,
        trace: Trace = Trace(),
        tenant: str = "",
        campaign: str = "",
        tags: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        send_at: float | None = None,
        smtputf8: bool = False,
        body_8bit: bool = False,
        strip_headers: Sequence[str] = (),
    ) -> MessageMeta:
        """Store one message durably and schedule it; the returned id may be acknowledged."""
        if not recipients:
            self.statistics.rejected += 1
            raise IngestRejected(554, "5.5.1", "No valid recipients")
        self.check_recipients(len(recipients))
        self.check_size(len(content))
        if b"\0" in content:  # RFC 5322 2.3 / RFC 6152 3: no NUL, 8BITMIME or not
            self.statistics.rejected += 1
            raise IngestRejected(550, "5.6.0", "Message contains NUL characters")
        message_id = new_message_id(self._clock())
        prepared = self.prepare(
            content,
            message_id=message_id,
            sender=sender,
            recipients=recipients,
            trace=trace,
            strip_headers=strip_headers,
        )
        msg = NewMessage(
            sender=sender,
            recipients=tuple(recipients),
            content=prepared,
            tenant=tenant,
            campaign=campaign,
            tags=tuple(tags),
            metadata=dict(metadata or {}),
            send_at=send_at,
            smtputf8=smtputf8,
            body_8bit=body_8bit,
            message_id=message_id,
        )
        try:
            meta = await self._spool.store(msg, timeout=self._write_timeout)
        except Exception:
            self.statistics.failed += 1
            raise
        stats = self.statistics
        stats.accepted += 1
        stats.bytes += len(prepared)
        stats.by_source[trace.protocol] = stats.by_source.get(trace.protocol, 0) + 1
        if self._on_stored is not None:
            try:
                self._on_stored(meta)
            except Exception:
                # The message is durable: the scheduler finds it again at recovery.
                # Failing here would make the client send it a second time.
                log.exception("scheduling hook failed after store", message_id=meta.id)
        log.info(
            "accepted",
            message_id=meta.id,
            sender=sender,
            recipients=len(recipients),
            size=meta.size,
            tenant=tenant,
            campaign=campaign,
            protocol=trace.protocol,
            client_ip=trace.client_ip,
            user=trace.auth_user,
        )
        return meta
