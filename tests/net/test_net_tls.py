"""TLS contexts, STARTTLS-style handshakes and certificate reload, with trustme certificates."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from relay.errors import ConfigError, TlsHandshakeError
from relay.model import TlsMode
from relay.net.connect import connect
from relay.net.listen import Server, SocketAddress, open_listeners
from relay.net.tls import (
    TlsCertificateStore,
    client_context,
    server_context,
    start_tls,
    tls_version_and_cipher,
)
from relay.testing.tls import TlsFiles, make_ca, trusting_client_context, write_server_certificate

SAFETY = 10.0  # generous: only a net against hanging, never a measure

Handler = Callable[[trio.abc.Stream, SocketAddress, SocketAddress], Awaitable[None]]


async def _refuse(stream: trio.abc.Stream, peer: SocketAddress, local: SocketAddress) -> None:
    await stream.send_all(b"421 busy\r\n")


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    """A plain listener on 127.0.0.1 running `handler`; yields its port."""
    listeners = await open_listeners([("127.0.0.1", 0)])
    server = Server(listeners, handler, over_limit=_refuse, name="test")
    port = server.addresses[0].port
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield port
        server.stop(grace=0)


def starttls_echo(store: TlsCertificateStore) -> Handler:
    """A handler that upgrades at once (as after STARTTLS), then echoes lines."""

    async def handler(stream: trio.abc.Stream, peer: SocketAddress, local: SocketAddress) -> None:
        tls = await start_tls(stream, store.context, server_side=True, handshake_timeout=SAFETY)
        while data := await tls.receive_some():
            await tls.send_all(data)

    return handler


async def tls_client(
    port: int, context: ssl.SSLContext, hostname: str = "mx.test"
) -> trio.SSLStream[trio.abc.Stream]:
    stream = await connect("127.0.0.1", port, connect_timeout=SAFETY)
    return await start_tls(
        stream, context, server_side=False, server_hostname=hostname, handshake_timeout=SAFETY
    )


async def roundtrip(stream: trio.abc.Stream, data: bytes) -> bytes:
    await stream.send_all(data)
    received = b""
    with trio.fail_after(SAFETY):
        while len(received) < len(data):
            received += await stream.receive_some()
    return received


def peer_certificate(stream: trio.SSLStream[trio.abc.Stream]) -> bytes:
    der: bytes = stream.getpeercert(binary_form=True)
    return der


def file_der(cert_file: Path) -> bytes:
    pem = cert_file.read_text()
    first = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    return ssl.PEM_cert_to_DER_cert(first)


async def test_rfc3207_handshake_with_trustme_certificate(tls_files: TlsFiles) -> None:
    store = TlsCertificateStore(tls_files.cert_file, tls_files.key_file)
    async with serving(starttls_echo(store)) as port:
        client = await tls_client(port, trusting_client_context(tls_files.ca))
        assert await roundtrip(client, b"EHLO client.test\r\n") == b"EHLO client.test\r\n"
        version, cipher = tls_version_and_cipher(client)
        assert version in {"TLSv1.2", "TLSv1.3"}
        assert cipher
        await client.aclose()


async def test_verified_context_with_cafile(tls_files: TlsFiles) -> None:
    store = TlsCertificateStore(tls_files.cert_file, tls_files.key_file)
    context = client_context(TlsMode.REQUIRED_VERIFY, cafile=tls_files.ca_file)
    async with serving(starttls_echo(store)) as port:
        for name in ("mx.test", "localhost", "127.0.0.1"):
            client = await tls_client(port, context, hostname=name)
            await client.aclose()


async def test_tls_1_2_client_gets_a_forward_secret_aead_cipher(tls_files: TlsFiles) -> None:
    store = TlsCertificateStore(tls_files.cert_file, tls_files.key_file)
    context = trusting_client_context(tls_files.ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    async with serving(starttls_echo(store)) as port:
        client = await tls_client(port, context)
        version, cipher = tls_version_and_cipher(client)
        assert version == "TLSv1.2"
        assert cipher.startswith(("ECDHE-", "DHE-"))
        assert "GCM" in cipher or "CHACHA20" in cipher
        await client.aclose()


async def test_required_verify_rejects_wrong_host_name(tls_files: TlsFiles) -> None:
    store = TlsCertificateStore(tls_files.cert_file, tls_files.key_file)
    async with serving(starttls_echo(store)) as port:
        with pytest.raises(TlsHandshakeError) as info:
            await tls_client(port, trusting_client_context(tls_files.ca), hostname="other.test")
        assert "certificate verification failed" in info.value.reason
        assert not info.value.timed_out


async def test_required_verify_rejects_unknown_authority(tls_files: TlsFiles) -> None:
    store = TlsCertificateStore(tls_files.cert_file, tls_files.key_file)
    async with serving(starttls_echo(store)) as port:
        with pytest.raises(TlsHandshakeError):
            await tls_client(port, trusting_client_context(make_ca()))


@pytest.mark.parametrize("mode", [TlsMode.OPPORTUNISTIC, TlsMode.REQUIRED])
async def test_unverified_modes_accept_any_certificate(tls_files: TlsFiles, mode: TlsMode) -> None:
    store = TlsCertificateStore(tls_files.cert_file, tls_files.key_file)
    async with serving(starttls_echo(store)) as port:
        client = await tls_client(port, client_context(mode), hostname="unrelated.test")
        assert await roundtrip(client, b"NOOP\r\n") == b"NOOP\r\n"
        await client.aclose()


def test_disabled_mode_has_no_context() -> None:
    with pytest.raises(ValueError):
        client_context(TlsMode.DISABLED)


def test_contexts_require_tls_1_2(tls_files: TlsFiles) -> None:
    contexts = [server_context(tls_files.cert_file, tls_files.key_file)]
    contexts += [client_context(mode) for mode in TlsMode if mode is not TlsMode.DISABLED]
    for context in contexts:
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_unreadable_certificate_is_a_config_error(tmp_path: Path, tls_files: TlsFiles) -> None:
    with pytest.raises(ConfigError, match=r"missing\.crt"):
        server_context(tmp_path / "missing.crt", tls_files.key_file)
    other_cert, _ = write_server_certificate(make_ca(), tmp_path, stem="other")
    with pytest.raises(ConfigError):  # a certificate with someone else's key
        server_context(other_cert, tls_files.key_file)


async def test_handshake_timeout(tls_files: TlsFiles) -> None:
    async def silent(stream: trio.abc.Stream, peer: SocketAddress, local: SocketAddress) -> None:
        await trio.sleep_forever()

    async with serving(silent) as port:
        stream = await connect("127.0.0.1", port)
        with pytest.raises(TlsHandshakeError) as info:
            await start_tls(
                stream,
                trusting_client_context(tls_files.ca),
                server_side=False,
                server_hostname="mx.test",
                handshake_timeout=0.2,
            )
        assert info.value.timed_out


async def test_plaintext_peer_fails_the_handshake(tls_files: TlsFiles) -> None:
    async def greeter(stream: trio.abc.Stream, peer: SocketAddress, local: SocketAddress) -> None:
        await stream.send_all(b"220 mx.test ESMTP ready, no TLS here\r\n" * 10)
        await trio.sleep(SAFETY)

    async with serving(greeter) as port:
        stream = await connect("127.0.0.1", port)
        with pytest.raises(TlsHandshakeError) as info:
            await start_tls(
                stream,
                client_context(TlsMode.REQUIRED),
                server_side=False,
                handshake_timeout=SAFETY,
            )
        assert not info.value.timed_out


async def test_reload_new_connections_get_new_certificate_old_ones_stay_up(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    store = TlsCertificateStore(tls_files.cert_file, tls_files.key_file)
    old_der = file_der(tls_files.cert_file)
    context = trusting_client_context(tls_files.ca)
    async with serving(starttls_echo(store)) as port:
        before = await tls_client(port, context)
        assert peer_certificate(before) == old_der

        # The operator installs a new certificate and sends SIGHUP.
        write_server_certificate(tls_files.ca, tls_files.cert_file.parent, stem="server")
        new_der = file_der(tls_files.cert_file)
        assert new_der != old_der
        store.reload()
        assert store.generation == 2

        after = await tls_client(port, context)
        assert peer_certificate(after) == new_der
        # The connection made before the reload is untouched and still works.
        assert await roundtrip(before, b"still here\r\n") == b"still here\r\n"
        assert peer_certificate(before) == old_der
        await before.aclose()
        await after.aclose()


def test_failed_reload_keeps_the_current_certificate(tls_files: TlsFiles) -> None:
    store = TlsCertificateStore(tls_files.cert_file, tls_files.key_file)
    current = store.context
    tls_files.cert_file.write_text("not a certificate\n")
    with pytest.raises(ConfigError):
        store.reload()
    assert store.context is current
    assert store.generation == 1
