"""Versioned msgpack codecs for every record the spool keeps.

Every value is a msgpack array whose first two items are a record type tag and a
version: ``[type, version, *fields]``.  Fields are positional (compact arrays, no
key names) so a record costs little to encode and to store.  A decoder exists for
each (type, version) this code understands; anything else -- an unknown version
written by a newer relay, a wrong type, truncated or garbled bytes -- raises
`RecordError`, whose message is the reason the spool files with the record in
its quarantine.  Readers never guess.

Keys:
- meta, content, completed: the message id in ASCII (ids sort by time).
- schedule: 8 bytes of big-endian IEEE 754 ``next_attempt`` then the id, so the
  index sorts by next attempt, then id.  Non-negative doubles compare like their
  big-endian bytes, so the time round-trips exactly.
- completed index: 8 bytes of ``completed_at`` (same encoding) then the id.
- quarantine: the source database name, a NUL byte, the source key.
"""

from __future__ import annotations

import enum
import struct
import sys
from collections.abc import Sequence
from typing import Any

import msgpack

from relay.errors import RecordError
from relay.model import (
    Attempt,
    MessageMeta,
    RcptStatus,
    Recipient,
    ScheduleRecord,
    domain_of,
)


class RecordType(enum.IntEnum):
    """The type tag, the first item of every record."""

    META = 1
    CONTENT = 2
    SCHEDULE = 3
    COMPLETED = 4
    QUARANTINE = 5
    AUX = 6


#: The version each type is written with today.
VERSION = 1

_TIME = struct.Struct(">d")
_SCHEDULE = int(RecordType.SCHEDULE)
_SHARED_DOMAINS: dict[tuple[Any, ...], tuple[str, ...]] = {}
_SHARED_DOMAINS_MAX = 1 << 16
_STATUS = {int(s): s for s in RcptStatus}
_FLAG_SMTPUTF8 = 1
_FLAG_8BIT = 2
_NUMBER = (int, float)

# Field types of a meta record (version 1), after the type tag and version.
_META_FIELD_TYPES: tuple[type | tuple[type, ...], ...] = (
    str,  # sender
    tuple,  # recipients: (address, status, reply, attempts)
    _NUMBER,  # created
    _NUMBER,  # expires
    _NUMBER,  # next_attempt
    int,  # size
    int,  # attempts
    str,  # tenant
    str,  # campaign
    tuple,  # tags
    dict,  # metadata
    (int, float, type(None)),  # send_at
    int,  # flags
    tuple,  # history: (at, mx, recipients, reply, duration)
)
_META_FIELDS = len(_META_FIELD_TYPES)


# --- keys --------------------------------------------------------------------------


def time_key(at: float, message_id: bytes) -> bytes:
    """A key sorting by `at` (clamped to >= 0), then by id."""
    return _TIME.pack(at if at > 0.0 else 0.0) + message_id


def split_time_key(key: bytes | memoryview) -> tuple[float, str]:
    """The (time, message id) of a schedule or completed-index key."""
    return _TIME.unpack_from(key)[0], str(key[8:], "ascii")


def schedule_key(meta: MessageMeta) -> bytes:
    """The schedule-index key of a queued message."""
    return time_key(meta.next_attempt, meta.id.encode("ascii"))


def quarantine_key(db_name: str, key: bytes) -> bytes:
    """Where a record from `db_name` at `key` is filed in the quarantine."""
    return db_name.encode("ascii") + b"\0" + key


# --- decoding helpers ------------------------------------------------------------


def _unpack(raw: bytes | memoryview, expected: RecordType) -> tuple[Any, ...]:
    """The fields of a record after its tag and version (version checked)."""
    try:
        record = msgpack.unpackb(raw, use_list=False)
    except Exception as exc:  # any malformed input: ExtraData, FormatError, ...
        raise RecordError(f"corrupt {expected.name.lower()} record: {exc}") from exc
    if type(record) is not tuple or len(record) < 2:
        raise RecordError(f"corrupt {expected.name.lower()} record: not a tagged array")
    if record[0] != expected:
        raise RecordError(f"unexpected record type {record[0]!r} (expected {expected.name})")
    if record[1] != VERSION:
        raise RecordError(f"unknown version {record[1]!r} of {expected.name.lower()} record")
    return record


def _pack(record: object) -> bytes:
    data: bytes = msgpack.packb(record)
    return data


def _corrupt(kind: str, detail: object) -> RecordError:
    return RecordError(f"corrupt {kind} record: {detail}")


# --- meta ----------------------------------------------------------------------------


