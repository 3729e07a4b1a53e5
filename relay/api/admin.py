"""The admin HTTP API (/admin/v1/...) and the /status page, beside the send API.

Theory of operation: the queue operations themselves live in relay.scheduler.admin
(the same functions `relay queue ...` calls), which this layer may not import; the
composition root hands them in as an `AdminOps` object bound to the shard's spool
and live scheduler.  Here are only the HTTP side of them: authentication with the
admin tokens of ``api.admin_tokens`` (Bearer, compared in constant time, separate
from the API keys of tenants), checking of request bodies (422 naming the field)
and the JSON answers.  Without admin tokens none of these routes exists (404).

Shards: each shard's admin API acts on its own queue (the request reaches whichever
shard the kernel or the load balancer picks); only GET /admin/v1/messages/{id}
looks in every shard of the spool directory (read-only, as the send API's status).

The /status page itself is public and holds no data: its script reads the token
from the URL fragment (``/status#token=...``, never sent to the server, so never
in an access log) and polls GET /admin/v1/status.json with it.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.api import fields as f
from relay.api.dashboard import Activity, StatusBoard
from relay.api.fields import rfc3339
from relay.api.problems import ApiError, invalid
from relay.api.status import MessageFinder, describe
from relay.api.status_page import STATUS_HEADERS, STATUS_PAGE

SuspensionKind = Literal["domain", "tenant"]
KINDS: tuple[SuspensionKind, ...] = ("domain", "tenant")
FILTER_FIELDS = frozenset({"ids", "domain", "tenant", "campaign", "sender", "older_than"})
MAX_IDS = 10_000
#: Message ids listed in a retry answer (the count is always exact).
MAX_LISTED_IDS = 1000
MAX_NAME = 255
MAX_REASON = 500
MAX_SECONDS = 10 * 365 * 86400.0

JsonBody = Callable[[Request], Awaitable[Any]]
JsonResponse = Callable[[int, Any], Response]


@dataclass(frozen=True, slots=True)
class AdminFilter:
    """Which queued messages an operation selects (relay.scheduler.MessageFilter)."""

    ids: tuple[str, ...] = ()
    domain: str | None = None
    tenant: str | None = None
    campaign: str | None = None
    sender: str | None = None
    older_than: float | None = None  # seconds since acceptance

    def is_empty(self) -> bool:
        """True when the filter selects every queued message."""
        return not self.ids and all(
            v is None
            for v in (self.domain, self.tenant, self.campaign, self.sender, self.older_than)
        )


class AdminOps(Protocol):
    """The queue operations of one shard (implemented by relay.app)."""

    def summary(self) -> Mapping[str, Any]:
        """relay.scheduler.QueueSummary as a dict (dataclasses.asdict)."""
        ...

    async def suspend(
        self, kind: SuspensionKind, name: str, duration: float | None, reason: str
    ) -> Mapping[str, Any]:
        """Suspend; the relay.scheduler.Suspension as a dict."""
        ...

    async def resume(self, kind: SuspensionKind, name: str) -> bool:
        """Lift a suspension; whether there was one."""
        ...

    async def retry(self, selection: AdminFilter) -> list[str]:
        """Make the selected messages due now; their ids."""
        ...

    async def bounce(self, selection: AdminFilter, reason: str, everything: bool) -> int:
        """Bounce the selected pending recipients; how many."""
        ...

    def activity(self) -> Activity:
        """The live figures of the /status page."""
        ...


class AdminAuth:
    """Checks Bearer admin tokens in constant time."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = [t.encode("utf-8") for t in tokens]

    def check(self, request: Request) -> None:
        """401 unless the request carries one of the admin tokens."""
        challenge = {"WWW-Authenticate": 'Bearer realm="relay-admin"'}
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode("utf-8", "replace")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "Authorization: expected 'Bearer <admin token>'", headers=challenge)
        matched = False
        for known in self._tokens:  # no early exit: the time does not tell which one
            matched |= hmac.compare_digest(given, known)
        if not matched:
            raise ApiError(401, "Authorization: not an admin token", headers=challenge)


# --- request bodies ------------------------------------------------------------------------


