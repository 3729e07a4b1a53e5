"""Outcomes to the scheduler without holding up the sessions.

`Scheduler.report` commits the results to the spool (an fsync'd group commit) and
may enter a bounce through ingest.  A session does not wait for that: it reserves
a slot (`acquire`, before its transaction: the back-pressure when the spool is
slower than the wire), then hands its outcome over (`submit`) and goes on with the
next job.  Reports run in their own nursery, shielded from cancellation: a spool
write has a deadline of its own and is never abandoned halfway (a graceful stop
waits for them; only the process dying can lose one, and then the message is
simply tried again after restart).  Each submitted recipient outcome is logged as
``delivery.outcome`` and passed to `on_event` at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from relay.delivery.outcome import DeliveryEvent
from relay.log import get_logger
from relay.model import Attempt, RcptStatus, RecipientResult
from relay.scheduler import Job, Scheduler

_log = get_logger("delivery")


class Reporter:
    """Reports outcomes in the background, at most `limit` at a time."""

    def __init__(
        self,
        scheduler: Scheduler,
        nursery: trio.Nursery,
        *,
        limit: int,
        on_event: Callable[[DeliveryEvent], None] | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._nursery = nursery
        self._slots = trio.Semaphore(limit)
        self._on_event = on_event
        self.counts: dict[RcptStatus, int] = {s: 0 for s in RcptStatus}
        self.pending = 0

    async def acquire(self) -> None:
        """Reserve the slot of one coming report (waits while `limit` are pending)."""
        await self._slots.acquire()

    def discard(self) -> None:
        """Give back a reserved slot that will not be used."""
        self._slots.release()

    def submit(
        self,
        job: Job,
        results: Sequence[RecipientResult],
        attempt: Attempt,
        *,
        source: str,
        tls: bool = False,
    ) -> None:
        """Account for `results` now and report them (uses the slot reserved before)."""
        for result in results:
            self.counts[result.status] += 1
            event = DeliveryEvent.of(
                job, result, duration=attempt.duration, at=attempt.at, source=source, tls=tls
            )
            _log.info(
                "delivery.outcome",
                message_id=event.message_id,
                recipient=event.recipient,
                status=event.status.name.lower(),
                mx=event.mx,
                reply=event.reply,
                attempt=event.attempt,
                duration=round(event.duration, 6),
                tenant=event.tenant,
                campaign=event.campaign,
                source=event.source,
                tls=event.tls,
            )
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except Exception as exc:
                    _log.error("delivery.on_event_failed", error=repr(exc))
        self.pending += 1
        self._nursery.start_soon(self._report, job, results, attempt)

    async def _report(self, job: Job, results: Sequence[RecipientResult], attempt: Attempt) -> None:
        try:
            with trio.CancelScope(shield=True):
                await self._scheduler.report(job, results, attempt)
        except Exception as exc:  # the scheduler logs spool failures; this is the rest
            _log.error("delivery.report_failed", message_id=job.message_id, error=repr(exc))
        finally:
            self.pending -= 1
            self._slots.release()
