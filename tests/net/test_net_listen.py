"""Listeners and the accept loop: caps, over-limit replies, SO_REUSEPORT, implicit TLS, drain."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from relay.errors import ConfigError
from relay.net.connect import connect
from relay.net.listen import (
    ConnectionLimits,
    Server,
    SocketAddress,
    listener_address,
    open_listeners,
)
from relay.net.tls import TlsCertificateStore, start_tls
from relay.testing.tls import TlsFiles, trusting_client_context

SAFETY = 10.0  # generous: only a net against hanging, never a measure


class Recorder:
    """Handlers that record what they saw and hold connections open until released."""

    def __init__(self) -> None:
        self.served: list[tuple[SocketAddress, SocketAddress, trio.abc.Stream]] = []
        self.refused: list[SocketAddress] = []
        self.release = trio.Event()
        self.finished = 0

    async def hold(
        self, stream: trio.abc.Stream, peer: SocketAddress, local: SocketAddress
    ) -> None:
        self.served.append((peer, local, stream))
        await stream.send_all(b"220 hello\r\n")
        await self.release.wait()
        await stream.send_all(b"221 bye\r\n")
        self.finished += 1

    async def over_limit(
        self, stream: trio.abc.Stream, peer: SocketAddress, local: SocketAddress
    ) -> None:
        self.refused.append(peer)
        await stream.send_all(b"421 4.7.0 too many connections\r\n")


@asynccontextmanager
async def running(server: Server) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        server.stop(grace=0)


async def plain_server(
    recorder: Recorder, limits: ConnectionLimits | None = None, host: str = "127.0.0.1"
) -> Server:
    listeners = await open_listeners([(host, 0)])
    return Server(listeners, recorder.hold, over_limit=recorder.over_limit, limits=limits)


async def read_line(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    with trio.fail_after(SAFETY):
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some()
            if not chunk:
                break
            data += chunk
    return data


async def read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    with trio.fail_after(SAFETY):
        while chunk := await stream.receive_some():
            data += chunk
    return data


async def wait_until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(SAFETY):
        while not predicate():
            await trio.sleep(0.005)


async def test_handler_gets_stream_peer_and_local_address() -> None:
    recorder = Recorder()
    async with running(await plain_server(recorder)) as server:
        port = server.addresses[0].port
        client = await connect("127.0.0.1", port, source="127.0.0.2")
        assert await read_line(client) == b"220 hello\r\n"
        [(peer, local, _)] = recorder.served
        assert peer.host == "127.0.0.2"
        assert local == SocketAddress("127.0.0.1", port)
        assert server.connections_from("127.0.0.2") == 1
        recorder.release.set()
        assert await read_to_eof(client) == b"221 bye\r\n"  # the server closed after the handler
        await wait_until(lambda: server.statistics().active == 0)
        assert server.connections_from("127.0.0.2") == 0


async def test_rfc5321_4_5_4_1_total_cap_calls_over_limit() -> None:
    recorder = Recorder()
    limits = ConnectionLimits(max_connections=2, max_connections_per_address=10)
    async with running(await plain_server(recorder, limits)) as server:
        port = server.addresses[0].port
        held = [await connect("127.0.0.1", port, source=f"127.0.0.{i}") for i in (2, 3)]
        for client in held:
            assert await read_line(client) == b"220 hello\r\n"
        extra = await connect("127.0.0.1", port, source="127.0.0.4")
        assert await read_to_eof(extra) == b"421 4.7.0 too many connections\r\n"
        assert [p.host for p in recorder.refused] == ["127.0.0.4"]
        stats = server.statistics()
        assert (stats.active, stats.refused, stats.accepted) == (2, 1, 3)
        recorder.release.set()
        for client in held:
            assert await read_to_eof(client) == b"221 bye\r\n"


async def test_per_address_cap_counts_each_client_address() -> None:
    recorder = Recorder()
    limits = ConnectionLimits(max_connections=10, max_connections_per_address=2)
    async with running(await plain_server(recorder, limits)) as server:
        port = server.addresses[0].port
        first = [await connect("127.0.0.1", port, source="127.0.0.2") for _ in range(2)]
        for client in first:
            assert await read_line(client) == b"220 hello\r\n"
        over = await connect("127.0.0.1", port, source="127.0.0.2")
        assert await read_to_eof(over) == b"421 4.7.0 too many connections\r\n"
        other = await connect("127.0.0.1", port, source="127.0.0.3")
        assert await read_line(other) == b"220 hello\r\n"  # another address is not affected
        assert server.connections_from("127.0.0.2") == 2
        assert server.connections_from("127.0.0.3") == 1
        recorder.release.set()


async def test_refusals_past_max_refusing_are_closed_at_once() -> None:
    recorder = Recorder()
    limits = ConnectionLimits(max_connections=0, max_refusing=0)
    async with running(await plain_server(recorder, limits)) as server:
        client = await connect("127.0.0.1", server.addresses[0].port)
        assert await read_to_eof(client) == b""
        assert server.statistics().dropped == 1
        assert recorder.refused == []


async def test_slow_over_limit_handler_is_cut_off() -> None:
    async def stuck(stream: trio.abc.Stream, peer: SocketAddress, local: SocketAddress) -> None:
        await trio.sleep_forever()

    listeners = await open_listeners([("127.0.0.1", 0)])
    limits = ConnectionLimits(max_connections=0, refuse_timeout=0.1)
    async with running(Server(listeners, stuck, over_limit=stuck, limits=limits)) as server:
        client = await connect("127.0.0.1", server.addresses[0].port)
        assert await read_to_eof(client) == b""
        await wait_until(lambda: server.statistics().refusing == 0)


async def test_so_reuseport_two_listeners_share_a_port() -> None:
    [first] = await open_listeners([("127.0.0.1", 0)])
    port = listener_address(first).port
    [second] = await open_listeners([("127.0.0.1", port)])
    recorders = [Recorder(), Recorder()]
    servers = [
        Server([listener], r.hold, over_limit=r.over_limit)
        for listener, r in zip([first, second], recorders, strict=True)
    ]
    async with running(servers[0]), running(servers[1]):
        clients = [await connect("127.0.0.1", port) for _ in range(20)]
        for client in clients:
            assert await read_line(client) == b"220 hello\r\n"
        assert sum(len(r.served) for r in recorders) == 20
        # When one worker stops, the other takes every new connection.
        servers[0].stop(grace=0)
        await wait_until(lambda: servers[0].statistics().active == 0)
        late = await connect("127.0.0.1", port)
        assert await read_line(late) == b"220 hello\r\n"
        for r in recorders:
            r.release.set()


async def test_without_reuseport_a_second_bind_fails() -> None:
    [first] = await open_listeners([("127.0.0.1", 0)], reuse_port=False)
    with first.socket, pytest.raises(OSError):
        await open_listeners([("127.0.0.1", listener_address(first).port)], reuse_port=False)


async def test_listen_addresses_must_be_numeric() -> None:
    with pytest.raises(ConfigError):
        await open_listeners([("localhost", 0)])


async def test_failed_open_closes_the_sockets_already_opened() -> None:
    [probe] = await open_listeners([("127.0.0.1", 0)], reuse_port=False)
    port = listener_address(probe).port
    probe.socket.close()
    with pytest.raises(ConfigError):
        await open_listeners([("127.0.0.1", port), ("localhost", 0)], reuse_port=False)
    # The first one was closed again: its port binds without SO_REUSEPORT.
    [again] = await open_listeners([("127.0.0.1", port)], reuse_port=False)
    again.socket.close()


async def test_many_concurrent_connections_are_all_served() -> None:
    recorder = Recorder()
    limits = ConnectionLimits(max_connections=500, max_connections_per_address=500)
    async with running(await plain_server(recorder, limits)) as server:
        port = server.addresses[0].port
        clients = [await connect("127.0.0.1", port) for _ in range(300)]
        for client in clients:
            assert await read_line(client) == b"220 hello\r\n"
        assert server.statistics().active == 300
        recorder.release.set()
        for client in clients:
            assert await read_to_eof(client) == b"221 bye\r\n"
            await client.aclose()
    assert recorder.finished == 300


async def test_ipv6_loopback_listener() -> None:
    recorder = Recorder()
    async with running(await plain_server(recorder, host="::1")) as server:
        client = await connect("::1", server.addresses[0].port)
        assert await read_line(client) == b"220 hello\r\n"
        assert recorder.served[0][0].host == "::1"
        recorder.release.set()


async def test_graceful_stop_lets_running_connections_finish() -> None:
    recorder = Recorder()
    server = await plain_server(recorder)
    port = server.addresses[0].port
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        client = await connect("127.0.0.1", port)
        assert await read_line(client) == b"220 hello\r\n"
        server.stop(grace=SAFETY)
        assert server.stopping.is_set()
        with pytest.raises(OSError):  # no longer accepting
            await connect("127.0.0.1", port)
        recorder.release.set()  # the session ends on its own, within the grace period
        assert await read_to_eof(client) == b"221 bye\r\n"
    assert recorder.finished == 1


async def test_drain_deadline_cancels_lingering_connections() -> None:
    recorder = Recorder()
    server = await plain_server(recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        client = await connect("127.0.0.1", server.addresses[0].port)
        assert await read_line(client) == b"220 hello\r\n"
        server.stop(grace=0.05)
    # serve() returned: the held session was cancelled and its connection closed.
    assert recorder.finished == 0
    assert await read_to_eof(client) == b""


async def test_stop_before_serve_returns_at_once() -> None:
    recorder = Recorder()
    server = await plain_server(recorder)
    server.stop(grace=0)
    with trio.fail_after(SAFETY):
        await server.serve()


async def test_handler_errors_do_not_stop_the_server() -> None:
    async def broken(stream: trio.abc.Stream, peer: SocketAddress, local: SocketAddress) -> None:
        raise RuntimeError("bug in a handler")

    listeners = await open_listeners([("127.0.0.1", 0)])
    async with running(Server(listeners, broken, over_limit=broken)) as server:
        for _ in range(3):
            client = await connect("127.0.0.1", server.addresses[0].port)
            assert await read_to_eof(client) == b""
        await wait_until(lambda: server.statistics().handler_errors == 3)


# --- implicit TLS (RFC 8314, port 465) -------------------------------------------------------


async def tls_server(
    tls_files: TlsFiles, recorder: Recorder, limits: ConnectionLimits | None = None
) -> Server:
    store = TlsCertificateStore(tls_files.cert_file, tls_files.key_file)
    listeners = await open_listeners([("127.0.0.1", 0)])
    return Server(
        listeners, recorder.hold, over_limit=recorder.over_limit, limits=limits, tls=store
    )


async def test_rfc8314_implicit_tls_handshake_before_the_handler(tls_files: TlsFiles) -> None:
    recorder = Recorder()
    server = await tls_server(tls_files, recorder)
    async with running(server):
        raw = await connect("127.0.0.1", server.addresses[0].port)
        client = await start_tls(
            raw, trusting_client_context(tls_files.ca), server_side=False, server_hostname="mx.test"
        )
        assert await read_line(client) == b"220 hello\r\n"
        assert isinstance(recorder.served[0][2], trio.SSLStream)
        recorder.release.set()
        assert await read_to_eof(client) == b"221 bye\r\n"


async def test_rfc8314_over_limit_reply_is_sent_over_tls(tls_files: TlsFiles) -> None:
    recorder = Recorder()
    server = await tls_server(tls_files, recorder, ConnectionLimits(max_connections=0))
    async with running(server):
        raw = await connect("127.0.0.1", server.addresses[0].port)
        client = await start_tls(
            raw, trusting_client_context(tls_files.ca), server_side=False, server_hostname="mx.test"
        )
        assert await read_to_eof(client) == b"421 4.7.0 too many connections\r\n"


async def test_implicit_tls_handshake_timeout(tls_files: TlsFiles) -> None:
    recorder = Recorder()
    server = await tls_server(tls_files, recorder, ConnectionLimits(tls_handshake_timeout=0.1))
    async with running(server):
        silent = await connect("127.0.0.1", server.addresses[0].port)
        assert await read_to_eof(silent) == b""  # closed without a word
        await wait_until(lambda: server.statistics().tls_failures == 1)
        assert recorder.served == []


async def test_plaintext_client_on_implicit_tls_port_is_dropped(tls_files: TlsFiles) -> None:
    recorder = Recorder()
    server = await tls_server(tls_files, recorder)
    async with running(server):
        client = await connect("127.0.0.1", server.addresses[0].port)
        await client.send_all(b"EHLO client.test\r\n")
        await read_to_eof(client)
        await wait_until(lambda: server.statistics().tls_failures == 1)
        assert recorder.served == []
