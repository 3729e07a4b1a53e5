"""From request JSON to MIME: fields, header injection, templates, structure."""

from __future__ import annotations

import base64
import email
import email.policy
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.api.compose import Limits, build_send, parse_raw, parse_send
from relay.api.problems import ApiError
from relay.api.templates import Template, TemplateError

LIMITS = Limits(
    max_recipients=5, max_message_size=200_000, max_batch_bytes=2_000_000, max_send_at_delay=3600
)
NOW = 1_900_000_000.0
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def build(doc: dict[str, Any], limits: Limits = LIMITS) -> list[EmailMessage]:
    messages = build_send(parse_send(doc, limits, now=NOW), limits)
    return [
        email.message_from_bytes(m.content, policy=email.policy.default)  # type: ignore[misc]
        for m in messages
    ]


def error_of(doc: dict[str, Any], limits: Limits = LIMITS) -> ApiError:
    with pytest.raises(ApiError) as info:
        build_send(parse_send(doc, limits, now=NOW), limits)
    return info.value


def base(**fields: Any) -> dict[str, Any]:
    return {"from": "news@shop.test", "to": "a@x.test", "subject": "s", "text": "t", **fields}


# --- fields ----------------------------------------------------------------------------


def test_every_address_form_and_the_envelope() -> None:
    doc = base(
        **{
            "from": {"email": "news@shop.test", "name": "Shop News"},
            "to": ["a@x.test", "Bee <b@x.test>", {"email": "c@x.test", "name": "Cé"}],
            "cc": "d@y.test",
            "bcc": ["e@z.test", "A@X.TEST"],
            "reply_to": "help@shop.test",
        }
    )
    limits = Limits(10, 200_000, 2_000_000, 3600)
    (out,) = build_send(parse_send(doc, limits, now=NOW), limits)
    assert out.sender == "news@shop.test"
    # bcc in the envelope only; duplicates (case-insensitive) once
    assert out.recipients == ("a@x.test", "b@x.test", "c@x.test", "d@y.test", "e@z.test")
    msg = email.message_from_bytes(out.content, policy=email.policy.default)
    assert msg["From"] == "Shop News <news@shop.test>"
    assert msg["To"] == "a@x.test, Bee <b@x.test>, Cé <c@x.test>"
    assert msg["Cc"] == "d@y.test"
    assert msg["Bcc"] is None
    assert msg["Reply-To"] == "help@shop.test"
    assert b"\r\n" in out.content and b"\n" not in out.content.replace(b"\r\n", b"")


def test_non_ascii_is_encoded_rfc2047_and_rfc2231() -> None:
    (msg,) = build(
        base(
            **{
                "from": {"email": "news@shop.test", "name": "Zoë"},
                "subject": "Grüße",
                "headers": {"X-Note": "café"},
                "attachments": [{"content": PNG, "filename": "réçu.png"}],
            }
        )
    )
    raw = msg.as_bytes()
    assert raw.isascii()  # everything encoded, nothing needs SMTPUTF8 or 8BITMIME
    assert b"=?utf-8?q?Zo=C3=AB?=" in raw  # RFC 2047
    assert msg["Subject"] == "Grüße"
    assert msg["X-Note"] == "café"
    assert b"filename*=utf-8''r%C3%A9%C3%A7u.png" in raw  # RFC 2231
    part = next(msg.iter_attachments())
    assert part.get_filename() == "réçu.png"


def test_text_and_html_make_multipart_alternative() -> None:
    (msg,) = build(base(html="<p>hi</p>"))
    assert msg.get_content_type() == "multipart/alternative"
    types = [p.get_content_type() for p in msg.iter_parts()]
    assert types == ["text/plain", "text/html"]  # RFC 2046 5.1.4: preferred last


def test_inline_parts_make_multipart_related_inside_alternative() -> None:
    (msg,) = build(
        base(
            html='<img src="cid:logo@shop">',
            attachments=[
                {"content": PNG, "content_type": "image/png", "content_id": "logo@shop"},
                {"content": base64.b64encode(b"%PDF").decode(), "filename": "a.pdf"},
            ],
        )
    )
    assert msg.get_content_type() == "multipart/mixed"
    body, attachment = list(msg.iter_parts())
    assert body.get_content_type() == "multipart/alternative"
    _plain, related = list(body.iter_parts())
    assert related.get_content_type() == "multipart/related"  # RFC 2387
    html, image = list(related.iter_parts())
    assert html.get_content_type() == "text/html"
    assert image["Content-ID"] == "<logo@shop>"
    assert image.get_content_disposition() == "inline"
    assert image.get_content() == base64.b64decode(PNG)
    assert attachment.get_content_type() == "application/pdf"  # guessed from the name
    assert attachment.get_filename() == "a.pdf"
    assert "MIME-Version" not in attachment  # only at the top (RFC 2045 4)


