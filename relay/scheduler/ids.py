"""Compact in-memory forms of message ids and scheduled entries.

A message id is 26 characters of Crockford base32 (128 bits, see relay.model); the
scheduler keeps it as the 16-byte big-endian number instead.  An id that is not in
that canonical form (anything else a caller may have assigned) is kept as its ASCII
bytes, padded with leading NULs so that its length is never 16: the length alone says
which form an id is in.

A scheduled entry is one `bytes` object: the due time in whole milliseconds as 8
big-endian bytes, then the packed id.  Entries therefore sort by due time (then id)
as plain bytes, which is what the per-queue heaps rely on, and each costs one small
object (57 bytes for a canonical id) instead of a tuple, a float and a string.
"""

from __future__ import annotations

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_STANDARD = "0123456789abcdefghijklmnopqrstuv"  # the digits int(x, 32) understands
# A bytes.translate table: Crockford digits to int()'s; every other byte (signs, "_",
# spaces, the letters Crockford leaves out, lower case) to "z", which int(x, 32) rejects.
TO_BASE32 = bytes(
    _STANDARD.encode()[_CROCKFORD.index(chr(b))] if chr(b) in _CROCKFORD else ord("z")
    for b in range(256)
)
ID_CHARS = 26
PACKED = 16
MAX_MS = (1 << 64) - 1
_MAX_ID = 1 << 128


def pack_canonical(message_id: str) -> bytes | None:
    """The 16-byte form of a canonical id, or None if it is not one."""
    if len(message_id) != ID_CHARS or not message_id.isascii():
        return None
    try:
        value = int(message_id.encode("ascii").translate(TO_BASE32), 32)
    except ValueError:
        return None
    return value.to_bytes(PACKED, "big") if value < _MAX_ID else None


def pack_id(message_id: str) -> bytes:
    """The compact form of a message id (16 bytes when canonical)."""
    packed = pack_canonical(message_id)
    if packed is not None:
        return packed
    raw = message_id.encode("utf-8")
    if len(raw) + 1 == PACKED:
        return b"\x00\x00" + raw
    return b"\x00" + raw


def unpack_id(packed: bytes) -> str:
    """The message id a `pack_id` result stands for."""
    if len(packed) == PACKED:
        value = int.from_bytes(packed, "big")
        chars = []
        for _ in range(ID_CHARS):
            chars.append(_CROCKFORD[value & 31])
            value >>= 5
        return "".join(reversed(chars))
    return packed.lstrip(b"\x00").decode("utf-8")


def due_ms(when: float) -> int:
    """A time in seconds as whole milliseconds, clamped to what an entry can hold."""
    return min(MAX_MS, max(0, int(when * 1000.0)))


def make_entry(due: float, packed_id: bytes) -> bytes:
    """A scheduled entry: due time (ms, 8 bytes big-endian) + packed id."""
    return due_ms(due).to_bytes(8, "big") + packed_id


def entry_due(entry: bytes) -> float:
    """The due time of an entry, in seconds."""
    return int.from_bytes(entry[:8], "big") / 1000.0


def entry_due_ms(entry: bytes) -> int:
    """The due time of an entry, in milliseconds."""
    return int.from_bytes(entry[:8], "big")


def entry_id(entry: bytes) -> bytes:
    """The packed id of an entry."""
    return entry[8:]
