"""relay.scheduler.ids: compact ids and entries round-trip and sort by time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.model import message_id_time, new_message_id
from relay.scheduler.ids import (
    entry_due,
    entry_due_ms,
    entry_id,
    make_entry,
    pack_id,
    unpack_id,
)


@given(now=st.floats(min_value=0, max_value=8e9))
def test_canonical_ids_pack_to_16_bytes(now: float) -> None:
    message_id = new_message_id(now)
    packed = pack_id(message_id)
    assert len(packed) == 16
    assert unpack_id(packed) == message_id


@given(text=st.text(min_size=1, max_size=60).filter(lambda s: not s.startswith("\x00")))
def test_any_other_id_round_trips(text: str) -> None:
    packed = pack_id(text)
    assert unpack_id(packed) == text


def test_non_canonical_ids_never_look_canonical() -> None:
    for text in ["a" * 15, "b" * 16, "0" * 26 + "x", "01arz3ndektsv4rrffq69g5fav", "Z" * 26]:
        packed = pack_id(text)
        assert len(packed) != 16
        assert unpack_id(packed) == text


@given(
    a=st.floats(min_value=0, max_value=4e9),
    b=st.floats(min_value=0, max_value=4e9),
)
def test_entries_sort_by_due_time(a: float, b: float) -> None:
    ea = make_entry(a, pack_id(new_message_id(a)))
    eb = make_entry(b, pack_id(new_message_id(b)))
    if int(a * 1000) < int(b * 1000):
        assert ea < eb
    assert abs(entry_due(ea) - a) < 0.001 + 1e-6
    assert entry_due_ms(ea) == int(a * 1000)


def test_entry_keeps_the_id() -> None:
    message_id = new_message_id(1_700_000_000.0)
    entry = make_entry(1_700_000_100.5, pack_id(message_id))
    assert unpack_id(entry_id(entry)) == message_id
    assert message_id_time(message_id) == 1_700_000_000.0
    assert make_entry(-5.0, b"x" * 16)[:8] == b"\x00" * 8
