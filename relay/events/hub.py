"""The event hub: every component reports into it, subscribers take it from there.

Theory of operation: the hub turns the shard's hooks into `Event`s and hands each
to its subscribers (the durable webhook queue, the counters of /metrics) and, if
asked, to the structured log.  Publishing is synchronous and cheap -- it is called
from the delivery reporter, the ingest hook and the scheduler's bounce hook, none
of which may wait -- so a subscriber must only buffer.

Where each event comes from (wired in relay.app):

- ``accepted``: ingest's on-stored hook, after the spool commit (SMTP, HTTP, DSNs).
- ``delivered``/``deferred``: the delivery engine's `on_event` (one per recipient
  and attempt).  Its ``bounced`` outcomes are ignored here, because...
- ``bounced``/``expired``: ...the scheduler's bounce hook reports every recipient
  that became permanently failed, after the spool has it: 5xx replies, expiry
  (4.4.7; also a deferral past the queue lifetime, reported as ``deferred`` by the
  attempt and ``expired`` by the outcome) and bounces by an administrator.
- ``rejected``: the HTTP API, for requests ingest refused (limits, rate).

Logging (`log_events`): "others" (the default) logs the events that no other
component logs per recipient -- ingest already logs ``accepted`` and delivery
``delivery.outcome`` -- and "all" logs every event as one more ``event`` line (in
the webhook vocabulary; it costs about 30 us per event).

Delivery outcomes do not carry tags and metadata; the hub keeps those of recent
messages in a bounded LRU filled at ``accepted`` and falls back to the spool.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from relay.config import EventName
from relay.events.event import EVENT_NAMES, Event, is_expiry
from relay.log import get_logger
from relay.model import MessageMeta, RcptStatus, Recipient, new_message_id

_log = get_logger("events")

#: The events no other component logs per recipient (see `EventHub`'s `log_events`).
_SELF_LOGGED = frozenset({"bounced", "expired", "rejected"})
LogChoice = Literal["all", "others", "none"]

#: Messages whose tags and metadata the hub remembers.
CACHE_ENTRIES = 20_000

Subscriber = Callable[[Event], None]
StoredHook = Callable[[MessageMeta], None]
BounceHook = Callable[[MessageMeta, Sequence[Recipient]], Awaitable[None]]


class Outcome(Protocol):
    """What the hub reads of a delivery outcome (relay.delivery.DeliveryEvent)."""

    @property
    def message_id(self) -> str: ...
    @property
    def recipient(self) -> str: ...
    @property
    def status(self) -> RcptStatus: ...
    @property
    def reply(self) -> str: ...
    @property
    def mx(self) -> str: ...
    @property
    def attempt(self) -> int: ...


@dataclass(frozen=True, slots=True)
class _Context:
    """What every event of a message repeats."""

    sender: str
    tenant: str
    campaign: str
    tags: tuple[str, ...]
    metadata: Mapping[str, str]


_UNKNOWN = _Context("", "", "", (), {})


class EventHub:
    """Builds events and fans them out (see the module docstring)."""

    def __init__(
        self,
        lookup: Callable[[str], MessageMeta | None],
        *,
        log_events: LogChoice = "others",
        clock: Callable[[], float] = time.time,
        cache_entries: int = CACHE_ENTRIES,
    ) -> None:
        self._lookup = lookup
        self._logged: frozenset[str] = frozenset(
            EVENT_NAMES if log_events == "all" else _SELF_LOGGED if log_events == "others" else ()
        )
        self._clock = clock
        self._cache: OrderedDict[str, _Context] = OrderedDict()
        self._cache_entries = cache_entries
        self._subscribers: list[Subscriber] = []
        #: Events published so far, by name.
        self.counts: dict[EventName, int] = dict.fromkeys(EVENT_NAMES, 0)

    def subscribe(self, subscriber: Subscriber) -> None:
        """Have `subscriber` called with every event (it must not block)."""
        self._subscribers.append(subscriber)

    # --- wiring -----------------------------------------------------------------------

    def reporting_stored(self, hook: StoredHook) -> StoredHook:
        """Ingest's on-stored hook that also publishes ``accepted`` (after `hook`)."""

        def stored(meta: MessageMeta) -> None:
            hook(meta)
            self.accepted(meta)

        return stored

    def reporting_bounces(self, hook: BounceHook) -> BounceHook:
        """The scheduler's bounce hook that publishes ``bounced``/``expired`` first."""

        async def bounced(meta: MessageMeta, recipients: Sequence[Recipient]) -> None:
            self.bounced(meta, recipients)
            await hook(meta, recipients)

        return bounced

    # --- sources ----------------------------------------------------------------------

    def _wanted(self, name: EventName, count: int = 1) -> bool:
        """False (and counted) when nobody wants such an event built: no subscriber,
        not logged -- the common case without webhooks costs a counter only."""
        if self._subscribers or name in self._logged:
            return True
        self.counts[name] += count
        return False

    def accepted(self, meta: MessageMeta) -> None:
        """A message was stored (ingest's on-stored hook)."""
        if not self._wanted("accepted", len(meta.recipients)):
            return
        context = self._remember(meta)
        for rcpt in meta.recipients:
            self._publish("accepted", meta.id, rcpt.address, "", context)

    def outcome(self, outcome: Outcome) -> None:
        """A delivery attempt's outcome for one recipient (DeliveryEngine on_event)."""
        if outcome.status is RcptStatus.DELIVERED:
            name: EventName = "delivered"
        elif outcome.status is RcptStatus.DEFERRED:
            name = "deferred"
        else:
            return  # reported by the bounce hook, once the spool has it
        if not self._wanted(name):
            return
        self._publish(
            name,
            outcome.message_id,
            outcome.recipient,
            outcome.reply,
            self._context(outcome.message_id),
            mx=outcome.mx,
            attempt=outcome.attempt,
        )

    def bounced(self, meta: MessageMeta, recipients: Sequence[Recipient]) -> None:
        """Recipients failed for good (the scheduler's bounce hook): bounced or expired."""
        context = self._remember(meta)
        for rcpt in recipients:
            name: EventName = "expired" if is_expiry(rcpt.reply) else "bounced"
            self._publish(name, meta.id, rcpt.address, rcpt.reply, context, attempt=rcpt.attempts)
        if meta.is_final:
            self._cache.pop(meta.id, None)

    def rejected(
        self,
        recipients: Sequence[str],
        reply: str,
        *,
        sender: str,
        tenant: str = "",
        campaign: str = "",
        tags: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """A message was refused at the door (nothing stored): one event per recipient."""
        context = _Context(sender, tenant, campaign, tuple(tags), dict(metadata or {}))
        for address in recipients:
            self._publish("rejected", None, address, reply, context)

    # --- internals ----------------------------------------------------------------------

    def _remember(self, meta: MessageMeta) -> _Context:
        context = _Context(meta.sender, meta.tenant, meta.campaign, meta.tags, meta.metadata)
        cache = self._cache
        cache[meta.id] = context
        if len(cache) > self._cache_entries:
            cache.popitem(last=False)
        return context

    def _context(self, message_id: str) -> _Context:
        context = self._cache.get(message_id)
        if context is not None:
            return context
        try:
            meta = self._lookup(message_id)
        except Exception as exc:  # a spool read error must not stop delivery reports
            _log.warning("events.lookup_failed", message_id=message_id, error=repr(exc))
            meta = None
        return _UNKNOWN if meta is None else self._remember(meta)

    def _publish(
        self,
        name: EventName,
        message_id: str | None,
        recipient: str,
        reply: str,
        context: _Context,
        *,
        mx: str = "",
        attempt: int = 0,
    ) -> None:
        self.counts[name] += 1
        now = self._clock()
        event = Event(
            id=new_message_id(now),
            event=name,
            timestamp=now,
            message_id=message_id,
            recipient=recipient,
            reply=reply,
            sender=context.sender,
            tenant=context.tenant,
            campaign=context.campaign,
            tags=context.tags,
            metadata=context.metadata,
            mx=mx,
            attempt=attempt,
        )
        if name in self._logged:
            _log.info(
                "event",
                event_type=name,
                event_id=event.id,
                message_id=message_id,
                recipient=recipient,
                reply=reply,
                tenant=context.tenant,
                tags=list(context.tags),
            )
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception as exc:
                _log.error("events.subscriber_failed", event_type=name, error=repr(exc))
