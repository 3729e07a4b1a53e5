"""Relay and sender policy: pure functions, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import ConfigError
from relay.submission.policy import (
    BAD_CAMPAIGN,
    BAD_HELO,
    BAD_TENANT,
    FROM_NOT_ALLOWED,
    NULL_SENDER_NOT_ALLOWED,
    ONE_FROM_REQUIRED,
    RECIPIENT_NOT_QUALIFIED,
    SENDER_NOT_ALLOWED,
    TOO_MANY_RECIPIENTS,
    TrustedNetworks,
    campaign_from_header,
    check_header_from,
    check_helo,
    check_recipient,
    check_sender,
    effective_limit,
    tenant_from_header,
    trace_protocol,
)
from relay.submission.users import User

USER = User(name="acme", tenant="acme", sender_domains=("acme.test", ".mail.acme.test"))


def with_from(*values: str) -> bytes:
    head = "".join(f"From: {v}\r\n" for v in values)
    return f"{head}To: x@example.net\r\n\r\nFrom: body@globex.test\r\n".encode()


def test_trusted_networks_v4_v6() -> None:
    trusted = TrustedNetworks(["127.0.0.0/30", "10.1.0.0/16", "::1/128", "fd00::/8"])
    assert "127.0.0.1" in trusted and "127.0.0.3" in trusted
    assert "127.0.0.4" not in trusted and "10.2.0.1" not in trusted
    assert "::1" in trusted and "fd12::5" in trusted and "fe80::1" not in trusted
    assert "not-an-ip" not in trusted and None not in trusted
    with pytest.raises(ConfigError):
        TrustedNetworks(["300.1.1.1/8"])


def test_no_trusted_network_means_nobody() -> None:
    assert "127.0.0.1" not in TrustedNetworks([])


def test_sender_domain_must_belong_to_the_user() -> None:
    assert check_sender(USER, "news@acme.test") is None
    assert check_sender(USER, "news@ACME.TEST") is None
    assert check_sender(USER, "x@eu.mail.acme.test") is None  # ".domain" allows subdomains
    assert check_sender(USER, "x@mail.acme.test") == SENDER_NOT_ALLOWED
    assert check_sender(USER, "x@sub.acme.test") == SENDER_NOT_ALLOWED
    assert check_sender(USER, "x@acme.test.evil.example") == SENDER_NOT_ALLOWED
    assert check_sender(USER, "no-domain") == SENDER_NOT_ALLOWED
    assert check_sender(USER, "") == NULL_SENDER_NOT_ALLOWED


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("news@acme.test", None),
        ('"Acme News" <news@acme.test>', None),
        ("=?utf-8?q?Acme?= <news@acme.test>", None),
        ("a@acme.test, b@x.mail.acme.test", None),
        ("ceo@globex.test", FROM_NOT_ALLOWED),
        ('"news@acme.test" <ceo@globex.test>', FROM_NOT_ALLOWED),
        ("news@acme.test, ceo@globex.test", FROM_NOT_ALLOWED),
        ("news@acme.test)<ceo@globex.test>", FROM_NOT_ALLOWED),  # CVE-2023-27043 shape
        ("Acme News", FROM_NOT_ALLOWED),
        ("undisclosed-recipients:;", FROM_NOT_ALLOWED),
        ("", FROM_NOT_ALLOWED),
    ],
)
def test_header_from_every_address_checked(value: str, expected: object) -> None:
    assert check_header_from(USER, with_from(value)) == expected


def test_header_from_exactly_one_field_rfc5322_3_6() -> None:
    assert check_header_from(USER, b"To: x@example.net\r\n\r\nbody\r\n") == ONE_FROM_REQUIRED
    two = with_from("news@acme.test", "news@acme.test")
    assert check_header_from(USER, two) == ONE_FROM_REQUIRED
    assert check_header_from(None, two) == ONE_FROM_REQUIRED  # trusted clients too
    assert check_header_from(None, with_from("anyone@anywhere.example")) is None


def test_folded_from_is_unfolded() -> None:
    content = b"From: Acme News\r\n <news@acme.test>\r\n\r\nbody\r\n"
    assert check_header_from(USER, content) is None
    spoof = b"From: Acme News\r\n <ceo@globex.test>\r\n\r\nbody\r\n"
    assert check_header_from(USER, spoof) == FROM_NOT_ALLOWED


domains = st.sampled_from(["acme.test", "x.mail.acme.test", "globex.test", "evil.example"])
locals_ = st.from_regex(r"[a-z][a-z0-9.]{0,10}", fullmatch=True).filter(lambda s: ".." not in s)


@given(st.lists(st.tuples(locals_, domains), min_size=1, max_size=4))
def test_header_from_refused_iff_any_domain_foreign(addresses: list[tuple[str, str]]) -> None:
    value = ", ".join(f"{local.rstrip('.')}@{domain}" for local, domain in addresses)
    allowed = all(domain in ("acme.test", "x.mail.acme.test") for _, domain in addresses)
    result = check_header_from(USER, with_from(value))
    assert (result is None) == allowed


def test_recipients_need_a_domain_and_a_limit_rfc5321_4_5_3_1_10() -> None:
    assert check_recipient("a@example.net", 0, 1) is None
    assert check_recipient("postmaster", 0, 10) == RECIPIENT_NOT_QUALIFIED
    assert check_recipient("a@example.net", 1, 1) == TOO_MANY_RECIPIENTS
    assert TOO_MANY_RECIPIENTS.code == 452 and TOO_MANY_RECIPIENTS.enhanced == "4.5.3"


def test_user_limits_never_exceed_the_server() -> None:
    assert effective_limit(0, 1000) == 1000
    assert effective_limit(50, 1000) == 50
    assert effective_limit(5000, 1000) == 1000


def test_tenant_and_campaign_headers() -> None:
    assert tenant_from_header(None) is None
    assert tenant_from_header(" shop-eu.1 ") == "shop-eu.1"
    assert tenant_from_header("../etc") == BAD_TENANT
    assert tenant_from_header("x" * 65) == BAD_TENANT
    assert campaign_from_header(None) == ""
    assert campaign_from_header(" Spring sale 2026 ") == "Spring sale 2026"
    assert campaign_from_header("a\x00b") == BAD_CAMPAIGN
    assert campaign_from_header("c" * 129) == BAD_CAMPAIGN


def test_trace_protocol_rfc3848() -> None:
    assert trace_protocol(esmtp=True, tls=True, authenticated=True) == "ESMTPSA"
    assert trace_protocol(esmtp=True, tls=True, authenticated=False) == "ESMTPS"
    assert trace_protocol(esmtp=True, tls=False, authenticated=True) == "ESMTPA"
    assert trace_protocol(esmtp=True, tls=False, authenticated=False) == "ESMTP"
    assert trace_protocol(esmtp=False, tls=False, authenticated=False) == "SMTP"


def test_helo_names_without_control_characters() -> None:
    assert check_helo("client.example") is None
    assert check_helo("[192.0.2.1]") is None
    assert check_helo("bad\x00name") == BAD_HELO
    assert check_helo("bad\x1bname") == BAD_HELO
