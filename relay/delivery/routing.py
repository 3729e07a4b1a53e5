"""Where mail for a domain goes: static routes, else the domain's MX hosts.

Theory of operation
-------------------
The scheduler asks `Router.ready_key(domain, tenant)` which ready queue a domain's
mail joins; the answer is a `ReadyKey`: the egress source chosen for the tenant
(relay.delivery.egress) and the destination *site*:

- `RouteSite` for a domain covered by a static route (`[[route]]`, a domain or
  "*"): host, port, TLS mode and AUTH user.  Routes override DNS; domains routed
  alike share one queue.
- `MxSite` otherwise: the MX host names of the domain (`MxResult.site`), so every
  domain hosted by one provider shares a single ready queue and a single set of
  limits (the KumoMTA "MX rollup").
- `Unroutable` when the MX lookup failed: permanently (NXDOMAIN 5.1.2, null MX
  5.1.10: the domain's recipients bounce) or for now (SERVFAIL, timeout 4.4.3:
  they are deferred and retried with backoff).  The failure travels in the key, and
  the delivery side answers every job of such a queue with it, without connecting
  (the scheduler caches a ready key for a minute or so, so a transient failure is
  looked up again at the next retry).

A delivery session then asks `next_hops(key, domain)` for the hosts to try, in
order (MX preference, random among equals, implicit MX), and `addresses(hop)` for
each host's addresses when it gets to it.  DNS answers are cached by the resolver
for their TTL, so these repeated questions cost nothing on the wire.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from relay.config import Config, DeliveryConfig, RouteConfig
from relay.delivery.egress import EgressPools, EgressSource
from relay.errors import DnsError, DnsPermanentError
from relay.model import TlsMode
from relay.net.dns import MxResolver, MxResult

SMTP_PORT = 25
WILDCARD = "*"


@dataclass(frozen=True, slots=True)
class MxSite:
    """The MX host names of a domain, sorted: a destination shared by its domains."""

    hosts: tuple[str, ...]

    def __str__(self) -> str:
        return "mx:" + ",".join(self.hosts)


@dataclass(frozen=True, slots=True)
class RouteSite:
    """A static route's destination (routes that agree on all of it share a queue)."""

    host: str
    port: int
    tls: TlsMode
    username: str = ""

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"route:{user}{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Unroutable:
    """A domain whose MX lookup failed; `reply` is what its recipients get."""

    domain: str
    reply: str  # e.g. "556 5.1.10 null.test: domain does not accept mail (null MX)"
    permanent: bool

    def __str__(self) -> str:
        return f"unroutable:{self.domain}"


Site = MxSite | RouteSite | Unroutable


@dataclass(frozen=True, slots=True)
class ReadyKey:
    """The key of a ready queue: egress source x destination site."""

    source: str
    site: Site

    def __str__(self) -> str:
        return f"{self.source}/{self.site}"


@dataclass(frozen=True, slots=True)
class NextHop:
    """One host to try: its name (what TLS verifies), port, TLS mode and AUTH."""

    host: str
    port: int
    tls: TlsMode
    username: str = ""
    password: str = field(default="", repr=False)
    mx_preference: int | None = None  # None for a static route


def dns_reply(error: DnsError) -> str:
    """The reply recorded for recipients whose domain's lookup failed.

    RFC 7505 4.2 asks for 556 with 5.1.10 for a null MX; other permanent failures
    read 550, transient ones 451.
    """
    if isinstance(error, DnsPermanentError):
        code = 556 if error.enhanced == "5.1.10" else 550
    else:
        code = 451
    return f"{code} {error.enhanced} {error.name}: {error.text}"


def mx_resolver(delivery: DeliveryConfig) -> MxResolver:
    """The resolver `[delivery]` asks for: its name servers (else the system's), port
    and timeout."""
    return MxResolver(
        nameservers=delivery.nameservers or None,
        port=delivery.dns_port,
        timeout=delivery.dns_timeout,
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Router:
    """Static routes over MX resolution; egress source per tenant (see module docstring).

    `mx_port` is the port MX hosts are reached on (25; tests point it elsewhere).
    `pools` defaults to the configuration's egress sources and pools.
    """

    def __init__(
        self,
        config: Config,
        resolver: MxResolver,
        *,
        pools: EgressPools | None = None,
        mx_port: int = SMTP_PORT,
    ) -> None:
        self._resolver = resolver
        self._default_tls = TlsMode(config.delivery.tls)
        self._mx_port = mx_port
        self.pools = pools or EgressPools.from_config(config)
        self._routes: dict[str, RouteConfig] = {}
        self._by_site: dict[RouteSite, RouteConfig] = {}
        for route in config.routes:
            domain = route.domain.strip().lower().rstrip(".")
            self._routes[domain] = route
            self._by_site.setdefault(self._route_site(route), route)

    @staticmethod
    def _route_site(route: RouteConfig) -> RouteSite:
        return RouteSite(
            route.host.strip("[]").lower(), route.port, TlsMode(route.tls), route.username
        )

    @property
    def resolver(self) -> MxResolver:
        """The resolver in use."""
        return self._resolver

    def route_for(self, domain: str) -> RouteConfig | None:
        """The static route of `domain` (exact match, then "*"), or None."""
        return self._routes.get(domain.lower().rstrip(".")) or self._routes.get(WILDCARD)

    def source(self, key: ReadyKey) -> EgressSource:
        """The egress source of a ready key."""
        return self.pools.source(key.source)

    async def ready_key(self, domain: str, tenant: str) -> ReadyKey:
        """The ready queue for `domain`'s mail from `tenant` (the scheduler's hook)."""
        source = self.pools.choose(tenant).name
        route = self.route_for(domain)
        if route is not None:
            return ReadyKey(source, self._route_site(route))
        try:
            mx = await self._resolver.resolve_mx(domain)
        except DnsError as exc:
            permanent = isinstance(exc, DnsPermanentError)
            return ReadyKey(source, Unroutable(domain.lower(), dns_reply(exc), permanent))
        return ReadyKey(source, MxSite(mx.site))

    async def next_hops(self, key: ReadyKey, domain: str) -> tuple[NextHop, ...]:
        """The hosts to try for `domain` on a connection of queue `key`, best first.

        Raises DnsPermanentError / DnsTemporaryError when the domain no longer
        resolves, and ValueError for an Unroutable key (nothing to connect to).
        """
        site = key.site
        if isinstance(site, RouteSite):
            route = self._by_site[site]
            return (NextHop(site.host, site.port, site.tls, route.username, route.password),)
        if isinstance(site, Unroutable):
            raise ValueError(f"no next hop for an unroutable destination ({site.domain})")
        mx: MxResult = await self._resolver.resolve_mx(domain)
        return tuple(
            NextHop(host.name, self._mx_port, self._default_tls, mx_preference=host.preference)
            for host in mx.hosts
        )

    async def addresses(self, hop: NextHop) -> tuple[str, ...]:
        """The IP addresses of a next hop (an IP literal is its own address)."""
        if _is_ip(hop.host):
            return (hop.host,)
        return await self._resolver.resolve_addresses(hop.host)
