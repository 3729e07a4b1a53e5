"""relay.fastparse: every rule of the API, against both implementations (fixture `fp`).

Differential tests between the two implementations are in test_fastparse_differential.py.
"""

from __future__ import annotations

import os
import random
import tracemalloc
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relay.fastparse
from relay.errors import (
    BareLineEndingError,
    LineTooLongError,
    MessageTooLargeError,
    ParseError,
    ReplyParseError,
)

CHUNKINGS = ["whole", "bytewise", "random"]

# `fp` is a module: nothing to reset between examples
HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def chunks(data: bytes, how: str, seed: int = 0) -> Iterator[bytes]:
    """``data`` whole, byte by byte, or cut at random places (some cuts empty)."""
    if how == "whole":
        yield data
    elif how == "bytewise":
        for i in range(len(data)):
            yield data[i : i + 1]
    else:
        rnd = random.Random(seed)
        i = 0
        while i < len(data):
            j = i + rnd.choice([0, 1, 2, 3, 5, 8, 64])
            yield data[i:j]
            i = j


def read_data(fp: ModuleType, wire: bytes, how: str = "whole", **kw: Any) -> tuple[Any, bytes]:
    """A DataReader fed ``wire`` in the given chunking, and the content it returned."""
    reader = fp.DataReader(**kw)
    return reader, b"".join(reader.feed(c) for c in chunks(wire, how))


def read_lines(reader: Any, data: bytes, how: str = "whole") -> list[bytes | type[Exception]]:
    """Feed a LineReader and collect every line (or the class of the error raised)."""
    out: list[bytes | type[Exception]] = []
    for chunk in chunks(data, how):
        reader.feed(chunk)
        while True:
            try:
                line = reader.next_line()
            except ParseError as exc:
                out.append(type(exc))
                continue
            if line is None:
                break
            out.append(line)
    return out


def read_replies(reader: Any, data: bytes, how: str = "whole") -> list[Any]:
    """Feed a ReplyReader and collect every reply (or the class of the error raised)."""
    out: list[Any] = []
    for chunk in chunks(data, how):
        reader.feed(chunk)
        while True:
            try:
                reply = reader.next_reply()
            except ParseError as exc:
                out.append(type(exc))
                continue
            if reply is None:
                break
            out.append(reply)
    return out


def test_compiled_module_loaded_when_expected() -> None:
    if os.environ.get("RELAY_EXPECT_EXTENSIONS") != "1":
        pytest.skip("RELAY_EXPECT_EXTENSIONS=1 not set")
    assert relay.fastparse.IMPLEMENTATION == "c"


def test_switch_exports_the_api() -> None:
    assert relay.fastparse.IMPLEMENTATION in ("c", "py")
    for name in ("LineReader", "DataReader", "DotStuffer", "ReplyReader", "dot_stuff"):
        assert callable(getattr(relay.fastparse, name))


# --- LineReader ------------------------------------------------------------------------


@pytest.mark.parametrize("how", CHUNKINGS)
def test_line_reader_returns_lines_without_crlf(fp: ModuleType, how: str) -> None:
    data = b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n\r\nNOOP\r\nRCPT TO:<c"
    reader = fp.LineReader()
    assert read_lines(reader, data, how) == [
        b"EHLO client.example",
        b"MAIL FROM:<a@b.example>",
        b"",
        b"NOOP",
    ]
    assert reader.buffered == len(b"RCPT TO:<c")
    assert reader.take_buffer() == b"RCPT TO:<c"
    assert reader.buffered == 0


def test_line_reader_incomplete_line_is_none(fp: ModuleType) -> None:
    reader = fp.LineReader()
    assert reader.next_line() is None
    reader.feed(b"NOOP\r")  # CR at the end of a chunk: wait for the LF
    assert reader.next_line() is None
    reader.feed(b"\n")
    assert reader.next_line() == b"NOOP"
    assert reader.next_line() is None


def test_line_reader_returns_bytes(fp: ModuleType) -> None:
    reader = fp.LineReader()
    reader.feed(bytearray(b"NOOP\r\n"))
    line = reader.next_line()
    assert type(line) is bytes
    assert type(reader.take_buffer()) is bytes


@pytest.mark.parametrize("how", CHUNKINGS)
def test_rfc5321_4_5_3_1_4_command_line_of_512_octets_accepted(fp: ModuleType, how: str) -> None:
    line = b"X" * 510
    assert read_lines(fp.LineReader(), line + b"\r\n", how) == [line]


