"""From a request's JSON to the messages to store: checks, templates, MIME.

`parse_send` reads a POST /v1/messages body into a `SendRequest` (every field
checked, 422 naming the first bad one); `build_send` turns it into `Outgoing`
messages -- one for a plain request, one per entry of ``recipients`` for a batch
-- all built and size-checked before anything is stored, so a request is
refused whole or taken whole.  `parse_raw` does the same for POST
/v1/messages/raw.

Batch sending: ``recipients`` is a list of ``{"address", "name",
"substitutions"}``; each gets its own message with ``To`` set to it, and the
placeholders of ``subject``, ``text``, ``html`` and the values of ``headers``
filled from its substitutions, the request's ``substitutions`` (defaults) and
the built-ins ``email`` and ``name`` (relay.api.templates).  A batch may not also
have ``to``, ``cc`` or ``bcc``.  Outside batch mode the texts are sent as given.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.api import fields as f
from relay.api.fields import Mailbox
from relay.api.mime import Attachment, MessageParts, build_message
from relay.api.problems import ApiError, invalid
from relay.api.templates import Template, TemplateError
from relay.ingest import header_end, header_values

MAX_HEADERS = 50
MAX_ATTACHMENTS = 100
MAX_SUBJECT = 998
MAX_SUBSTITUTIONS = 100

SEND_FIELDS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply_to",
        "subject",
        "text",
        "html",
        "attachments",
        "headers",
        "tags",
        "metadata",
        "campaign",
        "send_at",
        "recipients",
        "substitutions",
    }
)
RAW_FIELDS = frozenset(
    {"from", "to", "message", "message_base64", "tags", "metadata", "campaign", "send_at"}
)
ATTACHMENT_FIELDS = frozenset({"content", "filename", "content_type", "content_id"})
RECIPIENT_FIELDS = frozenset({"address", "name", "substitutions"})

#: Header fields the API sets itself (from other fields or MIME) or that only the
#: relay may write; `headers` may not carry them.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "content-id",
        "received",
        "return-path",
        "dkim-signature",
    }
)

_CONTENT_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}"
)
_CONTENT_ID = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]{1,200}")
_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,250}@[!-;=?-~]{1,250}>")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may ask for."""

    max_recipients: int  # per request (api.max_recipients, within ingest's limit)
    max_message_size: int  # bytes per built message (ingest's limit)
    max_batch_bytes: int  # all the messages of one request together
    max_send_at_delay: float


@dataclass(frozen=True, slots=True)
class Options:
    """What is common to every message of a request."""

    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    campaign: str = ""
    send_at: float | None = None


@dataclass(frozen=True, slots=True)
class BatchRecipient:
    mailbox: Mailbox
    substitutions: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A checked POST /v1/messages body."""

    parts: MessageParts  # in batch mode: the templates, with `to` empty
    bcc: tuple[Mailbox, ...]
    options: Options
    batch: tuple[BatchRecipient, ...] | None = None
    defaults: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to hand to ingest."""

    sender: str
    recipients: tuple[str, ...]
    content: bytes
    smtputf8: bool = False
    body_8bit: bool = False


def _body_text(value: Any, field_name: str) -> str | None:
    if value is None:
        return None
    text = f.expect_str(value, field_name)
    if "\0" in text:
        raise invalid(field_name, "must not contain NUL characters")
    return text


