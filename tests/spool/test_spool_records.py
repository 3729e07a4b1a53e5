"""Record codecs: round trips, key order, and undecodable input always meaning RecordError."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import RecordError
from relay.model import Attempt, MessageMeta, RcptStatus, Recipient, new_message_id
from relay.spool import records as rec

text = st.text(max_size=30)
addresses = st.builds(
    "{}@{}".format,
    st.text("abcxyz.+-_0189", min_size=1, max_size=12),
    st.text("abcxyzABCXYZ.-019", min_size=1, max_size=12),
)
times = st.floats(min_value=0.0, max_value=4e9, allow_nan=False)
recipients = st.builds(
    Recipient,
    address=addresses,
    status=st.sampled_from(RcptStatus),
    reply=text,
    attempts=st.integers(0, 1000),
)
attempts = st.builds(
    Attempt,
    at=times,
    mx=text,
    recipients=st.lists(addresses, max_size=3).map(tuple),
    reply=text,
    duration=st.floats(0.0, 1e4),
)
metas = st.builds(
    MessageMeta,
    id=st.builds(new_message_id, times),
    sender=st.one_of(st.just(""), addresses),
    recipients=st.lists(recipients, min_size=1, max_size=5).map(tuple),
    created=times,
    expires=times,
    next_attempt=times,
    size=st.integers(0, 1 << 40),
    attempts=st.integers(0, 1000),
    tenant=text,
    campaign=text,
    tags=st.lists(text, max_size=3).map(tuple),
    metadata=st.dictionaries(text, text, max_size=3),
    send_at=st.one_of(st.none(), times),
    smtputf8=st.booleans(),
    body_8bit=st.booleans(),
    history=st.lists(attempts, max_size=3).map(tuple),
)


@given(metas)
def test_meta_roundtrip(meta: MessageMeta) -> None:
    assert rec.decode_meta(meta.id, rec.encode_meta(meta)) == meta


@given(metas, times)
def test_completed_roundtrip(meta: MessageMeta, at: float) -> None:
    assert rec.decode_completed(meta.id, rec.encode_completed(meta, at)) == (meta, at)


@given(metas)
def test_schedule_entry_roundtrip(meta: MessageMeta) -> None:
    record = rec.decode_schedule(rec.schedule_key(meta), rec.encode_schedule(meta))
    assert record == rec.schedule_record_of(meta)
    assert record.domains == tuple(
        dict.fromkeys(r.address.rpartition("@")[2].lower() for r in meta.pending())
    )


@given(st.lists(st.tuples(times, st.builds(new_message_id, times)), min_size=2))
def test_schedule_keys_sort_by_time_then_id(entries: list[tuple[float, str]]) -> None:
    keys = sorted(rec.time_key(t, mid.encode()) for t, mid in entries)
    assert [rec.split_time_key(k) for k in keys] == sorted(entries)


def test_negative_and_nan_times_sort_first() -> None:
    assert rec.time_key(-5.0, b"A") == rec.time_key(0.0, b"A")
    assert rec.time_key(float("nan"), b"A") == rec.time_key(0.0, b"A")


@given(st.binary(max_size=20_000))
def test_content_roundtrip(content: bytes) -> None:
    assert rec.decode_content(rec.encode_content(content)) == content


@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | text | st.binary(),
                    lambda inner: st.lists(inner, max_size=3).map(tuple)
                    | st.dictionaries(text, inner, max_size=3)))  # fmt: skip
def test_aux_roundtrip(value: object) -> None:
    assert rec.decode_aux(rec.encode_aux(value)) == value


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_record_error(raw: bytes) -> None:
    key = rec.time_key(1.0, b"01ABCDEFGHJKMNPQRSTVWXYZ01")
    for decode in (
        lambda: rec.decode_meta("x", raw),
        lambda: rec.decode_completed("x", raw),
        lambda: rec.decode_schedule(key, raw),
        lambda: rec.decode_content(raw),
        lambda: rec.decode_aux(raw),
        lambda: rec.decode_quarantine(raw),
    ):
        with contextlib.suppress(RecordError):
            decode()


@given(metas, st.data())
def test_mangled_records_decode_or_raise_record_error(
    meta: MessageMeta, data: st.DataObject
) -> None:
    raw = bytearray(rec.encode_meta(meta))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decoded = rec.decode_meta(meta.id, bytes(raw))
    except RecordError:
        return
    assert isinstance(decoded, MessageMeta)
    assert all(isinstance(r.status, RcptStatus) for r in decoded.recipients)


def test_unknown_version_is_named_in_the_error() -> None:
    with pytest.raises(RecordError, match="unknown version 2 of meta record"):
        rec.decode_meta("x", msgpack.packb([rec.RecordType.META, 2, "fields"]))