def _optional_text(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    if obj.get(key) is None:
        return None
    text = f.expect_str(obj[key], where, allow_empty=False)
    if len(text) > MAX_NAME or not f.is_header_safe(text):
        raise invalid(where, f"at most {MAX_NAME} characters, no CR, LF or NUL")
    return text


def _seconds(value: Any, where: str, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(where, "expected a number of seconds")
    seconds = float(value)
    low_ok = seconds > 0 if positive else seconds >= 0
    if not low_ok or seconds > MAX_SECONDS:
        least = "above 0" if positive else "0 or more"
        raise invalid(where, f"expected a number of seconds, {least}, at most ten years")
    return seconds


def parse_filter(value: Any, where: str = "filter") -> AdminFilter:
    """An `AdminFilter` from JSON; 422 naming the first bad field."""
    if value is None:
        return AdminFilter()
    obj = f.expect_object(value, where)
    f.reject_unknown(obj, FILTER_FIELDS, where)
    ids: tuple[str, ...] = ()
    if obj.get("ids") is not None:
        items = f.expect_list(obj["ids"], f"{where}.ids")
        if len(items) > MAX_IDS:
            raise invalid(f"{where}.ids", f"at most {MAX_IDS} ids")
        ids = tuple(f.expect_str(v, f"{where}.ids[{i}]") for i, v in enumerate(items))
    older_than = obj.get("older_than")
    return AdminFilter(
        ids=ids,
        domain=_optional_text(obj, "domain", f"{where}.domain"),
        tenant=_optional_text(obj, "tenant", f"{where}.tenant"),
        campaign=_optional_text(obj, "campaign", f"{where}.campaign"),
        sender=_optional_text(obj, "sender", f"{where}.sender"),
        older_than=None
        if older_than is None
        else _seconds(older_than, f"{where}.older_than", positive=False),
    )


def _everything(doc: Mapping[str, Any]) -> bool:
    value = doc.get("all", False)
    if not isinstance(value, bool):
        raise invalid("all", "expected true or false")
    return value


def _selection(doc: Mapping[str, Any]) -> tuple[AdminFilter, bool]:
    """The filter of a retry or bounce body; an empty one only with "all": true."""
    selection = parse_filter(doc.get("filter"))
    everything = _everything(doc)
    if selection.is_empty() and not everything:
        raise invalid(
            "filter", 'empty: it would select every queued message (add "all": true to mean it)'
        )
    return selection, everything


def _kind(value: Any, where: str) -> SuspensionKind:
    for kind in KINDS:
        if value == kind:
            return kind
    raise invalid(where, "expected 'domain' or 'tenant'")


def _reason(doc: Mapping[str, Any]) -> str:
    if doc.get("reason") is None:
        return ""
    return f.header_text(doc["reason"], "reason", max_length=MAX_REASON)


# --- answers ----------------------------------------------------------------------------------


def _suspension(s: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kind": s["kind"],
        "name": s["name"],
        "since": rfc3339(s["since"]),
        "until": rfc3339(s["until"]),
        "reason": s["reason"],
    }


def _counts(rows: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    out = {}
    for name, counts in sorted(rows.items()):
        row = dict(counts)
        row["recipients"] = sum(v for k, v in counts.items() if k != "messages")
        out[name] = row
    return out


def summary_body(report: Mapping[str, Any], shard: int) -> dict[str, Any]:
    """The GET /admin/v1/queue/summary body."""
    return {
        "shard": shard,
        "messages": report["messages"],
        "recipients": report["recipients"],
        "by_state": dict(report["by_state"]),
        "by_domain": _counts(report["by_domain"]),
        "by_tenant": _counts(report["by_tenant"]),
        "oldest": rfc3339(report["oldest"]),
        "suspensions": [_suspension(s) for s in report["suspensions"]],
    }


# --- routes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdminSetup:
    """What the admin routes of one shard work with."""

    ops: AdminOps
    auth: AdminAuth
    board: StatusBoard
    shard: int


def admin_routes(
    setup: AdminSetup, finder: MessageFinder, *, read_json: JsonBody, answer: JsonResponse
) -> list[Route]:
    """The routes of the admin API and the status page."""
    ops, auth, board, shard = setup.ops, setup.auth, setup.board, setup.shard

    async def read_object(request: Request) -> dict[str, Any]:
        auth.check(request)
        return f.expect_object(await read_json(request), "body")

    async def queue_summary(request: Request) -> Response:
        auth.check(request)
        return answer(200, summary_body(ops.summary(), shard))

    async def message(request: Request) -> Response:
        auth.check(request)
        message_id = request.path_params["message_id"]
        found = finder.find(message_id)
        if found is None:
            raise ApiError(404, f"no message {message_id!r}", field="message_id")
        return answer(200, describe(found[1], found[0]))

    async def suspend(request: Request) -> Response:
        doc = await read_object(request)
        f.reject_unknown(doc, frozenset({"kind", "name", "duration", "reason"}), "")
        kind = _kind(doc.get("kind"), "kind")
        name = _optional_text(doc, "name", "name")
        if name is None:
            raise invalid("name", "required")
        duration = doc.get("duration")
        seconds = None if duration is None else _seconds(duration, "duration")
        suspension = await ops.suspend(kind, name, seconds, _reason(doc))
        return answer(201, {"suspension": _suspension(suspension), "shard": shard})

    async def resume(request: Request) -> Response:
        auth.check(request)
        kind = _kind(request.path_params["kind"], "kind")
        name = request.path_params["name"]
        if not await ops.resume(kind, name):
            raise ApiError(404, f"{kind} {name!r} is not suspended", field="name")
        return answer(200, {"resumed": {"kind": kind, "name": name}, "shard": shard})

    async def retry(request: Request) -> Response:
        doc = await read_object(request)
        f.reject_unknown(doc, frozenset({"filter", "all"}), "")
        selection, _ = _selection(doc)
        ids = await ops.retry(selection)
        return answer(200, {"retried": len(ids), "ids": ids[:MAX_LISTED_IDS], "shard": shard})

    async def bounce(request: Request) -> Response:
        doc = await read_object(request)
        f.reject_unknown(doc, frozenset({"filter", "all", "reason"}), "")
        selection, everything = _selection(doc)
        bounced = await ops.bounce(selection, _reason(doc), everything)
        return answer(200, {"bounced_recipients": bounced, "shard": shard})

    async def status_json(request: Request) -> Response:
        auth.check(request)
        return answer(200, board.document())

    async def status_page(request: Request) -> Response:
        return Response(STATUS_PAGE, media_type="text/html", headers=STATUS_HEADERS)

    return [
        Route("/admin/v1/queue/summary", queue_summary, methods=["GET"]),
        Route("/admin/v1/messages/{message_id}", message, methods=["GET"]),
        Route("/admin/v1/suspensions", suspend, methods=["POST"]),
        Route("/admin/v1/suspensions/{kind}/{name}", resume, methods=["DELETE"]),
        Route("/admin/v1/retry", retry, methods=["POST"]),
        Route("/admin/v1/bounce", bounce, methods=["POST"]),
        Route("/admin/v1/status.json", status_json, methods=["GET"]),
        Route("/status", status_page, methods=["GET"]),
    ]
