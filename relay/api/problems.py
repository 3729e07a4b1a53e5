"""Error answers of the HTTP API: one JSON shape, always naming what was wrong.

Every error is ``{"error": {"type": ..., "message": ..., "field": ...}}`` with the
HTTP status that fits: 400 malformed JSON, 401 no or unknown key, 403 a sender
domain the key may not use, 404 unknown message, 413 a body or message too large,
422 a field that is invalid (``field`` is its path, e.g. ``to[2].email`` or
``recipients[7].substitutions``), 429 a rate limit, 503 the spool could not store
or the shard is stopping.  Refusals that come from ingest also carry the SMTP reply
(``smtp_reply``), the same words an SMTP client would have read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relay.errors import RelayError

ERROR_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(RelayError):
    """An error answer; raise it anywhere below a route."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        error_type: str | None = None,
        smtp_reply: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.error_type = error_type or ERROR_TYPES.get(status, "error")
        self.smtp_reply = smtp_reply
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        if self.smtp_reply is not None:
            error["smtp_reply"] = self.smtp_reply
        return {"error": error}


def invalid(field: str, message: str) -> ApiError:
    """422 naming `field`."""
    return ApiError(422, f"{field}: {message}", field=field)
