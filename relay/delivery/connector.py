"""Opening an SMTP session to a destination: next hops, connect, EHLO, STARTTLS, AUTH.

Theory of operation
-------------------
The next hops of a ready key (relay.delivery.routing) are tried in order: each
host's addresses in order, from the queue's egress source address.  A hop fails
over to the next when it cannot be resolved or reached, when its greeting or EHLO
is not positive, and when it cannot give the TLS its mode demands; once every hop
has failed, `SetupFailed` carries the last reason (a transient reply) for the
job that was to go.

STARTTLS by mode (RFC 3207): DISABLED never; OPPORTUNISTIC when offered, going
on in clear if the server refuses the command, and reconnecting in clear to the
same host if the handshake fails (the host is then remembered, see
relay.delivery.tls); REQUIRED and REQUIRED_VERIFY fail the hop when TLS is not
offered or does not come up, REQUIRED_VERIFY checking the certificate chain and
the host name (the MX host name, or the route's host).

AUTH (RFC 4954), for routes with credentials: PLAIN when offered, else LOGIN; the
credentials are sent only over TLS, unless the route's TLS mode is DISABLED (an
explicit choice of cleartext, e.g. a smarthost on loopback).
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.delivery.channel import ChannelBroken, SmtpChannel
from relay.delivery.egress import EgressSource
from relay.delivery.routing import NextHop, ReadyKey, Router, dns_reply
from relay.delivery.tls import TlsContexts, TlsFailureMemory
from relay.errors import ConnectFailedError, DnsError, DnsPermanentError, TlsHandshakeError
from relay.log import get_logger
from relay.model import TlsMode
from relay.net.connect import connect_first
from relay.net.tls import DEFAULT_HANDSHAKE_TIMEOUT
from relay.proto import (
    AuthReply,
    ClientConnection,
    ClientEvent,
    Greeting,
    HelloReply,
    ServiceClosing,
    StartTLSReply,
)

_log = get_logger("delivery.connect")


class HopFailed(Exception):
    """This hop cannot take the mail now; `reply` says why (recorded as transient)."""

    def __init__(self, reply: str, *, connection: bool = True) -> None:
        super().__init__(reply)
        self.reply = reply
        self.connection = connection  # a failure to reach / talk to the host


class _TlsFallback(Exception):
    """The opportunistic handshake failed: reconnect in clear."""


class SetupFailed(Exception):
    """No hop could take the mail.

    `permanent` when the destination domain itself no longer resolves (its
    recipients bounce); `connection` when the failure counts against the
    destination's concurrency (no hop could be reached or talked to).
    """

    def __init__(self, reply: str, mx: str, *, permanent: bool = False, connection: bool) -> None:
        super().__init__(reply)
        self.reply = reply
        self.mx = mx
        self.permanent = permanent
        self.connection = connection


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Client timeouts, seconds (RFC 5321 4.5.3.2 gives the customary minimums)."""

    connect: float = 30.0
    command: float = 300.0
    data_end: float = 600.0