@pytest.mark.parametrize("how", CHUNKINGS)
def test_rfc5321_4_5_3_1_4_longer_command_line_raises_once(fp: ModuleType, how: str) -> None:
    data = b"X" * 511 + b"\r\nNOOP\r\n" + b"Y" * 2000 + b"\r\nQUIT\r\n"
    assert read_lines(fp.LineReader(), data, how) == [
        LineTooLongError,
        b"NOOP",
        LineTooLongError,
        b"QUIT",
    ]


def test_line_reader_max_length_is_writable(fp: ModuleType) -> None:
    # e.g. raised after EHLO for extensions that allow longer lines (RFC 5321 4.5.3.1.4)
    reader = fp.LineReader(max_length=10)
    assert reader.max_length == 10
    reader.max_length = 100
    reader.feed(b"MAIL FROM:<someone@example.org>\r\n")
    assert reader.next_line() == b"MAIL FROM:<someone@example.org>"


def test_line_reader_too_long_line_is_not_buffered(fp: ModuleType) -> None:
    reader = fp.LineReader(max_length=512)
    reader.feed(b"NOOP\r\n")
    for _ in range(160):  # 10 MiB without a line ending, in 64 KiB chunks
        reader.feed(b"A" * 65536)
        assert reader.buffered <= len(b"NOOP\r\n") + 512
    assert reader.next_line() == b"NOOP"
    assert reader.next_line() is None  # the long line is not over yet
    assert reader.buffered <= 512
    reader.feed(b"A\r\nQUIT\r\n")
    with pytest.raises(LineTooLongError):
        reader.next_line()
    assert reader.next_line() == b"QUIT"
    assert reader.buffered == 0


@pytest.mark.parametrize("how", CHUNKINGS)
def test_rfc5321_2_3_8_bare_lf_in_command_raises_and_consumes_line(
    fp: ModuleType, how: str
) -> None:
    data = b"MAIL FROM:<a>\nRCPT TO:<b>\r\n\nNOOP\r\n"
    assert read_lines(fp.LineReader(), data, how) == [
        BareLineEndingError,
        b"RCPT TO:<b>",
        BareLineEndingError,
        b"NOOP",
    ]


@pytest.mark.parametrize("how", CHUNKINGS)
def test_rfc5321_2_3_8_bare_cr_in_command_raises_and_consumes_line(
    fp: ModuleType, how: str
) -> None:
    data = b"RCPT TO:<a>\rRCPT TO:<b>\r\nNOOP\r\r\nQUIT\r\n"
    assert read_lines(fp.LineReader(), data, how) == [
        BareLineEndingError,
        BareLineEndingError,
        b"QUIT",
    ]


def test_line_reader_take_buffer_returns_pipelined_bytes(fp: ModuleType) -> None:
    # bytes pipelined after STARTTLS must be detectable (CVE-2011-0411 class)
    reader = fp.LineReader()
    reader.feed(b"STARTTLS\r\nMAIL FROM:<evil@example>\r\nRC")
    assert reader.next_line() == b"STARTTLS"
    assert reader.take_buffer() == b"MAIL FROM:<evil@example>\r\nRC"
    assert reader.take_buffer() == b""
    assert reader.next_line() is None


def test_line_reader_take_buffer_then_reuse(fp: ModuleType) -> None:
    reader = fp.LineReader(max_length=8)
    reader.feed(b"X" * 20)  # an overlong line in progress
    assert len(reader.take_buffer()) == 8
    reader.feed(b"NOOP\r\n")
    assert reader.next_line() == b"NOOP"


def test_line_reader_rejects_silly_limit(fp: ModuleType) -> None:
    with pytest.raises(ValueError):
        fp.LineReader(max_length=0)


# --- DataReader: transparency and the end of data ----------------------------------------


