"""Checked fields of API requests: addresses, header text, tags, metadata, times.

Every function takes the JSON value and its path in the request (``to[2].email``)
and returns a clean value or raises a 422 naming that path.  The rules that make
header injection impossible live here: no CR, LF or NUL in any header name, value,
display name or address -- checked before anything reaches the `email` package.

Addresses follow RFC 5321 4.1.2 (the envelope is what matters for delivery): a
dot-atom local part of at most 64 octets and a domain of LDH labels, at most 254
octets together; an internationalised domain is turned into its A-labels (IDNA).
UTF-8 local parts (RFC 6531) are accepted only where the caller allows them (the
raw endpoint, which then asks for SMTPUTF8); quoted local parts and address
literals are refused, since bulk mail has no use for them and they are where
parsers disagree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from relay.api.problems import invalid

MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 4.5.3.1.2
MAX_PATH = 254  # RFC 5321 4.5.3.1.3 (256 with the angle brackets)
MAX_DISPLAY_NAME = 200
MAX_TAGS = 20
MAX_TAG_LENGTH = 128
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 1000
MAX_CAMPAIGN = 128

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOT_ATOM_ASCII = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_UTF8_ATEXT = r"\u0080-\U0010ffff" + _ATEXT  # RFC 6531 3.3: atext =/ UTF8-non-ascii
_DOT_ATOM_UTF8 = re.compile(rf"[{_UTF8_ATEXT}]+(?:\.[{_UTF8_ATEXT}]+)*")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_NAME_AND_ADDRESS = re.compile(r"\s*(.*?)\s*<([^<>]*)>\s*", re.DOTALL)
_FORBIDDEN_TEXT = re.compile(r"[\r\n\0]")
# RFC 5322 2.2: a field name is printable US-ASCII except colon.
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A checked address and its display name."""

    email: str
    name: str = ""

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2]


