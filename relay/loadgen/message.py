"""The messages a load run sends: unique ids, a recipient domain mix, an exact size.

Each message is a small header section made for it (Message-ID and X-Bench-Id
carry the run id and the message's sequence number) and a plain-text body cut
from a pattern so the whole message is exactly `size` bytes when it can be
(the header section alone sets the minimum).  Bodies are cached per length, so
building a message costs one header format and one join.
"""

from __future__ import annotations

import email.utils
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from relay.loadgen.headers import BENCH_ID_HEADER

__all__ = ["BenchMessage", "MessageFactory", "parse_domain_mix"]

_PATTERN: Final = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs. "
_TWICE: Final = _PATTERN * 2
LINE: Final = 78  # body line length with its CRLF


def _body(length: int) -> bytes:
    """Exactly `length` bytes of text lines (at most 78 with CRLF); b"" for length < 2."""
    lines = []
    remaining = length
    offset = 0
    while remaining >= 2:
        take = min(LINE, remaining)
        if remaining - take == 1:
            take -= 1  # leave 2 bytes: an empty last line instead of a lone byte
        text = _TWICE[offset : offset + take - 2]
        offset = (offset + 7) % len(_PATTERN)
        lines.append(text + b"\r\n")
        remaining -= take
    return b"".join(lines)


def parse_domain_mix(text: str) -> tuple[tuple[str, int], ...]:
    """``"a.test:3,b.test:1"`` -> ``(("a.test", 3), ("b.test", 1))`` (weight 1 if omitted)."""
    mix: list[tuple[str, int]] = []
    for part in text.split(","):
        domain, _, weight = part.strip().partition(":")
        domain = domain.strip().lower()
        if not domain or " " in domain or "@" in domain:
            raise ValueError(f"invalid domain {domain!r} in {text!r}")
        try:
            count = int(weight) if weight.strip() else 1
        except ValueError:
            raise ValueError(f"invalid weight {weight!r} for {domain} in {text!r}") from None
        if count < 1:
            raise ValueError(f"the weight of {domain} must be at least 1")
        mix.append((domain, count))
    return tuple(mix)


@dataclass(frozen=True, slots=True)
class BenchMessage:
    """One message to send."""

    sequence: int
    bench_id: str
    recipients: tuple[str, ...]
    content: bytes  # CRLF line endings, not dot-stuffed


class MessageFactory:
    """Builds message number `n` of a run: ids, recipients and content.

    Recipient domains follow `domains` (weights as in ``a.test:3,b.test:1``) in a
    fixed rotation, so any run of sum(weights) recipients holds the exact mix.
    """

    def __init__(
        self,
        *,
        run_id: str,
        sender: str,
        size: int,
        recipients: int,
        domains: Sequence[tuple[str, int]],
        local_parts: int = 1000,
    ) -> None:
        if recipients < 1 or size < 0 or local_parts < 1:
            raise ValueError("recipients and local_parts must be >= 1 and size >= 0")
        if not domains:
            raise ValueError("at least one recipient domain is needed")
        self.run_id = run_id
        self.sender = sender
        self.size = size
        self.recipients = recipients
        self._rotation = tuple(d for d, weight in domains for _ in range(weight))
        self._local_parts = local_parts
        self._date = email.utils.formatdate(localtime=False)
        self._bodies: dict[int, bytes] = {}

    def build(self, sequence: int) -> BenchMessage:
        """Message number `sequence` (0, 1, ...)."""
        bench_id = f"{self.run_id}-{sequence}"
        rotation = self._rotation
        first = sequence * self.recipients
        recipients = tuple(
            f"user{(first + j) % self._local_parts}@{rotation[(first + j) % len(rotation)]}"
            for j in range(self.recipients)
        )
        header = (
            f"From: <{self.sender}>\r\n"
            f"To: <{recipients[0]}>\r\n"
            f"Subject: relay bench {self.run_id} #{sequence}\r\n"
            f"Date: {self._date}\r\n"
            f"Message-ID: <{bench_id}@loadgen.test>\r\n"
            f"{BENCH_ID_HEADER}: {bench_id}\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "\r\n"
        ).encode("ascii")
        length = max(self.size - len(header), 0)
        body = self._bodies.get(length)
        if body is None:
            if len(self._bodies) > 64:  # sizes vary only with the digits of the id
                self._bodies.clear()
            body = self._bodies[length] = _body(length)
        return BenchMessage(sequence, bench_id, recipients, header + body)