def _attachments(value: Any, has_html: bool) -> tuple[Attachment, ...]:
    if value is None:
        return ()
    items = f.expect_list(value, "attachments")
    if len(items) > MAX_ATTACHMENTS:
        raise invalid("attachments", f"at most {MAX_ATTACHMENTS} attachments")
    out = []
    for i, item in enumerate(items):
        where = f"attachments[{i}]"
        obj = f.expect_object(item, where)
        f.reject_unknown(obj, ATTACHMENT_FIELDS, where)
        if "content" not in obj:
            raise invalid(f"{where}.content", "required (base64)")
        encoded = f.expect_str(obj["content"], f"{where}.content")
        try:
            content = base64.b64decode("".join(encoded.split()), validate=True)
        except (binascii.Error, ValueError):
            raise invalid(f"{where}.content", "not valid base64") from None
        content_id = obj.get("content_id")
        if content_id is not None:
            content_id = f.expect_str(content_id, f"{where}.content_id")
            if not _CONTENT_ID.fullmatch(content_id):
                raise invalid(f"{where}.content_id", "1-200 characters of atext, '.' or '@'")
            if not has_html:
                raise invalid(f"{where}.content_id", "inline parts need an html body")
        filename = f.header_text(obj.get("filename", ""), f"{where}.filename", max_length=255)
        if not filename and content_id is None:
            raise invalid(f"{where}.filename", "required for an attachment")
        if "/" in filename or "\\" in filename:
            raise invalid(f"{where}.filename", "a file name, not a path")
        content_type = obj.get("content_type")
        if content_type is None:
            content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        content_type = f.expect_str(content_type, f"{where}.content_type").lower()
        if not _CONTENT_TYPE.fullmatch(content_type) or content_type.startswith("multipart/"):
            raise invalid(f"{where}.content_type", "expected a media type like image/png")
        out.append(Attachment(filename, content_type, content, content_id or ""))
    ids = [a.content_id for a in out if a.content_id]
    if len(ids) != len(set(ids)):
        raise invalid("attachments", "content_id values must be distinct")
    return tuple(out)


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    obj = f.expect_object(value, "headers")
    if len(obj) > MAX_HEADERS:
        raise invalid("headers", f"at most {MAX_HEADERS} header fields")
    out = []
    for name, raw in obj.items():
        where = f"headers.{name}"
        f.header_name(name, where)
        if name.lower() in RESERVED_HEADERS:
            raise invalid(where, "set by the API from its own fields; not allowed in headers")
        text = f.header_text(raw, where)
        if name.lower() == "message-id" and not _MESSAGE_ID.fullmatch(text):
            raise invalid(where, "expected <local@domain>")
        out.append((name, text))
    return tuple(out)


