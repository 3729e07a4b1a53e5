"""The signer: canonicalisation, header selection, and signatures dkimpy accepts."""

from __future__ import annotations

import base64
import hashlib

import dkim.canonicalization
import pytest
from dkim_support import signature_tags, signed_names, verify_each
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config import DKIM_DEFAULT_HEADERS
from relay.dkim import (
    DkimSigner,
    SigningKey,
    network_form,
    relaxed_body,
    relaxed_header,
    split_message,
)

MESSAGE = (
    b"Received: from client.test ([127.0.0.1])\r\n\tby relay.test (relay) with ESMTPSA id 1;\r\n"
    b"\tMon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Message-ID: <1@relay.test>\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"From: Shop News <news@shop.test>\r\n"
    b"To: user@example.test\r\n"
    b"Subject: Spring sale\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"List-Unsubscribe: <https://shop.test/u/1>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"X-Campaign: spring\r\n"
    b"\r\n"
    b"Hello,\r\n\r\n  everything   must go.\t\r\n.dot line\r\n\r\n\r\n"
)


def signer(*keys: SigningKey, **kwargs: object) -> DkimSigner:
    table: dict[str, tuple[SigningKey, ...]] = {}
    for key in keys:
        table[key.domain] = (*table.get(key.domain, ()), key)
    return DkimSigner(table, headers=DKIM_DEFAULT_HEADERS, clock=lambda: 1_700_000_000.0, **kwargs)  # type: ignore[arg-type]


# --- canonicalisation ----------------------------------------------------------------