def test_html_only_with_inline_part_is_related() -> None:
    (msg,) = build(
        {
            "from": "news@shop.test",
            "to": "a@x.test",
            "html": '<img src="cid:x">',
            "attachments": [{"content": PNG, "content_type": "image/png", "content_id": "x"}],
        }
    )
    assert msg.get_content_type() == "multipart/related"


def test_long_lines_are_encoded_within_998_octets() -> None:
    (msg,) = build(base(text="a" * 5000))
    assert all(len(line) <= 998 for line in msg.as_bytes().split(b"\n"))
    assert msg.get_content().rstrip("\r\n") == "a" * 5000


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"subject": "hi\r\nBcc: victim@x.test"}, "subject"),
        ({"subject": "hi\nX: y"}, "subject"),
        ({"from": "news@shop.test\r\nBcc: v@x.test"}, "from"),
        ({"from": {"email": "news@shop.test", "name": "a\rb"}}, "from.name"),
        ({"to": ["a@x.test", "Evil\n <b@x.test>"]}, "to[1]"),
        ({"to": "a@x.test\n"}, "to"),
        ({"cc": "c@x.test\r\n"}, "cc"),
        ({"reply_to": {"email": "r@x.test", "name": "x\ny"}}, "reply_to.name"),
        ({"headers": {"X-A": "v\r\nBcc: v@x.test"}}, "headers.X-A"),
        ({"headers": {"X-A\r\nBcc": "v"}}, "headers.X-A\r\nBcc"),
        ({"headers": {"X A": "v"}}, "headers.X A"),
        ({"headers": {"X:A": "v"}}, "headers.X:A"),
        ({"attachments": [{"content": PNG, "filename": "a\r\n.png"}]}, "attachments[0].filename"),
    ],
)
def test_cr_lf_anywhere_in_a_header_is_422(fields: dict[str, Any], where: str) -> None:
    error = error_of(base(**fields))
    assert error.status == 422
    assert error.field == where


@pytest.mark.parametrize(
    ("fields", "where", "words"),
    [
        ({"from": None}, "from", "required"),
        ({"to": "not-an-address"}, "to", "user@example.com"),
        ({"to": "a@localhost"}, "to", "host name"),
        ({"to": "a@[127.0.0.1]"}, "to", "host name"),
        ({"to": "a b@x.test"}, "to", "dot-atom"),
        ({"to": "ü@x.test"}, "to", "raw"),
        ({"to": "x" * 65 + "@x.test"}, "to", "64"),
        ({"to": [{"name": "n"}]}, "to[0].email", "required"),
        ({"to": [{"email": "a@x.test", "nmae": "n"}]}, "to[0].nmae", "unknown"),
        ({"subjet": "typo"}, "subjet", "unknown"),
        ({"text": None, "html": None}, "text", "text or html"),
        ({"text": 5}, "text", "string"),
        ({"tags": "x"}, "tags", "array"),
        ({"tags": ["a"] * 21}, "tags", "20"),
        ({"tags": ["a\nb"]}, "tags[0]", "printable"),
        ({"metadata": []}, "metadata", "object"),
        ({"metadata": {"k": {"nested": 1}}}, "metadata.k", "string"),
        ({"send_at": "tomorrow"}, "send_at", "RFC 3339"),
        ({"send_at": "2030-01-01T00:00:00"}, "send_at", "offset"),
        ({"send_at": NOW + 7200}, "send_at", "hours ahead"),
        ({"headers": {"Subject": "x"}}, "headers.Subject", "not allowed"),
        ({"headers": {"content-type": "x"}}, "headers.content-type", "not allowed"),
        ({"headers": {"Message-ID": "nope"}}, "headers.Message-ID", "<local@domain>"),
        ({"attachments": [{"filename": "a"}]}, "attachments[0].content", "required"),
        ({"attachments": [{"content": "!!", "filename": "a"}]}, "attachments[0].content", "base64"),
        ({"attachments": [{"content": PNG}]}, "attachments[0].filename", "required"),
        (
            {"attachments": [{"content": PNG, "filename": "../a"}]},
            "attachments[0].filename",
            "path",
        ),
        (
            {"attachments": [{"content": PNG, "filename": "a", "content_type": "bad"}]},
            "attachments[0].content_type",
            "media type",
        ),
        (
            {"attachments": [{"content": PNG, "content_id": "x"}]},
            "attachments[0].content_id",
            "html",
        ),
        ({"to": [f"r{i}@x.test" for i in range(6)]}, "to", "at most 5"),
        ({"to": ["a@x.test"] * 3, "bcc": ["b@x.test"] * 3}, "bcc", "at most 5"),
        ({"to": None}, "to", "at least one"),
        ({"substitutions": {"a": "b"}}, "substitutions", "recipients"),
    ],
)
def test_validation_errors_name_the_field(fields: dict[str, Any], where: str, words: str) -> None:
    doc = {k: v for k, v in base(**fields).items() if v is not None or k not in fields}
    doc = {k: v for k, v in doc.items() if not (v is None and k in ("to", "text", "html"))}
    error = error_of(doc)
    assert error.status == 422, error.message
    assert error.field == where
    assert words in error.message


