"""RFC 5321 4.1.2 path and parameter grammar (relay.proto.paths)."""

from __future__ import annotations

import ipaddress
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.proto.paths import (
    AddressError,
    ParameterError,
    parse_mailbox,
    parse_path,
    parse_path_and_parameters,
    xtext_decode,
    xtext_encode,
)

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
QTEXT = "".join(chr(c) for c in range(32, 127) if chr(c) not in '"\\')
LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,12}[A-Za-z0-9])?"

atoms = st.text(ATEXT, min_size=1, max_size=8)
dot_strings = st.lists(atoms, min_size=1, max_size=4).map(".".join)
quoted_strings = st.lists(
    st.one_of(
        st.sampled_from(QTEXT), st.sampled_from(string.printable[:95]).map(lambda c: "\\" + c)
    ),
    max_size=12,
).map(lambda parts: '"' + "".join(parts) + '"')
labels = st.from_regex(LABEL, fullmatch=True)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
ipv4_literals = st.integers(0, 2**32 - 1).map(lambda n: f"[{ipaddress.IPv4Address(n)}]")
ipv6_literals = st.tuples(st.integers(0, 2**128 - 1), st.booleans()).map(
    lambda t: (
        "[IPv6:"
        + (ipaddress.IPv6Address(t[0]).exploded if t[1] else str(ipaddress.IPv6Address(t[0])))
        + "]"
    )
)
mailboxes = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.one_of(dot_strings, quoted_strings),
    st.one_of(domains, domains, ipv4_literals, ipv6_literals),
)


# --- examples -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "mailbox"),
    [
        ("<user@example.com>", "user@example.com"),
        ("<user+tag@example.com>", "user+tag@example.com"),
        ("<first.last@sub.example.co.uk>", "first.last@sub.example.co.uk"),
        ('<"john doe"@example.com>', '"john doe"@example.com'),
        ('<"a\\"b@c>"@example.com>', '"a\\"b@c>"@example.com'),
        ('<""@example.com>', '""@example.com'),
        ("<a@[127.0.0.1]>", "a@[127.0.0.1]"),
        ("<a@[IPv6:::1]>", "a@[IPv6:::1]"),
        ("<a@[ipv6:2001:db8::1]>", "a@[ipv6:2001:db8::1]"),
        ("<a@[IPv6:::ffff:192.0.2.1]>", "a@[IPv6:::ffff:192.0.2.1]"),
        ("<a@x-y.example>", "a@x-y.example"),
        ("<A@0.example>", "A@0.example"),
    ],
)
def test_valid_paths_rfc5321_4_1_2(path: str, mailbox: str) -> None:
    assert parse_path(path) == mailbox
    assert parse_path(path, reverse=True) == mailbox


def test_source_route_is_accepted_and_stripped_rfc5321_4_1_1_3_appendix_c() -> None:
    assert parse_path("<@relay.one,@relay.two:user@host.example>") == "user@host.example"
    assert parse_path("<@a.example:u@b.example>", reverse=True) == "u@b.example"


def test_null_reverse_path_only_for_mail_rfc5321_4_1_1_2() -> None:
    assert parse_path("<>", reverse=True) == ""
    with pytest.raises(AddressError):
        parse_path("<>")


def test_postmaster_without_domain_only_as_forward_path_rfc5321_4_1_1_3() -> None:
    assert parse_path("<Postmaster>") == "Postmaster"
    assert parse_path("<postmaster>") == "postmaster"
    with pytest.raises(AddressError):
        parse_path("<postmaster>", reverse=True)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "<",
        "user@example.com",  # no angle brackets
        "<user@example.com",
        "user@example.com>",
        "< user@example.com>",
        "<user@example.com >",
        "<user name@example.com>",
        "<user..name@example.com>",
        "<.user@example.com>",
        "<user.@example.com>",
        "<user>",  # no domain (only Postmaster may)
        "<@example.com>",
        "<user@>",
        "<user@-example.com>",
        "<user@example-.com>",
        "<user@example..com>",
        "<user@.example.com>",
        "<user@example.com.>",
        "<user@exa_mple.com>",
        "<user@[1.2.3]>",
        "<user@[1.2.3.256]>",
        "<user@[IPv6:zz::1]>",
        "<user@[IPv6:::1%eth0]>",
        "<user@[x-tag:content]>",  # General-address-literal with an unregistered tag
        "<user@[1.2.3.4@x]>",
        "<user@example.com>x",
        "<@a.example user@example.com>",
        "<@a.example:>",
        '<"unterminated@example.com>',
        '<"bad\\\x7f"@example.com>',
        "<a@example.com\r\nRCPT TO:<b@example.com>>",
        "<a\r@example.com>",
        "<a@b\n.example>",
        "<\ud800@example.com>",  # a lone surrogate is no UTF-8
        "<a@\udfff.example>",
        "<user@" + "a" * 64 + ".example>",  # label over 63 octets
        "<user@" + ".".join(["a" * 60] * 5) + ">",  # domain over 255 octets
        "<" + "u" * 250 + "@example.com>",  # path over 256 octets
    ],
)
def test_invalid_paths(path: str) -> None:
    with pytest.raises(AddressError):
        parse_path(path)


