"""Where mail goes: MX resolution against a real DNS server on loopback (dnsmasq when
installed, else relay.testing's in-process server), fake MX hosts on 127.0.0.x."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from delivery_support import (
    SENDER,
    make_config,
    open_mx,
    open_sinks,
    received_by,
    route,
    running_relay,
    wait_until,
)

from relay.config import DeliveryConfig, EgressSourceConfig
from relay.delivery import (
    EgressPools,
    MxSite,
    ReadyKey,
    Router,
    RouteSite,
    Unroutable,
    mx_resolver,
)
from relay.model import RcptStatus, TlsMode
from relay.net.dns import MxResolver
from relay.testing.dns import DnsEndpoint, DnsZone, open_dns_server

ZONE = DnsZone(
    mx={
        "pref.test": [(20, "mx2.pref.test"), (10, "mx1.pref.test")],
        "same-hosts.test": [(10, "mx2.pref.test"), (20, "mx1.pref.test")],
        "fallback.test": [(10, "mx1.fallback.test"), (20, "mx2.fallback.test")],
        "null.test": [(0, ".")],
    },
    a={
        "mx1.pref.test": ["127.0.0.11"],
        "mx2.pref.test": ["127.0.0.12"],
        "mx1.fallback.test": ["127.0.0.21"],  # nothing listens there: connection refused
        "mx2.fallback.test": ["127.0.0.22"],
        "implicit.test": ["127.0.0.31"],
    },
    nxdomain={"nx.test"},
    servfail={"servfail.test"},
)


@pytest.fixture
async def dns() -> AsyncIterator[DnsEndpoint]:
    async with open_dns_server(ZONE) as endpoint:
        yield endpoint


def resolver(dns: DnsEndpoint) -> MxResolver:
    return MxResolver(nameservers=dns.nameservers, port=dns.port, timeout=2.0)


async def test_rfc5321_5_1_mx_hosts_in_preference_order(tmp_path: Path, dns: DnsEndpoint) -> None:
    async with open_sinks(["127.0.0.11", "127.0.0.12"]) as (mx1, mx2):
        config = make_config()
        async with running_relay(
            tmp_path, config, resolver=resolver(dns), mx_port=mx1.port
        ) as relay:
            metas = [await relay.send([f"user{i}@pref.test"]) for i in range(5)]
            await relay.final(*(m.id for m in metas))
            history = relay.meta(metas[0].id).history
        assert mx1.statistics().messages == 5
        assert mx2.statistics().messages == 0
        assert history[0].mx == f"mx1.pref.test[127.0.0.11]:{mx1.port}"


async def test_rfc5321_5_1_second_mx_when_the_first_refuses(
    tmp_path: Path, dns: DnsEndpoint
) -> None:
    async with open_sinks(["127.0.0.22"]) as (mx2,):
        async with running_relay(
            tmp_path, make_config(), resolver=resolver(dns), mx_port=mx2.port
        ) as relay:
            meta = await relay.send(["someone@fallback.test"])
            await relay.final(meta.id)
            [outcome] = relay.outcomes("someone@fallback.test")
        assert outcome.status is RcptStatus.DELIVERED
        assert outcome.mx == f"mx2.fallback.test[127.0.0.22]:{mx2.port}"
        assert [m.recipients for m in mx2.records] == [("someone@fallback.test",)]


async def test_rfc5321_5_1_no_mx_falls_back_to_the_address_record(
    tmp_path: Path, dns: DnsEndpoint
) -> None:
    async with open_sinks(["127.0.0.31"]) as (host,):
        async with running_relay(
            tmp_path, make_config(), resolver=resolver(dns), mx_port=host.port
        ) as relay:
            meta = await relay.send(["someone@implicit.test"])
            await relay.final(meta.id)
        assert [m.recipients for m in host.records] == [("someone@implicit.test",)]


async def test_rfc7505_null_mx_bounces_5_1_10_with_a_dsn(tmp_path: Path, dns: DnsEndpoint) -> None:
    async with open_mx() as senders_mx:
        config = make_config(routes=[route("sender.test", senders_mx.port)])
        async with running_relay(tmp_path, config, resolver=resolver(dns)) as relay:
            meta = await relay.send(["nobody@null.test"])
            await relay.final(meta.id)
            await senders_mx.wait_for(1, timeout=30)
            recipient = relay.meta(meta.id).recipients[0]
        assert recipient.status is RcptStatus.BOUNCED
        assert recipient.reply.startswith("556 5.1.10")  # RFC 7505 4.2
        [dsn] = received_by(senders_mx, SENDER)
        assert dsn.sender == ""
        assert b"Status: 5.1.10" in (dsn.content or b"")
        assert b"Final-Recipient: rfc822; nobody@null.test" in (dsn.content or b"")


async def test_nxdomain_bounces_5_1_2(tmp_path: Path, dns: DnsEndpoint) -> None:
    async with running_relay(tmp_path, make_config(), resolver=resolver(dns)) as relay:
        meta = await relay.send(["nobody@nx.test"], sender="")
        await relay.final(meta.id)
        recipient = relay.meta(meta.id).recipients[0]
    assert recipient.status is RcptStatus.BOUNCED
    assert recipient.reply.startswith("550 5.1.2")


async def test_servfail_defers_4_4_3(tmp_path: Path, dns: DnsEndpoint) -> None:
    async with running_relay(tmp_path, make_config(), resolver=resolver(dns)) as relay:
        meta = await relay.send(["somebody@servfail.test"])
        await wait_until(lambda: bool(relay.outcomes("somebody@servfail.test")))
        await relay.settled()
        recipient = relay.meta(meta.id).recipients[0]
        outcome = relay.outcomes("somebody@servfail.test")[0]
    assert outcome.status is RcptStatus.DEFERRED
    assert outcome.reply.startswith("451 4.4.3")
    assert recipient.status is RcptStatus.DEFERRED  # retried later, with backoff
    assert recipient.attempts == 1


async def test_domains_on_the_same_mx_hosts_share_one_ready_queue(
    tmp_path: Path, dns: DnsEndpoint
) -> None:
    async with open_sinks(["127.0.0.11", "127.0.0.12"]) as (mx1, mx2):
        async with running_relay(
            tmp_path, make_config(), resolver=resolver(dns), mx_port=mx1.port
        ) as relay:
            a = await relay.send(["x@pref.test"])
            b = await relay.send(["y@same-hosts.test"])
            await relay.final(a.id, b.id)
            keys = list(relay.scheduler.ready_queues)
        assert keys == [ReadyKey("default", MxSite(("mx1.pref.test", "mx2.pref.test")))]
        assert mx1.statistics().messages + mx2.statistics().messages == 2


async def test_ready_keys(dns: DnsEndpoint) -> None:
    config = make_config(
        routes=[route("routed.test", 2525, tls="required", username="u", password="p")],
        egress=[EgressSourceConfig(name="eu", address="127.0.0.5")],
    )
    router = Router(config, resolver(dns))
    assert await router.ready_key("routed.test", "acme") == ReadyKey(
        "eu", RouteSite("127.0.0.1", 2525, TlsMode.REQUIRED, "u")
    )
    assert await router.ready_key("pref.test", "acme") == ReadyKey(
        "eu", MxSite(("mx1.pref.test", "mx2.pref.test"))
    )
    nx = await router.ready_key("nx.test", "acme")
    assert isinstance(nx.site, Unroutable) and nx.site.permanent
    servfail = await router.ready_key("servfail.test", "acme")
    assert isinstance(servfail.site, Unroutable) and not servfail.site.permanent
    [hop] = await router.next_hops(await router.ready_key("routed.test", "x"), "routed.test")
    assert (hop.host, hop.port, hop.username, hop.password) == ("127.0.0.1", 2525, "u", "p")
    hops = await router.next_hops(await router.ready_key("pref.test", "x"), "pref.test")
    assert [(h.host, h.mx_preference) for h in hops] == [
        ("mx1.pref.test", 10),
        ("mx2.pref.test", 20),
    ]


def test_resolver_from_the_configuration() -> None:
    resolver = mx_resolver(DeliveryConfig(nameservers=("127.0.0.53",), dns_port=5353))
    assert resolver.nameservers == ["127.0.0.53"]


def test_routes_override_dns_exact_domain_first() -> None:
    config = make_config(routes=[route("*", 2500), route("Special.Test", 2600)])
    router = Router(config, MxResolver(nameservers=["127.0.0.1"], port=9))
    assert router.route_for("special.test") is config.routes[1]
    assert router.route_for("other.test") is config.routes[0]
    assert Router(make_config(), MxResolver(nameservers=["127.0.0.1"])).route_for("a.test") is None


def test_egress_pools_weighted_per_tenant() -> None:
    config = make_config(
        egress=[
            EgressSourceConfig(name="a", address="127.0.0.2", weight=3),
            EgressSourceConfig(name="b", address="127.0.0.3", weight=1),
            EgressSourceConfig(name="c", address="::1", ehlo_name="v6.test"),
        ],
        pools={"acme": ("a", "b"), "solo": ("c",)},
    )
    pools = EgressPools.from_config(config)
    picks = [pools.choose("acme").name for _ in range(8)]
    assert picks.count("a") == 6 and picks.count("b") == 2
    assert "b" not in picks[:1] and picks[:4].count("b") == 1  # spread, not bunched
    solo = pools.choose("solo")
    assert (solo.ipv4, solo.ipv6, solo.ehlo_name) == (None, "::1", "v6.test")
    assert {pools.choose("anyone").name for _ in range(10)} == {"a", "b", "c"}
    assert pools.source("a").ehlo_name == "relay.test"  # server.hostname by default
    kernel = EgressPools.from_config(make_config()).choose("anyone")
    assert (kernel.name, kernel.address) == ("default", None)
