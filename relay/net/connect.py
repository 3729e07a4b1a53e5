"""Outbound TCP connections, bound to an egress source address when one is given.

The addresses are tried one after the other, each with its own timeout (as
Postfix's smtp_connect_timeout); happy eyeballs is not used, since delivery
already orders the addresses and the next MX host is a fallback of its own.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Sequence

import trio

from relay.errors import ConnectFailedError

DEFAULT_CONNECT_TIMEOUT = 30.0

# Linux: bind() reserves no port; connect() picks one unique for the 4-tuple, so many
# connections from one source address do not exhaust its ephemeral ports.
_IP_BIND_ADDRESS_NO_PORT: int | None = getattr(
    socket, "IP_BIND_ADDRESS_NO_PORT", 24 if sys.platform.startswith("linux") else None
)


def _family(address: str) -> socket.AddressFamily:
    try:
        version = ipaddress.ip_address(address).version
    except ValueError as exc:
        raise ValueError(f"not an IP address: {address!r} (resolve names first)") from exc
    return socket.AF_INET6 if version == 6 else socket.AF_INET


async def connect(
    address: str,
    port: int,
    *,
    source: str | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> trio.SocketStream:
    """A TCP connection to `address` (an IP literal) from `source` if given.

    Raises OSError (including TimeoutError after `connect_timeout` seconds) when
    the connection cannot be made, and ValueError for a malformed address or a
    source of the other address family.
    """
    family = _family(address)
    if source is not None and _family(source) != family:
        raise ValueError(f"source {source} and destination {address} differ in address family")
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        if source is not None:
            if _IP_BIND_ADDRESS_NO_PORT is not None:
                sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            await sock.bind((source, 0))
        with trio.move_on_after(connect_timeout) as scope:
            await sock.connect((address, port))
        if scope.cancelled_caught:
            raise TimeoutError(f"connect timed out after {connect_timeout:g}s")
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def connect_first(
    addresses: Sequence[str],
    port: int,
    *,
    source: str | None = None,
    source_v6: str | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> tuple[trio.SocketStream, str]:
    """Connect to the first of `addresses` that accepts; returns the stream and that address.

    With an egress source configured (`source` for IPv4, `source_v6` for IPv6), a
    destination of a family that has no source is skipped rather than reached from
    the host's default address.  Raises ConnectFailedError listing every attempt.
    """
    constrained = source is not None or source_v6 is not None
    attempts: list[tuple[str, str]] = []
    for address in addresses:
        try:
            family = _family(address)
        except ValueError as exc:
            attempts.append((address, str(exc)))
            continue
        bind = source_v6 if family == socket.AF_INET6 else source
        if constrained and bind is None:
            kind = "IPv6" if family == socket.AF_INET6 else "IPv4"
            attempts.append((address, f"no {kind} egress source address"))
            continue
        try:
            stream = await connect(address, port, source=bind, connect_timeout=connect_timeout)
        except (OSError, ValueError) as exc:
            attempts.append((address, str(exc) or type(exc).__name__))
            continue
        return stream, address
    raise ConnectFailedError(port, attempts)
