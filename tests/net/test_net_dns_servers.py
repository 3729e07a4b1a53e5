"""The DNS servers of relay.testing: the in-process one and the dnsmasq harness."""

from __future__ import annotations

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest
import trio

from relay.net.dns import MxResolver
from relay.testing.dns import DnsZone, open_dns_server, open_fake_dns_server
from relay.testing.dnsmasq import Dnsmasq, dnsmasq_arguments, dnsmasq_available

BIG = DnsZone(mx={"big.test": [(i, f"mx{i:02d}{'y' * 50}.big.test") for i in range(40)]})


async def test_fake_server_answers_over_udp_and_tcp() -> None:
    zone = DnsZone(mx={"a.test": [(10, "mx.a.test")]}, a={"mx.a.test": ["127.0.0.9"]})
    async with open_fake_dns_server(zone) as server:
        host, port = server.endpoint.host, server.endpoint.port
        query = dns.message.make_query("a.test", "MX")
        for answer in (
            await dns.asyncquery.udp(query, host, port=port, timeout=5),
            await dns.asyncquery.tcp(query, host, port=port, timeout=5),
        ):
            assert answer.rcode() == dns.rcode.NOERROR
            assert answer.flags & dns.flags.AA
            assert [r.to_text() for r in answer.answer[0]] == ["10 mx.a.test."]
        assert server.queries == [("udp", "a.test", "MX"), ("tcp", "a.test", "MX")]


async def test_fake_server_truncates_large_udp_answers() -> None:
    async with open_fake_dns_server(BIG) as server:
        query = dns.message.make_query("big.test", "MX")
        answer = await dns.asyncquery.udp(
            query, server.endpoint.host, port=server.endpoint.port, timeout=5
        )
        assert answer.flags & dns.flags.TC
        assert not answer.answer
        # The resolver then asks again over TCP.
        mx = MxResolver(nameservers=server.endpoint.nameservers, port=server.endpoint.port)
        assert len((await mx.resolve_mx("big.test")).hosts) == 40
        assert server.queries[-2:] == [("udp", "big.test", "MX"), ("tcp", "big.test", "MX")]


async def test_fake_server_reads_the_zone_at_every_query() -> None:
    zone = DnsZone(a={"h.test": ["127.0.0.1"]})
    async with open_fake_dns_server(zone) as server:
        mx = MxResolver(nameservers=server.endpoint.nameservers, port=server.endpoint.port)
        assert await mx.resolve_addresses("h.test") == ("127.0.0.1",)
        zone.a["h.test"] = ["127.0.0.2"]
        mx.clear_cache()
        assert await mx.resolve_addresses("h.test") == ("127.0.0.2",)


async def test_auto_prefers_dnsmasq_when_installed() -> None:
    async with open_dns_server(DnsZone(a={"h.test": ["127.0.0.1"]})) as endpoint:
        assert endpoint.kind == ("dnsmasq" if dnsmasq_available() else "in-process")
        assert endpoint.host == "127.0.0.1"


def test_dnsmasq_arguments() -> None:
    zone = DnsZone(
        mx={"d.test": [(10, "mx.d.test.")], "n.test": [(0, ".")]},
        a={"mx.d.test": ["127.0.0.7"]},
        aaaa={"mx.d.test": ["::1"]},
        nxdomain={"gone.test"},
        servfail={"sf.test"},
        ttl=60,
    )
    args = dnsmasq_arguments(zone, host="127.0.0.1", port=5353, upstream=("127.0.0.1", 5454))
    for expected in (
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--port=5353",
        "--listen-address=127.0.0.1",
        "--local-ttl=60",
        "--address=/#/",
        "--mx-host=d.test,mx.d.test,10",
        "--mx-host=n.test,.,0",
        "--host-record=mx.d.test,127.0.0.7,60",
        "--host-record=mx.d.test,::1,60",
        "--address=/gone.test/",
        "--server=/sf.test/127.0.0.1#5454",
    ):
        assert expected in args
    with pytest.raises(ValueError):
        dnsmasq_arguments(zone, host="127.0.0.1", port=5353)


@pytest.mark.skipif(not dnsmasq_available(), reason="dnsmasq is not installed")
async def test_dnsmasq_is_stopped_by_pid() -> None:
    dnsmasq = Dnsmasq(DnsZone(a={"h.test": ["127.0.0.1"]}))
    endpoint = await trio.to_thread.run_sync(dnsmasq.start)
    process = dnsmasq.process
    assert process is not None and process.poll() is None
    mx = MxResolver(nameservers=endpoint.nameservers, port=endpoint.port)
    assert await mx.resolve_addresses("h.test") == ("127.0.0.1",)
    dnsmasq.close()
    assert process.poll() is not None
    assert dnsmasq.process is None
