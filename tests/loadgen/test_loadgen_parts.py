"""The loadgen's small parts: histogram, messages, option parsing, rates, watchdog, merging."""

from __future__ import annotations

import math
import random

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from relay.loadgen import CommandFault, header_ids
from relay.loadgen.message import MessageFactory, parse_domain_mix
from relay.loadgen.options import build_faults, parse_credentials, parse_size, parse_target
from relay.loadgen.plainio import PlainIO, fast_io
from relay.loadgen.ratelimit import Pacer, TokenBuckets
from relay.loadgen.sendreport import queue_id_of
from relay.loadgen.sinkrun import _SUMMED, _count_duplicates, _merge
from relay.loadgen.stats import LatencyHistogram
from relay.loadgen.watchdog import IdleWatchdog
from relay.proto import Reply

# --- latency histogram ------------------------------------------------------------------


@given(st.lists(st.floats(min_value=1e-5, max_value=100.0), min_size=1, max_size=300))
def test_percentiles_are_within_one_percent(samples: list[float]) -> None:
    histogram = LatencyHistogram()
    for sample in samples:
        histogram.record(sample)
    ordered = sorted(samples)
    for p in (50, 90, 99):
        exact = ordered[max(1, math.ceil(len(ordered) * p / 100)) - 1]
        assert histogram.percentile(p) == pytest.approx(exact, rel=0.011)
    assert histogram.percentile(100) == histogram.max == max(samples)
    assert histogram.min == min(samples) and histogram.count == len(samples)


def test_histogram_merges_and_summarises() -> None:
    rng = random.Random(1)
    one, two, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for _ in range(1000):
        a, b = rng.expovariate(100), rng.expovariate(10)
        one.record(a)
        two.record(b)
        both.record(a)
        both.record(b)
    one.merge(two)
    assert one.summary_ms() == pytest.approx(both.summary_ms())
    empty = LatencyHistogram().summary_ms()
    assert empty == {"count": 0, "min": 0, "mean": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    with pytest.raises(ValueError):
        one.merge(LatencyHistogram(precision=0.05))


# --- messages ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 300, 401, 5120, 5121, 5122, 100_000])
def test_messages_have_the_size_asked_for(size: int) -> None:
    factory = MessageFactory(
        run_id="abc", sender="s@a.test", size=size, recipients=1, domains=[("a.test", 1)]
    )
    for sequence in (0, 9, 10, 12345):
        message = factory.build(sequence)
        content = message.content
        header_length = content.index(b"\r\n\r\n") + 4
        assert len(content) == max(size, header_length) or (
            size - header_length == 1 and len(content) == size - 1
        )
        assert header_ids(content) == (f"<abc-{sequence}@loadgen.test>", f"abc-{sequence}")
        lines = content.split(b"\r\n")
        assert all(len(line) <= 998 and b"\r" not in line and b"\n" not in line for line in lines)
        assert content.endswith(b"\r\n")


def test_recipient_domains_follow_the_mix() -> None:
    factory = MessageFactory(
        run_id="r",
        sender="s@a.test",
        size=0,
        recipients=2,
        domains=parse_domain_mix("a.test:3,b.test"),
    )
    domains = [r.split("@")[1] for n in range(8) for r in factory.build(n).recipients]
    assert domains.count("a.test") == 12 and domains.count("b.test") == 4
    assert factory.build(0).recipients == ("user0@a.test", "user1@a.test")


@pytest.mark.parametrize("text", ["", "a.test:0", "a b.test", "x@y.test", "a.test:-1", "a.test:z"])
def test_bad_domain_mixes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_domain_mix(text)


# --- options --------------------------------------------------------------------------------


def test_option_parsers() -> None:
    assert parse_target("127.0.0.1:25") == ("127.0.0.1", 25)
    assert parse_target("[::1]:2525") == ("::1", 2525)
    assert parse_target("localhost:25") == ("localhost", 25)
    for bad in ("example.com:25", "127.0.0.1", "127.0.0.1:0", ":25", "127.0.0.1:x"):
        with pytest.raises(ValueError):
            parse_target(bad)
    assert [parse_size(s) for s in ("5120", "5k", "5K", "1m", "2kb")] == [
        5120,
        5120,
        5120,
        1 << 20,
        2048,
    ]
    with pytest.raises(ValueError):
        parse_size("lots")
    assert parse_credentials("user:pa:ss") == ("user", "pa:ss")
    faults = build_faults(
        ["rcpt:4xx=0.25", "eod:5xx=0.5", "mail:delay=0.1", "rcpt:5xx=0.25"], seed=3
    )
    assert faults.rcpt == CommandFault(temporary=0.25, permanent=0.25)
    assert faults.end_of_data == CommandFault(permanent=0.5)
    assert faults.mail == CommandFault(delay=0.1) and faults.seed == 3
    with pytest.raises(ValueError, match="exceed"):
        build_faults(["rcpt:4xx=0.75", "rcpt:5xx=0.75"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2.0.0 Ok: queued as 4Xyz12AbC", "4Xyz12AbC"),
        ("OK id=1rABcd-0001Xy-2Z", "1rABcd-0001Xy-2Z"),
        ("queued as <0ABC>", "0ABC"),
        ("Ok", "Ok"),
    ],
)
def test_queue_ids_from_250_replies(text: str, expected: str) -> None:
    assert queue_id_of(Reply(250, None, (text,))) == expected


# --- rates ------------------------------------------------------------------------------------


def test_token_buckets_refill_per_key() -> None:
    buckets = TokenBuckets(rate=2.0, burst=2, max_buckets=2)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [True, True, False]
    assert buckets.take("b", 0.0)  # another key has its own bucket
    assert not buckets.take("a", 0.4) and buckets.take("a", 0.5)  # one token per 0.5 s
    buckets.take("b", 10.0)
    assert buckets.take("c", 10.0) and len(buckets) == 2  # "a" had refilled: forgotten


async def test_pacer_spaces_calls(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(rate=10.0)
    times: list[float] = []

    async def caller() -> None:
        for _ in range(3):
            await pacer.wait()
            times.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller)
        nursery.start_soon(caller)
    assert [round(t - start, 6) for t in times] == [round(i * 0.1, 6) for i in range(6)]


# --- watchdog ---------------------------------------------------------------------------------


async def test_watchdog_cancels_only_a_stuck_read(autojump_clock: trio.testing.MockClock) -> None:
    watchdog = IdleWatchdog(5.0, resolution=0.5)
    outcomes: dict[str, float] = {}

    async def reader(name: str, gaps: list[float]) -> None:
        start = trio.current_time()
        with trio.CancelScope() as scope:
            watched = watchdog.watch(scope)
            for gap in gaps:
                watched.waiting = True
                await trio.sleep(gap)  # a read that takes `gap` seconds
                watched.waiting = False
                watched.reads += 1
            outcomes[name] = -1.0
            return
        outcomes[name] = trio.current_time() - start

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog.run)
        async with trio.open_nursery() as readers:
            readers.start_soon(reader, "busy", [4.0] * 5)  # never 5 s on one read
            readers.start_soon(reader, "stuck", [1.0, 60.0])
        nursery.cancel_scope.cancel()
    assert outcomes["busy"] == -1.0
    assert 1.0 + 5.0 <= outcomes["stuck"] <= 1.0 + 5.0 + 0.5


