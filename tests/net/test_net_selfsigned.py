"""The self-signed certificate generated when no certificate is configured."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
import trio
from cryptography import x509
from structlog.testing import capture_logs

from relay.errors import ConfigError
from relay.model import TlsMode
from relay.net import selfsigned
from relay.net.connect import connect
from relay.net.listen import Server, SocketAddress, open_listeners
from relay.net.selfsigned import ensure_self_signed_certificate
from relay.net.tls import certificate_store, client_context, start_tls


def test_generated_at_first_start_with_the_path_in_the_log(tmp_path: Path) -> None:
    with capture_logs() as logs:
        cert_file, key_file = ensure_self_signed_certificate(tmp_path, "relay.test")
    assert cert_file == tmp_path / "tls" / "self-signed.crt"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["relay.test"]
    [event] = logs
    assert event["log_level"] == "warning"
    assert event["path"] == str(cert_file)
    assert "self-signed" in event["event"]


def test_reused_on_later_starts(tmp_path: Path) -> None:
    cert_file, key_file = ensure_self_signed_certificate(tmp_path, "relay.test")
    cert_pem, key_pem = cert_file.read_bytes(), key_file.read_bytes()
    with capture_logs() as logs:
        again = ensure_self_signed_certificate(tmp_path, "relay.test")
    assert again == (cert_file, key_file)
    assert (cert_file.read_bytes(), key_file.read_bytes()) == (cert_pem, key_pem)
    assert logs[0]["log_level"] == "info"
    assert logs[0]["path"] == str(cert_file)


def test_replaced_for_another_host_name(tmp_path: Path) -> None:
    cert_file, _ = ensure_self_signed_certificate(tmp_path, "relay.test")
    first = cert_file.read_bytes()
    ensure_self_signed_certificate(tmp_path, "127.0.0.1")
    assert cert_file.read_bytes() != first
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_replaced_when_about_to_expire(tmp_path: Path) -> None:
    long_ago = (
        datetime.datetime.now(datetime.UTC) - selfsigned.VALIDITY + datetime.timedelta(days=5)
    )
    cert_pem, key_pem = selfsigned._generate("relay.test", long_ago)
    directory = tmp_path / "tls"
    directory.mkdir()
    (directory / selfsigned.CERT_NAME).write_bytes(cert_pem)
    (directory / selfsigned.KEY_NAME).write_bytes(key_pem)
    cert_file, _ = ensure_self_signed_certificate(tmp_path, "relay.test")
    assert cert_file.read_bytes() != cert_pem


def test_replaced_when_the_key_does_not_match(tmp_path: Path) -> None:
    _, key_file = ensure_self_signed_certificate(tmp_path, "relay.test")
    _, other_key = selfsigned._generate("relay.test", datetime.datetime.now(datetime.UTC))
    key_file.write_bytes(other_key)
    ensure_self_signed_certificate(tmp_path, "relay.test")
    assert key_file.read_bytes() != other_key


def test_host_name_is_required(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ensure_self_signed_certificate(tmp_path, "")


def test_store_needs_both_files_or_neither(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        certificate_store(tmp_path / "a.crt", None, data_dir=tmp_path, hostname="relay.test")


async def test_clients_can_pin_the_generated_certificate(tmp_path: Path) -> None:
    store = certificate_store(None, None, data_dir=tmp_path, hostname="relay.test")

    async def handler(stream: trio.abc.Stream, peer: SocketAddress, local: SocketAddress) -> None:
        tls = await start_tls(stream, store.context, server_side=True, handshake_timeout=10)
        await tls.send_all(b"220 ok\r\n")

    listeners = await open_listeners([("127.0.0.1", 0)])
    server = Server(listeners, handler, over_limit=handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        context = client_context(TlsMode.REQUIRED_VERIFY, cafile=store.cert_file)
        stream = await connect("127.0.0.1", server.addresses[0].port)
        tls = await start_tls(stream, context, server_side=False, server_hostname="relay.test")
        assert await tls.receive_some() == b"220 ok\r\n"
        await tls.aclose()
        server.stop(grace=0)
