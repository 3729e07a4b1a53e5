"""Fixtures for the relay.net tests: trustme certificates and DNS servers on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.testing.dns import DnsEndpoint, DnsZone, open_dns_server
from relay.testing.dnsmasq import dnsmasq_available
from relay.testing.tls import TlsFiles, make_tls_files

# The zone every DNS test resolves against, on both kinds of server.
ZONE = DnsZone(
    mx={
        "pref.test": [
            (20, "mx3.pref.test"),
            (10, "mx1.pref.test"),
            (10, "mx2.pref.test"),
            (5, "mx0.pref.test"),
        ],
        "null.test": [(0, ".")],
        "mixed-null.test": [(0, "."), (10, "mx1.pref.test")],
        "shared-a.test": [(10, "mx1.provider.test"), (20, "mx2.provider.test")],
        "shared-b.test": [(20, "mx2.provider.test"), (10, "mx1.provider.test")],
        "dangling.test": [(10, "missing.test")],
        "big.test": [(i, f"mx{i:02d}{'x' * 50}.big.test") for i in range(40)],
    },
    a={
        "mx0.pref.test": ["127.0.0.10"],
        "mx1.pref.test": ["127.0.0.11", "127.0.0.12"],
        "mx2.pref.test": ["127.0.0.13"],
        "mx3.pref.test": ["127.0.0.14"],
        "implicit.test": ["127.0.0.20"],
        "dual.test": ["127.0.0.21"],
    },
    aaaa={"dual.test": ["::1"], "v6only.test": ["::1"]},
    nxdomain={"nx.test"},
    servfail={"servfail.test"},
    timeout={"timeout.test"},
    ttl=300,
)


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    """A trustme CA and a server certificate for 127.0.0.1, localhost and mx.test."""
    return make_tls_files(tmp_path / "tls")


@pytest.fixture(params=["in-process", "dnsmasq"])
async def dns_server(request: pytest.FixtureRequest) -> AsyncIterator[DnsEndpoint]:
    """ZONE served by the in-process server, then by a real dnsmasq (skipped if missing)."""
    if request.param == "dnsmasq" and not dnsmasq_available():
        pytest.skip("dnsmasq is not installed (/usr/sbin/dnsmasq)")
    async with open_dns_server(ZONE, request.param) as endpoint:
        yield endpoint