# --- merging workers' figures --------------------------------------------------------------------


def test_merge_adds_up_workers() -> None:
    one = dict.fromkeys(_SUMMED, 1)
    a = one | {"policy": {"message_rate": 2}, "faults": {"rcpt_4xx": 1}, "elapsed": 3.0}
    b = one | {"policy": {"message_rate": 1}, "faults": {"disconnect": 4}, "elapsed": 5.0}
    total = _merge([a, b])
    assert total["messages"] == 2 and total["connections_max"] == 2
    assert total["policy"] == {"message_rate": 3}
    assert total["faults"] == {"rcpt_4xx": 1, "disconnect": 4}
    assert total["elapsed"] == 5.0
    assert _count_duplicates([]) == 0


# --- plain socket I/O ---------------------------------------------------------------------------


async def test_plain_io_reads_writes_and_reports_a_broken_connection() -> None:
    left, right = trio.socket.socketpair()
    stream = trio.SocketStream(left)
    io = fast_io(stream)
    assert isinstance(io, PlainIO)
    payload = b"x" * (4 << 20)  # more than one send() takes

    async def drain() -> int:
        total = 0
        while total < len(payload):
            total += len(await right.recv(1 << 20))
        return total

    async with trio.open_nursery() as nursery:
        nursery.start_soon(io.send_all, payload)
        assert await drain() == len(payload)
    await right.send(b"reply")
    assert await io.receive_some(100) == b"reply"
    right.close()
    assert await io.receive_some(100) == b""
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(10):  # the first send may still be buffered before the reset shows
            await io.send_all(b"y" * 65536)
    await stream.aclose()
