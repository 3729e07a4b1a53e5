"""The sessions of one ready queue (one egress source x destination site).

Theory of operation
-------------------
A `SitePool` has one intake task and up to N session tasks.  The intake is the only
caller of `ReadyQueue.get()`; it hands each job to an idle session through an
unbuffered channel, or, when no session is idle, starts a new one with the job, as
long as the concurrency allows it: the destination's feedback window (it starts
low, grows with deliveries and halves at once on a failed connection or a 421,
relay.scheduler.policy), never above the site's cap, and one connection token per
new session (the connection rate).  Otherwise the intake waits, holding the job,
until a session asks for work or the situation changes (a session ending wakes it).
A destination declared dead gets no session: its jobs go back to the scheduler
until the cool-down is over.  Sessions are thus started as the queue fills.

A session connects (relay.delivery.connector), then delivers job after job on the
same connection (relay.delivery.transaction), taking a message token before each
(the message rate), until `max_messages_per_connection`, a 421, a broken
connection, no job for `idle_session_timeout` seconds, a stop, or a window shrunk
below the number of sessions (the surplus sessions leave after their current
message).  A session's slot is given back only once its connection is closed, so
the destination never sees more connections than the cap.

Every job a task holds is accounted for on every path: reported (a result for each
recipient), or handed back to the scheduler untried (`release`) -- when a stop or
a cancellation comes before its outcome, when it was never tried on a dead cached
connection, or when its content is gone from the spool.  A session that fails
in a way nobody foresaw (a bug) is logged with its traceback and ends alone; its
job goes back to the scheduler for a later try.

A queue whose key is `Unroutable` has no sessions: each job gets the DNS failure
of its key as its outcome (bounced if permanent, deferred otherwise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from relay.delivery.channel import SmtpChannel
from relay.delivery.connector import Connector, SetupFailed, Timeouts
from relay.delivery.outcome import summary_reply, uniform_results
from relay.delivery.reporter import Reporter
from relay.delivery.routing import ReadyKey, Router, Unroutable
from relay.delivery.transaction import TransactionOutcome, run_transaction
from relay.errors import SpoolError
from relay.ingest import header_block
from relay.log import get_logger
from relay.model import Attempt, RcptStatus, RecipientResult
from relay.scheduler import Job, ReadyQueue, Scheduler
from relay.spool import Spool

#: How often a waiting intake looks at the concurrency again (besides being woken).
RECHECK_INTERVAL = 1.0
#: When a job whose session failed unexpectedly is tried again (seconds).
FAILED_SESSION_RETRY = 60.0

_log = get_logger("delivery")


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """How sessions behave (from `[delivery]`)."""

    max_messages_per_connection: int = 100
    idle_timeout: float = 5.0
    timeouts: Timeouts = field(default_factory=Timeouts)


@dataclass(frozen=True, slots=True)
class PoolContext:
    """What every pool of an engine shares."""

    scheduler: Scheduler
    spool: Spool
    router: Router
    connector: Connector
    reporter: Reporter
    settings: SessionSettings
    clock: Callable[[], float]  # wall clock, for attempt records
    stopping: Callable[[], bool]
    stash_headers: Callable[[str, bytes], None] | None  # for DSNs (BounceGenerator.stash)


class SitePool:
    """Runs the sessions of one ready queue (see the module docstring)."""

    def __init__(self, ready: ReadyQueue, ctx: PoolContext) -> None:
        if not isinstance(ready.key, ReadyKey):
            raise TypeError(f"ready queue key {ready.key!r} is not a delivery ReadyKey")
        self.ready = ready
        self.key: ReadyKey = ready.key
        self._ctx = ctx
        self.sessions = 0  # session tasks running (each holds at most one connection)
        self.peak_sessions = 0
        self._leaving = 0  # sessions on their way out after the window shrank
        self._intake = trio.CancelScope()
        self._waiting: trio.CancelScope | None = None
        self._send: trio.MemorySendChannel[Job] | None = None

    @property
    def cap(self) -> int:
        """The most sessions this pool ever runs (the site's share of max sessions)."""
        return self.ready.policy.feedback.maximum

    def limit(self) -> int:
        """Sessions allowed now: the feedback window within the cap (0 while dead)."""
        return min(self.ready.concurrency_limit(), self.cap)

    def stop(self) -> None:
        """Take no more jobs; idle sessions quit, busy ones after their transaction."""
        self._intake.cancel()

    # --- intake -----------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver the queue's jobs until it is closed or the pool is stopped."""
        if isinstance(self.key.site, Unroutable):
            await self._run_unroutable(self.key.site)
            return
        send, receive = trio.open_memory_channel[Job](0)
        async with receive, trio.open_nursery() as nursery, send:
            self._send = send
            with self._intake:
                while True:
                    try:
                        job = await self.ready.get()
                    except trio.EndOfChannel:
                        break
                    await self._place(job, nursery, receive)

    async def _place(
        self, job: Job, nursery: trio.Nursery, receive: trio.MemoryReceiveChannel[Job]
    ) -> None:
        """Give `job` to an idle session, a new session, or back to the scheduler."""
        assert self._send is not None
        placed = False
        try:
            while True:
                try:
                    self._send.send_nowait(job)
                    placed = True
                    return
                except trio.WouldBlock:
                    pass
                limit = self.limit()
                wait = RECHECK_INTERVAL
                if self.sessions < limit:
                    wait = self.ready.connection_wait()
                    if wait <= 0:
                        self.sessions += 1
                        self.peak_sessions = max(self.peak_sessions, self.sessions)
                        nursery.start_soon(self._session, job, receive)
                        placed = True
                        return
                elif limit == 0 and self.sessions == 0:
                    self._ctx.scheduler.release(job, self._dead_delay())
                    placed = True
                    return
                with trio.move_on_after(wait) as scope:
                    self._waiting = scope
                    try:
                        await self._send.send(job)
                        placed = True
                        return
                    finally:
                        self._waiting = None
        finally:
            if not placed:
                self._ctx.scheduler.release(job)

    def _dead_delay(self) -> float:
        dead_until = self.ready.feedback.dead_until
        if dead_until is None:
            return RECHECK_INTERVAL
        return max(RECHECK_INTERVAL, dead_until - trio.current_time())

    def _wake(self) -> None:
        """Something changed (a session ended): let a waiting intake look again."""
        if self._waiting is not None:
            self._waiting.cancel()

    def _leave_if_surplus(self) -> bool:
        """True (and counted) when this session is one too many for the window now."""
        if self.sessions - self._leaving > self.limit():
            self._leaving += 1
            return True
        return False

    # --- sessions ---------------------------------------------------------------------

    async def _session(self, job: Job, receive: trio.MemoryReceiveChannel[Job]) -> None:
        ctx = self._ctx
        settings = ctx.settings
        held: Job | None = job
        leaving = False
        at, started = ctx.clock(), trio.current_time()
        try:
            try:
                channel = await ctx.connector.open(
                    self.key, job.domain, ctx.router.source(self.key)
                )
            except SetupFailed as exc:
                if exc.connection:
                    self.ready.connection_failed()
                status = RcptStatus.BOUNCED if exc.permanent else RcptStatus.DEFERRED
                results = uniform_results(job.recipients, status, exc.reply, exc.mx)
                await self._report(job, results, at, started, exc.mx, tls=False)
                held = None
                return
            async with channel:
                while held is not None:
                    outcome = await self._deliver(channel, held, at, started)
                    held = None
                    if outcome.closing:
                        self.ready.throttled()
                        break
                    if outcome.broken:
                        if outcome.results is not None:
                            self.ready.connection_failed()
                        break
                    if channel.transactions >= settings.max_messages_per_connection:
                        break
                    if ctx.stopping():
                        break
                    if self._leave_if_surplus():
                        leaving = True
                        break
                    with (
                        trio.move_on_after(settings.idle_timeout),
                        contextlib.suppress(trio.EndOfChannel, trio.ClosedResourceError),
                    ):
                        held = await receive.receive()
                    at, started = ctx.clock(), trio.current_time()
                await channel.quit()
        except Exception as exc:
            # A bug or a case nobody foresaw must not take every destination down
            # with it: log it, put the job back for later, end this session only.
            _log.exception("delivery.session_failed", ready_key=str(self.key), error=repr(exc))
            if held is not None:
                ctx.scheduler.release(held, FAILED_SESSION_RETRY)
                held = None
        finally:
            if held is not None:
                ctx.scheduler.release(held)
            self.sessions -= 1
            if leaving:
                self._leaving -= 1
            self._wake()

    async def _deliver(
        self, channel: SmtpChannel, job: Job, at: float, started: float
    ) -> TransactionOutcome:
        """One job on an open session; the job is reported or released on return."""
        ctx = self._ctx
        await ctx.reporter.acquire()
        submitted = False
        try:
            while (wait := self.ready.message_wait()) > 0:
                await trio.sleep(wait)
            try:
                content = ctx.spool.read_content(job.message_id)
            except SpoolError:  # deleted or quarantined meanwhile: the scheduler drops it
                ctx.scheduler.release(job)
                return TransactionOutcome(None)
            outcome = await run_transaction(channel, job, content, ctx.settings.timeouts)
            if outcome.results is None:
                ctx.scheduler.release(job)
                return outcome
            if outcome.delivered:
                self.ready.delivered()
            self._stash(job, outcome.results, content)
            duration = trio.current_time() - started
            attempt = Attempt(
                at, channel.label, job.recipients, summary_reply(outcome.results), duration
            )
            ctx.reporter.submit(
                job,
                outcome.results,
                attempt,
                source=self.key.source,
                tls=channel.conn.tls_active,
            )
            submitted = True
            return outcome
        finally:
            if not submitted:
                ctx.reporter.discard()

    async def _report(
        self,
        job: Job,
        results: Sequence[RecipientResult],
        at: float,
        started: float,
        mx: str,
        *,
        tls: bool,
    ) -> None:
        """Report an outcome decided without a transaction (setup failure, DNS)."""
        ctx = self._ctx
        await ctx.reporter.acquire()
        self._stash(job, results, None)
        attempt = Attempt(
            at, mx, job.recipients, summary_reply(results), trio.current_time() - started
        )
        ctx.reporter.submit(job, results, attempt, source=self.key.source, tls=tls)

    def _stash(self, job: Job, results: Sequence[RecipientResult], content: bytes | None) -> None:
        """Keep the headers for a DSN when this report may bounce someone.

        The spool drops a message's content once every recipient is final, which
        happens in the report itself, before the bounce hook runs.
        """
        stash = self._ctx.stash_headers
        if stash is None:
            return
        bounces = any(r.status is RcptStatus.BOUNCED for r in results)
        expiring = job.expires <= self._ctx.clock() and any(
            r.status is RcptStatus.DEFERRED for r in results
        )
        if not (bounces or expiring):
            return
        if content is None:
            try:
                content = self._ctx.spool.read_content(job.message_id)
            except SpoolError:
                return
        stash(job.message_id, header_block(content))

    async def _run_unroutable(self, site: Unroutable) -> None:
        """Every job of the queue gets its key's DNS failure, without connecting."""
        status = RcptStatus.BOUNCED if site.permanent else RcptStatus.DEFERRED
        with self._intake:
            while True:
                try:
                    job = await self.ready.get()
                except trio.EndOfChannel:
                    return
                at, started = self._ctx.clock(), trio.current_time()
                reported = False
                try:
                    results = uniform_results(job.recipients, status, site.reply)
                    await self._report(job, results, at, started, "", tls=False)
                    reported = True
                finally:
                    if not reported:
                        self._ctx.scheduler.release(job)
