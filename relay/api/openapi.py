"""The OpenAPI 3.1 document served at /openapi.json (written by hand, kept honest
by tests that validate real responses against its schemas)."""

from __future__ import annotations

from typing import Any

from relay.api.compose import MAX_ATTACHMENTS, MAX_HEADERS
from relay.api.fields import MAX_METADATA_KEYS, MAX_TAGS

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


_MAILBOX = {
    "description": 'An address ("a@example.com"), "Name <a@example.com>", or an object.',
    "oneOf": [
        {"type": "string"},
        {
            "type": "object",
            "properties": {"email": {"type": "string"}, "name": {"type": "string"}},
            "required": ["email"],
            "additionalProperties": False,
        },
    ],
}
_MAILBOXES = {"oneOf": [_ref("Mailbox"), {"type": "array", "items": _ref("Mailbox")}]}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_OPTIONS = {
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_TAGS},
    "metadata": {
        "type": "object",
        "maxProperties": MAX_METADATA_KEYS,
        "additionalProperties": {"type": ["string", "number", "boolean"]},
        "description": "Echoed into every event of the message.",
    },
    "campaign": {"type": "string", "maxLength": 128},
    "send_at": {
        "description": "RFC 3339 date-time or seconds since the epoch: not before then.",
        "oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
    },
}

_SCHEMAS: dict[str, Any] = {
    "Mailbox": _MAILBOX,
    "Attachment": {
        "type": "object",
        "properties": {
            "content": {"type": "string", "contentEncoding": "base64"},
            "filename": {"type": "string"},
            "content_type": {"type": "string", "examples": ["application/pdf"]},
            "content_id": {
                "type": "string",
                "description": "Makes the part inline (multipart/related); refer to it "
                "from the html as cid:<content_id>.",
            },
        },
        "required": ["content"],
        "additionalProperties": False,
    },
    "BatchRecipient": {
        "oneOf": [
            {"type": "string"},
            {
                "type": "object",
                "properties": {
                    "address": _ref("Mailbox"),
                    "name": {"type": "string"},
                    "substitutions": {
                        "type": "object",
                        "additionalProperties": {"type": ["string", "number"]},
                    },
                },
                "required": ["address"],
                "additionalProperties": False,
            },
        ]
    },
    "SendRequest": {
        "type": "object",
        "properties": {
            "from": _ref("Mailbox"),
            "to": _MAILBOXES,
            "cc": _MAILBOXES,
            "bcc": _MAILBOXES,
            "reply_to": _MAILBOXES,
            "subject": {"type": "string"},
            "text": {"type": "string"},
            "html": {"type": "string"},
            "attachments": {
                "type": "array",
                "items": _ref("Attachment"),
                "maxItems": MAX_ATTACHMENTS,
            },
            "headers": {
                "type": "object",
                "maxProperties": MAX_HEADERS,
                "additionalProperties": {"type": "string"},
            },
            "recipients": {
                "type": "array",
                "items": _ref("BatchRecipient"),
                "description": "Batch sending: one message per entry, {{ name }} placeholders "
                "filled from its substitutions (not with to/cc/bcc).",
            },
            "substitutions": {
                "type": "object",
                "additionalProperties": {"type": ["string", "number"]},
                "description": "Default placeholder values for batch sending.",
            },
            **_OPTIONS,
        },
        "required": ["from"],
        "additionalProperties": False,
    },
    "RawRequest": {
        "type": "object",
        "properties": {
            "from": {"type": "string", "description": "The envelope sender."},
            "to": {
                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                "description": "The envelope recipients.",
            },
            "message": {"type": "string", "description": "The RFC 5322 message as text."},
            "message_base64": {"type": "string", "contentEncoding": "base64"},
            **_OPTIONS,
        },
        "required": ["from", "to"],
        "additionalProperties": False,
    },
    "StoredMessage": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "recipients": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["id", "recipients"],
        "additionalProperties": False,
    },
    "Accepted": {
        "type": "object",
        "properties": {"messages": {"type": "array", "items": _ref("StoredMessage")}},
        "required": ["messages"],
        "additionalProperties": False,
    },
    "Error": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "type": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "The field at fault."},
                    "smtp_reply": {"type": "string"},
                },
                "required": ["type", "message"],
                "additionalProperties": False,
            },
            "messages": {
                "type": "array",
                "items": _ref("StoredMessage"),
                "description": "Partial failure: the messages that were stored.",
            },
            "failed": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "recipients": {"type": "array", "items": {"type": "string"}},
                        "error": {"type": "string"},
                    },
                    "required": ["index", "recipients", "error"],
                },
            },
        },
        "required": ["error"],
        "additionalProperties": False,
    },
    "MessageStatus": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "shard": {"type": ["integer", "null"]},
            "state": {"enum": ["queued", "completed"]},
            "sender": {"type": "string"},
            "tenant": {"type": "string"},
            "campaign": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "size": {"type": "integer"},
            "created": _TIME,
            "expires": _TIME,
            "send_at": _TIME,
            "next_attempt": _TIME,
            "attempts": {"type": "integer"},
            "recipients": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "address": {"type": "string"},
                        "status": {"enum": ["pending", "deferred", "delivered", "bounced"]},
                        "reply": {"type": "string"},
                        "attempts": {"type": "integer"},
                    },
                    "required": ["address", "status", "reply", "attempts"],
                    "additionalProperties": False,
                },
            },
            "history": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "at": _TIME,
                        "mx": {"type": "string"},
                        "recipients": {"type": "array", "items": {"type": "string"}},
                        "reply": {"type": "string"},
                        "duration": {"type": "number"},
                    },
                    "required": ["at", "mx", "recipients", "reply", "duration"],
                    "additionalProperties": False,
                },
            },
        },
        "required": [
            "id",
            "shard",
            "state",
            "sender",
            "tenant",
            "campaign",
            "tags",
            "metadata",
            "size",
            "created",
            "expires",
            "send_at",
            "next_attempt",
            "attempts",
            "recipients",
            "history",
        ],
        "additionalProperties": False,
    },
    "Health": {
        "type": "object",
        "properties": {
            "status": {"enum": ["ok", "ready", "draining", "not_ready"]},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["status"],
        "additionalProperties": False,
    },
    "Event": {
        "description": "One item of a webhook POST (a JSON array of these), signed with "
        "X-Relay-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, t + '.' + body)>.",
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "event": {
                "enum": ["accepted", "delivered", "deferred", "bounced", "expired", "rejected"]
            },
            "timestamp": {"type": "number"},
            "message_id": {"type": ["string", "null"]},
            "recipient": {"type": "string"},
            "reply": {"type": "string"},
            "sender": {"type": "string"},
            "tenant": {"type": "string"},
            "campaign": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "mx": {"type": "string"},
            "attempt": {"type": "integer"},
        },
        "required": [
            "id",
            "event",
            "timestamp",
            "message_id",
            "recipient",
            "reply",
            "sender",
            "tenant",
            "campaign",
            "tags",
            "metadata",
            "mx",
            "attempt",
        ],
        "additionalProperties": False,
    },
}

