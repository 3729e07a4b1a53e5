"""Durable administrative state shared by the admin tools and the running scheduler.

Two spool aux tables carry it, so that it survives restarts and so that a second
process (the `relay queue` command, working on the spool directory of a running
instance) can reach the scheduler without any socket:

- "suspensions": one record per suspended domain or tenant.  The scheduler re-reads
  the table every few seconds and holds back the mail it covers.
- "control": requests from the admin tools to the scheduler, keyed
  ``scheduler/<8-byte time ms><8 random bytes>``.  ``refresh`` asks it to re-read
  some messages from the spool and bring its in-memory schedule in line (after a
  retry, delete or bounce made elsewhere); ``bounced`` asks it to run its bounce
  hook (DSN) for recipients an administrator bounced.  The scheduler deletes a
  request once it has acted on it; requests written while relay is down wait for
  the next start.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from relay.spool import Spool

SUSPENSIONS = "suspensions"
CONTROL = "control"
REQUEST_PREFIX = b"scheduler/"
REQUEST_CHUNK = 10_000  # ids per request record

SuspensionKind = Literal["domain", "tenant"]
KINDS: tuple[SuspensionKind, ...] = ("domain", "tenant")


@dataclass(frozen=True, slots=True)
class Suspension:
    """A domain or tenant whose mail is held back, and why."""

    kind: SuspensionKind
    name: str
    since: float
    until: float | None = None  # lifted by itself at this time (None: until resumed)
    reason: str = ""

    def active(self, now: float) -> bool:
        """True while the suspension holds."""
        return self.until is None or now < self.until


def normalise(kind: SuspensionKind, name: str) -> str:
    """Domains compare case-insensitively (as recipient domains are kept lower-case)."""
    if kind not in KINDS:
        raise ValueError(f"a suspension is for a domain or a tenant, not {kind!r}")
    return name.lower() if kind == "domain" else name


def suspension_key(kind: SuspensionKind, name: str) -> bytes:
    """The aux key of a suspension."""
    return f"{kind}:{normalise(kind, name)}".encode()


def _suspension_of(value: Any) -> Suspension | None:
    if not isinstance(value, dict):
        return None
    kind, name = value.get("kind"), value.get("name")
    if kind not in KINDS or not isinstance(name, str):
        return None
    until = value.get("until")
    return Suspension(
        kind=kind,
        name=name,
        since=float(value.get("since", 0.0)),
        until=None if until is None else float(until),
        reason=str(value.get("reason", "")),
    )


def read_suspensions(spool: Spool) -> list[Suspension]:
    """Every suspension recorded in the spool (lifted ones included)."""
    found = []
    for _key, value in spool.aux(SUSPENSIONS).items():
        suspension = _suspension_of(value)
        if suspension is not None:
            found.append(suspension)
    return found


async def put_suspension(spool: Spool, suspension: Suspension) -> None:
    """Record (or replace) a suspension durably."""
    name = normalise(suspension.kind, suspension.name)
    value = {
        "kind": suspension.kind,
        "name": name,
        "since": suspension.since,
        "until": suspension.until,
        "reason": suspension.reason,
    }
    await spool.aux(SUSPENSIONS).put(suspension_key(suspension.kind, name), value)


async def delete_suspension(spool: Spool, kind: SuspensionKind, name: str) -> bool:
    """Lift a suspension; whether there was one."""
    return await spool.aux(SUSPENSIONS).delete(suspension_key(kind, name))


# --- requests to the running scheduler ---------------------------------------------------

RequestOp = Literal["refresh", "bounced"]


@dataclass(frozen=True, slots=True)
class Request:
    """A request from the admin tools to the scheduler."""

    key: bytes
    op: RequestOp
    ids: tuple[str, ...]
    # For "bounced": the addresses bounced in each message, parallel to `ids`.
    recipients: tuple[tuple[str, ...], ...] = ()


async def post_request(
    spool: Spool,
    op: RequestOp,
    ids: Sequence[str],
    *,
    now: float,
    recipients: Sequence[Sequence[str]] = (),
) -> None:
    """Durably leave a request for the scheduler of this spool (in chunks of ids)."""
    if op == "bounced" and len(recipients) != len(ids):
        raise ValueError("a bounced request names the recipients of every message")
    ms = max(0, int(now * 1000)).to_bytes(8, "big")
    for start in range(0, len(ids), REQUEST_CHUNK):
        end = start + REQUEST_CHUNK
        value: dict[str, Any] = {"op": op, "ids": list(ids[start:end])}
        if op == "bounced":
            value["recipients"] = [list(r) for r in recipients[start:end]]
        await spool.aux(CONTROL).put(REQUEST_PREFIX + ms + os.urandom(8), value)


def _request_of(key: bytes, value: Any) -> Request:
    """A request from its record; a malformed one becomes a no-op (and is removed)."""
    if not isinstance(value, dict):
        return Request(key, "refresh", ())
    op, ids, recipients = value.get("op"), value.get("ids"), value.get("recipients", ())
    if op not in ("refresh", "bounced") or not isinstance(ids, (list, tuple)):
        return Request(key, "refresh", ())
    if op == "bounced":
        if not isinstance(recipients, (list, tuple)) or len(recipients) != len(ids):
            return Request(key, "refresh", ())
        return Request(
            key,
            "bounced",
            tuple(str(i) for i in ids),
            tuple(tuple(str(a) for a in r) for r in recipients),
        )
    return Request(key, "refresh", tuple(str(i) for i in ids))


def read_requests(spool: Spool) -> list[Request]:
    """The requests waiting, oldest first."""
    return [_request_of(key, value) for key, value in spool.aux(CONTROL).items(REQUEST_PREFIX)]


async def done_request(spool: Spool, request: Request) -> None:
    """Remove a request the scheduler has acted on."""
    await spool.aux(CONTROL).delete(request.key)