@pytest.mark.parametrize(
    ("wire", "content"),
    [
        (b".\r\n", b""),  # an immediate end: empty content
        (b"a\r\n.\r\n", b"a\r\n"),  # the CRLF before the final dot belongs to the content
        (b"\r\n.\r\n", b"\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),  # RFC 5321 4.5.2: a leading dot is removed
        (b"...\r\n.\r\n", b"..\r\n"),
        (b".a\r\n.b\r\n.\r\n", b"a\r\nb\r\n"),
        (b"a.\r\nb..c\r\n.\r\n", b"a.\r\nb..c\r\n"),  # dots not at a line start stay
        (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n"),
        (b"a\r\n. \r\n.\r\n", b"a\r\n \r\n"),
        (b"a\r\n.\r\r\n.\r\n", None),  # ".\r" + "\r": a bare CR (tested below)
    ],
)
@pytest.mark.parametrize("how", CHUNKINGS)
def test_rfc5321_4_5_2_transparency(
    fp: ModuleType, how: str, wire: bytes, content: bytes | None
) -> None:
    reader, got = read_data(fp, wire + b"QUIT\r\n", how)
    assert reader.done
    assert reader.trailing == b"QUIT\r\n"
    if content is None:
        assert isinstance(reader.error, BareLineEndingError)
    else:
        assert reader.error is None
        assert got == content
        assert reader.size == len(content)


@pytest.mark.parametrize("wire", [b"a\r\n..b\r\n.\r\nNOOP", b".\r\n", b"x\r\n\r\n.\r\n\r\n"])
def test_data_reader_every_two_cut_chunking(fp: ModuleType, wire: bytes) -> None:
    # chunk boundaries anywhere: between CR and LF, before and after the dot
    whole_reader, whole = read_data(fp, wire)
    for i in range(len(wire) + 1):
        for j in range(i, len(wire) + 1):
            reader = fp.DataReader()
            got = reader.feed(wire[:i]) + reader.feed(wire[i:j]) + reader.feed(wire[j:])
            assert got == whole
            assert reader.done == whole_reader.done
            assert reader.trailing == whole_reader.trailing


def test_data_reader_holds_back_only_undecided_bytes(fp: ModuleType) -> None:
    reader = fp.DataReader()
    assert reader.feed(b"abc\r") == b"abc"  # the CR waits for the next byte
    assert reader.feed(b"\n") == b"\r\n"
    assert reader.feed(b".") == b""  # a dot at a line start: maybe the end
    assert reader.feed(b"\r") == b""
    assert reader.feed(b"x") == b""  # ".\rx": a bare CR
    assert isinstance(reader.error, BareLineEndingError)
    reader = fp.DataReader()
    assert reader.feed(b".") == b""
    assert reader.feed(b".x") == b".x"
    assert reader.feed(b"\r\n.\r") == b"\r\n"
    assert not reader.done
    assert reader.feed(b"\n") == b""
    assert reader.done


def test_data_reader_after_the_end_everything_is_trailing(fp: ModuleType) -> None:
    reader = fp.DataReader()
    assert reader.feed(b"hi\r\n.\r\nMAIL FROM:<a>\r\n") == b"hi\r\n"
    assert reader.done
    assert reader.feed(b"RCPT TO:<b>\r\n") == b""
    assert reader.trailing == b"MAIL FROM:<a>\r\nRCPT TO:<b>\r\n"
    assert type(reader.trailing) is bytes


def test_data_reader_returns_bytes(fp: ModuleType) -> None:
    reader = fp.DataReader()
    assert type(reader.feed(bytearray(b"a\r\n"))) is bytes
    assert type(reader.feed(b"")) is bytes
    assert reader.size == 3
    assert reader.error is None
    assert not reader.done


def test_data_reader_rejects_unknown_policy(fp: ModuleType) -> None:
    with pytest.raises(ValueError):
        fp.DataReader(bare_line_ending="strip")
    with pytest.raises(ValueError):
        fp.DataReader(max_size=-1)
    with pytest.raises(ValueError):
        fp.DataReader(max_line_length=0)


# --- DataReader: SMTP smuggling ----------------------------------------------------------

# (sequence, content with bare_line_ending="normalize") - none of these ends the data.
SMUGGLING = [
    (b"\n.\n", b"\r\n.\r\n"),
    (b"\r.\r", b"\r\n.\r\n"),
    (b"\n.\r\n", b"\r\n.\r\n"),
    (b"\r\n.\n", b"\r\n\r\n"),
    (b"\r\n.\r", b"\r\n\r\n"),
    (b"\r.\r\n", b"\r\n.\r\n"),
    (b"\r.\n", b"\r\n.\r\n"),
    (b"\n.\r", b"\r\n.\r\n"),
    (b"\n\r\n.\n", b"\r\n\r\n\r\n"),
    (b"\r\n.\n\r\n", b"\r\n\r\n\r\n"),
    (b"\r\n.\r\r\n", b"\r\n\r\n\r\n"),
    (b"\r\r\n.\n", b"\r\n\r\n\r\n"),
]
SMUGGLED = b"MAIL FROM:<spoof@bank.example>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"


@pytest.mark.parametrize(("seq", "normalized"), SMUGGLING)
@pytest.mark.parametrize("how", CHUNKINGS)
def test_smuggling_sequence_never_ends_data_normalize(
    fp: ModuleType, how: str, seq: bytes, normalized: bytes
) -> None:
    wire = b"Subject: hi\r\n\r\nbody" + seq + SMUGGLED + b".\r\nQUIT\r\n"
    reader, got = read_data(fp, wire, how, bare_line_ending="normalize")
    assert reader.error is None
    assert reader.done
    assert got == b"Subject: hi\r\n\r\nbody" + normalized + SMUGGLED
    assert reader.trailing == b"QUIT\r\n"


@pytest.mark.parametrize(("seq", "normalized"), SMUGGLING)
@pytest.mark.parametrize("how", CHUNKINGS)
def test_smuggling_sequence_never_ends_data_reject(
    fp: ModuleType, how: str, seq: bytes, normalized: bytes
) -> None:
    wire = b"Subject: hi\r\n\r\nbody" + seq + SMUGGLED + b".\r\nQUIT\r\n"
    reader, got = read_data(fp, wire, how)
    assert isinstance(reader.error, BareLineEndingError)
    assert reader.done  # consumed up to the real end, so the session can reply
    assert reader.trailing == b"QUIT\r\n"
    assert b"MAIL FROM" not in got


@pytest.mark.parametrize("start", [b".\n", b".\r", b".\rX", b"\n.\r\n", b"\r.\r\n"])
@pytest.mark.parametrize("policy", ["reject", "normalize"])
def test_smuggling_at_start_never_ends_data(fp: ModuleType, start: bytes, policy: str) -> None:
    reader, _ = read_data(fp, start + b"X\r\n", bare_line_ending=policy)
    assert not reader.done
    reader.feed(b".\r\n")
    assert reader.done


def test_rfc5321_2_3_8_normalized_ending_is_not_a_line_start(fp: ModuleType) -> None:
    reader, got = read_data(fp, b"a\n.b\r\n.\r\n", bare_line_ending="normalize")
    assert got == b"a\r\n.b\r\n"  # the dot after a bare LF is content
    assert reader.done


# --- DataReader: bare line endings (RFC 5321 2.3.8) ----------------------------------------


@pytest.mark.parametrize("how", CHUNKINGS)
def test_rfc5321_2_3_8_bare_lf_rejected(fp: ModuleType, how: str) -> None:
    reader, got = read_data(fp, b"a\r\nb\nc\r\n.\r\nQUIT\r\n", how)
    assert isinstance(reader.error, BareLineEndingError)
    assert got == b"a\r\nb"  # content stops at the problem
    assert reader.done
    assert reader.trailing == b"QUIT\r\n"


def test_rfc5321_2_3_8_bare_cr_decided_by_next_byte(fp: ModuleType) -> None:
    reader = fp.DataReader()
    assert reader.feed(b"a\r") == b"a"
    assert reader.error is None
    assert reader.feed(b"b") == b""
    assert isinstance(reader.error, BareLineEndingError)
    assert reader.feed(b"c\r\n.\r\n") == b""  # after an error: consume, produce nothing
    assert reader.done


@pytest.mark.parametrize("how", CHUNKINGS)
def test_rfc5321_2_3_8_bare_endings_normalized(fp: ModuleType, how: str) -> None:
    wire = b"a\nb\rc\r\r\n\n.\r\n.\r\n"  # the first ".\r\n" follows a bare LF: content
    reader, got = read_data(fp, wire, how, bare_line_ending="normalize")
    assert reader.error is None
    assert got == b"a\r\nb\r\nc\r\n\r\n\r\n.\r\n"
    assert reader.size == len(got)
    assert reader.done


# --- DataReader: limits ------------------------------------------------------------------


@pytest.mark.parametrize("how", CHUNKINGS)
def test_rfc5321_4_5_3_1_6_text_line_of_1000_octets_accepted(fp: ModuleType, how: str) -> None:
    line = b"x" * 998 + b"\r\n"
    # "not counting the leading dot duplicated for transparency"
    reader, got = read_data(fp, line + b"." + line + b".\r\n", how)
    assert reader.error is None
    assert got == line + line


@pytest.mark.parametrize("how", CHUNKINGS)
def test_rfc5321_4_5_3_1_6_longer_text_line_reported(fp: ModuleType, how: str) -> None:
    wire = b"ok\r\n" + b"x" * 999 + b"\r\nmore\r\n.\r\nQUIT\r\n"
    reader, got = read_data(fp, wire, how)
    assert isinstance(reader.error, LineTooLongError)
    assert reader.done
    assert reader.trailing == b"QUIT\r\n"
    assert reader.size == len(wire) - len(b".\r\nQUIT\r\n")  # counting went on
    assert got == b"ok\r\n" + b"x" * 999  # up to the octet that made it too long


def test_line_length_limit_is_configurable(fp: ModuleType) -> None:
    reader, _ = read_data(fp, b"abcd\r\n.\r\n", max_line_length=6)
    assert reader.error is None
    reader, _ = read_data(fp, b"abcde\r\n.\r\n", max_line_length=6)
    assert isinstance(reader.error, LineTooLongError)


@pytest.mark.parametrize("how", CHUNKINGS)
def test_rfc1870_message_over_max_size_reported(fp: ModuleType, how: str) -> None:
    body = b"0123456789\r\n" * 10  # 120 octets
    reader, got = read_data(fp, body + b".\r\n", how, max_size=120)
    assert reader.error is None
    assert got == body
    reader, got = read_data(fp, body + b"x\r\n.\r\nQUIT\r\n", how, max_size=120)
    assert isinstance(reader.error, MessageTooLargeError)
    assert reader.size == 123
    assert reader.done
    assert reader.trailing == b"QUIT\r\n"
    assert got == body  # never more than max_size octets of content


def test_size_counts_unstuffed_content(fp: ModuleType) -> None:
    reader, got = read_data(fp, b"..a\r\n.b\r\n.\r\n")
    assert got == b".a\r\nb\r\n"
    assert reader.size == len(got)


def test_first_error_wins(fp: ModuleType) -> None:
    reader, _ = read_data(fp, b"a\nb" * 10 + b"x" * 5000 + b"\r\n.\r\n", max_size=10)
    assert isinstance(reader.error, BareLineEndingError)


def test_data_reader_discards_without_buffering(fp: ModuleType) -> None:
    # after an error the reader consumes a huge message holding only a few bytes
    reader = fp.DataReader(max_size=1000)
    line = b"y" * 70 + b"\r\n"
    chunk = line * (65536 // len(line))
    tracemalloc.start()
    try:
        reader.feed(chunk)
        assert isinstance(reader.error, MessageTooLargeError)
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(160):  # about 10 MiB
            assert reader.feed(chunk) == b""
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 4096
    assert reader.feed(b".\r\n") == b""
    assert reader.done


def test_data_reader_long_line_in_many_chunks_is_not_buffered(fp: ModuleType) -> None:
    reader = fp.DataReader()
    tracemalloc.start()
    try:
        for _ in range(160):  # a 10 MiB line
            reader.feed(b"z" * 65536)
        current = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert current < 4096
    assert isinstance(reader.error, LineTooLongError)
    reader.feed(b"\r\n.\r\n")
    assert reader.done


# --- DotStuffer and dot_stuff -----------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "wire"),
    [
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".a\r\n.\r\n..\r\n", b"..a\r\n..\r\n...\r\n.\r\n"),  # RFC 5321 4.5.2
        (b"a.b\r\n", b"a.b\r\n.\r\n"),
        (b"a\nb\rc\r\nd", b"a\r\nb\r\nc\r\nd\r\n.\r\n"),  # every ending becomes CRLF
        (b"\n.\r.\r\n.", b"\r\n..\r\n..\r\n..\r\n.\r\n"),
        (b"\r\r\n\n", b"\r\n\r\n\r\n.\r\n"),
    ],
)
def test_rfc5321_4_5_2_dot_stuff(fp: ModuleType, content: bytes, wire: bytes) -> None:
    assert fp.dot_stuff(content) == wire
    stuffer = fp.DotStuffer()
    assert b"".join(stuffer.feed(c) for c in chunks(content, "bytewise")) + stuffer.finish() == wire


def test_stuffer_chunk_ending_in_cr(fp: ModuleType) -> None:
    stuffer = fp.DotStuffer()
    assert stuffer.feed(b"a\r") == b"a\r\n"  # emitted at once
    assert stuffer.feed(b"\n.b") == b"..b"  # the LF is swallowed, the dot doubled
    assert stuffer.feed(b"\r") == b"\r\n"
    assert stuffer.feed(b"") == b""
    assert stuffer.feed(b"c") == b"c"  # not an LF: nothing swallowed
    assert stuffer.finish() == b"\r\n.\r\n"


def test_stuffer_finish_resets(fp: ModuleType) -> None:
    stuffer = fp.DotStuffer()
    assert stuffer.feed(b"x") == b"x"
    assert stuffer.finish() == b"\r\n.\r\n"
    assert stuffer.feed(b".y\r\n") == b"..y\r\n"
    assert stuffer.finish() == b".\r\n"
    assert stuffer.finish() == b".\r\n"


def test_stuffer_returns_bytes(fp: ModuleType) -> None:
    assert type(fp.DotStuffer().feed(bytearray(b"a\n"))) is bytes
    assert type(fp.dot_stuff(memoryview(b"a"))) is bytes


def test_stuffer_large_body_with_growth(fp: ModuleType) -> None:
    # every byte expands: the output is twice the input
    content = b"\n." * 100_000
    assert fp.dot_stuff(content) == b"\r\n.." * 100_000 + b"\r\n.\r\n"


CRLF_TEXT = st.lists(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    max_size=30,
).map(lambda lines: b"".join(line + b"\r\n" for line in lines))


@HYPOTHESIS
@given(content=CRLF_TEXT, seed=st.integers(0, 1000))
def test_round_trip_unstuff_stuff(fp: ModuleType, content: bytes, seed: int) -> None:
    wire = fp.dot_stuff(content)
    reader, got = read_data(fp, wire)
    assert reader.done and reader.error is None and reader.trailing == b""
    assert got == content
    stuffer = fp.DotStuffer()
    chunked = b"".join(stuffer.feed(c) for c in chunks(content, "random", seed))
    chunked += stuffer.finish()
    assert chunked == wire
    reader, got = read_data(fp, wire, "random", max_line_length=10**6)
    assert got == content


@HYPOTHESIS
@given(content=st.binary(max_size=300), seed=st.integers(0, 1000))
def test_stuffer_any_chunking_gives_dot_stuff(fp: ModuleType, content: bytes, seed: int) -> None:
    stuffer = fp.DotStuffer()
    wire = b"".join(stuffer.feed(c) for c in chunks(content, "random", seed)) + stuffer.finish()
    assert wire == fp.dot_stuff(content)
    # the wire form is valid DATA: ends exactly at its terminator, no bare endings
    reader, _ = read_data(fp, wire + b"NEXT", max_line_length=10**6)
    assert reader.done and reader.error is None and reader.trailing == b"NEXT"


# --- ReplyReader ------------------------------------------------------------------------

EHLO_REPLY = (
    b"250-mx.example.org greets client.example\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 35882577\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250 STARTTLS\r\n"
)


@pytest.mark.parametrize("how", CHUNKINGS)
def test_rfc5321_4_2_multiline_reply(fp: ModuleType, how: str) -> None:
    reader = fp.ReplyReader()
    replies = read_replies(reader, EHLO_REPLY + b"220 2.0.0 Ready\r\n354 go", how)
    assert replies == [
        (
            250,
            None,
            [
                "mx.example.org greets client.example",
                "PIPELINING",
                "SIZE 35882577",
                "ENHANCEDSTATUSCODES",
                "STARTTLS",
            ],
        ),
        (220, "2.0.0", ["Ready"]),
    ]
    assert reader.take_buffer() == b"354 go"


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"250\r\n", (250, None, [""])),  # code only (RFC 5321 4.2)
        (b"250 \r\n", (250, None, [""])),
        (b"221 Bye\n", (221, None, ["Bye"])),  # a bare LF is accepted
        (
            b"354 End data with <CR><LF>.<CR><LF>\r\n",
            (354, None, ["End data with <CR><LF>.<CR><LF>"]),
        ),
        (b"250-\r\n250 x\r\n", (250, None, ["", "x"])),
        (b"554 5.7.1 \xff rejected\r\n", (554, "5.7.1", ["\ufffd rejected"])),  # UTF-8, replace
        (b"250 OK\r\r\n", (250, None, ["OK\r"])),  # only one trailing CR is stripped
    ],
)
def test_rfc5321_4_2_reply_forms(
    fp: ModuleType, data: bytes, reply: tuple[int, str | None, list[str]]
) -> None:
    reader = fp.ReplyReader()
    reader.feed(data)
    assert reader.next_reply() == reply
    assert reader.next_reply() is None


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"250 2.1.0 Sender OK\r\n", (250, "2.1.0", ["Sender OK"])),
        (b"550 5.1.1\r\n", (550, "5.1.1", [""])),  # the code alone
        (b"451 4.123.999 later\r\n", (451, "4.123.999", ["later"])),  # 1-3 digits each
        (b"250 2.1000.0 x\r\n", (250, None, ["2.1000.0 x"])),  # four digits: no code
        (b"250 2.1.0x\r\n", (250, None, ["2.1.0x"])),  # not followed by space or end
        (b"250 5.1.1 x\r\n", (250, None, ["5.1.1 x"])),  # class differs from the code
        (b"354 3.0.0 go\r\n", (354, None, ["3.0.0 go"])),  # class 3 does not exist
        (b"250 2..0 x\r\n", (250, None, ["2..0 x"])),
        (b"250 2.1. x\r\n", (250, None, ["2.1. x"])),
        (
            b"250-2.0.0 a\r\n250-2.0.0\r\n250-b\r\n250-2.0.1 c\r\n250 2.0.0  d\r\n",
            (250, "2.0.0", ["a", "", "b", "2.0.1 c", " d"]),
        ),
    ],
)
def test_rfc3463_enhanced_status_codes(
    fp: ModuleType, data: bytes, reply: tuple[int, str | None, list[str]]
) -> None:
    reader = fp.ReplyReader()
    reader.feed(data)
    assert reader.next_reply() == reply


