"""Ingest's header handling: only the header block is read."""

from __future__ import annotations

from relay.ingest import Trace, header_names, header_value, received_header, remove_headers

MSG = (
    b"From: a@example.com\r\nX-Tenant: acme\r\nSubject: a\r\n folded\r\n"
    b"X-Campaign: spring\r\n\r\nX-Tenant: not a header\r\n"
)


def test_header_names_only_from_header_block() -> None:
    assert header_names(MSG) == {b"from", b"x-tenant", b"subject", b"x-campaign"}


def test_header_value_unfolds() -> None:
    assert header_value(MSG, "subject") == "a folded"  # RFC 5322 2.2.3 unfolding
    assert header_value(MSG, "x-tenant") == "acme"
    assert header_value(MSG, "message-id") is None


def test_remove_headers_keeps_body() -> None:
    out = remove_headers(MSG, ["X-Tenant", "subject"])
    assert out == b"From: a@example.com\r\nX-Campaign: spring\r\n\r\nX-Tenant: not a header\r\n"


def test_received_header_rfc5321_4_4_and_rfc3848() -> None:
    trace = Trace(
        helo="client.test",
        client_ip="127.0.0.1",
        protocol="ESMTPSA",
        tls_version="TLSv1.3",
        tls_cipher="TLS_AES_256_GCM_SHA384",
    )
    raw = received_header(trace, "relay.test", "01ID", "b@example.net", 0.0)
    assert raw.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby relay.test")
    assert b"with ESMTPSA id 01ID" in raw
    assert b"(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)" in raw
    assert b"for <b@example.net>;" in raw
    assert raw.endswith(b"+0000\r\n") or raw.endswith(b"GMT\r\n")
