"""Where mail for a domain goes: MX resolution (RFC 5321 5.1, RFC 7505) over dnspython.

Theory of operation: every lookup is one (name, type) question answered by
`_lookup`, which consults a TTL cache, joins a lookup for the same question
already in flight (thousands of queued messages for one new domain cost one
query), and otherwise asks the name servers with dnspython's async
resolver on its trio backend (passed explicitly: dnspython would otherwise pick
a backend by sniffing the running library).  Outcomes are cached as plain
values - records, "no such domain" or a temporary failure - for the answer's
TTL, a short negative TTL, or a shorter failure TTL; fresh exceptions are
raised from them on every call.

On top of that, `resolve_mx` applies the mail rules: MX hosts by preference,
shuffled among equals; no MX means the domain itself (implicit MX); a lone "."
exchange is a null MX (permanent 5.1.10); NXDOMAIN is permanent (5.1.2);
SERVFAIL and timeouts are temporary (4.4.3).  `resolve_addresses` turns a host
name into IP addresses (A, then AAAA when IPv6 is enabled).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdata
import dns.rdatatype
import dns.resolver
import trio

from relay.errors import ConfigError, DnsPermanentError, DnsTemporaryError
from relay.net.ttlcache import TtlCache

# RFC 3463 enhanced status codes used here.
BAD_DESTINATION = "5.1.2"  # the domain does not exist or has no mail exchanger
NULL_MX = "5.1.10"  # RFC 7505 section 4.2: the domain accepts no mail
NO_ROUTE = "5.4.4"  # an MX host name has no address
DNS_FAILURE = "4.4.3"  # directory server failure: retry later

EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: large answers without fragmentation


@dataclass(frozen=True, slots=True)
class MxHost:
    """One mail exchanger: its host name (lower case, no final dot) and preference."""

    name: str
    preference: int


@dataclass(frozen=True, slots=True)
class MxResult:
    """Where mail for `domain` goes, best host first."""

    domain: str
    hosts: tuple[MxHost, ...]
    implicit: bool = False  # no MX records: the domain itself (RFC 5321 5.1)

    @property
    def site(self) -> tuple[str, ...]:
        """The sorted MX host names: domains served by the same hosts share one ready queue."""
        return tuple(sorted({host.name for host in self.hosts}))


@dataclass(frozen=True, slots=True)
class ResolverStatistics:
    """Counters of an MxResolver."""

    queries: int  # questions sent to the name servers
    cache_hits: int  # questions answered from the cache or by joining one in flight
    cache_entries: int


class _Negative(enum.Enum):
    NXDOMAIN = "NXDOMAIN"


@dataclass(frozen=True, slots=True)
class _Failure:
    text: str


# Records (empty for NOERROR with no data), no such domain, or a temporary failure.
_Outcome = tuple[dns.rdata.Rdata, ...] | _Negative | _Failure


class _Flight:
    """A question being asked; later askers wait on `done` and read `outcome`."""

    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.outcome: _Outcome | None = None


def _canonical(name: str) -> str:
    """A domain or host name as an ASCII, lower-case name without the final dot."""
    text = name.strip().rstrip(".")
    if not text:
        raise DnsPermanentError(name, BAD_DESTINATION, "empty domain name")
    try:
        parsed = dns.name.from_text(text)
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise DnsPermanentError(name, BAD_DESTINATION, "invalid domain name") from exc
    return parsed.to_text(omit_final_dot=True).lower()


class MxResolver:
    """MX and address resolution with caching; one per process, shared by all deliveries.

    `nameservers` (IP addresses) and `port` choose the servers; None reads the
    system's configuration (/etc/resolv.conf).  `timeout` bounds each question.
    `rng` orders MX hosts of equal preference; `clock` drives the cache (default:
    trio's clock).  TTLs are clamped to [`min_ttl`, `max_ttl`]; NXDOMAIN and empty
    answers live `negative_ttl` seconds, temporary failures `failure_ttl`.
    """

    def __init__(
        self,
        *,
        nameservers: Sequence[str] | None = None,
        port: int = 53,
        timeout: float = 5.0,
        ipv6: bool = False,
        rng: random.Random | None = None,
        clock: Callable[[], float] | None = None,
        min_ttl: float = 0.0,
        max_ttl: float = 86400.0,
        negative_ttl: float = 30.0,
        failure_ttl: float = 5.0,
        max_entries: int = 100_000,
    ) -> None:
        try:
            resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
        except dns.exception.DNSException as exc:
            raise ConfigError(f"DNS: cannot read the system resolver configuration: {exc}") from exc
        resolver.port = port
        if nameservers is not None:
            if not nameservers:
                raise ConfigError("DNS: the list of name servers is empty")
            try:
                resolver.nameservers = list(nameservers)
            except ValueError as exc:
                raise ConfigError(f"DNS: name servers must be IP addresses: {exc}") from exc
        resolver.lifetime = timeout
        resolver.timeout = min(timeout, 2.0)  # per try; a lost UDP datagram is retried
        resolver.cache = None  # ours, below, runs on the injected clock
        resolver.use_edns(0, 0, EDNS_PAYLOAD)
        self._resolver = resolver
        self._backend = dns.asyncbackend.get_backend("trio")
        self._timeout = timeout
        self._ipv6 = ipv6
        self._rng = rng or random.Random()
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._failure_ttl = failure_ttl
        self._cache: TtlCache[tuple[str, dns.rdatatype.RdataType], _Outcome] = TtlCache(
            max_entries=max_entries, clock=clock or trio.current_time
        )
        self._inflight: dict[tuple[str, dns.rdatatype.RdataType], _Flight] = {}
        self._queries = 0
        self._hits = 0

    @property
    def nameservers(self) -> list[str]:
        """The name servers asked."""
        return [str(server) for server in self._resolver.nameservers]

    def statistics(self) -> ResolverStatistics:
        """The current counters."""
        return ResolverStatistics(
            queries=self._queries, cache_hits=self._hits, cache_entries=len(self._cache)
        )

    def clear_cache(self) -> None:
        """Forget every cached answer."""
        self._cache.clear()

    async def resolve_mx(self, domain: str) -> MxResult:
        """The mail exchangers of `domain`, best first, equals in random order.

        Raises DnsPermanentError (5.1.2 no such domain or no mail host, 5.1.10 null
        MX) or DnsTemporaryError (4.4.3).
        """
        name = _canonical(domain)
        outcome = await self._lookup(name, dns.rdatatype.MX)
        if isinstance(outcome, _Failure):
            raise DnsTemporaryError(name, DNS_FAILURE, outcome.text)
        if outcome is _Negative.NXDOMAIN:
            raise DnsPermanentError(name, BAD_DESTINATION, "domain does not exist (NXDOMAIN)")
        if not outcome:
            return await self._implicit_mx(name)
        best: dict[str, int] = {}
        for rdata in outcome:
            exchange = cast(dns.name.Name, rdata.exchange)  # type: ignore[attr-defined]
            preference = cast(int, rdata.preference)  # type: ignore[attr-defined]
            host = exchange.to_text(omit_final_dot=True).lower()
            if host not in best or preference < best[host]:
                best[host] = preference
        if set(best) <= {"", "."}:  # RFC 7505: "." is the null MX exchange
            raise DnsPermanentError(name, NULL_MX, "domain does not accept mail (null MX)")
        # A null MX beside real ones violates RFC 7505 section 3; the real ones win.
        best.pop("", None)
        best.pop(".", None)
        return MxResult(name, self._order(best))

    async def resolve_addresses(self, host: str) -> tuple[str, ...]:
        """The IP addresses of a mail host: IPv4 first, then IPv6 when enabled.

        Raises DnsPermanentError (5.4.4: no such host or no address) or
        DnsTemporaryError (4.4.3).
        """
        name = _canonical(host)
        types = [dns.rdatatype.A] + ([dns.rdatatype.AAAA] if self._ipv6 else [])
        addresses: list[str] = []
        failure: _Failure | None = None
        nxdomain = False
        for rdtype in types:
            outcome = await self._lookup(name, rdtype)
            if outcome is _Negative.NXDOMAIN:
                nxdomain = True
                break  # the name does not exist for any type
            if isinstance(outcome, _Failure):
                failure = outcome
                continue
            addresses.extend(cast(str, rdata.address) for rdata in outcome)  # type: ignore[attr-defined]
        if addresses:
            return tuple(dict.fromkeys(addresses))
        if failure is not None:
            raise DnsTemporaryError(name, DNS_FAILURE, failure.text)
        if nxdomain:
            raise DnsPermanentError(name, NO_ROUTE, "host not found (NXDOMAIN)")
        raise DnsPermanentError(name, NO_ROUTE, "host has no address records")

    async def _implicit_mx(self, name: str) -> MxResult:
        """RFC 5321 5.1: with no MX records, the domain's own address records act as its MX."""
        try:
            await self.resolve_addresses(name)
        except DnsPermanentError as exc:
            raise DnsPermanentError(name, BAD_DESTINATION, "no MX and no address records") from exc
        return MxResult(name, (MxHost(name, 0),), implicit=True)

    def _order(self, preferences: dict[str, int]) -> tuple[MxHost, ...]:
        """By preference; a random order among equal preferences (RFC 5321 5.1)."""
        hosts = sorted(preferences.items())  # servers vary the order: start from a fixed one
        self._rng.shuffle(hosts)
        hosts.sort(key=lambda item: item[1])  # stable: the shuffle survives among equals
        return tuple(MxHost(host, preference) for host, preference in hosts)

    async def _lookup(self, name: str, rdtype: dns.rdatatype.RdataType) -> _Outcome:
        """One question's outcome, from the cache, a lookup in flight, or the servers."""
        key = (name, rdtype)
        while True:
            cached = self._cache.get(key)
            if cached is not None:
                self._hits += 1
                return cached
            flight = self._inflight.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.outcome is not None:
                self._hits += 1
                return flight.outcome
            # The asker was cancelled before an answer: ask again.
        flight = _Flight()
        self._inflight[key] = flight
        try:
            outcome, ttl = await self._query(name, rdtype)
            self._cache.put(key, outcome, ttl)
            flight.outcome = outcome
        finally:
            del self._inflight[key]
            flight.done.set()
        return outcome

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> tuple[_Outcome, float]:
        """Ask the name servers; the outcome and how long it may be cached."""
        self._queries += 1
        qname = dns.name.from_text(name)  # absolute: no search list applies
        try:
            # dnspython enforces `lifetime`; this is only a backstop.
            with trio.fail_after(self._timeout + 5.0):
                answer = await self._resolver.resolve(
                    qname,
                    rdtype,
                    search=False,
                    raise_on_no_answer=False,
                    backend=self._backend,
                )
        except dns.resolver.NXDOMAIN:
            return _Negative.NXDOMAIN, self._negative_ttl
        except (dns.exception.Timeout, trio.TooSlowError):
            return _Failure("DNS lookup timed out"), self._failure_ttl
        except dns.resolver.NoNameservers:
            return _Failure("DNS server failure (SERVFAIL or refused)"), self._failure_ttl
        except dns.exception.DNSException as exc:
            return _Failure(f"DNS lookup failed ({type(exc).__name__})"), self._failure_ttl
        if answer.rrset is None:
            return (), self._negative_ttl
        ttl = float(answer.chaining_result.minimum_ttl)
        return tuple(answer.rrset), max(self._min_ttl, min(ttl, self._max_ttl))
