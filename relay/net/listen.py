"""TCP listeners and the accept loop that serves them.

Theory of operation: `Server.serve` runs two nurseries, one inside the other.
The inner one holds an accept loop per listening socket; the outer one holds one
task per accepted connection.  Accepting never waits on a client: TLS handshakes
(implicit TLS, RFC 8314) and over-limit replies run in the connection's own task.

Limits are checked at accept time, with no await between check and count, so
they are exact.  A connection over a limit is not dropped silently: it is handed
to the `over_limit` handler (which writes e.g. `421 4.7.0` and returns) under a
short deadline; only when more than `max_refusing` refusals are already in
progress (a flood) is a connection closed straight away.

`stop(grace=...)` cancels the accept loops and closes the sockets (with
SO_REUSEPORT, the kernel then sends new connections to the other workers), and
gives the running connections until the grace deadline to finish; whatever is
still running then is cancelled.  `stopping` lets handlers notice and wind down
at a protocol boundary.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import trio

from relay.errors import ConfigError, TlsHandshakeError
from relay.log import get_logger
from relay.net.tls import DEFAULT_HANDSHAKE_TIMEOUT, TlsCertificateStore, start_tls

log = get_logger("net.listen")

DEFAULT_BACKLOG = 4096
# accept() errors that mean "out of resources for now": pause, then go on accepting.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_PAUSE = 0.1


class SocketAddress(NamedTuple):
    """A numeric host address and a port."""

    host: str
    port: int


ConnectionHandler = Callable[[trio.abc.Stream, SocketAddress, SocketAddress], Awaitable[None]]
"""`async def handler(stream, peer, local)`: serves one connection; the server closes
the stream when it returns."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Per-server connection limits.

    RFC 5321 sets no number; section 4.5.4.1 lets a server answer 421 when it cannot
    take a session, and these limits keep memory and file descriptors bounded.
    """

    max_connections: int = 1000  # sessions in progress on this server, all clients
    max_connections_per_address: int = 20  # sessions from one client IP address
    max_refusing: int = 100  # over-limit replies in progress; past it, close at once
    refuse_timeout: float = 10.0  # seconds the over_limit handler may take
    tls_handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT  # implicit TLS listeners


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """Counters of a Server (see `Server.statistics`)."""

    active: int  # connections being served now
    refusing: int  # over-limit replies in progress
    accepted: int  # connections accepted so far (served, refused or dropped)
    refused: int  # handed to over_limit
    dropped: int  # closed at once: too many refusals already in progress
    tls_failures: int  # implicit-TLS handshakes that failed or timed out
    handler_errors: int  # handlers that raised an unexpected exception


def _normalise_host(host: str) -> str:
    """The address as a client key: scope id stripped, IPv4-mapped IPv6 as IPv4."""
    host = host.split("%", 1)[0]
    if ":" in host:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
        if mapped is not None:
            return str(mapped)
    return host


def socket_address(sockaddr: object) -> SocketAddress:
    """A SocketAddress from what getpeername()/getsockname() return for IPv4 or IPv6."""
    if not isinstance(sockaddr, tuple) or len(sockaddr) < 2:
        raise ValueError(f"not an IP socket address: {sockaddr!r}")
    return SocketAddress(_normalise_host(str(sockaddr[0])), int(sockaddr[1]))


def listener_address(listener: trio.SocketListener) -> SocketAddress:
    """The address a listener is bound to (useful after binding port 0)."""
    return socket_address(listener.socket.getsockname())


async def _open_one(
    host: str, port: int, backlog: int, reuse_port: bool
) -> list[trio.SocketListener]:
    flags = socket.AI_PASSIVE | socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
    try:
        infos = await trio.socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=flags
        )
    except socket.gaierror as exc:
        raise ConfigError(
            f"listen address {host!r}: expected an IP address or '' for all ({exc})"
        ) from exc
    listeners: list[trio.SocketListener] = []
    try:
        for family, type_, proto, _name, sockaddr in infos:
            sock = trio.socket.socket(family, type_, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    # Every worker process binds the same port; the kernel spreads
                    # incoming connections among them.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                await sock.bind(sockaddr)
                sock.listen(backlog)
            except OSError as exc:
                sock.close()
                exc.add_note(f"while opening a listener on {host or '*'} port {port}")
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


async def open_listeners(
    addresses: Iterable[tuple[str, int]],
    *,
    backlog: int = DEFAULT_BACKLOG,
    reuse_port: bool = True,
) -> list[trio.SocketListener]:
    """Listening TCP sockets for (host, port) pairs, with SO_REUSEADDR and SO_REUSEPORT.

    `host` must be a numeric address ('' means every address, IPv4 and IPv6); no
    name is ever resolved.  Port 0 picks a free port (see `listener_address`).  On
    any failure the sockets opened so far are closed.
    """
    opened: list[trio.SocketListener] = []
    try:
        for host, port in addresses:
            opened.extend(await _open_one(host, port, backlog, reuse_port))
    except BaseException:
        for listener in opened:
            listener.socket.close()
        raise
    return opened


class Server:
    """Serves connections from a group of listeners with one handler and one set of limits.

    With `tls` set, every connection is TLS from the first byte (implicit TLS, port
    465): the handshake completes before the handler sees the stream.  Without it
    the handler gets the plain stream and may call `start_tls` itself (STARTTLS).
    """

    def __init__(
        self,
        listeners: Iterable[trio.SocketListener],
        handler: ConnectionHandler,
        *,
        over_limit: ConnectionHandler,
        limits: ConnectionLimits | None = None,
        tls: TlsCertificateStore | None = None,
        name: str = "server",
    ) -> None:
        self._listeners = list(listeners)
        self.addresses = [listener_address(listener) for listener in self._listeners]
        self._handler = handler
        self._over_limit = over_limit
        self.limits = limits or ConnectionLimits()
        self._tls = tls
        self.name = name
        self.stopping = trio.Event()  # set by stop(): handlers should wind down
        self._accept_scope: trio.CancelScope | None = None
        self._drain_deadline = float("inf")
        self._started = False
        self._per_address: dict[str, int] = {}
        self._active = 0
        self._refusing = 0
        self._accepted = 0
        self._refused = 0
        self._dropped = 0
        self._tls_failures = 0
        self._handler_errors = 0

    def statistics(self) -> ServerStatistics:
        """The current counters."""
        return ServerStatistics(
            active=self._active,
            refusing=self._refusing,
            accepted=self._accepted,
            refused=self._refused,
            dropped=self._dropped,
            tls_failures=self._tls_failures,
            handler_errors=self._handler_errors,
        )

    def connections_from(self, host: str) -> int:
        """Connections being served for one client address."""
        return self._per_address.get(_normalise_host(host), 0)

    def stop(self, *, grace: float) -> None:
        """Stop accepting now; cancel connections still running `grace` seconds later.

        `serve` returns once every connection has finished or been cancelled.
        """
        if self.stopping.is_set():
            return
        self.stopping.set()
        self._drain_deadline = trio.current_time() + grace
        if self._accept_scope is not None:
            self._accept_scope.cancel()  # first: the accept loops must not see the close
        self._close_listeners()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve until `stop()` has run its course (or the caller cancels)."""
        if self._started:
            raise RuntimeError("Server.serve() can run only once")
        self._started = True
        log.info("listening", server=self.name, addresses=[f"{h}:{p}" for h, p in self.addresses])
        try:
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as acceptors:
                    self._accept_scope = acceptors.cancel_scope
                    if self.stopping.is_set():
                        acceptors.cancel_scope.cancel()
                    for listener in self._listeners:
                        acceptors.start_soon(self._accept_loop, listener, connections)
                    task_status.started()
                self._close_listeners()
                log.info("stopped accepting; draining", server=self.name, active=self._active)
                connections.cancel_scope.deadline = self._drain_deadline
        finally:
            self._close_listeners()
        if connections.cancel_scope.cancelled_caught:
            log.warning("drain deadline passed; remaining connections cancelled", server=self.name)
        log.info("stopped", server=self.name)

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            listener.socket.close()

    async def _accept_loop(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return  # stop() closed the socket
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise
                log.error(
                    "accept failed: out of resources, pausing", server=self.name, error=str(exc)
                )
                await trio.sleep(_ACCEPT_PAUSE)
                continue
            self._accepted += 1
            connections.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            peer = socket_address(stream.socket.getpeername())
            local = socket_address(stream.socket.getsockname())
        except OSError:  # the client is already gone
            await trio.aclose_forcefully(stream)
            return
        limits = self.limits
        count = self._per_address.get(peer.host, 0)
        if self._active >= limits.max_connections or count >= limits.max_connections_per_address:
            await self._refuse(stream, peer, local)
            return
        self._active += 1
        self._per_address[peer.host] = count + 1
        try:
            await self._run(self._handler, stream, peer, local, refusing=False)
        finally:
            self._active -= 1
            remaining = self._per_address[peer.host] - 1
            if remaining:
                self._per_address[peer.host] = remaining
            else:
                del self._per_address[peer.host]

    async def _refuse(
        self, stream: trio.SocketStream, peer: SocketAddress, local: SocketAddress
    ) -> None:
        if self._refusing >= self.limits.max_refusing:
            self._dropped += 1
            await trio.aclose_forcefully(stream)
            return
        self._refused += 1
        self._refusing += 1
        log.debug("over connection limit", server=self.name, peer=peer.host, active=self._active)
        try:
            with trio.move_on_after(self.limits.refuse_timeout):
                await self._run(self._over_limit, stream, peer, local, refusing=True)
        finally:
            self._refusing -= 1
            await trio.aclose_forcefully(stream)

    async def _run(
        self,
        handler: ConnectionHandler,
        stream: trio.SocketStream,
        peer: SocketAddress,
        local: SocketAddress,
        *,
        refusing: bool,
    ) -> None:
        """Run one handler on the connection (after the TLS handshake if implicit), then close it."""
        served: trio.abc.Stream = stream
        try:
            if self._tls is not None:
                served = await start_tls(
                    stream,
                    self._tls.context,
                    server_side=True,
                    handshake_timeout=self.limits.tls_handshake_timeout,
                )
            await handler(served, peer, local)
        except TlsHandshakeError as exc:
            self._tls_failures += 1
            log.info("TLS handshake failed", server=self.name, peer=peer.host, reason=exc.reason)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("connection lost", server=self.name, peer=peer.host)
        except Exception:
            self._handler_errors += 1
            log.exception(
                "connection handler failed", server=self.name, peer=peer.host, refusing=refusing
            )
        finally:
            await trio.aclose_forcefully(served)
