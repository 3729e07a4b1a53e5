"""Egress sources (a local address to send from, and the EHLO name that goes with it)
and the weighted pools tenants send through.

A tenant's pool is `delivery.pools[tenant]`, else `delivery.pools["*"]`, else every
configured source (the implicit "default" source, which lets the kernel choose the
address, when none is configured).  Within a pool the choice is a smooth weighted
round-robin (as nginx balances upstreams): deterministic, and spread evenly in time,
so that a pool of weights 3:1 sends three ready queues' worth through the first
source for every one through the second.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from relay.config import Config, EgressSourceConfig
from relay.errors import ConfigError

DEFAULT_SOURCE = "default"
DEFAULT_POOL = "*"


@dataclass(frozen=True, slots=True)
class EgressSource:
    """Where outbound connections come from."""

    name: str
    address: str | None  # an IP literal; None lets the kernel choose
    ehlo_name: str
    weight: int = 1

    @property
    def ipv4(self) -> str | None:
        """The address to bind IPv4 connections to, if any."""
        if self.address is None or ipaddress.ip_address(self.address).version != 4:
            return None
        return self.address

    @property
    def ipv6(self) -> str | None:
        """The address to bind IPv6 connections to, if any."""
        if self.address is None or ipaddress.ip_address(self.address).version != 6:
            return None
        return self.address


def source_from_config(entry: EgressSourceConfig, hostname: str) -> EgressSource:
    """An EgressSource from its configuration (ConfigError for a bad address)."""
    address = entry.address.strip() or None
    if address is not None:
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise ConfigError(
                f"egress source {entry.name!r}: address {entry.address!r} is not an IP address"
            ) from None
    return EgressSource(entry.name, address, entry.ehlo_name or hostname, entry.weight)


class _Pool:
    """Smooth weighted round-robin over some sources."""

    __slots__ = ("current", "sources", "total", "weights")

    def __init__(self, sources: Sequence[EgressSource]) -> None:
        if not sources:
            raise ValueError("an egress pool needs at least one source")
        self.sources = tuple(sources)
        weights = [max(0, s.weight) for s in self.sources]
        if not any(weights):  # all weights zero: share equally rather than send nothing
            weights = [1] * len(weights)
        self.weights = weights
        self.total = sum(weights)
        self.current = [0] * len(weights)

    def choose(self) -> EgressSource:
        best = 0
        for i, weight in enumerate(self.weights):
            self.current[i] += weight
            if self.current[i] > self.current[best]:
                best = i
        self.current[best] -= self.total
        return self.sources[best]


class EgressPools:
    """The egress sources and which of them each tenant sends through."""

    def __init__(
        self,
        sources: Sequence[EgressSource],
        pools: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if not sources:
            raise ValueError("at least one egress source is needed")
        self._sources = {source.name: source for source in sources}
        if len(self._sources) != len(sources):
            raise ConfigError("egress source names must be unique")
        self._pools: dict[str, _Pool] = {}
        for tenant, names in (pools or {}).items():
            unknown = [n for n in names if n not in self._sources]
            if unknown:
                raise ConfigError(f"delivery.pools.{tenant}: unknown egress source(s) {unknown}")
            self._pools[tenant] = _Pool([self._sources[n] for n in names])
        if DEFAULT_POOL not in self._pools:
            self._pools[DEFAULT_POOL] = _Pool(sources)

    @classmethod
    def from_config(cls, config: Config) -> EgressPools:
        """The sources of `config.egress` (plus the kernel-chosen "default") and the
        tenant pools of `config.delivery.pools`."""
        hostname = config.server.hostname
        sources = [source_from_config(e, hostname) for e in config.egress]
        pools = dict(config.delivery.pools)
        pools.setdefault(DEFAULT_POOL, tuple(s.name for s in sources) or (DEFAULT_SOURCE,))
        if not any(s.name == DEFAULT_SOURCE for s in sources):
            sources.append(EgressSource(DEFAULT_SOURCE, None, hostname))
        return cls(sources, pools)

    @property
    def sources(self) -> Mapping[str, EgressSource]:
        """Every source by name."""
        return self._sources

    def source(self, name: str) -> EgressSource:
        """The source called `name` (KeyError if there is none)."""
        return self._sources[name]

    def choose(self, tenant: str) -> EgressSource:
        """The next source of the tenant's pool."""
        pool = self._pools.get(tenant) or self._pools[DEFAULT_POOL]
        return pool.choose()