def test_a_message_over_the_size_limit_is_413_naming_the_field() -> None:
    big = base64.b64encode(b"x" * 300_000).decode()
    error = error_of(base(attachments=[{"content": big, "filename": "big.bin"}]))
    assert error.status == 413
    assert error.field == "attachments"


def test_options_are_checked_and_kept() -> None:
    request = parse_send(
        base(
            tags=["a", "b", "a"],
            metadata={"user": 7, "vip": True, "s": "x"},
            campaign="spring",
            send_at="2030-03-17T19:00:00+01:00",
        ),
        Limits(5, 200_000, 2_000_000, 1e9),
        now=NOW,
    )
    assert request.options.tags == ("a", "b")
    assert request.options.metadata == {"user": "7", "vip": "true", "s": "x"}
    assert request.options.campaign == "spring"
    assert request.options.send_at == 1_900_000_800.0  # 2030-03-17T18:00:00Z
    past = parse_send(base(send_at=NOW - 10), LIMITS, now=NOW)
    assert past.options.send_at is None  # in the past: now


# --- batch sending and templates --------------------------------------------------------


def test_batch_makes_one_message_per_recipient_with_substitutions() -> None:
    doc = {
        "from": "news@shop.test",
        "subject": "Hello {{ name }}, {{greeting}}",
        "text": "Dear {{ name }} ({{ email }}), code {{ code }}. {{ greeting }}",
        "html": "<p>{{ name }}</p>",
        "headers": {"List-Unsubscribe": "<https://shop.test/u/{{ code }}>"},
        "substitutions": {"greeting": "Bye"},
        "recipients": [
            {"address": "a@x.test", "name": "Ann", "substitutions": {"code": "A1"}},
            {
                "address": {"email": "b@x.test", "name": "<b>Bob & Co</b>"},
                "substitutions": {"code": 2},
            },
        ],
    }
    request = parse_send(doc, LIMITS, now=NOW)
    out = build_send(request, LIMITS)
    assert [m.recipients for m in out] == [("a@x.test",), ("b@x.test",)]
    first, second = (email.message_from_bytes(m.content, policy=email.policy.default) for m in out)
    assert first["To"] == "Ann <a@x.test>"
    assert first["Subject"] == "Hello Ann, Bye"
    assert first["List-Unsubscribe"] == "<https://shop.test/u/A1>"
    plain, _html = list(first.iter_parts())
    assert plain.get_content().strip() == "Dear Ann (a@x.test), code A1. Bye"
    second_html = list(second.iter_parts())[1].get_content()
    assert "&lt;b&gt;Bob &amp; Co&lt;/b&gt;" in second_html  # escaped in HTML
    assert second["Subject"] == "Hello <b>Bob & Co</b>, Bye"  # as is in text
    assert next(iter(second.iter_parts())).get_content().strip().endswith("code 2. Bye")


@pytest.mark.parametrize(
    ("doc", "where", "words"),
    [
        ({"text": "hi {{ first }}"}, "recipients[1].substitutions", "'first' (used in text)"),
        ({"text": "hi {{ name"}, "text", "malformed"),
        ({"subject": "{{ 1x }}"}, "subject", "malformed"),
        ({"text": "{{ first.name }}"}, "recipients[0].substitutions", "first.name"),
        ({"to": "c@x.test"}, "to", "cannot be combined"),
        ({"recipients": []}, "recipients", "empty"),
        ({"recipients": ["a@x.test"] * 6}, "recipients", "at most 5"),
        ({"recipients": [{"name": "x"}]}, "recipients[0].address", "required"),
        ({"recipients": [{"address": "a@x.test", "x": 1}]}, "recipients[0].x", "unknown"),
    ],
)
def test_batch_errors(doc: dict[str, Any], where: str, words: str) -> None:
    full = {
        "from": "news@shop.test",
        "subject": "s",
        "text": "t",
        "recipients": [
            {"address": "a@x.test", "substitutions": {"first": "A"}},
            {"address": "b@x.test"},
        ],
        **doc,
    }
    error = error_of(full)
    assert error.status == 422
    assert error.field == where
    assert words in error.message


