"""Queue administration: plain functions over a spool (and its scheduler, if in-process).

The `relay queue` command calls these on the spool directory of a running relay
(LMDB lets a second process read and write the same environment); the HTTP admin
API calls them in-process with the running `Scheduler`.  Every change is written to
the spool first, so it is durable and seen by whoever opens the spool next:

- with `scheduler` given (in-process), the change is applied to it at once;
- without (another process), a request is left in the spool's "control" table and
  the running scheduler acts on it within its refresh interval (relay.scheduler
  .control); suspensions are picked up the same way.  The scheduler also checks
  every entry against the spool when it falls due, so a deleted or bounced message
  is never delivered even before the request is seen.

`delete` removes whole messages (the spool keeps messages, not recipients); `bounce`
bounces only the recipients a filter selects (all pending ones, or those of
`domain`), with the bounce hook (DSN) run by the scheduler.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import trio

from relay.errors import UnknownMessageError
from relay.model import MessageMeta, RcptStatus, Recipient, RecipientResult, domain_of
from relay.scheduler import control
from relay.scheduler.control import Suspension, SuspensionKind
from relay.spool import Spool

if TYPE_CHECKING:
    from relay.scheduler.scheduler import Scheduler

#: Spool writes an admin operation keeps waiting at once (they share group commits).
CONCURRENT_WRITES = 256
#: Messages per spool.delete transaction.
DELETE_BATCH = 1000
#: Reply of recipients bounced by an administrator (RFC 3463 5.0.0: other).
ADMIN_BOUNCE_REPLY = "554 5.0.0 Bounced by the administrator"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MessageFilter:
    """Which queued messages an operation applies to; empty fields match everything.

    `domain` selects messages with a pending recipient in that domain (and, for
    `bounce`, only those recipients); `sender` is an address (case-insensitive) or
    "@domain"; `older_than` is an age in seconds.
    """

    ids: tuple[str, ...] = ()
    domain: str | None = None
    tenant: str | None = None
    campaign: str | None = None
    sender: str | None = None
    older_than: float | None = None

    def is_empty(self) -> bool:
        """True when the filter selects every queued message."""
        return not self.ids and all(
            value is None
            for value in (self.domain, self.tenant, self.campaign, self.sender, self.older_than)
        )

    def matches(self, meta: MessageMeta, now: float) -> bool:
        """True when a queued message is selected."""
        if meta.is_final:
            return False
        if self.ids and meta.id not in self.ids:
            return False
        if self.tenant is not None and meta.tenant != self.tenant:
            return False
        if self.campaign is not None and meta.campaign != self.campaign:
            return False
        if self.older_than is not None and now - meta.created < self.older_than:
            return False
        if self.sender is not None and not _sender_matches(self.sender, meta.sender):
            return False
        return not self.domain or bool(self.recipients(meta))

    def recipients(self, meta: MessageMeta) -> list[Recipient]:
        """The pending recipients of a message the filter selects."""
        domain = self.domain.lower() if self.domain else None
        return [
            r
            for r in meta.recipients
            if not r.status.is_final and (domain is None or domain_of(r.address) == domain)
        ]

    def select(self, spool: Spool, now: float) -> Iterator[MessageMeta]:
        """The queued messages the filter selects (by id lookups when ids are given)."""
        if self.ids:
            metas: Iterator[MessageMeta | None] = (spool.get(i) for i in dict.fromkeys(self.ids))
        else:
            metas = iter(spool.iter_queued())
        for meta in metas:
            if meta is not None and self.matches(meta, now):
                yield meta


def _sender_matches(pattern: str, sender: str) -> bool:
    if pattern.startswith("@"):
        return domain_of(sender) == pattern[1:].lower()
    return sender.lower() == pattern.lower()


# --- summary and inspection ---------------------------------------------------------------


@dataclass(slots=True)
class StateCounts:
    """Messages and recipients of one domain or tenant, recipients by state."""

    messages: int = 0
    pending: int = 0  # not tried yet and due
    deferred: int = 0  # tried, will be retried
    scheduled: int = 0  # held until a later send_at
    suspended: int = 0  # held by a suspension of the domain or tenant
    expired: int = 0  # past expiry, about to bounce

    @property
    def recipients(self) -> int:
        return self.pending + self.deferred + self.scheduled + self.suspended + self.expired

    def add(self, state: str) -> None:
        setattr(self, state, getattr(self, state) + 1)


STATES = ("pending", "deferred", "scheduled", "suspended", "expired")


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """The queue at a glance."""

    messages: int
    recipients: int
    by_state: dict[str, int]
    by_domain: dict[str, StateCounts]
    by_tenant: dict[str, StateCounts]
    oldest: float | None  # creation time of the oldest queued message
    suspensions: list[Suspension] = field(default_factory=list)


def _recipient_state(
    meta: MessageMeta,
    recipient: Recipient,
    now: float,
    domains: set[str],
    tenants: set[str],
) -> str:
    if domain_of(recipient.address) in domains or meta.tenant in tenants:
        return "suspended"
    if now >= meta.expires:
        return "expired"
    if meta.send_at is not None and meta.send_at > now and recipient.attempts == 0:
        return "scheduled"
    if recipient.status is RcptStatus.DEFERRED:
        return "deferred"
    return "pending"


def summary(spool: Spool, *, now: float | None = None) -> QueueSummary:
    """Counts of queued messages and pending recipients by state, domain and tenant."""
    now = time.time() if now is None else now
    suspensions = control.read_suspensions(spool)
    live = [s for s in suspensions if s.active(now)]
    domains = {s.name for s in live if s.kind == "domain"}
    tenants = {s.name for s in live if s.kind == "tenant"}
    by_state = dict.fromkeys(STATES, 0)
    by_domain: dict[str, StateCounts] = {}
    by_tenant: dict[str, StateCounts] = {}
    messages = recipients = 0
    oldest: float | None = None
    for meta in spool.iter_queued():
        if meta.is_final:
            continue
        messages += 1
        oldest = meta.created if oldest is None else min(oldest, meta.created)
        tenant_counts = by_tenant.setdefault(meta.tenant, StateCounts())
        tenant_counts.messages += 1
        seen: set[str] = set()
        for recipient in meta.recipients:
            if recipient.status.is_final:
                continue
            recipients += 1
            state = _recipient_state(meta, recipient, now, domains, tenants)
            by_state[state] += 1
            domain = domain_of(recipient.address)
            domain_counts = by_domain.setdefault(domain, StateCounts())
            if domain not in seen:
                seen.add(domain)
                domain_counts.messages += 1
            domain_counts.add(state)
            tenant_counts.add(state)
    return QueueSummary(messages, recipients, by_state, by_domain, by_tenant, oldest, suspensions)


def inspect(spool: Spool, message_id: str) -> MessageMeta | None:
    """One message: envelope, every recipient with its state and reply, the history.

    Finished messages are found too while the spool keeps their completed record.
    """
    return spool.get(message_id)


# --- suspensions ---------------------------------------------------------------------------


async def suspend(
    spool: Spool,
    kind: SuspensionKind,
    name: str,
    *,
    reason: str = "",
    duration: float | None = None,
    scheduler: Scheduler | None = None,
    now: float | None = None,
) -> Suspension:
    """Hold back the mail of a domain or tenant (for `duration` seconds, or until resumed)."""
    now = time.time() if now is None else now
    suspension = Suspension(
        kind=kind,
        name=control.normalise(kind, name),
        since=now,
        until=None if duration is None else now + duration,
        reason=reason,
    )
    await control.put_suspension(spool, suspension)
    if scheduler is not None:
        scheduler.refresh_suspensions()
    return suspension


async def resume(
    spool: Spool, kind: SuspensionKind, name: str, *, scheduler: Scheduler | None = None
) -> bool:
    """Lift a suspension; whether there was one."""
    lifted = await control.delete_suspension(spool, kind, name)
    if scheduler is not None:
        scheduler.refresh_suspensions()
    return lifted


def list_suspensions(spool: Spool, *, now: float | None = None) -> list[Suspension]:
    """The suspensions in force."""
    now = time.time() if now is None else now
    return [s for s in control.read_suspensions(spool) if s.active(now)]


# --- retry, delete, bounce -----------------------------------------------------------------


async def _concurrently(
    items: Sequence[T], fn: Callable[[T], Awaitable[bool]], limit: int = CONCURRENT_WRITES
) -> int:
    """Run `fn` over `items`, `limit` at a time (so spool writes share commits)."""
    done = 0
    slots = trio.Semaphore(limit)

    async def one(item: T) -> None:
        nonlocal done
        try:
            if await fn(item):
                done += 1
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        for item in items:
            await slots.acquire()
            nursery.start_soon(one, item)
    return done


async def retry_now(
    spool: Spool,
    selection: MessageFilter,
    *,
    scheduler: Scheduler | None = None,
    now: float | None = None,
) -> list[str]:
    """Make the selected messages due now; returns their ids."""
    now = time.time() if now is None else now
    ids = [meta.id for meta in selection.select(spool, now)]

    async def reschedule(message_id: str) -> bool:
        try:
            await spool.reschedule(message_id, now)
        except UnknownMessageError:
            return False
        return True

    await _concurrently(ids, reschedule)
    if scheduler is not None:
        scheduler.refresh_messages(ids)
    else:
        await control.post_request(spool, "refresh", ids, now=now)
    return ids


def _refuse_everything(selection: MessageFilter, everything: bool) -> None:
    if selection.is_empty() and not everything:
        raise ValueError("an empty filter selects every queued message: pass everything=True")


async def delete(
    spool: Spool,
    selection: MessageFilter,
    *,
    everything: bool = False,
    now: float | None = None,
) -> int:
    """Remove the selected messages from the queue without notice; returns how many.

    A running scheduler drops their entries when they fall due (each is checked
    against the spool), so no request to it is needed.
    """
    _refuse_everything(selection, everything)
    now = time.time() if now is None else now
    ids = [meta.id for meta in selection.select(spool, now)]
    removed = 0
    for start in range(0, len(ids), DELETE_BATCH):
        removed += await spool.delete(ids[start : start + DELETE_BATCH])
    return removed


async def bounce(
    spool: Spool,
    selection: MessageFilter,
    *,
    reason: str = "",
    everything: bool = False,
    scheduler: Scheduler | None = None,
    now: float | None = None,
) -> int:
    """Bounce the selected pending recipients (a DSN each, via the bounce hook).

    Returns how many recipients were bounced.
    """
    _refuse_everything(selection, everything)
    now = time.time() if now is None else now
    reply = ADMIN_BOUNCE_REPLY + (f": {reason}" if reason else "")
    work = [
        (meta.id, tuple(r.address for r in selection.recipients(meta)))
        for meta in selection.select(spool, now)
    ]
    work = [(message_id, addresses) for message_id, addresses in work if addresses]
    bounced: list[tuple[str, tuple[str, ...]]] = []

    async def bounce_one(item: tuple[str, tuple[str, ...]]) -> bool:
        message_id, addresses = item
        results = [RecipientResult(a, RcptStatus.BOUNCED, reply) for a in addresses]
        try:
            await spool.record_results(message_id, results, next_attempt=None)
        except UnknownMessageError:
            return False
        bounced.append(item)
        return True

    await _concurrently(work, bounce_one)
    if scheduler is not None:
        await scheduler.notify_bounced(bounced)
    else:
        await control.post_request(
            spool,
            "bounced",
            [message_id for message_id, _ in bounced],
            recipients=[addresses for _, addresses in bounced],
            now=now,
        )
    return sum(len(addresses) for _, addresses in bounced)
