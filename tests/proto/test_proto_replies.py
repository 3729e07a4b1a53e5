"""Reply formatting (RFC 5321 4.2, RFC 3463) and EHLO capability parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from proto_pair import parse_replies

from relay.errors import LocalProtocolError
from relay.proto import Extensions, Reply, format_reply
from relay.proto.sasl import b64decode, b64encode, decode_plain, encode_plain


def test_single_line_reply_rfc5321_4_2() -> None:
    assert format_reply(250, "2.1.0", "Sender OK") == b"250 2.1.0 Sender OK\r\n"
    assert format_reply(354, None, "Go ahead") == b"354 Go ahead\r\n"
    assert format_reply(334, None, "") == b"334\r\n"


def test_multi_line_reply_rfc5321_4_2_1() -> None:
    assert format_reply(250, None, ["mx.example", "PIPELINING", "SIZE 10"]) == (
        b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
    )
    assert format_reply(550, "5.7.1", "one\ntwo") == b"550-5.7.1 one\r\n550 5.7.1 two\r\n"


@pytest.mark.parametrize(
    ("code", "enhanced", "text"),
    [
        (199, None, "x"),
        (600, None, "x"),
        (250, "5.0.0", "class must match the code (RFC 3463 2)"),
        (250, "2.0", "x"),
        (250, "2.0.1000", "x"),
        (250, None, "bad\rtext"),
        (250, None, ["a", "b\nc\r"]),
        (250, None, "lone surrogate \ud800"),
        (250, None, ["lone surrogate", "\udfff"]),
    ],
)
def test_invalid_replies_are_local_errors(
    code: int, enhanced: str | None, text: str | list[str]
) -> None:
    with pytest.raises(LocalProtocolError):
        format_reply(code, enhanced, text)


@given(
    st.integers(200, 599),
    st.booleans(),
    st.lists(
        st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=30),
        min_size=1,
        max_size=5,
    ),
)
def test_formatted_replies_parse_back(code: int, with_enhanced: bool, lines: list[str]) -> None:
    enhanced = f"{code // 100}.1.2" if with_enhanced and code // 100 != 3 else None
    (reply,) = parse_replies(format_reply(code, enhanced, lines))
    assert reply.code == code
    if enhanced is not None:
        assert reply.enhanced == enhanced
        assert list(reply.lines) == lines
    assert Reply(code, enhanced, tuple(lines)).to_bytes() == format_reply(code, enhanced, lines)


def test_reply_str_and_classes() -> None:
    reply = Reply(450, "4.2.0", ("Mailbox busy", "try later"))
    assert str(reply) == "450 4.2.0 Mailbox busy try later"
    assert reply.is_transient and not reply.is_permanent and not reply.is_positive
    assert str(Reply(250)) == "250"
    assert Reply(354).is_positive
    assert Reply(554).is_permanent


def test_extensions_parse_rfc5321_4_1_1_1() -> None:
    ext = Extensions.parse(
        [
            "mx.example greets you",
            "PIPELINING",
            "SIZE 35882577",
            "8bitmime",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "STARTTLS",
            "CHUNKING",
            "AUTH PLAIN login",
            "AUTH=XOAUTH2",
            "DSN",
        ]
    )
    assert ext.pipelining and ext.eightbitmime and ext.smtputf8 and ext.starttls
    assert ext.enhanced_status_codes and ext.chunking
    assert ext.size == 35882577
    assert ext.auth_mechanisms == {"PLAIN", "LOGIN", "XOAUTH2"}
    assert ext.keywords["DSN"] == ""


def test_extensions_size_without_limit_rfc1870() -> None:
    assert Extensions.parse(["mx", "SIZE"]).size == 0
    assert Extensions.parse(["mx", "SIZE junk"]).size == 0
    assert Extensions.parse(["mx"]).size is None
    assert Extensions() == Extensions.parse(["mx"])


def test_sasl_plain_rfc4616() -> None:
    message = encode_plain("user", "pässword", "admin")
    assert decode_plain(b64decode(message)) == ("admin", "user", "pässword")
    assert decode_plain(b"\0user\0pw") == ("", "user", "pw")
    for bad in (b"user\0pw", b"\0\0pw", b"\0user\0", b"a\0b\0c\0d", b"\0\xff\0pw"):
        with pytest.raises(ValueError):
            decode_plain(bad)
    with pytest.raises(ValueError):
        encode_plain("us\0er", "pw")


def test_sasl_base64_is_strict_rfc4954_4() -> None:
    assert b64decode("=") == b""
    assert b64decode(b64encode("Username:")) == b"Username:"
    for bad in ("not base64!", "YQ", "Y Q==", "ü"):
        with pytest.raises(ValueError):
            b64decode(bad)