def _meta_fields(meta: MessageMeta) -> list[Any]:
    flags = (_FLAG_SMTPUTF8 if meta.smtputf8 else 0) | (_FLAG_8BIT if meta.body_8bit else 0)
    metadata = meta.metadata if type(meta.metadata) is dict else dict(meta.metadata)
    return [
        meta.sender,
        [(r.address, int(r.status), r.reply, r.attempts) for r in meta.recipients],
        meta.created,
        meta.expires,
        meta.next_attempt,
        meta.size,
        meta.attempts,
        meta.tenant,
        meta.campaign,
        meta.tags,
        metadata,
        meta.send_at,
        flags,
        [(a.at, a.mx, a.recipients, a.reply, a.duration) for a in meta.history],
    ]


def _meta_from_fields(message_id: str, fields: Sequence[Any], kind: str) -> MessageMeta:
    if len(fields) != _META_FIELDS:
        raise _corrupt(kind, f"{len(fields)} fields, expected {_META_FIELDS}")
    for value, expected in zip(fields, _META_FIELD_TYPES, strict=True):
        if not isinstance(value, expected):
            raise _corrupt(kind, f"field of type {type(value).__name__}")
    (sender, rcpts, created, expires, next_attempt, size, attempts, tenant, campaign, tags,
     metadata, send_at, flags, history) = fields  # fmt: skip
    try:
        recipients = tuple(
            Recipient(address, _STATUS[status], reply, n)
            for address, status, reply, n in rcpts
            if type(address) is str and type(reply) is str and type(n) is int
        )
        if len(recipients) != len(rcpts):
            raise _corrupt(kind, "malformed recipient")
        attempts_history = tuple(
            Attempt(float(at), mx, rs, reply, float(duration))
            for at, mx, rs, reply, duration in history
            if type(mx) is str and type(rs) is tuple and type(reply) is str
        )
        if len(attempts_history) != len(history):
            raise _corrupt(kind, "malformed attempt")
        if not all(type(tag) is str for tag in tags):
            raise _corrupt(kind, "malformed tags")
    except (KeyError, TypeError, ValueError) as exc:
        raise _corrupt(kind, f"malformed recipient or attempt: {exc!r}") from exc
    return MessageMeta(
        id=message_id,
        sender=sender,
        recipients=recipients,
        created=float(created),
        expires=float(expires),
        next_attempt=float(next_attempt),
        size=size,
        attempts=attempts,
        tenant=tenant,
        campaign=campaign,
        tags=tags,
        metadata=metadata,
        send_at=None if send_at is None else float(send_at),
        smtputf8=bool(flags & _FLAG_SMTPUTF8),
        body_8bit=bool(flags & _FLAG_8BIT),
        history=attempts_history,
    )


def encode_meta(meta: MessageMeta) -> bytes:
    """The meta record of a queued message (its id is the key, not stored)."""
    return _pack([RecordType.META, VERSION, *_meta_fields(meta)])


def decode_meta(message_id: str, raw: bytes | memoryview) -> MessageMeta:
    """Decode a meta record; `RecordError` if it cannot be trusted."""
    return _meta_from_fields(message_id, _unpack(raw, RecordType.META)[2:], "meta")


# --- completed -----------------------------------------------------------------------


def encode_completed(meta: MessageMeta, completed_at: float) -> bytes:
    """The record of a message whose recipients are all final."""
    fields = _meta_fields(meta)
    return _pack([RecordType.COMPLETED, VERSION, completed_at, *fields])


def decode_completed(message_id: str, raw: bytes | memoryview) -> tuple[MessageMeta, float]:
    """Decode a completed record: (final metadata, completion time)."""
    record = _unpack(raw, RecordType.COMPLETED)
    if len(record) < 3 or not isinstance(record[2], _NUMBER):
        raise _corrupt("completed", "no completion time")
    return _meta_from_fields(message_id, record[3:], "completed"), float(record[2])


# --- content -------------------------------------------------------------------------


def encode_content(content: bytes) -> bytes:
    """The content record: the complete message bytes."""
    return _pack((RecordType.CONTENT, VERSION, content))


def decode_content(raw: bytes | memoryview) -> bytes:
    """Decode a content record."""
    record = _unpack(raw, RecordType.CONTENT)
    if len(record) != 3 or type(record[2]) is not bytes:
        raise _corrupt("content", "no message bytes")
    return record[2]


# --- schedule index ------------------------------------------------------------------