def expect_str(value: Any, field: str, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise invalid(field, "expected a string")
    if not allow_empty and not value:
        raise invalid(field, "must not be empty")
    return value


def expect_list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise invalid(field, "expected an array")
    return value


def expect_object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(field, "expected an object")
    return value


def reject_unknown(obj: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    """422 naming the first key of `obj` that is not in `allowed` (typos fail loudly)."""
    for key in obj:
        if key not in allowed:
            where = f"{prefix}.{key}" if prefix else key
            raise invalid(where, "unknown field")


def is_header_safe(text: str) -> bool:
    """True if `text` has no CR, LF or NUL (cannot start a new header line)."""
    return _FORBIDDEN_TEXT.search(text) is None


def header_text(value: Any, field: str, *, max_length: int = 998) -> str:
    """A string that may go into a header: no CR, LF or NUL, not too long."""
    text = expect_str(value, field)
    if _FORBIDDEN_TEXT.search(text):
        raise invalid(field, "must not contain CR, LF or NUL characters")
    if len(text) > max_length:
        raise invalid(field, f"longer than {max_length} characters")
    return text


def header_name(name: str, field: str) -> str:
    """A header field name (RFC 5322 2.2: printable ASCII, no colon, no space)."""
    if not _HEADER_NAME.fullmatch(name):
        raise invalid(field, "not a valid header field name (printable ASCII, no ':' or space)")
    return name


def _domain(domain: str, field: str) -> str:
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise invalid(field, "the domain is not a valid internationalised name") from None
    domain = domain.lower()
    labels = domain.split(".")
    if len(domain) > MAX_DOMAIN or len(labels) < 2 or not all(_LABEL.fullmatch(x) for x in labels):
        raise invalid(field, "the domain is not a valid host name")
    return domain


def address(value: Any, field: str, *, utf8: bool = False) -> str:
    """A checked envelope address ``local@domain`` (domain lower-cased, A-labels)."""
    text = expect_str(value, field, allow_empty=False)
    if _FORBIDDEN_TEXT.search(text):
        raise invalid(field, "must not contain CR, LF or NUL characters")
    local, at, domain = text.strip().rpartition("@")
    if not at or not local:
        raise invalid(field, "expected an address like user@example.com")
    pattern = _DOT_ATOM_UTF8 if utf8 else _DOT_ATOM_ASCII
    if not pattern.fullmatch(local):
        detail = "" if utf8 or local.isascii() else " (non-ASCII local parts: use /v1/messages/raw)"
        raise invalid(field, "the local part is not a valid dot-atom" + detail)
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise invalid(field, f"the local part is longer than {MAX_LOCAL_PART} octets")
    result = f"{local}@{_domain(domain, field)}"
    if len(result.encode("utf-8")) > MAX_PATH:
        raise invalid(field, f"longer than {MAX_PATH} octets")
    return result


def mailbox(value: Any, field: str) -> Mailbox:
    """An address with an optional display name: "a@b", "Name <a@b>" or
    {"email": "a@b", "name": "Name"}."""
    if isinstance(value, dict):
        reject_unknown(value, frozenset({"email", "name"}), field)
        if "email" not in value:
            raise invalid(f"{field}.email", "required")
        email = address(value["email"], f"{field}.email")
        name = header_text(value.get("name", ""), f"{field}.name", max_length=MAX_DISPLAY_NAME)
        return Mailbox(email, name.strip())
    text = expect_str(value, field, allow_empty=False)
    if _FORBIDDEN_TEXT.search(text):
        raise invalid(field, "must not contain CR, LF or NUL characters")
    m = _NAME_AND_ADDRESS.fullmatch(text)
    if m is None:
        return Mailbox(address(text, field))
    name = m.group(1)
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1]
    if '"' in name or "\\" in name:
        raise invalid(field, 'quotes in a display name: use {"email": ..., "name": ...}')
    name = header_text(name, field, max_length=MAX_DISPLAY_NAME)
    return Mailbox(address(m.group(2), field), name)


def mailboxes(value: Any, field: str) -> list[Mailbox]:
    """One mailbox or an array of them."""
    if value is None:
        return []
    if isinstance(value, list):
        return [mailbox(item, f"{field}[{i}]") for i, item in enumerate(value)]
    return [mailbox(value, field)]


def tags(value: Any, field: str) -> tuple[str, ...]:
    """Up to 20 printable labels of at most 128 characters."""
    if value is None:
        return ()
    items = expect_list(value, field)
    if len(items) > MAX_TAGS:
        raise invalid(field, f"at most {MAX_TAGS} tags")
    out = []
    for i, tag in enumerate(items):
        text = expect_str(tag, f"{field}[{i}]", allow_empty=False)
        if len(text) > MAX_TAG_LENGTH or not text.isprintable():
            raise invalid(f"{field}[{i}]", f"printable, at most {MAX_TAG_LENGTH} characters")
        out.append(text)
    return tuple(dict.fromkeys(out))


def metadata(value: Any, field: str) -> dict[str, str]:
    """String keys and string values echoed into every event (numbers and booleans
    are kept as their JSON text)."""
    if value is None:
        return {}
    obj = expect_object(value, field)
    if len(obj) > MAX_METADATA_KEYS:
        raise invalid(field, f"at most {MAX_METADATA_KEYS} keys")
    out: dict[str, str] = {}
    for key, item in obj.items():
        where = f"{field}.{key}"
        if not key or len(key) > MAX_METADATA_KEY or not key.isprintable():
            raise invalid(where, f"keys are printable, 1 to {MAX_METADATA_KEY} characters")
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif isinstance(item, int | float) and not (
            isinstance(item, float) and not math.isfinite(item)
        ):
            item = str(item)
        text = expect_str(item, where)
        if len(text) > MAX_METADATA_VALUE or "\0" in text:
            raise invalid(where, f"at most {MAX_METADATA_VALUE} characters, no NUL")
        out[key] = text
    return out


def campaign(value: Any, field: str) -> str:
    if value is None:
        return ""
    text = expect_str(value, field)
    if len(text) > MAX_CAMPAIGN or not text.isprintable():
        raise invalid(field, f"printable, at most {MAX_CAMPAIGN} characters")
    return text


def send_at(value: Any, field: str, *, now: float, max_delay: float) -> float | None:
    """When to send: RFC 3339 text ("2030-01-02T03:04:05Z") or seconds since the
    epoch; a time in the past means now; at most `max_delay` ahead."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise invalid(field, "expected an RFC 3339 date-time or seconds since the epoch")
    if isinstance(value, int | float):
        at = float(value)
        if not math.isfinite(at):
            raise invalid(field, "expected a finite number")
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise invalid(
                field, "expected an RFC 3339 date-time like 2030-01-02T03:04:05Z"
            ) from None
        if parsed.tzinfo is None:
            raise invalid(field, "the date-time needs a time zone offset (or Z)")
        at = parsed.timestamp()
    else:
        raise invalid(field, "expected an RFC 3339 date-time or seconds since the epoch")
    if at > now + max_delay:
        raise invalid(field, f"at most {max_delay / 3600:g} hours ahead")
    return at if at > now else None


def rfc3339(at: float | None) -> str | None:
    """Seconds since the epoch as RFC 3339 UTC text with milliseconds."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
