"""The scheduler: scheduled queues, timers, ready queues and delivery outcomes.

Theory of operation
-------------------
Memory.  Per queued message and recipient domain the scheduler keeps one entry:
a `bytes` of due time and packed id (relay.scheduler.ids), in the heap of the
scheduled queue for (tenant, campaign, domain).  No content, no addresses, no
metadata: whatever a delivery needs is read from the spool when the entry's time
has come.  Everything else is per queue (a few hundred bytes each) or per job in
flight (bounded by the ready queues' capacities).

Time.  Absolute times (next attempt, expiry, send_at) are wall-clock seconds from
the injected `clock` (time.time by default) because they are persisted.  Sleeping
uses trio's clock, so a MockClock drives everything in tests (inject
``clock=lambda: T0 + trio.current_time()``).  A wake-up heap holds, per idle
scheduled queue, the time its head falls due; the dispatcher task sleeps until the
earliest one or until it is kicked (new earlier work, room in a ready queue, a
resumed suspension).

Fairness.  Queues with due work sit in a round-robin; the dispatcher takes one
(message, domain) entry from the queue at the front, then moves that queue to the
back.  A campaign of a million messages is one queue among others, so a small
tenant's transactional mail waits for one turn of the round-robin (plus, where
both share a destination, the jobs already in its bounded ready queue), not for
the campaign to drain.

Back-pressure.  An entry is only taken from its scheduled queue when the ready queue
it maps to (``await ready_key(domain, tenant)``, provided by the delivery side and
cached per scheduled queue) has room.  Otherwise the scheduled queue is parked on
that ready queue and woken when a delivery session takes a job from it: due work
stays in its compact form until a destination can take it.

Dispatch.  For an entry that is due, the message's metadata is read from the spool
and checked: a deleted or finished message, or a domain with nothing pending, is
skipped; a message rescheduled later than the entry (by an admin tool) is queued
again at its new time; an expired one has its pending recipients bounced (4.4.7)
by an expiry worker; otherwise its pending recipients for the domain become one or
more `Job`s (at most `max_rcpt_per_txn` recipients each) in the ready queue.  The
(message, domain) pair is "in flight" until every one of its jobs is reported (or
released); entries for a pair in flight are duplicates and are dropped.

Outcomes.  `report()` writes results through `spool.record_results`, turns deferred
recipients of an expired message into 4.4.7 bounces, calls the bounce hook for
bounced recipients, and once the last job of the pair is in, schedules the pair
again at now + backoff (with jitter) if anything was deferred.  The message's
persisted `next_attempt` is the retry time, or, when other domains of the message
are still pending, the earlier of that and the previous value (so that after a
restart no domain is tried later than it would have been).

Admin changes.  Suspensions live in the spool's "suspensions" aux table and
requests from the `relay queue` command in its "control" table (relay.scheduler
.control); a control task re-reads both every `refresh_interval` seconds.  A
suspended queue leaves the round-robin; ready jobs of a suspended domain or tenant
are handed back when a session would take them.  A "refresh" request re-reads the
named messages and re-aligns their entries with the spool (retry now, delete,
bounce); in any case every job is verified against the spool when it is made.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import trio

from relay.errors import SpoolError, UnknownMessageError
from relay.log import get_logger
from relay.model import (
    Attempt,
    MessageMeta,
    RcptStatus,
    Recipient,
    RecipientResult,
    ScheduleRecord,
    domain_of,
)
from relay.scheduler import control
from relay.scheduler.ids import (
    MAX_MS,
    due_ms,
    entry_due,
    entry_due_ms,
    entry_id,
    make_entry,
    pack_canonical,
    pack_id,
    unpack_id,
)
from relay.scheduler.policy import (
    DestinationPolicy,
    RandomSource,
    RetryPolicy,
    default_rng,
    expiry_reply,
    is_expired,
)
from relay.scheduler.queues import (
    Job,
    QueueKey,
    QueueState,
    ReadyQueue,
    ReadyQueueStatistics,
    ScheduledQueue,
)
from relay.spool import Spool

_log = get_logger("scheduler")

ReadyKeyFunction = Callable[[str, str], Awaitable[Hashable]]
BounceHook = Callable[[MessageMeta, Sequence[Recipient]], Awaitable[None]]
DestinationPolicyFunction = Callable[[Hashable], DestinationPolicy]

#: The reply recorded for a recipient a delivery session reported nothing about.
NO_OUTCOME_REPLY = "451 4.4.0 No outcome reported for this recipient"
#: Longest the dispatcher sleeps without looking at the wall clock again.
MAX_SLEEP = 30.0
#: How long a scheduled queue waits after its ready-key function failed.
READY_KEY_RETRY = 30.0
#: Ready-key (DNS) lookups under way at once.
RESOLVE_CONCURRENCY = 64
#: How long the dispatcher waits for a ready-key lookup before moving on to other queues.
INLINE_RESOLVE_WAIT = 0.02
#: Serial of the placeholder "job" that marks a pair being expired.
_EXPIRING = -1


async def domain_ready_key(domain: str, tenant: str) -> Hashable:
    """The default ready key: one ready queue per recipient domain."""
    return domain


@dataclass(slots=True)
class _Lookup:
    """A ready-key lookup the dispatcher may stop waiting for (then it is detached)."""

    done: trio.Event
    detached: bool = False


@dataclass(slots=True)
class _InFlight:
    """A (message, domain) pair whose jobs are out."""

    key: QueueKey
    outstanding: set[int]
    retry_at: float | None = None  # set once something was deferred or released


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    """A snapshot of the scheduler's queues."""

    scheduled: int  # entries in scheduled queues
    queues: int  # scheduled queues
    active: int  # queues with due work in the round-robin
    parked: int  # queues waiting for room in a ready queue
    suspended: int  # queues held back by a suspension
    in_flight: int  # (message, domain) pairs with jobs out
    ready: tuple[ReadyQueueStatistics, ...] = field(default=())
    suspended_domains: frozenset[str] = frozenset()
    suspended_tenants: frozenset[str] = frozenset()


