"""The ASGI application: routes, authentication, body limits, idempotency.

Every route is a small function over `ApiContext`; checking and building live in
relay.api.compose, storage goes through `Ingest.accept` (the one door), events to
the hub.  The storing part of a send runs shielded from cancellation: once the
first message is handed to ingest, a client that hangs up does not stop the rest
of the request or the recording of its idempotent answer (every spool write has
its own deadline, so this is bounded).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.api.admin import AdminSetup, admin_routes
from relay.api.compose import (
    Limits,
    Options,
    Outgoing,
    build_send,
    parse_raw,
    parse_send,
)
from relay.api.idempotency import IdempotencyStore, check_key, fingerprint
from relay.api.keys import ApiKey, ApiKeyStore
from relay.api.metrics import MetricsBoard
from relay.api.openapi import openapi_document
from relay.api.problems import ERROR_TYPES, ApiError
from relay.api.status import MessageFinder, describe
from relay.config import ApiConfig
from relay.errors import SpoolError
from relay.events import EventHub
from relay.ingest import Ingest, IngestRejected, Trace
from relay.log import get_logger
from relay.model import MessageMeta

_log = get_logger("api")

#: Messages of one request handed to ingest at once (they share group commits).
STORE_CONCURRENCY = 64
#: Bodies larger than this are parsed in a worker thread (keeps the loop responsive).
THREAD_PARSE_SIZE = 1 << 20
#: Batches larger than this are built in a worker thread.
THREAD_BUILD_MESSAGES = 10
JSON_TYPE = "application/json"

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, str]]]]


@dataclass
class ApiContext:
    """What the routes work with."""

    config: ApiConfig
    ingest: Ingest
    keys: ApiKeyStore
    idempotency: IdempotencyStore
    finder: MessageFinder
    metrics: MetricsBoard
    readiness: Readiness
    hub: EventHub | None = None
    max_age: float = float("inf")  # the spool's queue lifetime (caps send_at)
    clock: Callable[[], float] = time.time
    draining: Callable[[], bool] = field(default=lambda: False)
    admin: AdminSetup | None = None  # None: no admin tokens, no admin API (404)

    @property
    def limits(self) -> Limits:
        ingest_limits = self.ingest.limits
        return Limits(
            max_recipients=min(self.config.max_recipients, ingest_limits.max_recipients),
            max_message_size=ingest_limits.max_message_size,
            max_batch_bytes=self.config.max_batch_bytes,
            max_send_at_delay=max(0.0, min(self.config.max_send_at_delay, self.max_age - 3600)),
        )


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(body), status_code=status, media_type=JSON_TYPE, headers=headers)


# --- request plumbing -------------------------------------------------------------------


def _authenticate(ctx: ApiContext, request: Request) -> ApiKey:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="relay"'}
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Authorization: expected 'Bearer <API key>'", headers=challenge)
    key = ctx.keys.authenticate(token.strip())
    if key is None:
        raise ApiError(401, "Authorization: unknown or revoked API key", headers=challenge)
    return key


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(data: bytes) -> Any:
    return json.loads(data, parse_constant=_reject_constant)


async def _read_json(ctx: ApiContext, request: Request) -> Any:
    media = request.headers.get("content-type", JSON_TYPE).split(";")[0].strip().lower()
    if media != JSON_TYPE and not media.endswith("+json"):
        raise ApiError(415, f"Content-Type: expected {JSON_TYPE}", field="Content-Type")
    limit = ctx.config.max_body_size
    too_large = ApiError(413, f"body: larger than the limit of {limit} bytes", field="body")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    data = b"".join(chunks)
    try:
        if size > THREAD_PARSE_SIZE:
            return await trio.to_thread.run_sync(_parse_json, data)
        return _parse_json(data)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"body: not valid JSON ({exc})", field="body") from None


def _check_domain(key: ApiKey, domain: str, field_name: str) -> None:
    if not key.may_send_from(domain):
        raise ApiError(
            403, f"{field_name}: this API key may not send from {domain}", field=field_name
        )


def _rejection(exc: IngestRejected, field_name: str) -> ApiError:
    """The HTTP error for an ingest refusal (the SMTP reply goes along)."""
    reply = f"{exc.code} {exc.enhanced} {exc.text}"
    if exc.enhanced == "4.7.1":
        return ApiError(429, exc.text, smtp_reply=reply, headers={"Retry-After": "60"})
    if exc.enhanced == "5.3.4":
        return ApiError(413, f"{field_name}: {exc.text}", field=field_name, smtp_reply=reply)
    if exc.code >= 500 or exc.enhanced == "4.5.3":
        return ApiError(422, f"{field_name}: {exc.text}", field=field_name, smtp_reply=reply)
    return ApiError(503, exc.text, smtp_reply=reply, headers={"Retry-After": "5"})


# --- storing -----------------------------------------------------------------------------


async def _store(
    ctx: ApiContext,
    request: Request,
    key: ApiKey,
    messages: Sequence[Outgoing],
    options: Options,
    *,
    field_name: str,
    strip_headers: Sequence[str] = (),
) -> tuple[int, dict[str, Any]]:
    """Hand the messages to ingest; (status, body) -- 202 when every one is stored."""
    ingest = ctx.ingest

    def rejected(msgs: Sequence[Outgoing], exc: IngestRejected) -> None:
        if ctx.hub is not None:
            for m in msgs:
                ctx.hub.rejected(
                    m.recipients,
                    f"{exc.code} {exc.enhanced} {exc.text}",
                    sender=m.sender,
                    tenant=key.tenant,
                    campaign=options.campaign,
                    tags=options.tags,
                    metadata=options.metadata,
                )

    try:
        for _ in messages:
            ingest.check_rate(key.account, key.rate_per_minute)
    except IngestRejected as exc:
        rejected(messages, exc)
        raise _rejection(exc, field_name) from None
    client = request.client.host if request.client else ""
    trace = Trace(helo="http-api", client_ip=client, protocol="HTTP", auth_user=key.id)
    results: list[MessageMeta | BaseException | None] = [None] * len(messages)
    limiter = trio.CapacityLimiter(STORE_CONCURRENCY)

    async def store_one(index: int, message: Outgoing) -> None:
        async with limiter:
            try:
                results[index] = await ingest.accept(
                    message.sender,
                    message.recipients,
                    message.content,
                    trace=trace,
                    tenant=key.tenant,
                    campaign=options.campaign,
                    tags=options.tags,
                    metadata=options.metadata,
                    send_at=options.send_at,
                    smtputf8=message.smtputf8,
                    body_8bit=message.body_8bit,
                    strip_headers=strip_headers,
                )
            except IngestRejected as exc:
                rejected([message], exc)
                results[index] = exc
            except Exception as exc:
                if not isinstance(exc, SpoolError):
                    _log.exception("api.store_failed")
                results[index] = exc

    with trio.CancelScope(shield=True):
        async with trio.open_nursery() as nursery:
            for index, message in enumerate(messages):
                nursery.start_soon(store_one, index, message)
    stored = [
        {"id": r.id, "recipients": list(m.recipients)}
        for m, r in zip(messages, results, strict=True)
        if isinstance(r, MessageMeta)
    ]
    failures = [(i, r) for i, r in enumerate(results) if not isinstance(r, MessageMeta)]
    if not failures:
        return 202, {"messages": stored}
    index, first = failures[0]
    if isinstance(first, IngestRejected):
        error = _rejection(first, field_name)
    else:
        detail = str(first) if isinstance(first, SpoolError) else "internal error"
        error = ApiError(
            503, f"the spool could not store the message: {detail}", headers={"Retry-After": "5"}
        )
    if not stored:
        raise error
    # Some messages are stored: answer (and remember) which, so a retry sends only the rest.
    body = error.body()
    body["messages"] = stored
    body["failed"] = [
        {"index": i, "recipients": list(messages[i].recipients), "error": str(r)}
        for i, r in failures
    ]
    return error.status, body


# --- routes -------------------------------------------------------------------------------


async def _send(ctx: ApiContext, request: Request, key: ApiKey, doc: Any) -> tuple[int, Any]:
    limits = ctx.limits
    send = parse_send(doc, limits, now=ctx.clock())
    _check_domain(key, send.parts.sender.domain, "from")
    if send.batch is not None and len(send.batch) > THREAD_BUILD_MESSAGES:
        messages = await trio.to_thread.run_sync(build_send, send, limits)
    else:
        messages = build_send(send, limits)
    field_name = "recipients" if send.batch is not None else "to"
    return await _store(ctx, request, key, messages, send.options, field_name=field_name)


async def _send_raw(ctx: ApiContext, request: Request, key: ApiKey, doc: Any) -> tuple[int, Any]:
    raw = parse_raw(doc, ctx.limits, now=ctx.clock())
    _check_domain(key, raw.message.sender.rpartition("@")[2], "from")
    field_name = "message" if "message" in doc else "message_base64"
    for domain in raw.from_domains:
        _check_domain(key, domain, field_name)
    return await _store(
        ctx,
        request,
        key,
        [raw.message],
        raw.options,
        field_name="to",
        strip_headers=("Bcc",),  # RFC 5322 3.6.3: blind copies are not shown
    )


Handler = Callable[[ApiContext, Request, ApiKey, Any], Awaitable[tuple[int, Any]]]


async def _submit(ctx: ApiContext, request: Request, handler: Handler) -> Response:
    """Authenticate, read, and run `handler` -- once per Idempotency-Key."""
    if ctx.draining():
        raise ApiError(503, "the server is stopping; try again", headers={"Retry-After": "1"})
    key = _authenticate(ctx, request)
    doc = await _read_json(ctx, request)
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is None:
        status, body = await handler(ctx, request, key, doc)
        return _json(status, body)
    check_key(idempotency_key)
    fp = fingerprint(request.method, request.url.path, doc)
    async with ctx.idempotency.reserve(
        key.id, idempotency_key, fp, timeout=ctx.config.request_timeout
    ) as slot:
        if slot.previous is not None:
            previous = slot.previous
            return Response(
                previous.body,
                status_code=previous.status,
                media_type=JSON_TYPE,
                headers={"Idempotent-Replayed": "true"},
            )
        status, body = await handler(ctx, request, key, doc)
        encoded = _dumps(body)
        with trio.CancelScope(shield=True):
            try:
                await slot.save(status, encoded)
            except SpoolError as exc:  # the mail is stored: answer anyway, but say so
                _log.error("api.idempotency_save_failed", key_id=key.id, error=repr(exc))
        return Response(encoded, status_code=status, media_type=JSON_TYPE)


def create_app(ctx: ApiContext) -> Starlette:
    """The Starlette application serving `ctx`."""

    async def post_message(request: Request) -> Response:
        return await _submit(ctx, request, _send)

    async def post_raw(request: Request) -> Response:
        return await _submit(ctx, request, _send_raw)

    async def get_message(request: Request) -> Response:
        key = _authenticate(ctx, request)
        message_id = request.path_params["message_id"]
        found = ctx.finder.find(message_id)
        if found is None or found[1].tenant != key.tenant:
            raise ApiError(404, f"no message {message_id!r}", field="message_id")
        return _json(200, describe(found[1], found[0]))

    async def metrics(request: Request) -> Response:
        # In the trio thread: the figures come from live trio objects (it takes a few ms).
        return Response(ctx.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready, checks = await ctx.readiness()
        status = "ready" if ready else ("draining" if ctx.draining() else "not_ready")
        return _json(200 if ready else 503, {"status": status, "checks": checks})

    document = _dumps(openapi_document())

    async def openapi(request: Request) -> Response:
        return Response(document, media_type=JSON_TYPE)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _json(exc.status, exc.body(), exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = ApiError(exc.status_code, str(exc.detail))
        return _json(exc.status_code, error.body(), dict(exc.headers or {}))

    async def internal_error(request: Request, exc: Exception) -> Response:
        _log.error("api.unhandled", path=request.url.path, error=repr(exc), exc_info=exc)
        return _json(500, {"error": {"type": ERROR_TYPES[500], "message": "internal error"}})

    extra = []
    if ctx.admin is not None:

        async def read_json(request: Request) -> Any:
            return await _read_json(ctx, request)

        extra = admin_routes(ctx.admin, ctx.finder, read_json=read_json, answer=_json)

    return Starlette(
        routes=[
            *extra,
            Route("/v1/messages", post_message, methods=["POST"]),
            Route("/v1/messages/raw", post_raw, methods=["POST"]),
            Route("/v1/messages/{message_id}", get_message, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            Exception: internal_error,
        },
    )
