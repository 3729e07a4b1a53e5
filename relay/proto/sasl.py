"""The SASL pieces SMTP AUTH needs (RFC 4954): base64 and the PLAIN message (RFC 4616).

LOGIN (draft-murchison-sasl-login) is a username and a password, each sent base64
encoded in answer to a ``334`` challenge; it needs nothing beyond base64.
"""

from __future__ import annotations

import base64
import binascii

__all__ = [
    "LOGIN_PASSWORD_CHALLENGE",
    "LOGIN_USERNAME_CHALLENGE",
    "SUPPORTED_MECHANISMS",
    "b64decode",
    "b64encode",
    "decode_plain",
    "encode_plain",
]

#: The mechanisms relay.proto implements on both sides.
SUPPORTED_MECHANISMS = ("PLAIN", "LOGIN")
#: base64("Username:") and base64("Password:"), the customary LOGIN challenges.
LOGIN_USERNAME_CHALLENGE = "VXNlcm5hbWU6"
LOGIN_PASSWORD_CHALLENGE = "UGFzc3dvcmQ6"


def b64decode(text: str) -> bytes:
    """Strict base64 decoding (RFC 4954 4: "=" alone is an empty response)."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("invalid base64") from exc


def b64encode(data: str | bytes) -> str:
    """base64 of `data` (a str is encoded as UTF-8)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def encode_plain(username: str, password: str, authzid: str = "") -> str:
    """The base64 PLAIN message ``authzid NUL authcid NUL passwd`` (RFC 4616 2)."""
    for name, value in (("username", username), ("password", password), ("authzid", authzid)):
        if "\0" in value:
            raise ValueError(f"{name} may not contain NUL")
    return b64encode(f"{authzid}\0{username}\0{password}")


def decode_plain(message: bytes) -> tuple[str, str, str]:
    """Split a decoded PLAIN message into (authzid, username, password).

    Raises ValueError unless it has exactly two NULs, a non-empty username and
    password, and is valid UTF-8 (RFC 4616 2).
    """
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ValueError("a PLAIN message is authzid NUL authcid NUL passwd")
    try:
        authzid, username, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError as exc:
        raise ValueError("PLAIN credentials must be UTF-8") from exc
    return authzid, username, password
