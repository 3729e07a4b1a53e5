"""RFC 5321 path and parameter grammar (4.1.2), with RFC 6531 (SMTPUTF8) additions.

    Reverse-path = Path / "<>"            Forward-path = Path / "<Postmaster>"
    Path         = "<" [ A-d-l ":" ] Mailbox ">"      ; A-d-l: a source route
    Mailbox      = Local-part "@" ( Domain / address-literal )
    Local-part   = Dot-string / Quoted-string
    Mail-parameters = esmtp-param *(SP esmtp-param)
    esmtp-param  = esmtp-keyword ["=" esmtp-value]

Addresses are returned in wire form (a quoted local part keeps its quotes), so
writing ``"<" + address + ">"`` reproduces a valid path.  A source route
(``<@a,@b:user@host>``) is accepted and dropped (RFC 5321 4.1.1.3, Appendix C).
The grammar accepts UTF-8 (RFC 6531 3.3) everywhere it may appear; whether a
non-ASCII address is allowed (only in an SMTPUTF8 transaction) is the caller's
check: `str.isascii()`.

Length limits (RFC 5321 4.5.3.1): a path is at most 256 octets with its angle
brackets (which keeps a domain under its 255) and a label at most 63.  The 64-octet local-part limit is
NOT enforced: 4.5.3.1 asks implementations to avoid such limits where they can,
and long VERP local parts are common in bulk mail.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = [
    "MAX_PATH_LENGTH",
    "AddressError",
    "ParameterError",
    "parse_mailbox",
    "parse_path",
    "parse_path_and_parameters",
    "xtext_decode",
    "xtext_encode",
]

#: RFC 5321 4.5.3.1.3: 256 octets including the angle brackets.
MAX_PATH_LENGTH = 256
_MAX_LABEL_LENGTH = 63  # RFC 1035 2.3.4

_U = "\u0080-\ud7ff\ue000-\U0010ffff"  # UTF8-non-ascii (RFC 6531 3.3): no surrogates
_ATEXT = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_U}]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED_STRING = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_U}]|\\[\x20-\x7e])*"'
_LABEL = rf"[A-Za-z0-9{_U}](?:[A-Za-z0-9\-{_U}]*[A-Za-z0-9{_U}])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[[\x21-\x3f\x41-\x5a\x5e-\x7e]+\]"  # dcontent minus "@"; see _valid_literal
_MAILBOX = rf"(?:{_DOT_STRING}|{_QUOTED_STRING})@(?:{_DOMAIN}|{_LITERAL})"

_PATH_RE = re.compile(rf"<(?:@{_DOMAIN}(?:,@{_DOMAIN})*:)?({_MAILBOX})>")
_MAILBOX_RE = re.compile(_MAILBOX)
_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
_VALUE_RE = re.compile(rf"[\x21-\x3c\x3e-\x7e{_U}]+")
_IPV4_RE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_XTEXT_HEX_RE = re.compile(r"\+([0-9A-F]{2})")


class AddressError(ValueError):
    """A path or mailbox that does not follow RFC 5321 4.1.2."""


class ParameterError(ValueError):
    """MAIL/RCPT parameters that do not follow RFC 5321 4.1.2 (esmtp-param)."""


def _domain_of(mailbox: str) -> str:
    # The local part may contain a quoted "@", the domain never does.
    return mailbox[mailbox.rindex("@") + 1 :]


def _valid_literal(literal: str) -> bool:
    """RFC 5321 4.1.3: an IPv4 or ``IPv6:`` address literal (inside the brackets)."""
    if ":" in literal:
        tag, _, address = literal.partition(":")
        if tag.upper() != "IPV6" or "%" in address:
            return False  # only the IPv6 tag is registered (General-address-literal)
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return False
        return True
    return _IPV4_RE.fullmatch(literal) is not None and all(
        int(part) <= 255 for part in literal.split(".")
    )


def _check_mailbox(mailbox: str) -> None:
    domain = _domain_of(mailbox)
    if domain.startswith("["):
        if not _valid_literal(domain[1:-1]):
            raise AddressError(f"invalid address literal {domain}")
        return
    if len(domain) > _MAX_LABEL_LENGTH or not domain.isascii():  # else no label can be
        for label in domain.split("."):
            if len(label.encode("utf-8")) > _MAX_LABEL_LENGTH:
                raise AddressError("domain label longer than 63 octets")


def parse_mailbox(text: str) -> str:
    """Validate a bare mailbox (``local@domain``, no brackets) and return it."""
    if _MAILBOX_RE.fullmatch(text) is None:
        raise AddressError(f"invalid mailbox {text!r}")
    if len(text.encode("utf-8")) + 2 > MAX_PATH_LENGTH:
        raise AddressError("path longer than 256 octets")
    _check_mailbox(text)
    return text


def _split_path(text: str, *, reverse: bool) -> tuple[str, int]:
    """The mailbox of the path at the start of `text` and the offset just past it."""
    if reverse and text.startswith("<>"):
        return "", 2
    if not reverse and text[:12].lower() == "<postmaster>":
        return text[1:11], 12  # RFC 5321 4.1.1.3: no domain needed
    match = _PATH_RE.match(text)
    if match is None:
        raise AddressError("invalid path: expected <local-part@domain>")
    mailbox = match.group(1)
    if len(mailbox.encode("utf-8")) + 2 > MAX_PATH_LENGTH:
        raise AddressError("path longer than 256 octets")
    _check_mailbox(mailbox)
    return mailbox, match.end()


def parse_path(text: str, *, reverse: bool = False) -> str:
    """The mailbox of a whole path such as ``<user@example.com>``.

    With `reverse` (a MAIL reverse-path) ``<>`` is allowed and returned as "";
    otherwise ``<Postmaster>`` (any case) is allowed and returned as written.
    Raises AddressError.
    """
    mailbox, end = _split_path(text, reverse=reverse)
    if end != len(text):
        raise AddressError("unexpected text after the path")
    return mailbox


def parse_path_and_parameters(
    text: str, *, reverse: bool = False
) -> tuple[str, dict[str, str | None]]:
    """Parse ``<path> [SP esmtp-param ...]`` (the argument after ``FROM:``/``TO:``).

    Returns the mailbox (as `parse_path`) and the parameters keyed by upper-cased
    keyword (value None for a bare keyword).  Raises AddressError for the path and
    ParameterError for the parameters (bad syntax or a repeated keyword).
    """
    mailbox, end = _split_path(text, reverse=reverse)
    rest = text[end:]
    params: dict[str, str | None] = {}
    if not rest:
        return mailbox, params
    if rest[0] != " ":
        raise AddressError("unexpected text after the path")
    for item in rest.split(" "):
        if not item:
            continue  # tolerate repeated or trailing spaces
        keyword, eq, value = item.partition("=")
        if _KEYWORD_RE.fullmatch(keyword) is None:
            raise ParameterError(f"invalid parameter keyword {keyword!r}")
        if eq and _VALUE_RE.fullmatch(value) is None:
            raise ParameterError(f"invalid value for parameter {keyword.upper()}")
        key = keyword.upper()
        if key in params:
            raise ParameterError(f"parameter {key} given twice")
        params[key] = value if eq else None
    return mailbox, params


def xtext_decode(text: str) -> str:
    """Decode RFC 3461 4 xtext (``+HH`` escapes), as used by ``AUTH=`` (RFC 4954 5)."""
    if any(not 33 <= ord(c) <= 126 or c == "=" for c in text):
        raise ParameterError("invalid character in xtext")
    if text.count("+") != len(_XTEXT_HEX_RE.findall(text)):
        raise ParameterError("invalid '+' escape in xtext")
    decoded = _XTEXT_HEX_RE.sub(lambda m: chr(int(m.group(1), 16)), text)
    # Escapes denote octets: reinterpret the result as UTF-8 where possible.
    try:
        return decoded.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return decoded


def xtext_encode(text: str) -> str:
    """Encode as RFC 3461 4 xtext: ``+HH`` for "+", "=" and octets outside 33-126."""
    out = []
    for byte in text.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)