class Connector:
    """Opens sessions for the delivery engine (see the module docstring)."""

    def __init__(
        self,
        router: Router,
        *,
        tls: TlsContexts,
        tls_memory: TlsFailureMemory,
        timeouts: Timeouts,
    ) -> None:
        self._router = router
        self._tls = tls
        self._memory = tls_memory
        self._timeouts = timeouts
        self.connections = 0  # connections made (TCP established)
        self.tls_sessions = 0  # of which upgraded with STARTTLS

    async def open(self, key: ReadyKey, domain: str, source: EgressSource) -> SmtpChannel:
        """A session ready for transactions to a hop of `key` for `domain`'s mail."""
        try:
            hops = await self._router.next_hops(key, domain)
        except DnsError as exc:
            raise SetupFailed(
                dns_reply(exc),
                "",
                permanent=isinstance(exc, DnsPermanentError),
                connection=False,
            ) from None
        last = HopFailed("451 4.4.4 No mail host to try")
        mx = ""
        any_reached = False
        for hop in hops:
            mx = f"{hop.host}:{hop.port}"
            try:
                return await self._open_hop(hop, source)
            except HopFailed as exc:
                last = exc
                any_reached = any_reached or not exc.connection
                _log.info("delivery.hop_failed", ready_key=str(key), mx=mx, reply=exc.reply)
        raise SetupFailed(last.reply, mx, connection=not any_reached)

    async def _open_hop(self, hop: NextHop, source: EgressSource) -> SmtpChannel:
        try:
            addresses = await self._router.addresses(hop)
        except DnsError as exc:
            # One host without an address is no reason to bounce: the next may do.
            raise HopFailed(f"451 4{exc.enhanced[1:]} {exc.name}: {exc.text}") from None
        use_tls = hop.tls is not TlsMode.DISABLED
        if hop.tls is TlsMode.OPPORTUNISTIC and self._memory.failed_recently(hop.host, hop.port):
            use_tls = False
        try:
            return await self._session(hop, addresses, source, use_tls)
        except _TlsFallback:
            self._memory.remember(hop.host, hop.port)
            return await self._session(hop, addresses, source, False)

    async def _connect(
        self, hop: NextHop, addresses: tuple[str, ...], source: EgressSource
    ) -> SmtpChannel:
        try:
            stream, address = await connect_first(
                addresses,
                hop.port,
                source=source.ipv4,
                source_v6=source.ipv6,
                connect_timeout=self._timeouts.connect,
            )
        except ConnectFailedError as exc:
            raise HopFailed(f"451 4.4.1 {hop.host}: {exc}") from None
        self.connections += 1
        shown = f"[{address}]" if ":" in address else address
        label = f"{hop.host}[{shown}]:{hop.port}" if hop.host != address else f"{shown}:{hop.port}"
        return SmtpChannel(stream, ClientConnection(source.ehlo_name), label=label, host=hop.host)

    async def _session(
        self, hop: NextHop, addresses: tuple[str, ...], source: EgressSource, use_tls: bool
    ) -> SmtpChannel:
        channel = await self._connect(hop, addresses, source)
        try:
            await self._handshake(channel, hop, use_tls)
        except BaseException:
            await channel.aclose()
            raise
        return channel

    async def _reply(self, channel: SmtpChannel, *kinds: type[ClientEvent]) -> ClientEvent:
        try:
            event = await channel.event(self._timeouts.command)
        except ChannelBroken as exc:
            raise HopFailed(exc.reply) from None
        if isinstance(event, ServiceClosing):
            raise HopFailed(_transient(str(event.reply)))
        if not isinstance(event, kinds):
            raise HopFailed(f"451 4.5.0 Unexpected {type(event).__name__} from {channel.label}")
        return event

    async def _ehlo(self, channel: SmtpChannel) -> None:
        channel.conn.send_ehlo()
        hello = await self._reply(channel, HelloReply)
        assert isinstance(hello, HelloReply)
        if hello.reply.code >= 300:
            raise HopFailed(_transient(str(hello.reply)))

    async def _handshake(self, channel: SmtpChannel, hop: NextHop, use_tls: bool) -> None:
        greeting = await self._reply(channel, Greeting)
        assert isinstance(greeting, Greeting)
        if greeting.reply.code != 220:
            raise HopFailed(_transient(str(greeting.reply)))
        await self._ehlo(channel)
        conn = channel.conn
        required = hop.tls in (TlsMode.REQUIRED, TlsMode.REQUIRED_VERIFY)
        if use_tls and conn.extensions.starttls:
            conn.send_starttls()
            answer = await self._reply(channel, StartTLSReply)
            assert isinstance(answer, StartTLSReply)
            if answer.reply.code == 220:
                await self._start_tls(channel, hop)
                await self._ehlo(channel)
            elif required:
                raise HopFailed(_transient(str(answer.reply)), connection=False)
        elif required:
            raise HopFailed(
                f"451 4.7.4 TLS is required, but was not offered by {channel.label}",
                connection=False,
            )
        if hop.username:
            await self._auth(channel, hop)

    async def _start_tls(self, channel: SmtpChannel, hop: NextHop) -> None:
        context = self._tls.get(hop.tls)
        timeout = min(self._timeouts.command, DEFAULT_HANDSHAKE_TIMEOUT)
        try:
            await channel.start_tls(context, handshake_timeout=timeout)
        except TlsHandshakeError as exc:
            if hop.tls is TlsMode.OPPORTUNISTIC:
                _log.info("delivery.tls_fallback", mx=channel.label, error=exc.reason)
                raise _TlsFallback from None
            raise HopFailed(
                f"451 4.7.5 TLS with {channel.label} failed: {exc.reason}", connection=False
            ) from None
        self.tls_sessions += 1

    async def _auth(self, channel: SmtpChannel, hop: NextHop) -> None:
        conn = channel.conn
        if not conn.tls_active and hop.tls is not TlsMode.DISABLED:
            raise HopFailed(
                f"451 4.7.0 Not sending AUTH credentials to {channel.label} without TLS",
                connection=False,
            )
        mechanisms = conn.extensions.auth_mechanisms
        if "PLAIN" in mechanisms:
            conn.send_auth_plain(hop.username, hop.password)
        elif "LOGIN" in mechanisms:
            conn.send_auth_login(hop.username, hop.password)
        else:
            raise HopFailed(
                f"451 4.7.0 {channel.label} offers no AUTH mechanism relay supports",
                connection=False,
            )
        answer = await self._reply(channel, AuthReply)
        assert isinstance(answer, AuthReply)
        if answer.reply.code != 235:
            raise HopFailed(_transient(str(answer.reply)), connection=False)


def _transient(reply: str) -> str:
    """A reply recorded for a setup failure, which always defers (never bounces)."""
    code = reply[:3]
    if code.isdigit() and code.startswith("4"):
        return reply
    return f"451 4.4.0 Session setup failed: {reply}"
