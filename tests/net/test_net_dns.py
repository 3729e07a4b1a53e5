"""MX resolution against real DNS servers on loopback (in-process and dnsmasq).

Every test here runs twice through the `dns_server` fixture: once against the
in-process server of relay.testing.dns and once against a real dnsmasq.
"""

from __future__ import annotations

import random
from typing import Any

import dns.asyncbackend
import pytest
import trio

from relay.errors import ConfigError, DnsPermanentError, DnsTemporaryError
from relay.net.dns import MxHost, MxResolver
from relay.testing.dns import DnsEndpoint

TIMEOUT = 0.5  # the resolver's lifetime for the timeout tests (a safety margin, not a measure)


class FakeClock:
    """The cache's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver(server: DnsEndpoint, **kwargs: Any) -> MxResolver:
    return MxResolver(nameservers=server.nameservers, port=server.port, **kwargs)


# --- RFC 5321 5.1: MX hosts in preference order, random among equals --------------------


async def test_rfc5321_5_1_mx_hosts_in_preference_order(dns_server: DnsEndpoint) -> None:
    result = await resolver(dns_server).resolve_mx("pref.test")
    assert result.domain == "pref.test"
    assert not result.implicit
    assert [h.preference for h in result.hosts] == [5, 10, 10, 20]
    assert result.hosts[0] == MxHost("mx0.pref.test", 5)
    assert {h.name for h in result.hosts[1:3]} == {"mx1.pref.test", "mx2.pref.test"}
    assert result.hosts[3] == MxHost("mx3.pref.test", 20)


async def test_rfc5321_5_1_equal_preferences_in_random_order(dns_server: DnsEndpoint) -> None:
    async def middle_pairs(seed: int) -> list[tuple[str, ...]]:
        mx = resolver(dns_server, rng=random.Random(seed))
        pairs = []
        for _ in range(30):  # answered from the cache after the first, shuffled each time
            result = await mx.resolve_mx("pref.test")
            pairs.append(tuple(h.name for h in result.hosts[1:3]))
        return pairs

    first = await middle_pairs(7)
    assert first == await middle_pairs(7)  # the injected random source decides
    assert set(first) == {("mx1.pref.test", "mx2.pref.test"), ("mx2.pref.test", "mx1.pref.test")}


async def test_site_is_the_sorted_set_of_mx_host_names(dns_server: DnsEndpoint) -> None:
    mx = resolver(dns_server)
    a = await mx.resolve_mx("shared-a.test")
    b = await mx.resolve_mx("shared-b.test")
    assert a.site == b.site == ("mx1.provider.test", "mx2.provider.test")
    pref = await mx.resolve_mx("pref.test")
    assert pref.site == ("mx0.pref.test", "mx1.pref.test", "mx2.pref.test", "mx3.pref.test")


async def test_rfc5321_5_1_no_mx_uses_the_domain_itself(dns_server: DnsEndpoint) -> None:
    mx = resolver(dns_server)
    result = await mx.resolve_mx("implicit.test")
    assert result.implicit
    assert result.hosts == (MxHost("implicit.test", 0),)
    assert result.site == ("implicit.test",)
    assert await mx.resolve_addresses("implicit.test") == ("127.0.0.20",)


async def test_rfc5321_5_1_no_mx_and_no_address_is_permanent(dns_server: DnsEndpoint) -> None:
    with pytest.raises(DnsPermanentError) as info:
        await resolver(dns_server).resolve_mx("v6only.test")
    assert info.value.enhanced == "5.1.2"
    # With IPv6 enabled the AAAA record is the implicit MX's address.
    mx6 = resolver(dns_server, ipv6=True)
    assert (await mx6.resolve_mx("v6only.test")).implicit
    assert await mx6.resolve_addresses("v6only.test") == ("::1",)


# --- RFC 7505: null MX ---------------------------------------------------------------


async def test_rfc7505_null_mx_is_permanent_5_1_10(dns_server: DnsEndpoint) -> None:
    with pytest.raises(DnsPermanentError) as info:
        await resolver(dns_server).resolve_mx("null.test")
    assert info.value.enhanced == "5.1.10"
    assert info.value.name == "null.test"


async def test_rfc7505_null_mx_beside_real_mx_is_ignored(dns_server: DnsEndpoint) -> None:
    result = await resolver(dns_server).resolve_mx("mixed-null.test")
    assert result.hosts == (MxHost("mx1.pref.test", 10),)


# --- failures --------------------------------------------------------------------------


async def test_nxdomain_is_permanent_5_1_2(dns_server: DnsEndpoint) -> None:
    with pytest.raises(DnsPermanentError) as info:
        await resolver(dns_server).resolve_mx("nx.test")
    assert info.value.enhanced == "5.1.2"
    assert "NXDOMAIN" in info.value.text


async def test_servfail_is_temporary_4_4_3(dns_server: DnsEndpoint) -> None:
    with pytest.raises(DnsTemporaryError) as info:
        await resolver(dns_server).resolve_mx("servfail.test")
    assert info.value.enhanced == "4.4.3"


async def test_timeout_is_temporary_4_4_3(dns_server: DnsEndpoint) -> None:
    with pytest.raises(DnsTemporaryError) as info:
        await resolver(dns_server, timeout=TIMEOUT).resolve_mx("timeout.test")
    assert info.value.enhanced == "4.4.3"
    assert "timed out" in info.value.text


async def test_invalid_domain_is_permanent_without_a_query(dns_server: DnsEndpoint) -> None:
    mx = resolver(dns_server)
    for bad in ("", ".", "a..b.test", "x" * 64 + ".test"):
        with pytest.raises(DnsPermanentError) as info:
            await mx.resolve_mx(bad)
        assert info.value.enhanced == "5.1.2"
    assert mx.statistics().queries == 0


# --- addresses -------------------------------------------------------------------------


async def test_addresses_ipv4_and_optionally_ipv6(dns_server: DnsEndpoint) -> None:
    assert await resolver(dns_server).resolve_addresses("dual.test") == ("127.0.0.21",)
    both = await resolver(dns_server, ipv6=True).resolve_addresses("dual.test")
    assert both == ("127.0.0.21", "::1")
    many = await resolver(dns_server).resolve_addresses("mx1.pref.test")
    assert sorted(many) == ["127.0.0.11", "127.0.0.12"]


async def test_mx_host_without_address_is_permanent_5_4_4(dns_server: DnsEndpoint) -> None:
    mx = resolver(dns_server)
    result = await mx.resolve_mx("dangling.test")
    assert result.hosts == (MxHost("missing.test", 10),)
    with pytest.raises(DnsPermanentError) as info:
        await mx.resolve_addresses("missing.test")
    assert info.value.enhanced == "5.4.4"


async def test_address_lookup_failures_are_temporary(dns_server: DnsEndpoint) -> None:
    with pytest.raises(DnsTemporaryError):
        await resolver(dns_server).resolve_addresses("servfail.test")


async def test_large_answer_is_fetched_over_tcp(dns_server: DnsEndpoint) -> None:
    # 40 long MX names do not fit a 1232-byte datagram: truncated, then TCP.
    result = await resolver(dns_server).resolve_mx("big.test")
    assert [h.preference for h in result.hosts] == list(range(40))
    assert len(result.site) == 40


# --- caching ---------------------------------------------------------------------------


async def test_answers_are_cached_for_their_ttl(dns_server: DnsEndpoint) -> None:
    clock = FakeClock()
    mx = resolver(dns_server, clock=clock)
    first = await mx.resolve_mx("PREF.test.")  # case and final dot do not matter
    assert first.domain == "pref.test"
    await mx.resolve_mx("pref.test")
    assert mx.statistics().queries == 1
    clock.now += 299  # the zone's TTL is 300 s
    await mx.resolve_mx("pref.test")
    assert mx.statistics().queries == 1
    clock.now += 2
    await mx.resolve_mx("pref.test")
    assert mx.statistics().queries == 2
    assert mx.statistics().cache_hits == 2


async def test_ttl_is_clamped(dns_server: DnsEndpoint) -> None:
    clock = FakeClock()
    mx = resolver(dns_server, clock=clock, max_ttl=10.0)
    await mx.resolve_addresses("implicit.test")
    clock.now += 11
    await mx.resolve_addresses("implicit.test")
    assert mx.statistics().queries == 2


async def test_negative_answers_are_cached_briefly(dns_server: DnsEndpoint) -> None:
    clock = FakeClock()
    mx = resolver(dns_server, clock=clock, negative_ttl=30.0)
    for _ in range(3):
        with pytest.raises(DnsPermanentError):
            await mx.resolve_mx("nx.test")
    assert mx.statistics().queries == 1
    clock.now += 31
    with pytest.raises(DnsPermanentError):
        await mx.resolve_mx("nx.test")
    assert mx.statistics().queries == 2


async def test_temporary_failures_are_cached_for_the_failure_ttl(dns_server: DnsEndpoint) -> None:
    clock = FakeClock()
    mx = resolver(dns_server, clock=clock, failure_ttl=5.0)
    for _ in range(2):
        with pytest.raises(DnsTemporaryError):
            await mx.resolve_mx("servfail.test")
    assert mx.statistics().queries == 1
    clock.now += 6
    with pytest.raises(DnsTemporaryError):
        await mx.resolve_mx("servfail.test")
    assert mx.statistics().queries == 2


async def test_concurrent_lookups_of_one_name_share_one_query(dns_server: DnsEndpoint) -> None:
    mx = resolver(dns_server)
    results = []

    async def lookup() -> None:
        results.append(await mx.resolve_mx("pref.test"))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(lookup)
    assert len(results) == 50
    assert {r.site for r in results} == {results[0].site}
    assert mx.statistics().queries == 1


def test_name_servers_must_be_ip_addresses() -> None:
    with pytest.raises(ConfigError):
        MxResolver(nameservers=[])
    with pytest.raises(ConfigError):
        MxResolver(nameservers=["dns.example"])
    assert MxResolver(nameservers=["127.0.0.1", "::1"], port=5353).nameservers == [
        "127.0.0.1",
        "::1",
    ]


async def test_dnspython_would_pick_its_trio_backend_too() -> None:
    # MxResolver passes the trio backend explicitly; sniffing agrees under trio.
    assert dns.asyncbackend.sniff() == "trio"