def pending_domains(recipients: Sequence[Recipient]) -> tuple[str, ...]:
    """The distinct recipient domains (in recipient order) with work left to do."""
    domains: list[str] = []
    for rcpt in recipients:
        if rcpt.status < RcptStatus.DELIVERED:
            domain = domain_of(rcpt.address)
            if domain not in domains:
                domains.append(domain)
    return tuple(domains)


def encode_schedule(meta: MessageMeta) -> bytes:
    """The schedule-index value of a queued message (next_attempt and id are the key)."""
    domains = pending_domains(meta.recipients)
    return _pack((RecordType.SCHEDULE, VERSION, meta.expires, meta.tenant, meta.campaign, domains))


def decode_schedule(key: bytes | memoryview, raw: bytes | memoryview) -> ScheduleRecord:
    """Decode one schedule-index entry; the hot loop of recovery.

    The common case is checked inline; on any doubt `_unpack` (the general path)
    raises with the precise reason.
    """
    try:
        record = msgpack.unpackb(raw, use_list=False)
        _tag, _version, expires, tenant, campaign, domains = record
    except Exception:
        _unpack(raw, RecordType.SCHEDULE)
        raise _corrupt("schedule", "wrong shape") from None
    if _tag != _SCHEDULE or _version != VERSION or type(record) is not tuple:
        _unpack(raw, RecordType.SCHEDULE)
        raise _corrupt("schedule", "not a schedule array")
    if len(key) < 9:
        raise _corrupt("schedule", "key too short")
    if (
        type(tenant) is not str
        or type(campaign) is not str
        or type(domains) is not tuple
        or not isinstance(expires, _NUMBER)
    ):
        raise _corrupt("schedule", "field of the wrong type")
    try:
        message_id = str(key[8:], "ascii")
    except UnicodeDecodeError as exc:
        raise _corrupt("schedule", "key is not an id") from exc
    return ScheduleRecord(
        message_id,
        _TIME.unpack_from(key)[0],
        float(expires),
        sys.intern(tenant),
        sys.intern(campaign),
        _shared_domains(domains),
    )


def _shared_domains(domains: tuple[Any, ...]) -> tuple[str, ...]:
    """One tuple object per distinct domain list, of interned strings.

    A million queued messages mostly share a few thousand domain lists, so
    recovery hands the scheduler shared objects instead of a million copies.
    """
    shared = _SHARED_DOMAINS.get(domains)
    if shared is None:
        if not all(type(domain) is str for domain in domains):
            raise _corrupt("schedule", "domain of the wrong type")
        shared = tuple([sys.intern(domain) for domain in domains])
        if len(_SHARED_DOMAINS) >= _SHARED_DOMAINS_MAX:
            _SHARED_DOMAINS.clear()
        _SHARED_DOMAINS[shared] = shared
    return shared


def schedule_record_of(meta: MessageMeta) -> ScheduleRecord:
    """The schedule record of a queued message, as `iter_schedule` would read it."""
    return ScheduleRecord(
        meta.id,
        meta.next_attempt if meta.next_attempt > 0.0 else 0.0,
        meta.expires,
        sys.intern(meta.tenant),
        sys.intern(meta.campaign),
        _shared_domains(pending_domains(meta.recipients)),
    )


# --- auxiliary tables ----------------------------------------------------------------


def encode_aux(value: Any) -> bytes:
    """An aux-table value (anything msgpack encodes; TypeError otherwise)."""
    return _pack((RecordType.AUX, VERSION, value))


def decode_aux(raw: bytes | memoryview) -> Any:
    """Decode an aux-table value (arrays come back as tuples)."""
    record = _unpack(raw, RecordType.AUX)
    if len(record) != 3:
        raise _corrupt("aux", "wrong shape")
    return record[2]


# --- quarantine ----------------------------------------------------------------------


def encode_quarantine(db_name: str, key: bytes, raw: bytes, reason: str, at: float) -> bytes:
    """A quarantined record: where it came from, its raw bytes, why, and when."""
    return _pack((RecordType.QUARANTINE, VERSION, db_name, key, raw, reason, at))


def decode_quarantine(raw: bytes | memoryview) -> tuple[str, bytes, bytes, str, float]:
    """Decode a quarantine entry: (db name, key, raw bytes, reason, time)."""
    record = _unpack(raw, RecordType.QUARANTINE)
    if len(record) != 7:
        raise _corrupt("quarantine", "wrong shape")
    _tag, _version, db_name, key, value, reason, at = record
    if not (
        type(db_name) is str
        and type(key) is bytes
        and type(value) is bytes
        and type(reason) is str
        and isinstance(at, _NUMBER)
    ):
        raise _corrupt("quarantine", "field of the wrong type")
    return db_name, key, value, reason, float(at)
