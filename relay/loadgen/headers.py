"""The two header fields the benchmark tools identify messages by.

`BENCH_ID_HEADER` is what `relay bench send` stamps on every message; a sink
reads it (or Message-ID) back without parsing the message: it scans only the
header section, once, in lower case.
"""

from __future__ import annotations

from typing import Final

__all__ = ["BENCH_ID_HEADER", "header_ids"]

BENCH_ID_HEADER: Final = "X-Bench-Id"

_BENCH: Final = b"\n" + BENCH_ID_HEADER.lower().encode("ascii") + b":"
_MESSAGE_ID: Final = b"\nmessage-id:"


def _value(headers: bytes, lowered: bytes, name: bytes) -> str | None:
    start = lowered.find(name)
    if start < 0:
        return None
    start += len(name)
    end = headers.find(b"\r\n", start)
    while end >= 0 and headers[end + 2 : end + 3] in (b" ", b"\t"):  # folded
        end = headers.find(b"\r\n", end + 2)
    raw = headers[start:] if end < 0 else headers[start:end]
    value = b" ".join(raw.split()).decode("utf-8", "replace")
    return value or None


def header_ids(content: bytes) -> tuple[str | None, str | None]:
    """(Message-ID, X-Bench-Id) of a message with CRLF line endings; None when absent."""
    end = content.find(b"\r\n\r\n")
    headers = b"\r\n" + (content if end < 0 else content[: end + 2])
    lowered = headers.lower()
    return _value(headers, lowered, _MESSAGE_ID), _value(headers, lowered, _BENCH)