def _substitutions(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    obj = f.expect_object(value, where)
    if len(obj) > MAX_SUBSTITUTIONS:
        raise invalid(where, f"at most {MAX_SUBSTITUTIONS} values")
    out = {}
    for key, item in obj.items():
        if isinstance(item, int | float) and not isinstance(item, bool):
            item = str(item)
        text = f.expect_str(item, f"{where}.{key}")
        if "\0" in text:
            raise invalid(f"{where}.{key}", "must not contain NUL characters")
        out[key] = text
    return out


def _options(doc: Mapping[str, Any], limits: Limits, now: float) -> Options:
    return Options(
        tags=f.tags(doc.get("tags"), "tags"),
        metadata=f.metadata(doc.get("metadata"), "metadata"),
        campaign=f.campaign(doc.get("campaign"), "campaign"),
        send_at=f.send_at(
            doc.get("send_at"), "send_at", now=now, max_delay=limits.max_send_at_delay
        ),
    )


def _check_count(counts: Sequence[tuple[str, int]], limit: int) -> None:
    total = 0
    for name, count in counts:
        total += count
        if total > limit:
            raise invalid(name, f"at most {limit} recipients per request")


def parse_send(doc: Any, limits: Limits, *, now: float) -> SendRequest:
    """Check a POST /v1/messages body (see the module docstring)."""
    doc = f.expect_object(doc, "body")
    f.reject_unknown(doc, SEND_FIELDS, "")
    if "from" not in doc:
        raise invalid("from", "required")
    sender = f.mailbox(doc["from"], "from")
    to = f.mailboxes(doc.get("to"), "to")
    cc = f.mailboxes(doc.get("cc"), "cc")
    bcc = f.mailboxes(doc.get("bcc"), "bcc")
    reply_to = f.mailboxes(doc.get("reply_to"), "reply_to")
    subject = f.header_text(doc.get("subject", ""), "subject", max_length=MAX_SUBJECT)
    text = _body_text(doc.get("text"), "text")
    html = _body_text(doc.get("html"), "html")
    if text is None and html is None:
        raise invalid("text", "a message needs text or html (or both)")
    parts = MessageParts(
        sender=sender,
        to=tuple(to),
        cc=tuple(cc),
        reply_to=tuple(reply_to),
        subject=subject,
        text=text,
        html=html,
        attachments=_attachments(doc.get("attachments"), html is not None),
        headers=_headers(doc.get("headers")),
    )
    options = _options(doc, limits, now)
    defaults = _substitutions(doc.get("substitutions"), "substitutions")
    if doc.get("recipients") is None:
        if defaults:
            raise invalid("substitutions", "only used with recipients (batch sending)")
        if not (to or cc or bcc):
            raise invalid("to", "at least one recipient in to, cc or bcc")
        _check_count([("to", len(to)), ("cc", len(cc)), ("bcc", len(bcc))], limits.max_recipients)
        return SendRequest(parts, tuple(bcc), options)
    for name, given in (("to", to), ("cc", cc), ("bcc", bcc)):
        if given:
            raise invalid(name, "cannot be combined with recipients (batch sending)")
    entries = f.expect_list(doc["recipients"], "recipients")
    if not entries:
        raise invalid("recipients", "must not be empty")
    _check_count([("recipients", len(entries))], limits.max_recipients)
    batch = []
    for i, entry in enumerate(entries):
        where = f"recipients[{i}]"
        if isinstance(entry, str):
            entry = {"address": entry}
        obj = f.expect_object(entry, where)
        f.reject_unknown(obj, RECIPIENT_FIELDS, where)
        if "address" not in obj:
            raise invalid(f"{where}.address", "required")
        mailbox = f.mailbox(obj["address"], f"{where}.address")
        if "name" in obj:
            name = f.header_text(obj["name"], f"{where}.name", max_length=f.MAX_DISPLAY_NAME)
            mailbox = Mailbox(mailbox.email, name.strip())
        substitutions = _substitutions(obj.get("substitutions"), f"{where}.substitutions")
        batch.append(BatchRecipient(mailbox, substitutions))
    return SendRequest(parts, (), options, tuple(batch), defaults)


def _estimate(parts: MessageParts) -> int:
    """A generous size estimate of one built message (base64 and QP inflate)."""
    body = len(parts.text or "") + len(parts.html or "")
    attached = sum(len(a.content) for a in parts.attachments)
    return 2048 + 2 * body + (attached * 4) // 3 + 2 * len(parts.attachments) * 200


def _too_large(field_name: str, size: int, limit: int) -> ApiError:
    return ApiError(
        413,
        f"{field_name}: the message would be {size} bytes, over the limit of {limit}",
        field=field_name,
    )


def _size_field(parts: MessageParts) -> str:
    if parts.attachments:
        return "attachments"
    return "html" if parts.html is not None else "text"


def _templates(parts: MessageParts) -> dict[str, Template]:
    """The request's templates by field path; 422 for a malformed placeholder."""
    texts = {"subject": parts.subject, "text": parts.text, "html": parts.html}
    texts.update({f"headers.{name}": value for name, value in parts.headers})
    templates = {}
    for where, value in texts.items():
        if value is None:
            continue
        try:
            templates[where] = Template.parse(value)
        except TemplateError as exc:
            raise invalid(where, exc.detail) from None
    return templates


def _render(
    templates: Mapping[str, Template], values: Mapping[str, str], where: str
) -> dict[str, str]:
    out = {}
    for field_name, template in templates.items():
        try:
            text = template.render(values, escape_html=field_name == "html")
        except TemplateError as exc:
            raise invalid(
                f"{where}.substitutions", f"{exc.detail} (used in {field_name})"
            ) from None
        header = field_name == "subject" or field_name.startswith("headers.")
        if header and not template.is_static and not f.is_header_safe(text):
            raise invalid(
                f"{where}.substitutions",
                f"a value used in {field_name} contains CR, LF or NUL characters",
            )
        out[field_name] = text
    return out


def build_send(request: SendRequest, limits: Limits) -> list[Outgoing]:
    """The messages of a checked request, built and size-checked."""
    parts = request.parts
    if request.batch is None:
        recipients = _unique([m.email for m in (*parts.to, *parts.cc, *request.bcc)])
        content = build_message(parts)
        if len(content) > limits.max_message_size:
            raise _too_large(_size_field(parts), len(content), limits.max_message_size)
        return [Outgoing(parts.sender.email, recipients, content)]
    estimate = _estimate(parts) * len(request.batch)
    if estimate > limits.max_batch_bytes:
        raise ApiError(
            413,
            f"recipients: {len(request.batch)} copies of this message would take about "
            f"{estimate} bytes, over the batch limit of {limits.max_batch_bytes}",
            field="recipients",
        )
    templates = _templates(parts)
    out = []
    total = 0
    for i, entry in enumerate(request.batch):
        where = f"recipients[{i}]"
        values = {**request.defaults, **entry.substitutions}
        values.setdefault("email", entry.mailbox.email)
        values.setdefault("name", entry.mailbox.name)
        texts = _render(templates, values, where)
        personal = MessageParts(
            sender=parts.sender,
            to=(entry.mailbox,),
            reply_to=parts.reply_to,
            subject=texts["subject"],
            text=texts.get("text"),
            html=texts.get("html"),
            attachments=parts.attachments,
            headers=tuple((name, texts[f"headers.{name}"]) for name, _ in parts.headers),
        )
        content = build_message(personal)
        if len(content) > limits.max_message_size:
            raise _too_large(where, len(content), limits.max_message_size)
        total += len(content)
        if total > limits.max_batch_bytes:
            raise _too_large("recipients", total, limits.max_batch_bytes)
        out.append(Outgoing(parts.sender.email, (entry.mailbox.email,), content))
    return out


def _unique(addresses: Sequence[str]) -> tuple[str, ...]:
    """Addresses without repeats (compared case-insensitively), first spelling kept."""
    seen: dict[str, str] = {}
    for a in addresses:
        seen.setdefault(a.lower(), a)
    return tuple(seen.values())


# --- raw messages ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawRequest:
    """A checked POST /v1/messages/raw body."""

    message: Outgoing
    from_domains: tuple[str, ...]  # domains of the header From addresses
    options: Options


_HEADER_FROM_ADDRESS = re.compile(r"<([^<>\s]+)>|([^\s,<>\"]+@[^\s,<>\"]+)")


def _normalise_line_endings(content: bytes) -> bytes:
    """CRLF everywhere (bare LF becomes CRLF); a bare CR is refused."""
    if b"\r" not in content:
        return content.replace(b"\n", b"\r\n")
    unified = content.replace(b"\r\n", b"\n")
    if b"\r" in unified:
        raise invalid("message", "contains a bare CR (RFC 5322 2.3)")
    return unified.replace(b"\n", b"\r\n")


def parse_raw(doc: Any, limits: Limits, *, now: float) -> RawRequest:
    """Check a POST /v1/messages/raw body: envelope, message, options."""
    doc = f.expect_object(doc, "body")
    f.reject_unknown(doc, RAW_FIELDS, "")
    if "from" not in doc:
        raise invalid("from", "required (the envelope sender)")
    sender = f.address(doc["from"], "from", utf8=True)
    if "to" not in doc:
        raise invalid("to", "required (the envelope recipients)")
    if isinstance(doc["to"], list):
        raw_to = doc["to"]
        if not raw_to:
            raise invalid("to", "at least one recipient")
        _check_count([("to", len(raw_to))], limits.max_recipients)
        checked = [f.address(a, f"to[{i}]", utf8=True) for i, a in enumerate(raw_to)]
    else:
        checked = [f.address(doc["to"], "to", utf8=True)]
    recipients = _unique(checked)
    has_text, has_b64 = "message" in doc, "message_base64" in doc
    if has_text == has_b64:
        raise invalid("message", "give exactly one of message and message_base64")
    if has_text:
        content = f.expect_str(doc["message"], "message", allow_empty=False).encode("utf-8")
        where = "message"
    else:
        where = "message_base64"
        encoded = f.expect_str(doc["message_base64"], where, allow_empty=False)
        try:
            content = base64.b64decode("".join(encoded.split()), validate=True)
        except (binascii.Error, ValueError):
            raise invalid(where, "not valid base64") from None
    if len(content) > limits.max_message_size:
        raise _too_large(where, len(content), limits.max_message_size)
    if b"\0" in content:
        raise invalid(where, "contains NUL characters")
    content = _normalise_line_endings(content)
    if header_end(content) == 0:
        raise invalid(where, "the message has no header section (RFC 5322 2.1)")
    if any(len(line) > 998 for line in content.split(b"\r\n")):
        raise invalid(where, "a line is longer than 998 octets (RFC 5322 2.1.1)")
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    from_values = header_values(content, "From")
    if len(from_values) != 1:
        raise invalid(where, "the message needs exactly one From header field (RFC 5322 3.6)")
    domains = []
    for m in _HEADER_FROM_ADDRESS.finditer(from_values[0]):
        found = m.group(1) or m.group(2)
        domains.append(found.rpartition("@")[2].lower().rstrip("."))
    if not domains or not all(domains):
        raise invalid(where, "the From header field has no address with a domain")
    smtputf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
    message = Outgoing(sender, recipients, content, smtputf8, not content.isascii())
    return RawRequest(message, tuple(dict.fromkeys(domains)), _options(doc, limits, now))