def test_substituted_line_breaks_cannot_reach_a_header() -> None:
    error = error_of(
        {
            "from": "news@shop.test",
            "subject": "Hi {{ name }}",
            "text": "t",
            "recipients": [
                {"address": "a@x.test", "substitutions": {"name": "x\r\nBcc: v@x.test"}}
            ],
        }
    )
    assert error.status == 422
    assert error.field == "recipients[0].substitutions"


def test_batch_over_the_batch_byte_limit_is_413() -> None:
    limits = Limits(1000, 200_000, 100_000, 3600)
    big = base64.b64encode(b"x" * 30_000).decode()
    error = error_of(
        {
            "from": "news@shop.test",
            "text": "t",
            "attachments": [{"content": big, "filename": "a.bin"}],
            "recipients": [f"r{i}@x.test" for i in range(10)],
        },
        limits,
    )
    assert error.status == 413
    assert error.field == "recipients"


@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), st.text()))
def test_values_are_inserted_verbatim_and_never_evaluated(values: dict[str, str]) -> None:
    text = " | ".join(f"{{{{ {name} }}}}" for name in values)
    rendered = Template.parse(text).render(values)
    assert rendered == " | ".join(values.values())


@given(st.text(alphabet="{} ab_1.", max_size=30))
def test_parse_either_fails_cleanly_or_keeps_every_literal(text: str) -> None:
    try:
        template = Template.parse(text)
    except TemplateError:
        return
    rendered = template.render(dict.fromkeys(template.names, ""))
    assert "{{" not in "".join(template.pieces)
    assert len(rendered) <= len(text)


# --- raw messages -------------------------------------------------------------------------


RAW = "From: News <news@shop.test>\nTo: a@x.test\nBcc: hidden@x.test\nSubject: raw\n\nbody\n"


def test_raw_message_as_text_gets_crlf() -> None:
    raw = parse_raw({"from": "news@shop.test", "to": ["a@x.test"], "message": RAW}, LIMITS, now=NOW)
    assert raw.message.content.startswith(b"From: News <news@shop.test>\r\nTo: a@x.test\r\n")
    assert raw.message.content.endswith(b"\r\nbody\r\n")
    assert raw.from_domains == ("shop.test",)
    assert not raw.message.smtputf8 and not raw.message.body_8bit


def test_raw_message_as_base64_with_utf8_envelope() -> None:
    content = "From: news@shop.test\r\nSubject: ü\r\n\r\nbödy\r\n".encode()
    raw = parse_raw(
        {
            "from": "news@shop.test",
            "to": "ü@x.test",
            "message_base64": base64.b64encode(content).decode(),
        },
        LIMITS,
        now=NOW,
    )
    assert raw.message.content == content
    assert raw.message.smtputf8 and raw.message.body_8bit  # RFC 6531, RFC 6152


@pytest.mark.parametrize(
    ("doc", "where", "words"),
    [
        ({"message": RAW, "message_base64": "eA=="}, "message", "exactly one"),
        ({}, "message", "exactly one"),
        ({"message": "no header section"}, "message", "exactly one From"),
        ({"message": "\nbody"}, "message", "no header section"),
        ({"message": "From: a@shop.test\rX: y\n\nb"}, "message", "bare CR"),
        ({"message": "From: a@shop.test\n\n" + "x" * 1000}, "message", "998"),
        ({"message": "From: a@shop.test\nFrom: b@shop.test\n\nb"}, "message", "exactly one From"),
        ({"message": "From: undisclosed\n\nb"}, "message", "no address"),
        ({"message": "From: a@shop.test\n\nb\0"}, "message", "NUL"),
        ({"message_base64": "%%%"}, "message_base64", "base64"),
        ({"message": RAW, "to": []}, "to", "at least one"),
        ({"message": RAW, "to": "a@x.test\r\nRCPT TO:<v@x.test>"}, "to", "CR, LF"),
        ({"message": RAW, "from": "news@shop.test\n"}, "from", "CR, LF"),
    ],
)
def test_raw_errors(doc: dict[str, Any], where: str, words: str) -> None:
    full = {"from": "news@shop.test", "to": ["a@x.test"], **doc}
    with pytest.raises(ApiError) as info:
        parse_raw(full, LIMITS, now=NOW)
    assert info.value.status == 422
    assert info.value.field == where
    assert words in info.value.message
