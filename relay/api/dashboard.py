"""The figures behind the /status page: queue depth over time, rates, destinations.

Theory of operation: `DomainOutcomes` hears every delivery outcome of the shard
(relay.app wraps the delivery engine's `on_event` with `note`) and keeps, per
recipient domain, the counts and the last failure -- a dict update per outcome,
nothing that waits.  `StatusBoard` samples the shard's `Activity` (queue depth and
outcome counters, read from the live components through `AdminOps.activity`)
every `interval` seconds into a bounded ring, so the page can draw the queue over
the last minutes and derive the delivery rate from two samples; `document()` is
the GET /admin/v1/status.json body.  Nothing here touches the spool: a page left
open costs one sample per interval and one small JSON per refresh.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from relay.api.fields import rfc3339
from relay.events.hub import Outcome
from relay.model import RcptStatus, domain_of

#: Samples kept (at the default interval: ten minutes).
SAMPLES = 300
SAMPLE_INTERVAL = 2.0
#: Rates are averaged over this many seconds of samples.
RATE_WINDOW = 60.0
#: Recipient domains remembered by `DomainOutcomes` (least recently active dropped).
MAX_DOMAINS = 2000
#: Rows of each table in the status document.
TOP = 15
MAX_REPLY = 300


@dataclass(frozen=True, slots=True)
class SiteActivity:
    """One ready queue (egress source x MX site) and the sessions delivering it."""

    name: str
    sessions: int  # SMTP sessions open now
    queued: int  # jobs waiting in the ready queue
    window: int  # concurrency window (feedback)
    dead: bool  # in the cool-down after repeated connection failures


@dataclass(frozen=True, slots=True)
class DomainActivity:
    """Delivery outcomes of one recipient domain since the shard started."""

    domain: str
    delivered: int
    deferred: int
    bounced: int
    last_error: str  # the last 4xx/5xx reply ("" when none)
    last_error_mx: str
    last_error_at: float | None


@dataclass(frozen=True, slots=True)
class Activity:
    """What the shard is doing now (read from its live components)."""

    queued: int  # messages in the spool's queue
    delivered: int  # recipient outcomes since start
    deferred: int
    bounced: int
    sessions: int  # delivery sessions open now
    sites: tuple[SiteActivity, ...] = ()
    domains: tuple[DomainActivity, ...] = ()


class _DomainCounts:
    __slots__ = ("bounced", "deferred", "delivered", "error", "error_at", "error_mx")

    def __init__(self) -> None:
        self.delivered = 0
        self.deferred = 0
        self.bounced = 0
        self.error = ""
        self.error_mx = ""
        self.error_at: float | None = None


class DomainOutcomes:
    """Counts and last failure per recipient domain (see the module docstring)."""

    def __init__(
        self, *, max_domains: int = MAX_DOMAINS, clock: Callable[[], float] = time.time
    ) -> None:
        self._domains: OrderedDict[str, _DomainCounts] = OrderedDict()
        self._max = max_domains
        self._clock = clock

    def note(self, outcome: Outcome) -> None:
        """Count one recipient outcome (the delivery engine's `on_event`)."""
        domain = domain_of(outcome.recipient)
        counts = self._domains.get(domain)
        if counts is None:
            counts = self._domains[domain] = _DomainCounts()
            if len(self._domains) > self._max:
                self._domains.popitem(last=False)
        else:
            self._domains.move_to_end(domain)
        status = outcome.status
        if status is RcptStatus.DELIVERED:
            counts.delivered += 1
            return
        if status is RcptStatus.DEFERRED:
            counts.deferred += 1
        else:
            counts.bounced += 1
        counts.error = outcome.reply[:MAX_REPLY]
        counts.error_mx = outcome.mx
        counts.error_at = self._clock()

    def snapshot(self) -> tuple[DomainActivity, ...]:
        """Every remembered domain, most recently active first."""
        return tuple(
            DomainActivity(
                domain, c.delivered, c.deferred, c.bounced, c.error, c.error_mx, c.error_at
            )
            for domain, c in reversed(self._domains.items())
        )


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    queued: int
    delivered: int
    deferred: int
    bounced: int


class StatusBoard:
    """Samples `activity()` into a ring and renders the status document."""

    def __init__(
        self,
        activity: Callable[[], Activity],
        *,
        shard: int,
        interval: float = SAMPLE_INTERVAL,
        samples: int = SAMPLES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._activity = activity
        self._shard = shard
        self.interval = interval
        self._clock = clock
        self.samples: deque[Sample] = deque(maxlen=samples)

    def sample(self) -> Activity:
        """Take one sample now; returns the activity it read."""
        now = self._activity()
        self.samples.append(
            Sample(self._clock(), now.queued, now.delivered, now.deferred, now.bounced)
        )
        return now

    async def run(self) -> None:
        """Sample every `interval` seconds, forever."""
        while True:
            self.sample()
            await trio.sleep(self.interval)

    def _rates(self, samples: list[Sample]) -> dict[str, float]:
        """Per-second rates over the last minute of samples (0 until they span a second)."""
        names = ("delivered", "deferred", "bounced")
        last = samples[-1]
        first = next(s for s in samples if last.at - s.at <= RATE_WINDOW)
        span = last.at - first.at
        if span < 1.0:
            return dict.fromkeys(names, 0.0)
        return {
            name: round((getattr(last, name) - getattr(first, name)) / span, 3) for name in names
        }

    def document(self) -> dict[str, Any]:
        """The GET /admin/v1/status.json body (takes a fresh sample first)."""
        now = self.sample()
        samples = list(self.samples)
        sites = sorted(now.sites, key=lambda s: (-(s.sessions + s.queued), s.name))[:TOP]
        failing = [d for d in now.domains if d.last_error_at is not None]
        failing.sort(key=lambda d: -(d.last_error_at or 0.0))
        busiest = sorted(
            now.domains, key=lambda d: (-(d.delivered + d.deferred + d.bounced), d.domain)
        )
        return {
            "shard": self._shard,
            "now": rfc3339(self._clock()),
            "interval": self.interval,
            "queued": now.queued,
            "sessions": now.sessions,
            "totals": {
                "delivered": now.delivered,
                "deferred": now.deferred,
                "bounced": now.bounced,
            },
            "rates": self._rates(samples),
            "history": [[round(s.at, 3), s.queued, s.delivered] for s in samples],
            "sites": [
                {
                    "name": s.name,
                    "sessions": s.sessions,
                    "queued": s.queued,
                    "window": s.window,
                    "dead": s.dead,
                }
                for s in sites
            ],
            "domains": [_domain_row(d) for d in busiest[:TOP]],
            "errors": [_domain_row(d) for d in failing[:TOP]],
        }


def _domain_row(d: DomainActivity) -> dict[str, Any]:
    return {
        "domain": d.domain,
        "delivered": d.delivered,
        "deferred": d.deferred,
        "bounced": d.bounced,
        "last_error": d.last_error,
        "last_error_mx": d.last_error_mx,
        "last_error_at": rfc3339(d.last_error_at),
    }