def test_utf8_addresses_parse_and_are_flagged_by_isascii_rfc6531_3_3() -> None:
    assert parse_path("<üser@exämple.de>") == "üser@exämple.de"
    assert parse_path('<"ü ser"@example.de>') == '"ü ser"@example.de'
    assert not "üser@exämple.de".isascii()


def test_local_part_over_64_octets_is_accepted_rfc5321_4_5_3_1() -> None:
    local = "bounce-" + "x" * 100
    assert parse_path(f"<{local}@example.com>") == f"{local}@example.com"


def test_parameters_rfc5321_4_1_2() -> None:
    mailbox, params = parse_path_and_parameters(
        "<a@example.com> SIZE=100 body=8BITMIME SMTPUTF8 AUTH=<>", reverse=True
    )
    assert mailbox == "a@example.com"
    assert params == {"SIZE": "100", "BODY": "8BITMIME", "SMTPUTF8": None, "AUTH": "<>"}
    assert parse_path_and_parameters("<a@example.com>") == ("a@example.com", {})
    assert parse_path_and_parameters("<a@example.com>  X-Y=1 ") == ("a@example.com", {"X-Y": "1"})


@pytest.mark.parametrize(
    "text",
    [
        "<a@example.com> SIZE=1 SIZE=2",
        "<a@example.com> size=1 SIZE=2",
        "<a@example.com> =1",
        "<a@example.com> -X=1",
        "<a@example.com> SIZE=",
        "<a@example.com> A=b=c",
        "<a@example.com> A=\x01",
        "<a@example.com> A\tB",
    ],
)
def test_invalid_parameters(text: str) -> None:
    with pytest.raises(ParameterError):
        parse_path_and_parameters(text)


def test_parameters_must_follow_a_space() -> None:
    with pytest.raises(AddressError):
        parse_path_and_parameters("<a@example.com>SIZE=1")


def test_parse_mailbox() -> None:
    assert parse_mailbox("a@example.com") == "a@example.com"
    for bad in ("<a@example.com>", "a@example.com\r\n", "a@example.com> X", "", "a"):
        with pytest.raises(AddressError):
            parse_mailbox(bad)


def test_xtext_rfc3461_4() -> None:
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext_decode("a+2Bb+3Dc+20d") == "a+b=c d"
    assert xtext_decode("<>") == "<>"
    assert xtext_decode("+C3+BC") == "ü"
    for bad in ("+2", "+zz", "a+", "a=b", "a b", "+2b"):
        with pytest.raises(ParameterError):
            xtext_decode(bad)


# --- properties -----------------------------------------------------------------------


@given(mailboxes)
def test_any_grammatical_mailbox_round_trips(mailbox: str) -> None:
    assert parse_mailbox(mailbox) == mailbox
    assert parse_path(f"<{mailbox}>") == mailbox
    assert parse_path(f"<{mailbox}>", reverse=True) == mailbox


@given(mailboxes, st.lists(domains, min_size=1, max_size=3))
def test_any_source_route_is_stripped(mailbox: str, route: list[str]) -> None:
    adl = ",".join("@" + d for d in route)
    assert parse_path(f"<{adl}:{mailbox}>") == mailbox


@given(
    mailboxes,
    st.dictionaries(
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,8}", fullmatch=True).map(str.upper),
        st.one_of(st.none(), st.from_regex(r"[!-<>-~]{1,10}", fullmatch=True)),
        max_size=4,
    ),
)
def test_any_parameters_round_trip(mailbox: str, params: dict[str, str | None]) -> None:
    text = f"<{mailbox}>" + "".join(
        f" {k}" if v is None else f" {k}={v}" for k, v in params.items()
    )
    assert parse_path_and_parameters(text) == (mailbox, params)


@given(st.text(max_size=80), st.booleans())
def test_any_text_parses_or_raises_a_grammar_error(text: str, reverse: bool) -> None:
    try:
        mailbox, _ = parse_path_and_parameters(text, reverse=reverse)
    except (AddressError, ParameterError):
        return
    assert "\r" not in mailbox and "\n" not in mailbox
    if mailbox:
        assert parse_path(f"<{mailbox}>") == mailbox or mailbox.lower() == "postmaster"


@given(st.text(max_size=40))
def test_xtext_round_trip(text: str) -> None:
    encoded = xtext_encode(text)
    assert encoded.isascii() and " " not in encoded and "=" not in encoded
    assert xtext_decode(encoded) == text


def test_xtext_escapes_that_are_not_utf8_stay_octets() -> None:
    assert xtext_decode("a+FFb") == "a\xffb"


def test_parse_mailbox_length_limit_rfc5321_4_5_3_1_3() -> None:
    assert parse_mailbox("u" * 242 + "@example.com")  # 254 + the brackets = 256
    with pytest.raises(AddressError):
        parse_mailbox("u" * 243 + "@example.com")