def test_rfc6376_3_4_5_canonicalisation_example() -> None:
    # RFC 6376 3.4.5: the relaxed forms of the example message.
    fields, body = split_message(b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n")
    assert [c for _, c in fields] == [b"a:X\r\n", b"b:Y Z\r\n"]
    assert relaxed_body(body) == b" C\r\nD E\r\n"


def test_rfc6376_3_4_4_empty_body_is_empty() -> None:
    assert relaxed_body(b"") == b""
    assert relaxed_body(b"\r\n\r\n") == b""
    assert relaxed_body(b" \t\r\n") == b""


def test_rfc6376_3_4_4_missing_final_crlf_is_added() -> None:
    assert relaxed_body(b"abc") == b"abc\r\n"
    assert relaxed_body(b"abc \t") == b"abc\r\n"  # whitespace at the end of a line goes


_BODY = st.lists(st.sampled_from([b" ", b"\t", b"\r\n", b"a", b"b c", b"\t\t", b"  "]), max_size=30)


@given(_BODY)
def test_relaxed_body_matches_dkimpy(pieces: list[bytes]) -> None:
    body = b"".join(pieces)
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"  # what a verifier sees: SMTP ends every body with CRLF
    assert relaxed_body(body) == dkim.canonicalization.Relaxed.canonicalize_body(body)


@given(
    st.sampled_from([b"Subject", b"X-Mixed-Case", b"to"]),
    st.lists(st.sampled_from([b" ", b"\t", b"\r\n ", b"\r\n\t", b"v", b"w x", b";"]), max_size=20),
)
def test_relaxed_header_matches_dkimpy(name: bytes, pieces: list[bytes]) -> None:
    value = b"".join(pieces)
    ((cname, cvalue),) = dkim.canonicalization.Relaxed.canonicalize_headers([(name, value)])
    assert relaxed_header(name, value) == cname + b":" + cvalue


def test_network_form_turns_bare_endings_into_crlf() -> None:
    assert network_form(b"a\nb\rc\r\n") == b"a\r\nb\r\nc\r\n"
    same = b"a\r\nb\r\n"
    assert network_form(same) is same


# --- signatures -----------------------------------------------------------------------


def test_rsa_signature_verifies(rsa_key: SigningKey) -> None:
    signed = signer(rsa_key)(MESSAGE, "bounces@shop.test")
    assert signed.endswith(MESSAGE)
    assert verify_each(signed, rsa_key) == [True]
    (tags,) = signature_tags(signed)
    assert tags[b"a"] == b"rsa-sha256"
    assert tags[b"c"] == b"relaxed/relaxed"
    assert (tags[b"d"], tags[b"s"], tags[b"t"]) == (b"shop.test", b"r2024", b"1700000000")


def test_rfc8463_ed25519_signature_verifies(ed_key: SigningKey) -> None:
    signed = signer(ed_key)(MESSAGE, "bounces@shop.test")
    assert verify_each(signed, ed_key) == [True]
    assert signature_tags(signed)[0][b"a"] == b"ed25519-sha256"


def test_two_signatures_rsa_on_top(rsa_key: SigningKey, ed_key: SigningKey) -> None:
    signed = signer(rsa_key, ed_key)(MESSAGE, "")
    assert [t[b"a"] for t in signature_tags(signed)] == [b"rsa-sha256", b"ed25519-sha256"]
    assert verify_each(signed, rsa_key, ed_key) == [True, True]
    # RFC 8463 5: a verifier that knows only RSA still has a good signature.
    assert verify_each(signed, rsa_key) == [True, False]


def test_body_hash_is_sha256_of_the_relaxed_body(rsa_key: SigningKey) -> None:
    signed = signer(rsa_key)(MESSAGE, "")
    body = MESSAGE.split(b"\r\n\r\n", 1)[1]
    expected = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    assert signature_tags(signed)[0][b"bh"] == expected


def test_signature_lines_are_folded(rsa_key: SigningKey) -> None:
    (field,) = signer(rsa_key).signature_fields(MESSAGE, "")
    lines = field.split(b"\r\n")
    assert lines[-1] == b""
    assert all(len(line) <= 78 for line in lines)  # RFC 5322 2.1.1
    assert all(line.startswith(b"\t") for line in lines[1:-1])


# --- header selection (RFC 6376 5.4) --------------------------------------------------


def test_present_listed_fields_are_signed_and_from_is_oversigned(rsa_key: SigningKey) -> None:
    names = signed_names(signature_tags(signer(rsa_key)(MESSAGE, ""))[0])
    assert names == [
        b"message-id",
        b"date",
        b"from",
        b"to",
        b"subject",
        b"mime-version",
        b"content-type",
        b"list-unsubscribe",
        b"list-unsubscribe-post",
        b"from",
    ]


def test_rfc6376_5_4_trace_and_unlisted_fields_are_not_signed(rsa_key: SigningKey) -> None:
    names = signed_names(signature_tags(signer(rsa_key)(MESSAGE, ""))[0])
    assert b"received" not in names and b"x-campaign" not in names


def test_later_hops_may_add_trace_fields(rsa_key: SigningKey) -> None:
    signed = signer(rsa_key)(MESSAGE, "")
    relayed = b"Received: from relay.test by mx.example.test; Mon, 1 Jan 2024\r\n" + signed
    assert verify_each(relayed, rsa_key) == [True]


def test_rfc6376_5_4_2_oversigned_from_cannot_be_added(rsa_key: SigningKey) -> None:
    signed = signer(rsa_key)(MESSAGE, "")
    head, body = signed.split(b"\r\n\r\n", 1)
    forged = head + b"\r\nFrom: ceo@shop.test\r\n\r\n" + body
    assert verify_each(forged, rsa_key) == [False]


def test_changed_signed_field_or_body_fails(rsa_key: SigningKey) -> None:
    signed = signer(rsa_key)(MESSAGE, "")
    assert verify_each(signed.replace(b"Spring sale", b"Spring  SALE"), rsa_key) == [False]
    assert verify_each(signed.replace(b"must go", b"must stay"), rsa_key) == [False]


def test_relaxed_survives_whitespace_changes_in_transit(rsa_key: SigningKey) -> None:
    signed = signer(rsa_key)(MESSAGE, "")
    rewritten = signed.replace(b"Subject: Spring sale", b"Subject:  Spring\r\n\tsale ").replace(
        b"must go.\t\r\n", b"must go.\r\n"
    )
    assert verify_each(rewritten, rsa_key) == [True]


def test_repeated_fields_are_each_signed(rsa_key: SigningKey) -> None:
    message = MESSAGE.replace(b"To: user@example.test\r\n", b"To: a@x.test\r\nTo: b@x.test\r\n")
    signed = signer(rsa_key)(message, "")
    assert signed_names(signature_tags(signed)[0]).count(b"to") == 2
    assert verify_each(signed, rsa_key) == [True]
    assert verify_each(signed.replace(b"To: a@x.test", b"To: c@x.test"), rsa_key) == [False]


def test_custom_header_list_and_oversign(rsa_key: SigningKey) -> None:
    custom = DkimSigner(
        {"shop.test": (rsa_key,)}, headers=("From", "Subject", "X-Campaign"), oversign=("Subject",)
    )
    signed = custom(MESSAGE, "")
    names = signed_names(signature_tags(signed)[0])
    assert names == [b"from", b"subject", b"x-campaign", b"subject"]
    assert verify_each(signed, rsa_key) == [True]


def test_message_without_from_still_signs_from(rsa_key: SigningKey) -> None:
    message = b"Subject: no from\r\n\r\nbody\r\n"
    custom = DkimSigner({"shop.test": (rsa_key,)}, headers=("From", "Subject"), oversign=())
    signed = custom(message, "app@shop.test")
    assert signed_names(signature_tags(signed)[0]) == [b"subject", b"from"]


# --- which domain signs ---------------------------------------------------------------


def test_header_from_domain_signs(rsa_key: SigningKey) -> None:
    assert signer(rsa_key).signing_domain(MESSAGE, "bounces@esp.test") == "shop.test"


def test_envelope_domain_when_from_domain_has_no_key(rsa_key: SigningKey) -> None:
    message = MESSAGE.replace(b"news@shop.test", b"news@other.test")
    s = signer(rsa_key)
    assert s.signing_domain(message, "bounces@SHOP.test") == "shop.test"
    assert verify_each(s(message, "bounces@shop.test"), rsa_key) == [True]


def test_no_key_leaves_the_message_alone(rsa_key: SigningKey) -> None:
    s = signer(rsa_key)
    message = MESSAGE.replace(b"news@shop.test", b"news@other.test")
    assert s(message, "") is message
    assert s(message, "x@third.test") is message
    s(MESSAGE, "")
    assert (s.statistics.signed, s.statistics.unsigned, s.statistics.signatures) == (1, 2, 1)


def test_folded_from_with_display_name(rsa_key: SigningKey) -> None:
    message = MESSAGE.replace(
        b"From: Shop News <news@shop.test>", b'From: "News, Shop"\r\n <news@Shop.Test>'
    )
    assert signer(rsa_key).signing_domain(message, "") == "shop.test"


def test_idn_from_domain_signs_as_a_labels() -> None:
    from relay.dkim import generate_private_key

    key = SigningKey(
        "xn--bcher-kva.test", "s1", "ed25519-sha256", generate_private_key("ed25519-sha256")
    )
    message = "From: <news@bücher.test>\r\nSubject: x\r\n\r\nhi\r\n".encode()
    signed = signer(key)(message, "")
    assert signature_tags(signed)[0][b"d"] == b"xn--bcher-kva.test"
    assert verify_each(signed, key) == [True]


# --- line endings ---------------------------------------------------------------------


@pytest.mark.parametrize("ending", [b"\n", b"\r"])
def test_bare_line_endings_are_signed_as_sent(ending: bytes, rsa_key: SigningKey) -> None:
    """Delivery sends every bare CR and LF as CRLF; the signature covers that form."""
    message = MESSAGE.replace(b"\r\n", ending)
    signed = signer(rsa_key)(message, "")
    assert verify_each(network_form(signed), rsa_key) == [True]


_TEXT = st.text(alphabet=st.sampled_from("ab;:=<>@. \t"), max_size=40)


@settings(max_examples=60, deadline=None)
@given(
    subject=_TEXT,
    folded=st.booleans(),
    lines=st.lists(st.text(alphabet=st.sampled_from("xy. \t"), max_size=12), max_size=8),
)
def test_any_message_signs_and_verifies(
    ed_key: SigningKey, subject: str, folded: bool, lines: list[str]
) -> None:
    fold = "\r\n\t" if folded else " "
    message = (
        f"From: news@shop.test\r\nSubject:{fold}{subject}\r\nTo: a@x.test\r\n\r\n"
        + "".join(line + "\r\n" for line in lines)
    ).encode()
    signed = signer(ed_key)(message, "")
    assert verify_each(signed, ed_key) == [True]
