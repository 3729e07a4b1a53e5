"""Outbound connections: egress source addresses and trying addresses in order."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from relay.errors import ConnectFailedError
from relay.net.connect import connect, connect_first
from relay.net.listen import SocketAddress, listener_address, open_listeners, socket_address


@pytest.fixture
async def listener() -> AsyncIterator[trio.SocketListener]:
    """A listening socket on 127.0.0.1 (nothing listens on 127.0.0.3 at that port)."""
    [sock] = await open_listeners([("127.0.0.1", 0)])
    async with sock:
        yield sock


async def accepted_peer(listener: trio.SocketListener) -> SocketAddress:
    with trio.fail_after(10):
        server_side = await listener.accept()
    async with server_side:
        return socket_address(server_side.socket.getpeername())


async def test_connect_binds_the_egress_source_address(listener: trio.SocketListener) -> None:
    port = listener_address(listener).port
    async with await connect("127.0.0.1", port, source="127.0.0.2") as stream:
        assert socket_address(stream.socket.getsockname()).host == "127.0.0.2"
        assert (await accepted_peer(listener)).host == "127.0.0.2"


async def test_connect_without_source(listener: trio.SocketListener) -> None:
    async with await connect("127.0.0.1", listener_address(listener).port):
        assert (await accepted_peer(listener)).host == "127.0.0.1"


async def test_many_connections_from_one_source(listener: trio.SocketListener) -> None:
    port = listener_address(listener).port
    streams = [await connect("127.0.0.1", port, source="127.0.0.5") for _ in range(20)]
    ports = {socket_address(s.socket.getsockname()).port for s in streams}
    assert len(ports) == 20
    for stream in streams:
        await stream.aclose()


async def test_addresses_are_tried_in_order(listener: trio.SocketListener) -> None:
    port = listener_address(listener).port
    stream, address = await connect_first(["127.0.0.3", "127.0.0.1"], port, source="127.0.0.2")
    async with stream:
        assert address == "127.0.0.1"
        assert (await accepted_peer(listener)).host == "127.0.0.2"


async def test_every_failure_is_reported(listener: trio.SocketListener) -> None:
    port = listener_address(listener).port
    with pytest.raises(ConnectFailedError) as info:
        await connect_first(["127.0.0.3", "127.0.0.4", "not-an-ip"], port)
    assert [address for address, _ in info.value.attempts] == [
        "127.0.0.3",
        "127.0.0.4",
        "not-an-ip",
    ]
    assert "refused" in info.value.attempts[0][1].lower()
    assert info.value.port == port


async def test_family_without_egress_source_is_skipped(listener: trio.SocketListener) -> None:
    port = listener_address(listener).port
    stream, address = await connect_first(["::1", "127.0.0.1"], port, source="127.0.0.2")
    await stream.aclose()
    assert address == "127.0.0.1"
    with pytest.raises(ConnectFailedError) as info:
        await connect_first(["::1"], port, source="127.0.0.2")
    assert "no IPv6 egress source" in info.value.attempts[0][1]


async def test_ipv6_source_address() -> None:
    [listener6] = await open_listeners([("::1", 0)])
    async with listener6:
        port = listener_address(listener6).port
        stream, _ = await connect_first(["::1"], port, source="127.0.0.2", source_v6="::1")
        async with stream:
            assert (await accepted_peer(listener6)).host == "::1"


async def test_names_are_never_resolved() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        await connect("localhost", 25)
    with pytest.raises(ValueError, match="address family"):
        await connect("127.0.0.1", 25, source="::1")
