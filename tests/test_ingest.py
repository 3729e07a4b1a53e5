"""Ingest, the one door for new mail, over a real spool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.errors import SpoolFullError
from relay.ingest import (
    Ingest,
    IngestLimits,
    IngestRejected,
    Trace,
    header_block,
    header_end,
    header_value,
    header_values,
    received_header,
    remove_headers,
)
from relay.model import MessageMeta
from relay.spool import Spool, open_spool

MSG = b"From: a@acme.test\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody line\r\n"


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    async with open_spool(tmp_path / "spool", map_size=4 << 20, sync=False) as spool:
        yield spool


def test_header_end_cases_rfc5322_2_1() -> None:
    assert header_end(MSG) == MSG.index(b"\r\n\r\n") + 2
    assert header_end(b"\r\nbody only\r\n") == 0  # empty header section
    assert header_end(b"A: 1\r\nB: 2\r\n") == len(b"A: 1\r\nB: 2\r\n")  # no body
    assert header_end(b"A: 1\nB: 2\n\nbody\n") == len(b"A: 1\nB: 2\n")


def test_header_values_finds_every_field_only_in_the_header() -> None:
    content = b"From: a@x.test\r\nfrom : b@y.test\r\n\r\nFrom: c@z.test\r\n"
    assert header_values(content, "From") == ["a@x.test", "b@y.test"]
    assert header_value(content, "FROM") == "a@x.test"


def test_removing_the_last_header_keeps_one_blank_line() -> None:
    content = b"A: 1\r\nX-Tenant: t\r\n\r\nbody\r\n"
    assert remove_headers(content, ["x-tenant"]) == b"A: 1\r\n\r\nbody\r\n"
    folded = b"X-Campaign: a\r\n\tb\r\nA: 1\r\n\r\nX-Campaign: body\r\n"
    assert remove_headers(folded, ["X-Campaign"]) == b"A: 1\r\n\r\nX-Campaign: body\r\n"


def test_received_header_ipv6_literal_and_unsafe_helo_rfc5321_4_1_3() -> None:
    trace = Trace(helo="evil;(x)\x00", client_ip="2001:db8::1", protocol="ESMTPSA")
    raw = received_header(trace, "relay.test", "ID1", None, 0.0)
    assert raw.startswith(b"Received: from evil??x?? ([IPv6:2001:db8::1])\r\n\tby relay.test")
    assert b"\x00" not in raw and b"for <" not in raw


async def test_accept_stores_durably_with_trace_and_missing_headers(spool: Spool) -> None:
    seen: list[MessageMeta] = []
    ingest = Ingest(spool, hostname="relay.test", clock=lambda: 1_700_000_000.0)
    ingest.set_on_stored(seen.append)
    trace = Trace(helo="c.test", client_ip="127.0.0.1", protocol="ESMTPSA", tls_version="TLSv1.3")
    meta = await ingest.accept(
        "a@acme.test",
        ["b@example.net"],
        MSG,
        trace=trace,
        tenant="acme",
        campaign="spring",
        strip_headers=("X-Tenant",),
    )
    assert seen == [meta]
    stored = spool.read_content(meta.id)
    assert stored.startswith(b"Received: from c.test ([127.0.0.1])")
    assert f"with ESMTPSA id {meta.id}".encode() in stored
    assert b"for <b@example.net>;" in stored
    assert header_value(stored, "Message-ID") == f"<{meta.id}@relay.test>"
    assert header_value(stored, "Date") is not None
    assert stored.endswith(MSG)
    assert (meta.tenant, meta.campaign, meta.size) == ("acme", "spring", len(stored))
    assert ingest.statistics.accepted == 1 and ingest.statistics.by_source == {"ESMTPSA": 1}


async def test_limits_and_nul_rejected(spool: Spool) -> None:
    ingest = Ingest(spool, hostname="relay.test", limits=IngestLimits(100, 2))
    with pytest.raises(IngestRejected) as info:
        await ingest.accept("a@acme.test", ["1@x.test", "2@x.test", "3@x.test"], MSG)
    assert (info.value.code, info.value.enhanced) == (452, "4.5.3")
    with pytest.raises(IngestRejected) as info:
        await ingest.accept("a@acme.test", ["1@x.test"], MSG + b"x" * 100)
    assert (info.value.code, info.value.enhanced) == (552, "5.3.4")
    with pytest.raises(IngestRejected) as info:
        await ingest.accept("a@acme.test", ["1@x.test"], b"A: 1\r\n\r\n\0\r\n")
    assert (info.value.code, info.value.enhanced) == (550, "5.6.0")
    with pytest.raises(IngestRejected) as info:
        await ingest.accept("a@acme.test", [], MSG)
    assert info.value.code == 554
    assert ingest.statistics.rejected == 4 and spool.count_queued() == 0


def test_rate_limit_sliding_window() -> None:
    now = [600.0]
    ingest = Ingest(None, hostname="relay.test", clock=lambda: now[0])  # type: ignore[arg-type]
    for _ in range(3):
        ingest.check_rate("acme", 3)
    with pytest.raises(IngestRejected) as info:
        ingest.check_rate("acme", 3)
    assert (info.value.code, info.value.enhanced) == (450, "4.7.1")
    ingest.check_rate("other", 3)  # accounts are independent
    now[0] = 630.0 + 60  # the next window, half way: half of the previous still counts
    ingest.check_rate("acme", 3)  # 0 + 3 * 0.5 < 3
    ingest.check_rate("acme", 3)  # 1 + 1.5 < 3
    with pytest.raises(IngestRejected):  # 2 + 1.5 >= 3
        ingest.check_rate("acme", 3)
    now[0] = 900.0  # long after: everything forgotten
    for _ in range(3):
        ingest.check_rate("acme", 3)
    ingest.check_rate("acme", 0)  # 0: unlimited


async def test_hook_failure_after_store_does_not_fail_the_message(spool: Spool) -> None:
    def broken(meta: MessageMeta) -> None:
        raise RuntimeError("scheduler hiccup")

    ingest = Ingest(spool, hostname="relay.test", on_stored=broken)
    meta = await ingest.accept("a@acme.test", ["b@example.net"], MSG)
    assert spool.get(meta.id) is not None


async def test_spool_full_propagates_and_counts(tmp_path: Path) -> None:
    async with open_spool(tmp_path / "small", map_size=1 << 20, sync=False) as spool:
        ingest = Ingest(spool, hostname="relay.test")
        big = MSG + (b"y" * 998 + b"\r\n") * 100
        with pytest.raises(SpoolFullError):
            for _ in range(50):
                await ingest.accept("a@acme.test", ["b@example.net"], big)
        assert ingest.statistics.failed == 1


def test_header_block_excludes_the_separator() -> None:
    assert header_block(MSG) == b"From: a@acme.test\r\nTo: b@example.net\r\nSubject: hi"
    assert header_block(b"\r\nbody\r\n\r\nmore\r\n") == b""
    assert header_block(b"A: 1\nB: 2\n\nbody\n") == b"A: 1\nB: 2"
    assert header_block(b"A: 1\r\n") == b"A: 1\r\n"  # no body: all of it
