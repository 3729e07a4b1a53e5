"""DNS for tests: a zone description and a small authoritative server on loopback.

`DnsZone` says which names exist and what they hold (MX, A, AAAA), and which names
answer NXDOMAIN, SERVFAIL or nothing at all.  `FakeDnsServer` serves a zone over
UDP and TCP on 127.0.0.1 (one ephemeral port for both) from a trio task, using
dnspython's message and wire functions; a UDP answer larger than the query's
payload size is sent truncated (TC) so that clients retry over TCP.
`open_dns_server` gives a real dnsmasq when it is installed (relay.testing.dnsmasq)
and this server otherwise; both serve the same zone with the same meaning.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import trio

DEFAULT_TTL = 300
_MAX_TCP_MESSAGES = 1000  # per connection
_TCP_IDLE_TIMEOUT = 10.0
_BIND_ATTEMPTS = 20

DnsServerKind = Literal["auto", "dnsmasq", "in-process"]


def canonical_name(name: str) -> str:
    """A name as zones compare it: lower case, no final dot."""
    return name.strip().rstrip(".").lower()


@dataclass
class DnsZone:
    """Records to serve.  Names are compared case-insensitively, without the final dot.

    A name in `nxdomain` (or in no record table) answers NXDOMAIN; a name in
    `servfail` answers SERVFAIL; a name in `timeout` gets no answer at all.  A null
    MX (RFC 7505) is `mx[name] = [(0, ".")]`.
    """

    mx: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    a: dict[str, list[str]] = field(default_factory=dict)
    aaaa: dict[str, list[str]] = field(default_factory=dict)
    nxdomain: set[str] = field(default_factory=set)
    servfail: set[str] = field(default_factory=set)
    timeout: set[str] = field(default_factory=set)
    ttl: int = DEFAULT_TTL

    def existing_names(self) -> set[str]:
        """Names that have at least one record of some type."""
        return {canonical_name(name) for table in (self.mx, self.a, self.aaaa) for name in table}

    def records(self, name: str, rdtype: dns.rdatatype.RdataType) -> list[str]:
        """The record data, as master-file text, for one question."""
        wanted = canonical_name(name)
        if rdtype == dns.rdatatype.MX:
            return [
                f"{preference} {canonical_name(host)}."
                if canonical_name(host)
                else f"{preference} ."
                for key, entries in self.mx.items()
                if canonical_name(key) == wanted
                for preference, host in entries
            ]
        table = {dns.rdatatype.A: self.a, dns.rdatatype.AAAA: self.aaaa}.get(rdtype, {})
        return [
            address
            for key, values in table.items()
            if canonical_name(key) == wanted
            for address in values
        ]

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """The response to `query`, or None to stay silent."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        name = canonical_name(question.name.to_text())
        if name in {canonical_name(n) for n in self.timeout}:
            return None
        if name in {canonical_name(n) for n in self.servfail}:
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        if name in {canonical_name(n) for n in self.nxdomain} or name not in self.existing_names():
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        texts = self.records(name, question.rdtype)
        if texts and question.rdclass == dns.rdataclass.IN:
            response.answer.append(
                dns.rrset.from_text_list(
                    question.name, self.ttl, dns.rdataclass.IN, question.rdtype, texts
                )
            )
        return response


@dataclass(frozen=True)
class DnsEndpoint:
    """Where a test DNS server listens, and what it is."""

    host: str
    port: int
    kind: Literal["dnsmasq", "in-process"]

    @property
    def nameservers(self) -> list[str]:
        """For MxResolver(nameservers=..., port=...)."""
        return [self.host]


def _udp_wire(query: dns.message.Message, response: dns.message.Message) -> bytes:
    """The response as one datagram: truncated (TC, no records) when over the query's size."""
    limit = max(512, query.payload) if query.edns >= 0 else 512
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        truncated = dns.message.make_response(query)
        truncated.flags = response.flags | dns.flags.TC
        return truncated.to_wire(max_size=limit)


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


class FakeDnsServer:
    """An authoritative DNS server for a DnsZone on 127.0.0.1, UDP and TCP on one port.

    `queries` records every question asked: (transport, name, type).  The zone is
    read at every query, so tests may change it while the server runs.
    """

    def __init__(self, zone: DnsZone, *, host: str = "127.0.0.1") -> None:
        self.zone = zone
        self.host = host
        self.queries: list[tuple[str, str, str]] = []
        self._endpoint: DnsEndpoint | None = None

    @property
    def endpoint(self) -> DnsEndpoint:
        """Where the server listens (once started)."""
        if self._endpoint is None:
            raise RuntimeError("the DNS server is not running")
        return self._endpoint

    async def serve(
        self, *, task_status: trio.TaskStatus[DnsEndpoint] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind UDP and TCP on one free port and answer until cancelled."""
        udp, tcp = await self._bind()
        with udp, tcp:
            self._endpoint = DnsEndpoint(self.host, udp.getsockname()[1], "in-process")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_udp, udp)
                nursery.start_soon(self._serve_tcp, trio.SocketListener(tcp), nursery)
                task_status.started(self._endpoint)

    async def _bind(self) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
        for _ in range(_BIND_ATTEMPTS):
            udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await udp.bind((self.host, 0))
            tcp = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                await tcp.bind((self.host, udp.getsockname()[1]))
                tcp.listen(64)
            except OSError:  # that TCP port is taken: try another UDP port
                udp.close()
                tcp.close()
                continue
            return udp, tcp
        raise OSError("no port free for both UDP and TCP")

    def _respond(self, data: bytes, *, udp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        if query.question:
            question = query.question[0]
            self.queries.append(
                (
                    "udp" if udp else "tcp",
                    canonical_name(question.name.to_text()),
                    dns.rdatatype.to_text(question.rdtype),
                )
            )
        response = self.zone.answer(query)
        if response is None:
            return None
        return _udp_wire(query, response) if udp else response.to_wire(max_size=65535)

    async def _serve_udp(self, sock: trio.socket.SocketType) -> None:
        while True:
            data, peer = await sock.recvfrom(65535)
            wire = self._respond(data, udp=True)
            if wire is not None:
                await sock.sendto(wire, peer)

    async def _serve_tcp(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            stream = await listener.accept()
            nursery.start_soon(self._serve_tcp_connection, stream)

    async def _serve_tcp_connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            for _ in range(_MAX_TCP_MESSAGES):
                with trio.move_on_after(_TCP_IDLE_TIMEOUT):
                    try:
                        header = await _receive_exactly(stream, 2)
                        if header is None:
                            return
                        data = await _receive_exactly(stream, int.from_bytes(header, "big"))
                        if data is None:
                            return
                        wire = self._respond(data, udp=False)
                        if wire is not None:
                            await stream.send_all(len(wire).to_bytes(2, "big") + wire)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    continue
                return  # idle too long


@asynccontextmanager
async def open_fake_dns_server(zone: DnsZone) -> AsyncIterator[FakeDnsServer]:
    """Run a FakeDnsServer for the duration of the block."""
    server = FakeDnsServer(zone)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_dns_server(
    zone: DnsZone, kind: DnsServerKind = "auto"
) -> AsyncIterator[DnsEndpoint]:
    """A DNS server for `zone`: dnsmasq when installed (or asked for), else in-process."""
    from relay.testing.dnsmasq import dnsmasq_available, open_dnsmasq

    if kind == "dnsmasq" or (kind == "auto" and dnsmasq_available()):
        async with open_dnsmasq(zone) as endpoint:
            yield endpoint
    else:
        async with open_fake_dns_server(zone) as server:
            yield server.endpoint