class Scheduler:
    """Decides when each queued message goes, and hands it to delivery when it may.

    `add()` (ingest, after a store) and `recover()` (at start) fill it; `run()` is
    its task; delivery takes jobs from `ready_queues` (announced through
    `on_ready_queue`) and answers with `report()` or `release()`.
    """

    def __init__(
        self,
        spool: Spool,
        *,
        ready_key: ReadyKeyFunction = domain_ready_key,
        retry: RetryPolicy | None = None,
        destination: DestinationPolicy | DestinationPolicyFunction | None = None,
        ready_capacity: int = 1000,
        max_rcpt_per_txn: int = 100,
        bounce_hook: BounceHook | None = None,
        on_ready_queue: Callable[[ReadyQueue], None] | None = None,
        clock: Callable[[], float] = time.time,
        rng: RandomSource | None = None,
        refresh_interval: float = 5.0,
        ready_key_ttl: float = 60.0,
        ready_idle_ttl: float = 600.0,
        expiry_workers: int = 16,
    ) -> None:
        if ready_capacity < 1 or max_rcpt_per_txn < 1 or expiry_workers < 1:
            raise ValueError("capacities and worker counts must be positive")
        self.spool = spool
        self.retry = retry or RetryPolicy()
        self._ready_key_fn = ready_key
        self._destination = destination or DestinationPolicy()
        self._ready_capacity = ready_capacity
        self._max_rcpt = max_rcpt_per_txn
        self._bounce_hook = bounce_hook
        self._on_ready_queue = on_ready_queue
        self._clock = clock
        self._rng: RandomSource = rng or default_rng()
        self._refresh_interval = refresh_interval
        self._ready_key_ttl = ready_key_ttl
        self._ready_idle_ttl = ready_idle_ttl
        self._expiry_workers = expiry_workers

        self._queues: dict[tuple[str, str, str], ScheduledQueue] = {}  # by QueueKey
        self._wakeups: list[tuple[int, int, ScheduledQueue]] = []
        self._active: deque[ScheduledQueue] = deque()
        self._ready: dict[Hashable, ReadyQueue] = {}
        self._in_flight: dict[tuple[bytes, str], _InFlight] = {}
        self._suspended_domains: frozenset[str] = frozenset()
        self._suspended_tenants: frozenset[str] = frozenset()
        self._seq = itertools.count()
        self._serials = itertools.count(1)
        self._kick = trio.Event()
        self._expiry_send: trio.MemorySendChannel[tuple[MessageMeta, str]] | None = None
        self._interned: dict[str, str] = {}
        self._nursery: trio.Nursery | None = None
        self._refreshing: set[QueueKey] = set()
        self._resolve_limiter = trio.CapacityLimiter(RESOLVE_CONCURRENCY)

    # --- filling the queues -------------------------------------------------------------

    def add(self, item: MessageMeta | ScheduleRecord) -> None:
        """Schedule a message just stored (ingest) or read back (recovery).

        One entry per recipient domain with recipients not yet final, due at the
        message's next attempt.  Call it once per message: entries are not deduplicated.
        """
        if isinstance(item, MessageMeta):
            domains: Iterable[str] = dict.fromkeys(
                domain_of(r.address) for r in item.recipients if not r.status.is_final
            )
        else:
            domains = item.domains
        entry = make_entry(item.next_attempt, pack_id(item.id))
        for domain in domains:
            self._push((item.tenant, item.campaign, domain), entry)

    async def recover(self, *, batch: int = 10_000) -> int:
        """Read every queued message's schedule record back (at start, before ingest).

        Reads `spool.iter_schedule()` only (no metadata, no content) and lets other
        tasks run every `batch` records.  Returns how many messages were scheduled.
        """
        count = 0
        heaps: dict[tuple[str, str, str], list[bytes]] = {}
        for key, queue in self._queues.items():
            heaps[key] = queue.heap
        new_queue = self._new_queue
        for record in self.spool.iter_schedule():
            # The body of add(), inlined: this loop runs a million times at start.
            ms = int(record.next_attempt * 1000.0)
            packed = pack_canonical(record.id) or pack_id(record.id)
            entry = (ms if 0 <= ms <= MAX_MS else due_ms(record.next_attempt)).to_bytes(
                8, "big"
            ) + packed
            tenant, campaign = record.tenant, record.campaign
            for domain in record.domains:
                heap = heaps.get((tenant, campaign, domain))
                if heap is None:
                    heap = heaps[(tenant, campaign, domain)] = new_queue(
                        tenant, campaign, domain
                    ).heap
                heap.append(entry)  # heapified below
            count += 1
            if count % batch == 0:
                await trio.lowlevel.checkpoint()
        for queue in self._queues.values():
            heapq.heapify(queue.heap)
            if queue.heap and queue.state is QueueState.IDLE:
                self._register_wakeup(queue, entry_due_ms(queue.heap[0]))
        self._kick.set()
        _log.info("scheduler.recovered", messages=count, queues=len(self._queues))
        return count

    def _new_queue(self, tenant: str, campaign: str, domain: str) -> ScheduledQueue:
        """Create the scheduled queue of a key (with its strings interned)."""
        intern = self._intern
        key = QueueKey(intern(tenant), intern(campaign), intern(domain))
        queue = self._queues[key] = ScheduledQueue(key)
        return queue

    def _intern(self, text: str) -> str:
        """One string object per distinct tenant, campaign and domain."""
        return self._interned.setdefault(text, text)

    def _push(self, key: tuple[str, str, str], entry: bytes) -> None:
        """Add an entry to the scheduled queue of (tenant, campaign, domain)."""
        queue = self._queues.get(key)
        if queue is None:
            queue = self._new_queue(*key)
        heapq.heappush(queue.heap, entry)
        if queue.state is QueueState.IDLE:
            self._register_wakeup(queue, entry_due_ms(entry))

    def _register_wakeup(self, queue: ScheduledQueue, ms: int) -> None:
        """Make sure an idle queue is woken at `ms` (or earlier)."""
        if queue.wake_ms is not None and queue.wake_ms <= ms:
            return
        queue.wake_ms = ms
        heapq.heappush(self._wakeups, (ms, next(self._seq), queue))
        if self._wakeups[0][2] is queue:
            self._kick.set()
        if len(self._wakeups) > 4 * len(self._queues) + 1024:
            self._compact_wakeups()

    def _compact_wakeups(self) -> None:
        """Drop superseded wake-ups (left behind when a queue's wake-up moved earlier)."""
        self._wakeups = [
            (queue.wake_ms, next(self._seq), queue)
            for queue in self._queues.values()
            if queue.wake_ms is not None and queue.state is QueueState.IDLE
        ]
        heapq.heapify(self._wakeups)
        self._kick.set()

    def _settle(self, queue: ScheduledQueue, now_ms: int) -> None:
        """An IDLE queue: into the round-robin if its head is due, else wait for it."""
        if not queue.heap:
            if queue.wake_ms is None and self._queues.get(queue.key) is queue:
                del self._queues[queue.key]
            return
        head = entry_due_ms(queue.heap[0])
        if head <= now_ms:
            queue.state = QueueState.ACTIVE
            queue.wake_ms = None
            self._active.append(queue)
            self._kick.set()
        else:
            self._register_wakeup(queue, head)

    def _promote(self, now_ms: int) -> None:
        """Move every queue whose wake-up time has come into the round-robin."""
        wakeups = self._wakeups
        while wakeups and wakeups[0][0] <= now_ms:
            ms, _, queue = heapq.heappop(wakeups)
            if queue.wake_ms != ms or queue.state is not QueueState.IDLE:
                continue  # superseded by an earlier wake-up, or no longer idle
            queue.wake_ms = None
            self._settle(queue, now_ms)

    # --- the dispatcher -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the dispatcher, the expiry workers and the control task until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            send, receive = trio.open_memory_channel[tuple[MessageMeta, str]](self._ready_capacity)
            self._expiry_send = send
            async with receive:
                for _ in range(self._expiry_workers):
                    nursery.start_soon(self._expiry_worker, receive.clone())
            await self._control_once()
            nursery.start_soon(self._control_loop)
            task_status.started()
            await self._dispatch_loop()

    async def _dispatch_loop(self) -> None:
        while True:
            now = self._clock()
            self._promote(due_ms(now))
            if not self._active:
                kick = self._kick
                delay = MAX_SLEEP
                if self._wakeups:
                    delay = min(delay, max(0.0, self._wakeups[0][0] / 1000.0 - now))
                with trio.move_on_after(delay):
                    await kick.wait()
                if kick.is_set():
                    self._kick = trio.Event()
                continue
            queue = self._active.popleft()
            await self._service(queue, now)
            await trio.lowlevel.checkpoint()

    async def _service(self, queue: ScheduledQueue, now: float) -> None:
        """Take one due entry from an ACTIVE queue into its ready queue."""
        now_ms = due_ms(now)
        if not queue.heap or entry_due_ms(queue.heap[0]) > now_ms:
            queue.state = QueueState.IDLE
            self._settle(queue, now_ms)
            return
        key = queue.key
        if self.suspended(key.domain, key.tenant):
            queue.state = QueueState.SUSPENDED
            return
        ready_key = queue.ready_key
        if ready_key is None or trio.current_time() >= queue.ready_key_until:
            if self._nursery is None:  # not running (direct calls in tests): look it up inline
                ready_key = await self._ready_key_of(queue)
                if ready_key is None:  # the ready-key function failed: try again later
                    queue.state = QueueState.IDLE
                    self._register_wakeup(queue, now_ms + int(READY_KEY_RETRY * 1000))
                    return
            elif ready_key is None:
                # Never block the dispatcher on a slow lookup: resolve in the background,
                # wait for it only briefly (cached answers and static routes come back
                # at once), else come back to this queue when it is done.
                lookup = _Lookup(trio.Event())
                queue.state = QueueState.RESOLVING
                self._nursery.start_soon(self._resolve, queue, lookup)
                with trio.move_on_after(INLINE_RESOLVE_WAIT):
                    await lookup.done.wait()
                if not lookup.done.is_set():
                    lookup.detached = True
                    return
                queue.state = QueueState.ACTIVE
                ready_key = queue.ready_key
                if ready_key is None:  # the ready-key function failed: try again later
                    queue.state = QueueState.IDLE
                    self._register_wakeup(queue, now_ms + int(READY_KEY_RETRY * 1000))
                    return
            elif queue.key not in self._refreshing:
                # Serve the stale key while a fresh one is looked up.
                self._refreshing.add(queue.key)
                self._nursery.start_soon(self._resolve, queue)
        ready = self._ready_queue(ready_key)
        if ready.full:
            queue.state = QueueState.PARKED
            ready.parked.append(queue)
            return
        if queue.heap and entry_due_ms(queue.heap[0]) <= now_ms:
            entry = heapq.heappop(queue.heap)
            await self._dispatch(queue, entry, ready, now)
        if queue.state is QueueState.ACTIVE:
            if queue.heap and entry_due_ms(queue.heap[0]) <= now_ms:
                self._active.append(queue)
            else:
                queue.state = QueueState.IDLE
                self._settle(queue, now_ms)

    async def _resolve(self, queue: ScheduledQueue, lookup: _Lookup | None = None) -> None:
        """Look a queue's ready key up in the background, then let the queue go on."""
        try:
            async with self._resolve_limiter:
                ready_key = await self._ready_key_of(queue)
        finally:
            self._refreshing.discard(queue.key)
        if lookup is not None:
            lookup.done.set()
            if not lookup.detached:
                return  # the dispatcher waited for it and carries on with the queue
        if queue.state is not QueueState.RESOLVING:
            return  # a refresh of a key in use, or the queue moved on (suspended, ...)
        queue.state = QueueState.IDLE
        now_ms = due_ms(self._clock())
        if ready_key is None:  # the ready-key function failed: try the queue again later
            self._register_wakeup(queue, now_ms + int(READY_KEY_RETRY * 1000))
        else:
            self._settle(queue, now_ms)

    async def _ready_key_of(self, queue: ScheduledQueue) -> Hashable | None:
        """The ready key of a scheduled queue, cached for `ready_key_ttl` seconds."""
        now = trio.current_time()
        if queue.ready_key is not None and now < queue.ready_key_until:
            return queue.ready_key
        try:
            ready_key = await self._ready_key_fn(queue.key.domain, queue.key.tenant)
        except Exception as exc:
            _log.warning("scheduler.ready_key_failed", domain=queue.key.domain, error=repr(exc))
            return None
        queue.ready_key = ready_key
        queue.ready_key_until = now + self._ready_key_ttl
        return ready_key

    def _ready_queue(self, key: Hashable) -> ReadyQueue:
        ready = self._ready.get(key)
        if ready is None or ready.closed:
            policy = (
                self._destination
                if isinstance(self._destination, DestinationPolicy)
                else self._destination(key)
            )
            ready = ReadyQueue(
                key,
                self._ready_capacity,
                policy,
                on_room=self._on_room,
                is_held=self._is_held,
                on_held=self.release,
            )
            self._ready[key] = ready
            if self._on_ready_queue is not None:
                self._on_ready_queue(ready)
        return ready

    def _on_room(self, ready: ReadyQueue) -> None:
        """A job left a ready queue: wake as many parked scheduled queues as there is room."""
        for _ in range(min(ready.room, len(ready.parked))):
            queue = ready.parked.popleft()
            if queue.state is QueueState.PARKED:
                queue.state = QueueState.ACTIVE
                self._active.append(queue)
        self._kick.set()

    def _is_held(self, job: Job) -> bool:
        return self.suspended(job.domain, job.tenant)

    async def _dispatch(
        self, queue: ScheduledQueue, entry: bytes, ready: ReadyQueue, now: float
    ) -> None:
        """Turn a due entry into jobs, after checking it against the spool."""
        packed = entry_id(entry)
        domain = queue.key.domain
        pair = (packed, domain)
        if pair in self._in_flight:
            return  # a duplicate of a pair already out: its report reschedules it
        message_id = unpack_id(packed)
        try:
            meta = self.spool.get(message_id)
        except SpoolError as exc:
            _log.error("scheduler.read_failed", message_id=message_id, error=repr(exc))
            self._push(queue.key, make_entry(now + self.retry.min_backoff, packed))
            return
        if meta is None or meta.is_final:
            return  # deleted, finished, or quarantined
        pending = [
            r for r in meta.recipients if not r.status.is_final and domain_of(r.address) == domain
        ]
        if not pending:
            return
        if meta.next_attempt > max(now, entry_due(entry) + 0.001):
            self._push(queue.key, make_entry(meta.next_attempt, packed))  # moved later
            return
        if is_expired(meta.expires, now):
            self._in_flight[pair] = _InFlight(queue.key, {_EXPIRING})
            assert self._expiry_send is not None
            await self._expiry_send.send((meta, domain))
            return
        flight = _InFlight(queue.key, set())
        self._in_flight[pair] = flight
        for start in range(0, len(pending), self._max_rcpt):
            chunk = pending[start : start + self._max_rcpt]
            serial = next(self._serials)
            flight.outstanding.add(serial)
            ready.put(
                Job(
                    message_id=meta.id,
                    domain=domain,
                    recipients=tuple(r.address for r in chunk),
                    attempt=1 + max(r.attempts for r in chunk),
                    sender=meta.sender,
                    tenant=meta.tenant,
                    campaign=meta.campaign,
                    size=meta.size,
                    smtputf8=meta.smtputf8,
                    body_8bit=meta.body_8bit,
                    expires=meta.expires,
                    ready_key=ready.key,
                    dispatched=now,
                    serial=serial,
                )
            )

    # --- expiry -------------------------------------------------------------------------

    async def _expiry_worker(
        self, receive: trio.MemoryReceiveChannel[tuple[MessageMeta, str]]
    ) -> None:
        async with receive:
            async for meta, domain in receive:
                await self._expire(meta, domain)

    async def _expire(self, meta: MessageMeta, domain: str) -> None:
        """Bounce every pending recipient of `domain` in an expired message (4.4.7)."""
        packed = pack_id(meta.id)
        pair = (packed, domain)
        now = self._clock()
        results = [
            RecipientResult(r.address, RcptStatus.BOUNCED, expiry_reply(meta.created, now, r.reply))
            for r in meta.recipients
            if not r.status.is_final and domain_of(r.address) == domain
        ]
        try:
            updated = await self.spool.record_results(meta.id, results, next_attempt=None)
        except UnknownMessageError:
            return
        except SpoolError as exc:
            _log.error("scheduler.expire_failed", message_id=meta.id, error=repr(exc))
            key = (meta.tenant, meta.campaign, domain)
            self._push(key, make_entry(now + self.retry.min_backoff, packed))
            return
        finally:
            self._in_flight.pop(pair, None)  # held while writing: duplicates are dropped
        _log.info("scheduler.expired", message_id=meta.id, domain=domain, recipients=len(results))
        await self._call_bounce_hook(updated, {r.address for r in results})

    async def _call_bounce_hook(self, meta: MessageMeta, addresses: set[str]) -> None:
        if self._bounce_hook is None or not addresses:
            return
        bounced = [
            r for r in meta.recipients if r.address in addresses and r.status is RcptStatus.BOUNCED
        ]
        if not bounced:
            return
        try:
            await self._bounce_hook(meta, bounced)
        except Exception as exc:
            _log.error("scheduler.bounce_hook_failed", message_id=meta.id, error=repr(exc))

    # --- outcomes -----------------------------------------------------------------------

    async def report(
        self,
        job: Job,
        results: Sequence[RecipientResult],
        attempt: Attempt | None = None,
    ) -> MessageMeta | None:
        """Record the outcome of a job: results to the spool, retries, bounces.

        Recipients of the job without a result count as deferred; results for other
        addresses are ignored.  Deferred recipients of an expired message bounce with
        4.4.7.  Returns the updated metadata (None if the message is gone).
        """
        now = self._clock()
        packed = pack_id(job.message_id)
        pair = (packed, job.domain)
        flight = self._in_flight.get(pair)
        if flight is not None and job.serial not in flight.outstanding:
            flight = None
        if flight is None:
            _log.warning("scheduler.unknown_job", message_id=job.message_id, serial=job.serial)
        try:
            meta = self.spool.get(job.message_id)
        except SpoolError:
            meta = None
        if meta is None or meta.is_final:
            self._finish(pair, job.serial, None)
            return meta
        final = self._complete(job, results, meta, now)
        retry_at: float | None = None
        next_attempt: float | None = None
        if any(r.status is RcptStatus.DEFERRED for r in final):
            retry_at = flight.retry_at if flight and flight.retry_at else None
            if retry_at is None:
                retry_at = self._retry_time(job, meta, now, attempt)
            others = any(
                not r.status.is_final and domain_of(r.address) != job.domain
                for r in meta.recipients
            )
            next_attempt = min(retry_at, meta.next_attempt) if others else retry_at
        try:
            updated = await self.spool.record_results(
                job.message_id, final, next_attempt=next_attempt, attempt=attempt
            )
        except UnknownMessageError:
            self._finish(pair, job.serial, None)
            return None
        except SpoolError as exc:
            _log.error("scheduler.report_failed", message_id=job.message_id, error=repr(exc))
            self._finish(pair, job.serial, now + self.retry.min_backoff)
            return None
        if flight is None and retry_at is not None and pair not in self._in_flight:
            self._push((job.tenant, job.campaign, job.domain), make_entry(retry_at, packed))
        self._finish(pair, job.serial, retry_at)
        pending_before = {r.address for r in meta.recipients if not r.status.is_final}
        bounced = {
            r.address
            for r in final
            if r.status is RcptStatus.BOUNCED and r.address in pending_before
        }
        await self._call_bounce_hook(updated, bounced)
        return updated

    def _complete(
        self, job: Job, results: Sequence[RecipientResult], meta: MessageMeta, now: float
    ) -> list[RecipientResult]:
        """One result per recipient of the job; deferrals past expiry become 4.4.7."""
        by_address = {r.address: r for r in results if r.address in job.recipients}
        expired = is_expired(meta.expires, now)
        final = []
        for address in job.recipients:
            result = by_address.get(address)
            if result is None or not result.status.is_final:
                reply = result.reply if result is not None else NO_OUTCOME_REPLY
                mx = result.mx if result is not None else ""
                result = RecipientResult(address, RcptStatus.DEFERRED, reply, mx)
                if expired:
                    reply = expiry_reply(meta.created, now, reply)
                    result = RecipientResult(address, RcptStatus.BOUNCED, reply, mx)
            final.append(result)
        return final

    def _retry_time(
        self, job: Job, meta: MessageMeta, now: float, attempt: Attempt | None
    ) -> float:
        """When a deferred (message, domain) is tried again: backoff with jitter."""
        at = attempt.at if attempt is not None else now
        previous_at = next((a.at for a in reversed(meta.history) if a.at < job.dispatched), None)
        previous = None if previous_at is None else max(0.0, at - previous_at)
        return self.retry.next_attempt(now, job.attempt, meta.expires, self._rng, previous)

    def release(self, job: Job, delay: float = 0.0) -> None:
        """Hand a job back untried (no attempt is counted); it is due again after `delay`."""
        pair = (pack_id(job.message_id), job.domain)
        self._finish(pair, job.serial, self._clock() + max(0.0, delay))

    def _finish(self, pair: tuple[bytes, str], serial: int, retry_at: float | None) -> None:
        """One job of a pair is done; when all are, schedule the pair again if needed."""
        flight = self._in_flight.get(pair)
        if flight is None or serial not in flight.outstanding:
            return
        flight.outstanding.discard(serial)
        if retry_at is not None:
            flight.retry_at = (
                retry_at if flight.retry_at is None else max(flight.retry_at, retry_at)
            )
        if flight.outstanding:
            return
        del self._in_flight[pair]
        if flight.retry_at is not None:
            self._push(flight.key, make_entry(flight.retry_at, pair[0]))

    # --- suspensions and admin requests ---------------------------------------------------

    def suspended(self, domain: str, tenant: str) -> bool:
        """True when mail for this domain or tenant is held back."""
        return domain in self._suspended_domains or tenant in self._suspended_tenants

    def refresh_suspensions(self) -> None:
        """Re-read the suspensions from the spool; wake the queues of lifted ones."""
        now = self._clock()
        domains: set[str] = set()
        tenants: set[str] = set()
        for suspension in control.read_suspensions(self.spool):
            if suspension.active(now):
                (domains if suspension.kind == "domain" else tenants).add(suspension.name)
        lifted = bool(self._suspended_domains - domains or self._suspended_tenants - tenants)
        self._suspended_domains, self._suspended_tenants = frozenset(domains), frozenset(tenants)
        if lifted:
            now_ms = due_ms(now)
            for queue in list(self._queues.values()):
                if queue.state is QueueState.SUSPENDED and not self.suspended(
                    queue.key.domain, queue.key.tenant
                ):
                    queue.state = QueueState.IDLE
                    self._settle(queue, now_ms)

    def refresh_messages(self, message_ids: Iterable[str]) -> int:
        """Bring the entries of these messages in line with the spool.

        The entries of each message still pending become due at its `next_attempt`
        (a retry now, or any reschedule made elsewhere); a pair missing from memory
        is added.  Entries of deleted or finished messages and of domains with nothing
        pending are left to be dropped when they fall due (the dispatcher checks every
        entry against the spool).  Pairs in flight are left to their report.  Returns
        how many messages are still pending.
        """
        wanted: dict[QueueKey, dict[bytes, int]] = {}
        count = 0
        intern = self._intern
        for message_id in message_ids:
            try:
                meta = self.spool.get(message_id)
            except SpoolError:
                continue
            if meta is None or meta.is_final:
                continue
            count += 1
            packed = pack_id(message_id)
            tenant, campaign = intern(meta.tenant), intern(meta.campaign)
            for domain in {domain_of(r.address) for r in meta.recipients if not r.status.is_final}:
                key = QueueKey(tenant, campaign, intern(domain))
                wanted.setdefault(key, {})[packed] = due_ms(meta.next_attempt)
        now_ms = due_ms(self._clock())
        for key, targets in wanted.items():
            self._realign(key, targets, now_ms)
        return count

    def _realign(self, key: QueueKey, targets: dict[bytes, int], now_ms: int) -> None:
        """Rewrite one queue's entries for some ids: one entry each, due at the given ms."""
        queue = self._queues.get(key)
        kept = [e for e in queue.heap if entry_id(e) not in targets] if queue else []
        for packed, ms in targets.items():
            if (packed, key.domain) not in self._in_flight:
                kept.append(ms.to_bytes(8, "big") + packed)
        if queue is None:
            if not kept:
                return
            queue = self._queues[key] = ScheduledQueue(key)
        heapq.heapify(kept)
        queue.heap = kept
        if queue.state is QueueState.IDLE:
            queue.wake_ms = None
            self._settle(queue, now_ms)

    async def process_requests(self) -> int:
        """Act on the requests the admin tools left in the spool; returns how many."""
        requests = control.read_requests(self.spool)
        refresh: list[str] = []
        for request in requests:
            if request.op == "bounced":
                await self.notify_bounced(zip(request.ids, request.recipients, strict=True))
            refresh.extend(request.ids)
        self.refresh_messages(refresh)
        for request in requests:
            await control.done_request(self.spool, request)
        return len(requests)

    async def notify_bounced(self, bounced: Iterable[tuple[str, Sequence[str]]]) -> None:
        """Run the bounce hook for recipients bounced outside delivery (by an administrator).

        `bounced` is (message id, addresses); addresses not bounced are ignored.
        """
        for message_id, addresses in bounced:
            meta = self.spool.get(message_id)
            if meta is None:
                continue
            wanted = set(addresses)
            await self._call_bounce_hook(
                meta,
                {
                    r.address
                    for r in meta.recipients
                    if r.status is RcptStatus.BOUNCED and r.address in wanted
                },
            )

    async def _control_once(self) -> None:
        try:
            self.refresh_suspensions()
            await self.process_requests()
        except SpoolError as exc:
            _log.error("scheduler.control_failed", error=repr(exc))
        self._reap_ready_queues()

    async def _control_loop(self) -> None:
        while True:
            await trio.sleep(self._refresh_interval)
            await self._control_once()

    def _reap_ready_queues(self) -> None:
        """Close ready queues that have been empty and unused for `ready_idle_ttl`."""
        now = trio.current_time()
        for key, ready in list(self._ready.items()):
            if (
                not len(ready)
                and not ready.parked
                and now - ready.idle_since >= self._ready_idle_ttl
                and not ready.is_dead()
            ):
                ready.close()
                del self._ready[key]

    # --- views --------------------------------------------------------------------------

    @property
    def ready_queues(self) -> dict[Hashable, ReadyQueue]:
        """The ready queues, by key (do not modify)."""
        return self._ready

    def scheduled_entries(self) -> Iterable[tuple[QueueKey, str, float]]:
        """Every scheduled entry as (queue key, message id, due time), unordered."""
        for queue in self._queues.values():
            for entry in queue.heap:
                yield queue.key, unpack_id(entry_id(entry)), entry_due(entry)

    def statistics(self) -> SchedulerStatistics:
        """A snapshot of queue sizes and states."""
        states = [queue.state for queue in self._queues.values()]
        return SchedulerStatistics(
            scheduled=sum(len(queue.heap) for queue in self._queues.values()),
            queues=len(self._queues),
            active=len(self._active),
            parked=states.count(QueueState.PARKED),
            suspended=states.count(QueueState.SUSPENDED),
            in_flight=len(self._in_flight),
            ready=tuple(ready.statistics() for ready in self._ready.values()),
            suspended_domains=self._suspended_domains,
            suspended_tenants=self._suspended_tenants,
        )


__all__ = [
    "MAX_SLEEP",
    "NO_OUTCOME_REPLY",
    "BounceHook",
    "ReadyKeyFunction",
    "Scheduler",
    "SchedulerStatistics",
    "domain_ready_key",
]