@pytest.mark.parametrize(
    "bad",
    [
        b"25\r\n",
        b"25 x\r\n",
        b"2500 x\r\n",
        b"abc x\r\n",
        b"150 x\r\n",  # 2xx-5xx only
        b"650 x\r\n",
        b"2a0 x\r\n",
        b"250_x\r\n",
        b"\r\n",
        b"250-a\r\n251 b\r\n",  # a continuation with a different code
        b"250-a\r\n550 b\r\n",
    ],
)
@pytest.mark.parametrize("how", CHUNKINGS)
def test_rfc5321_4_2_malformed_reply_raises(fp: ModuleType, how: str, bad: bytes) -> None:
    reader = fp.ReplyReader()
    replies = read_replies(reader, bad + b"250 ok\r\n", how)
    assert replies == [ReplyParseError, (250, None, ["ok"])]


def test_reply_line_too_long(fp: ModuleType) -> None:
    reader = fp.ReplyReader(max_line_length=100)
    reader.feed(b"250 " + b"x" * 96 + b"\r\n")  # 102 octets
    with pytest.raises(ReplyParseError):
        reader.next_reply()
    reader.feed(b"250 " + b"x" * 94 + b"\r\n")  # 100 octets
    assert reader.next_reply() == (250, None, ["x" * 94])


def test_reply_reader_long_line_is_not_buffered(fp: ModuleType) -> None:
    reader = fp.ReplyReader()
    for _ in range(160):
        reader.feed(b"x" * 65536)
        assert reader.buffered <= 4096
    reader.feed(b"\r\n220 ok\r\n")
    with pytest.raises(ReplyParseError):
        reader.next_reply()
    assert reader.next_reply() == (220, None, ["ok"])


def test_reply_with_too_many_lines(fp: ModuleType) -> None:
    reader = fp.ReplyReader()
    reader.feed(b"250-x\r\n" * 5000)
    with pytest.raises(ReplyParseError):
        reader.next_reply()


def test_reply_take_buffer_includes_partial_reply(fp: ModuleType) -> None:
    # after "220 ready" to STARTTLS, anything else is injected (CVE-2011-0411 class)
    reader = fp.ReplyReader()
    reader.feed(b"220 ready\r\n250-evil\r\n")
    assert reader.next_reply() == (220, None, ["ready"])
    assert reader.next_reply() is None
    assert reader.take_buffer() == b"250-evil\r\n"
    reader.feed(b"250 fine\r\n")
    assert reader.next_reply() == (250, None, ["fine"])
