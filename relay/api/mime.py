"""MIME messages from the API's fields, built with the standard `email` package.

Structure, from the inside out: the text and HTML bodies side by side in
multipart/alternative (RFC 2046 5.1.4, plain text first, the preferred version
last); inline parts (those with a ``content_id``, referenced from the HTML as
``cid:...``) together with the HTML in multipart/related (RFC 2387); attachments
after the body in multipart/mixed.  A message with one body and nothing else is
a single part.

Encoding: header text that is not ASCII becomes RFC 2047 encoded-words
(`email.header.Header`, folded to 78 columns), display names too
(`email.utils.formataddr`), non-ASCII file names RFC 2231 parameters; bodies are
7bit when they are ASCII with short lines, else quoted-printable UTF-8;
attachments base64; line endings CRLF; no line longer than 998 octets.

The classic (compat32) API of the package is used on purpose: the same result as
the `EmailMessage` API at a fifth of the cost (its header objects re-parse every
value, 1 ms for a plain 5 KB message, 18 ms for one with 100 addresses in To).
Every value was checked for CR/LF before (relay.api.fields), so nothing here can
add a header line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from email import encoders
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import compat32
from email.utils import formataddr

from relay.api.fields import Mailbox

_POLICY = compat32.clone(linesep="\r\n", max_line_length=78)
_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP  # readable for mostly-Latin text, where base64 is opaque
_MAX_7BIT_LINE = 998  # RFC 5322 2.1.1


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file to attach, or an inline part when `content_id` is set."""

    filename: str
    content_type: str  # "type/subtype"
    content: bytes
    content_id: str = ""


@dataclass(frozen=True, slots=True)
class MessageParts:
    """Everything a message is built from (already checked)."""

    sender: Mailbox
    to: Sequence[Mailbox] = ()
    cc: Sequence[Mailbox] = ()
    reply_to: Sequence[Mailbox] = ()
    subject: str = ""
    text: str | None = None
    html: str | None = None
    attachments: Sequence[Attachment] = ()
    headers: Sequence[tuple[str, str]] = field(default_factory=tuple)


def _text_part(text: str, subtype: str) -> Message:
    lines = text.splitlines()
    plain = text.isascii() and all(len(line) <= _MAX_7BIT_LINE for line in lines)
    part = MIMENonMultipart("text", subtype)
    part.set_payload(text, "us-ascii" if plain else _UTF8_QP)  # 7bit, or quoted-printable
    return part


def _file_part(item: Attachment, disposition: str) -> MIMEBase:
    maintype, _, subtype = item.content_type.partition("/")
    part = MIMEBase(maintype, subtype)
    part.set_payload(item.content)
    encoders.encode_base64(part)
    if item.filename:
        name: str | tuple[str, str, str] = (
            item.filename if item.filename.isascii() else ("utf-8", "", item.filename)
        )
        part.add_header("Content-Disposition", disposition, filename=name)  # RFC 2231
    else:
        part.add_header("Content-Disposition", disposition)
    if item.content_id:
        part["Content-ID"] = f"<{item.content_id}>"
    return part


def _body(parts: MessageParts) -> Message:
    inline = [_file_part(a, "inline") for a in parts.attachments if a.content_id]
    attached = [_file_part(a, "attachment") for a in parts.attachments if not a.content_id]
    html: Message | None = None
    if parts.html is not None:
        html = _text_part(parts.html, "html")
        if inline:
            html = MIMEMultipart("related", _subparts=[html, *inline])
    body: Message
    if parts.text is not None and html is not None:
        body = MIMEMultipart("alternative", _subparts=[_text_part(parts.text, "plain"), html])
    elif html is not None:
        body = html
    else:
        body = _text_part(parts.text or "", "plain")
    if attached:
        body = MIMEMultipart("mixed", _subparts=[body, *attached])
    return body


def _mailbox(mailbox: Mailbox) -> str:
    if not mailbox.name:
        return mailbox.email
    if mailbox.name.isascii():
        return formataddr((mailbox.name, mailbox.email))  # quoted when it needs to be
    name = Header(mailbox.name, "utf-8").encode(linesep="\r\n")  # RFC 2047, <= 75 per word
    return f"{name} <{mailbox.email}>"


def _addresses(mailboxes: Sequence[Mailbox]) -> str:
    formatted = [_mailbox(m) for m in mailboxes]
    one_line = ", ".join(formatted)
    return one_line if len(one_line) <= 70 else ",\r\n ".join(formatted)  # RFC 5322 3.2.2


def _text(value: str, name: str) -> str:
    """Unstructured text, RFC 2047-encoded when not ASCII, folded at 78 columns."""
    charset = "us-ascii" if value.isascii() else "utf-8"
    return Header(value, charset, header_name=name).encode(linesep="\r\n", maxlinelen=78)


def build_message(parts: MessageParts) -> bytes:
    """The complete RFC 5322 message (CRLF line endings; Date and Message-ID are
    added by ingest)."""
    msg = _body(parts)
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]  # meaningful only at the top (RFC 2045 4)
    mime_headers = msg.items()
    for name, _value in mime_headers:
        del msg[name]
    msg["From"] = _mailbox(parts.sender)
    if parts.to:
        msg["To"] = _addresses(parts.to)
    if parts.cc:
        msg["Cc"] = _addresses(parts.cc)
    if parts.reply_to:
        msg["Reply-To"] = _addresses(parts.reply_to)
    msg["Subject"] = _text(parts.subject, "Subject")
    for name, value in parts.headers:
        msg[name] = _text(value, name)
    for name, value in mime_headers:
        msg[name] = value
    return msg.as_bytes(policy=_POLICY)
