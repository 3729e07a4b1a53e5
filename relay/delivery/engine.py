"""The delivery engine: a session pool per ready queue, under one nursery.

Composition (the application does this)::

    router = Router(config, mx_resolver(config.delivery))
    bounces = BounceGenerator(spool, ingest, reporting_mta=config.server.hostname)
    engine = DeliveryEngine(config, spool, router, bounces=bounces)
    scheduler = Scheduler(
        spool,
        ready_key=router.ready_key,
        on_ready_queue=engine.on_ready_queue,
        bounce_hook=bounces,
        destination=destination_policy(config.delivery, shard_count=N, shard_index=i),
        retry=retry_policy(config.delivery),
        max_rcpt_per_txn=config.delivery.max_recipients_per_transaction,
    )
    engine.attach(scheduler)
    ... nursery.start(scheduler.run); await nursery.start(engine.run)
    ... on SIGTERM: await engine.stop(trio.current_time() + grace)

`run` starts a `SitePool` (relay.delivery.pool) for every ready queue the
scheduler announces.  `stop(deadline)` takes no new jobs, lets the sessions finish
the transaction they are in until `deadline` (trio time) and cancels what is left
then; every job not reported is handed back to the scheduler, and reports already
made are written to the spool before `run` returns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from relay.config import Config
from relay.delivery.bounce import BounceGenerator
from relay.delivery.connector import Connector, Timeouts
from relay.delivery.outcome import DeliveryEvent
from relay.delivery.pool import PoolContext, SessionSettings, SitePool
from relay.delivery.reporter import Reporter
from relay.delivery.routing import Router
from relay.delivery.tls import TlsContexts, TlsFailureMemory
from relay.log import get_logger
from relay.model import RcptStatus
from relay.scheduler import ReadyQueue, Scheduler
from relay.spool import Spool

_log = get_logger("delivery")

#: Reports (spool writes) in flight at most before sessions wait for them.
MAX_PENDING_REPORTS = 1000


@dataclass(frozen=True, slots=True)
class DeliveryStatistics:
    """A snapshot of the engine."""

    pools: int  # ready queues being served
    sessions: int  # sessions running now
    connections: int  # connections made so far
    tls_sessions: int  # of which upgraded with STARTTLS
    delivered: int  # recipient outcomes so far, by kind
    deferred: int
    bounced: int
    pending_reports: int  # outcomes not yet written to the spool


class DeliveryEngine:
    """Delivers what the scheduler makes ready (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        spool: Spool,
        router: Router,
        *,
        bounces: BounceGenerator | None = None,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[DeliveryEvent], None] | None = None,
        max_pending_reports: int = MAX_PENDING_REPORTS,
    ) -> None:
        delivery = config.delivery
        self._spool = spool
        self._router = router
        self._bounces = bounces
        self._clock = clock
        self._on_event = on_event
        self._max_pending_reports = max_pending_reports
        self.settings = SessionSettings(
            max_messages_per_connection=delivery.max_messages_per_connection,
            idle_timeout=delivery.idle_session_timeout,
            timeouts=Timeouts(
                connect=delivery.connect_timeout,
                command=delivery.command_timeout,
                data_end=delivery.data_end_timeout,
            ),
        )
        self.tls_memory = TlsFailureMemory(delivery.tls_failure_memory)
        self.connector = Connector(
            router,
            tls=TlsContexts(delivery.ca_file or None),
            tls_memory=self.tls_memory,
            timeouts=self.settings.timeouts,
        )
        self._scheduler: Scheduler | None = None
        self._reporter: Reporter | None = None
        self._nursery: trio.Nursery | None = None
        self._announced: list[ReadyQueue] = []
        self._pools: dict[int, SitePool] = {}
        self._stopping = False
        self._deadline = math.inf
        self._stop_requested = trio.Event()
        self._finished = trio.Event()
        self._running = False

    # --- composition --------------------------------------------------------------------

    def attach(self, scheduler: Scheduler) -> None:
        """The scheduler whose ready queues this engine serves (set once, before `run`)."""
        if self._scheduler is not None:
            raise RuntimeError("the delivery engine is already attached to a scheduler")
        self._scheduler = scheduler

    def on_ready_queue(self, ready: ReadyQueue) -> None:
        """The scheduler's `on_ready_queue` hook: serve this new ready queue."""
        if self._stopping:
            return
        if self._nursery is None:
            self._announced.append(ready)
            return
        self._start_pool(ready)

    @property
    def stopping(self) -> bool:
        """True once `stop` was called."""
        return self._stopping

    @property
    def pools(self) -> list[SitePool]:
        """The pools running now."""
        return list(self._pools.values())

    # --- running ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the scheduler's ready queues until `stop` (or cancellation)."""
        scheduler = self._scheduler
        if scheduler is None:
            raise RuntimeError("attach() a scheduler before running the delivery engine")
        if self._running:
            raise RuntimeError("the delivery engine is already running")
        self._running = True
        try:
            async with trio.open_nursery() as reports:
                self._reporter = Reporter(
                    scheduler, reports, limit=self._max_pending_reports, on_event=self._on_event
                )
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for ready in [*scheduler.ready_queues.values(), *self._announced]:
                        self._start_pool(ready)
                    self._announced.clear()
                    task_status.started()
                    _log.info("delivery.started")
                    await self._stop_requested.wait()
                    nursery.cancel_scope.deadline = self._deadline
                    for pool in self._pools.values():
                        pool.stop()
                self._nursery = None
                self._release_queued(scheduler)
        finally:
            self._nursery = None
            self._finished.set()
            _log.info("delivery.stopped", **self._counts())

    def _start_pool(self, ready: ReadyQueue) -> None:
        if ready.closed or id(ready) in self._pools:
            return
        assert self._nursery is not None and self._scheduler is not None
        assert self._reporter is not None
        context = PoolContext(
            scheduler=self._scheduler,
            spool=self._spool,
            router=self._router,
            connector=self.connector,
            reporter=self._reporter,
            settings=self.settings,
            clock=self._clock,
            stopping=lambda: self._stopping,
            stash_headers=self._bounces.stash if self._bounces is not None else None,
        )
        try:
            pool = SitePool(ready, context)
        except TypeError as exc:
            _log.error("delivery.unusable_ready_queue", error=str(exc))
            return
        self._pools[id(ready)] = pool
        self._nursery.start_soon(self._run_pool, pool, name=f"delivery {pool.key}")

    async def _run_pool(self, pool: SitePool) -> None:
        try:
            await pool.run()
        finally:
            del self._pools[id(pool.ready)]

    def _release_queued(self, scheduler: Scheduler) -> None:
        """Hand back the jobs still waiting in ready queues (after a stop)."""
        released = 0
        for ready in list(scheduler.ready_queues.values()):
            for job in ready.take_all():
                scheduler.release(job)
                released += 1
        if released:
            _log.info("delivery.released", jobs=released)

    async def stop(self, deadline: float) -> None:
        """Stop gracefully: no new jobs; transactions under way may finish until
        `deadline` (trio time, e.g. ``trio.current_time() + grace``).  Returns once
        `run` is over."""
        self._stopping = True
        self._deadline = deadline
        self._stop_requested.set()
        if self._running:
            await self._finished.wait()

    # --- views --------------------------------------------------------------------------

    def _counts(self) -> dict[str, int]:
        counts = self._reporter.counts if self._reporter is not None else {}
        return {
            "delivered": counts.get(RcptStatus.DELIVERED, 0),
            "deferred": counts.get(RcptStatus.DEFERRED, 0),
            "bounced": counts.get(RcptStatus.BOUNCED, 0),
        }

    def statistics(self) -> DeliveryStatistics:
        """Counters and gauges for monitoring and the run summary."""
        counts = self._counts()
        return DeliveryStatistics(
            pools=len(self._pools),
            sessions=sum(pool.sessions for pool in self._pools.values()),
            connections=self.connector.connections,
            tls_sessions=self.connector.tls_sessions,
            delivered=counts["delivered"],
            deferred=counts["deferred"],
            bounced=counts["bounced"],
            pending_reports=self._reporter.pending if self._reporter is not None else 0,
        )
