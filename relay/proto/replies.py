"""SMTP replies: the `Reply` value, wire formatting, and EHLO capability parsing.

A reply is a three-digit code (RFC 5321 4.2), an optional enhanced status code
(RFC 3463, announced by ENHANCEDSTATUSCODES, RFC 2034) and one or more text lines.
On the wire every line but the last is ``NNN-text``, the last ``NNN text``; the
enhanced code, when present, prefixes the text of every line.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from relay.errors import LocalProtocolError

__all__ = ["Extensions", "Reply", "format_reply"]

_ENHANCED_RE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete SMTP reply, as received or as to be sent."""

    code: int
    enhanced: str | None = None
    lines: tuple[str, ...] = ("",)

    @property
    def text(self) -> str:
        """The text lines joined with newlines."""
        return "\n".join(self.lines)

    @property
    def is_positive(self) -> bool:
        """2xx or 3xx: the command was accepted (or may continue)."""
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        """4xx: a temporary failure; the same command may succeed later."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """5xx: a permanent failure."""
        return self.code >= 500

    def to_bytes(self) -> bytes:
        """The wire form (see `format_reply`)."""
        return format_reply(self.code, self.enhanced, self.lines)

    def __str__(self) -> str:
        """One line, as logs and recipient records keep it: ``550 5.1.1 text``."""
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        text = " ".join(line for line in self.lines if line)
        if text:
            parts.append(text)
        return " ".join(parts)


def format_reply(code: int, enhanced: str | None, text: str | Sequence[str]) -> bytes:
    """The wire form of a reply.

    `text` is one string (split at newlines into lines) or a sequence of lines.
    Raises LocalProtocolError for a code outside 200-599, an enhanced code whose
    class differs from the code's first digit (RFC 3463 2), or a CR (or a lone
    surrogate) in the text.
    """
    prefix = _prefix(code, enhanced)
    if isinstance(text, str):
        if "\n" not in text and "\r" not in text:  # the common case: one line
            body = prefix + text
            return _encode(f"{code} {body}\r\n" if body else f"{code}\r\n")
        lines = text.split("\n")
    else:
        lines = list(text) or [""]
    out = []
    last = len(lines) - 1
    for i, line in enumerate(lines):
        if "\r" in line or "\n" in line:
            raise LocalProtocolError("reply text may not contain CR or LF")
        body = prefix + line
        sep = " " if i == last else "-"
        out.append(f"{code}{sep}{body}\r\n" if body else f"{code}{sep.strip()}\r\n")
    return _encode("".join(out))


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise LocalProtocolError("reply text is not encodable as UTF-8") from exc


@functools.lru_cache(maxsize=512)
def _prefix(code: int, enhanced: str | None) -> str:
    """The checked ``enhanced SP`` prefix of a reply's lines ("" without one)."""
    if not 200 <= code <= 599:
        raise LocalProtocolError(f"reply code {code} outside 200-599")
    if enhanced is None:
        return ""
    if _ENHANCED_RE.fullmatch(enhanced) is None or int(enhanced[0]) != code // 100:
        raise LocalProtocolError(f"enhanced status code {enhanced!r} does not fit reply {code}")
    return enhanced + " "


@dataclass(frozen=True, slots=True)
class Extensions:
    """The service extensions a server announced in its EHLO reply (RFC 5321 4.1.1.1).

    `keywords` maps each upper-cased keyword to its parameter text ("" when none).
    `size` is None when SIZE was not announced and 0 when it was announced without a
    fixed limit (RFC 1870).  After HELO every field is empty/False.
    """

    keywords: Mapping[str, str] = field(default_factory=dict)
    pipelining: bool = False
    size: int | None = None
    eightbitmime: bool = False
    smtputf8: bool = False
    enhanced_status_codes: bool = False
    starttls: bool = False
    chunking: bool = False
    auth_mechanisms: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, lines: Sequence[str]) -> Extensions:
        """Parse the text lines of a 250 EHLO reply (the first line is the greeting)."""
        keywords: dict[str, str] = {}
        auth: set[str] = set()
        for line in lines[1:]:
            keyword, _, params = line.strip().partition(" ")
            keyword = keyword.upper()
            if keyword.startswith("AUTH="):  # the pre-RFC 4954 form some servers still send
                auth.update(m.upper() for m in (keyword[5:] + " " + params).split())
                continue
            if not keyword:
                continue
            keywords[keyword] = params.strip()
            if keyword == "AUTH":
                auth.update(m.upper() for m in params.split())
        size: int | None = None
        if "SIZE" in keywords:
            value = keywords["SIZE"]
            size = int(value) if value.isdigit() and value.isascii() else 0
        return cls(
            keywords=keywords,
            pipelining="PIPELINING" in keywords,
            size=size,
            eightbitmime="8BITMIME" in keywords,
            smtputf8="SMTPUTF8" in keywords,
            enhanced_status_codes="ENHANCEDSTATUSCODES" in keywords,
            starttls="STARTTLS" in keywords,
            chunking="CHUNKING" in keywords,
            auth_mechanisms=frozenset(auth),
        )
