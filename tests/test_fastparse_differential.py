"""Differential tests: the compiled relay._fastparse and the twin relay._fastparse_py
must give identical outputs, states and exception classes for any bytes in any chunking.

Skipped only when the run selects the twin (RELAY_NO_EXTENSIONS=1); a missing
compiled module otherwise fails (see tests/conftest.py).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from fastparse_impls import load_fastparse
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import ParseError

SETTINGS = settings(max_examples=300, deadline=None)

# Pieces that exercise the interesting paths far more often than uniform random bytes.
PIECES = [b"\r", b"\n", b".", b"a", b"xyz", b"\r\n", b"\r\n.", b".\r\n", b"\r\n.\r\n", b"..", b" "]
# Mostly well-formed CRLF text of up to a few KiB: exercises the compiled module's
# 64-byte block fast paths, and every way of leaving them (bare endings, stuffed dots,
# the end marker, limits reached inside a block).
_FILLER = b"The quick brown fox. Jumps over the lazy dog.. 0123456789 " * 4
TEXT_LINES = st.lists(
    st.tuples(
        st.sampled_from([b"", b"", b"", b".", b"..", b".\r", b"\r"]),
        st.integers(0, 200),
        st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r", b"\r\r\n", b"\r\n.\r\n"]),
    ).map(lambda t: t[0] + _FILLER[: t[1]] + t[2]),
    max_size=25,
).map(b"".join)
SMTP_BYTES = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join),
    TEXT_LINES,
)
REPLY_PIECES = [b"250", b"220", b"550", b"2", b"-", b" ", b".", b"\r\n", b"\n", b"x", b"\xff"]
REPLY_PIECES += [b"2.1.0", b"5.1.1", b"2.10.100", b"\r"]
REPLY_BYTES = st.one_of(
    st.binary(max_size=100),
    st.lists(st.sampled_from(REPLY_PIECES), max_size=40).map(b"".join),
)


@pytest.fixture(scope="module")
def both() -> tuple[ModuleType, ModuleType]:
    """(compiled, twin)."""
    return load_fastparse("c"), load_fastparse("py")


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (clamped and sorted; repeats give empty chunks)."""
    points = sorted(min(c, len(data)) for c in cuts)
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


CUTS = st.lists(st.integers(0, 3000), max_size=8)


def run_data(fp: ModuleType, pieces: list[bytes], kw: dict[str, Any]) -> tuple[Any, ...]:
    reader = fp.DataReader(**kw)
    outputs = []
    for piece in pieces:
        outputs.append(reader.feed(piece))
        outputs.append((reader.done, reader.size, type(reader.error)))
    error = reader.error
    return tuple(outputs), reader.trailing, type(error), str(error) if error else None


def run_stuffer(fp: ModuleType, pieces: list[bytes]) -> list[bytes]:
    stuffer = fp.DotStuffer()
    return [stuffer.feed(p) for p in pieces] + [stuffer.finish()]


def run_lines(fp: ModuleType, pieces: list[bytes], max_length: int) -> list[Any]:
    reader = fp.LineReader(max_length)
    out: list[Any] = []
    for piece in pieces:
        reader.feed(piece)
        while True:
            try:
                line = reader.next_line()
            except ParseError as exc:
                out.append((type(exc), str(exc)))
                continue
            if line is None:
                break
            out.append(line)
        out.append(reader.buffered)
    out.append(reader.take_buffer())
    return out


def run_replies(fp: ModuleType, pieces: list[bytes], max_line_length: int) -> list[Any]:
    reader = fp.ReplyReader(max_line_length)
    out: list[Any] = []
    for piece in pieces:
        reader.feed(piece)
        while True:
            try:
                reply = reader.next_reply()
            except ParseError as exc:
                out.append((type(exc), str(exc)))
                continue
            if reply is None:
                break
            out.append(reply)
        out.append(reader.buffered)
    out.append(reader.take_buffer())
    return out


DATA_KWARGS = st.fixed_dictionaries(
    {
        "max_size": st.sampled_from([0, 1, 7, 30, 300, 1000, 10**6]),
        "max_line_length": st.sampled_from([1, 2, 3, 8, 63, 64, 65, 100, 1000]),
        "bare_line_ending": st.sampled_from(["reject", "normalize"]),
    }
)


@SETTINGS
@given(data=SMTP_BYTES, cuts=CUTS, kw=DATA_KWARGS)
def test_data_reader_same_in_both(
    both: tuple[ModuleType, ModuleType], data: bytes, cuts: list[int], kw: dict[str, Any]
) -> None:
    c, py = both
    pieces = split(data, cuts)
    result = run_data(c, pieces, kw)
    assert result == run_data(py, pieces, kw)
    # and the chunking changes nothing but where the output is cut
    whole = run_data(c, [data], kw)
    assert b"".join(o for o in result[0] if isinstance(o, bytes)) == whole[0][0]
    assert result[0][-1] == whole[0][-1]
    assert result[1:] == whole[1:]


@SETTINGS
@given(data=SMTP_BYTES, cuts=CUTS)
def test_stuffer_same_in_both(
    both: tuple[ModuleType, ModuleType], data: bytes, cuts: list[int]
) -> None:
    c, py = both
    pieces = split(data, cuts)
    assert run_stuffer(c, pieces) == run_stuffer(py, pieces)
    assert c.dot_stuff(data) == py.dot_stuff(data)


@settings(max_examples=30, deadline=None)
@given(
    unit=st.sampled_from(
        [b"\n", b"\r", b"\n.", b".\n", b"\r\n..", b"a\r", b".x\r\n", b".\r\n", b"..\r\n"]
    ),
    count=st.integers(0, 5000),
    cuts=st.lists(st.integers(0, 20000), max_size=4),
)
def test_growing_outputs_same_in_both(
    both: tuple[ModuleType, ModuleType], unit: bytes, count: int, cuts: list[int]
) -> None:
    # inputs whose wire/normalised form is much longer than the input
    c, py = both
    data = unit * count
    pieces = split(data, cuts)
    assert run_stuffer(c, pieces) == run_stuffer(py, pieces)
    assert c.dot_stuff(data) == py.dot_stuff(data)
    kw = {"bare_line_ending": "normalize", "max_line_length": 10**6}
    assert run_data(c, [*pieces, b"\r\n.\r\n"], kw) == run_data(py, [*pieces, b"\r\n.\r\n"], kw)


@SETTINGS
@given(data=SMTP_BYTES, cuts=CUTS, max_length=st.sampled_from([1, 2, 5, 16, 512]))
def test_line_reader_same_in_both(
    both: tuple[ModuleType, ModuleType], data: bytes, cuts: list[int], max_length: int
) -> None:
    c, py = both
    pieces = split(data, cuts)
    assert run_lines(c, pieces, max_length) == run_lines(py, pieces, max_length)


@SETTINGS
@given(data=REPLY_BYTES, cuts=CUTS, max_line_length=st.sampled_from([1, 4, 9, 4096]))
def test_reply_reader_same_in_both(
    both: tuple[ModuleType, ModuleType], data: bytes, cuts: list[int], max_line_length: int
) -> None:
    c, py = both
    pieces = split(data, cuts)
    assert run_replies(c, pieces, max_line_length) == run_replies(py, pieces, max_line_length)


def test_same_public_names(both: tuple[ModuleType, ModuleType]) -> None:
    c, py = both
    assert c.__all__ == py.__all__
    assert c.MAX_REPLY_LINES == py.MAX_REPLY_LINES