_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Same key and same request within 24 hours: the first answer again "
    "(header Idempotent-Replayed: true), nothing sent twice. Same key, other request: 422.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}

_SEND_ERRORS = {
    "400": _error("The body is not JSON."),
    "401": _error("No API key, or an unknown or revoked one."),
    "403": _error("A sender domain this API key may not use (named in the message)."),
    "413": _error("The body or a built message is over its size limit."),
    "415": _error("The body is not application/json."),
    "422": _error("A field is invalid (named in error.field), or an Idempotency-Key conflict."),
    "429": _error("The key's message rate is exceeded (Retry-After)."),
    "503": _error("The spool could not store the message(s), or the server is stopping."),
}


def _send_operation(summary: str, schema: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": [_IDEMPOTENCY],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref(schema)}},
        },
        "responses": {
            "202": {
                "description": "Stored durably; delivery follows. One id per message.",
                "content": {"application/json": {"schema": _ref("Accepted")}},
            },
            **_SEND_ERRORS,
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the API."""
    health = {"content": {"application/json": {"schema": _ref("Health")}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "relay HTTP API",
            "version": "1",
            "description": "Send mail through relay, follow what happens to it. Events go "
            "to configured webhooks as JSON arrays of Event objects.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "adminBearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of api.admin_tokens (not an API key).",
                },
            },
            "schemas": _SCHEMAS,
        },
        "paths": {
            "/v1/messages": {
                "post": _send_operation("Send a message, or one per recipient.", "SendRequest")
            },
            "/v1/messages/raw": {
                "post": _send_operation("Send a complete RFC 5322 message.", "RawRequest")
            },
            "/v1/messages/{message_id}": {
                "get": {
                    "summary": "A message's envelope, recipients' states and attempts.",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {
                            "name": "message_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The message.",
                            "content": {"application/json": {"schema": _ref("MessageStatus")}},
                        },
                        "401": _error("No API key, or an unknown or revoked one."),
                        "404": _error("No such message for this key's tenant."),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of every shard.",
                    "responses": {
                        "200": {
                            "description": "Text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "The process is alive.",
                    "responses": {"200": {"description": "Alive.", **health}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "The spool is writable and the listeners are up.",
                    "responses": {
                        "200": {"description": "Ready.", **health},
                        "503": {"description": "Not ready, or draining.", **health},
                    },
                }
            },
            **_admin_paths(),
        },
    }


def _admin_paths() -> dict[str, Any]:
    """The admin API (Bearer admin token; 404 everywhere when no token is configured)."""
    security: list[dict[str, list[str]]] = [{"adminBearer": []}]
    obj: dict[str, Any] = {"type": "object"}
    errors = {
        "401": _error("No admin token, or a wrong one."),
        "404": _error("The admin API is off (no api.admin_tokens), or no such item."),
        "422": _error("A field is wrong; the error names it."),
    }
    selection = {
        "type": "object",
        "description": "Queued messages matching every given field.",
        "properties": {
            "ids": {"type": "array", "items": {"type": "string"}},
            "domain": {"type": "string"},
            "tenant": {"type": "string"},
            "campaign": {"type": "string"},
            "sender": {"type": "string"},
            "older_than": {"type": "number", "description": "Seconds since acceptance."},
        },
        "additionalProperties": False,
    }
    everything = {
        "type": "boolean",
        "description": "Required (true) with an empty filter, which selects every message.",
    }

    def body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
        schema = {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    def ok(description: str, status: str = "200") -> dict[str, Any]:
        return {
            status: {"description": description, "content": {"application/json": {"schema": obj}}}
        }

    def path_param(name: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}

    return {
        "/admin/v1/queue/summary": {
            "get": {
                "summary": "This shard's queue by state, domain and tenant; suspensions.",
                "security": security,
                "responses": {**ok("The summary."), **errors},
            }
        },
        "/admin/v1/messages/{message_id}": {
            "get": {
                "summary": "Any message on this host (every shard), whatever its tenant.",
                "security": security,
                "parameters": [path_param("message_id")],
                "responses": {**ok("The message, as GET /v1/messages/{id}."), **errors},
            }
        },
        "/admin/v1/suspensions": {
            "post": {
                "summary": "Suspend delivery for a domain or a tenant (on this shard).",
                "security": security,
                "requestBody": body(
                    {
                        "kind": {"enum": ["domain", "tenant"]},
                        "name": {"type": "string"},
                        "duration": {
                            "type": "number",
                            "description": "Seconds; none: until resumed.",
                        },
                        "reason": {"type": "string"},
                    },
                    ["kind", "name"],
                ),
                "responses": {**ok("Suspended.", "201"), **errors},
            }
        },
        "/admin/v1/suspensions/{kind}/{name}": {
            "delete": {
                "summary": "Resume a suspended domain or tenant.",
                "security": security,
                "parameters": [path_param("kind"), path_param("name")],
                "responses": {**ok("Resumed."), **errors},
            }
        },
        "/admin/v1/retry": {
            "post": {
                "summary": "Make matching messages due now.",
                "security": security,
                "requestBody": body({"filter": selection, "all": everything}, []),
                "responses": {**ok("How many were made due, and (some of) their ids."), **errors},
            }
        },
        "/admin/v1/bounce": {
            "post": {
                "summary": "Bounce the pending recipients of matching messages (DSNs follow).",
                "security": security,
                "requestBody": body(
                    {"filter": selection, "all": everything, "reason": {"type": "string"}}, []
                ),
                "responses": {**ok("How many recipients were bounced."), **errors},
            }
        },
        "/admin/v1/status.json": {
            "get": {
                "summary": "The data behind the /status page.",
                "security": security,
                "responses": {**ok("Queue depth samples, rates, sites, recent errors."), **errors},
            }
        },
    }
