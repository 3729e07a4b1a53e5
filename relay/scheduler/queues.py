"""The two tiers of queues: scheduled queues (when) and ready queues (how fast).

A `ScheduledQueue` holds, for one (tenant, campaign, recipient domain), a heap of
compact entries (see relay.scheduler.ids): due time and message id, nothing else.
Its `state` says where the scheduler's dispatcher has it:

    IDLE       waiting for its head's due time (a wake-up is registered for it)
    ACTIVE     in the round-robin of queues with due work, or being serviced
    PARKED     has due work, but its ready queue is full: waits for room there
    SUSPENDED  its domain or tenant is suspended by an administrator

A `ReadyQueue` holds, for one key computed by the delivery side (egress source x MX
site), the `Job`s ready to go now, up to a capacity: a full ready queue parks the
scheduled queues that feed it, so due work stays compact in the scheduled tier
instead of piling up here.  It also carries the destination's concurrency feedback
and token buckets, which the delivery sessions consult and report to.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import NamedTuple

import trio

from relay.scheduler.policy import ConcurrencyFeedback, DestinationPolicy


class QueueKey(NamedTuple):
    """What a scheduled queue is for."""

    tenant: str
    campaign: str
    domain: str


class QueueState(enum.IntEnum):
    """Where the dispatcher has a scheduled queue (see the module docstring)."""

    IDLE = 0
    ACTIVE = 1
    PARKED = 2
    SUSPENDED = 3
    RESOLVING = 4  # its ready key (DNS) is being looked up in the background


class ScheduledQueue:
    """The due-time heap of one (tenant, campaign, domain)."""

    __slots__ = ("heap", "key", "ready_key", "ready_key_until", "state", "wake_ms")

    def __init__(self, key: QueueKey) -> None:
        self.key = key
        self.heap: list[bytes] = []
        self.state = QueueState.IDLE
        self.wake_ms: int | None = None  # the wake-up registered for this queue, if any
        self.ready_key: Hashable | None = None  # cached result of ready_key(domain, tenant)
        self.ready_key_until = 0.0  # trio time the cached ready key expires

    def __repr__(self) -> str:
        return f"<ScheduledQueue {self.key} {len(self.heap)} entries {self.state.name}>"


@dataclass(frozen=True, slots=True)
class Job:
    """One delivery transaction to do: a message, one domain, some of its recipients.

    Recipients are those of the domain still pending when the job was dispatched, at
    most `max_rcpt_per_txn` of them (the rest are in sibling jobs).  `attempt` is the
    number this attempt will have (1 for the first).  Report the outcome with
    `Scheduler.report(job, results, attempt)`, or hand it back untried with
    `Scheduler.release(job)`.
    """

    message_id: str
    domain: str
    recipients: tuple[str, ...]
    attempt: int
    sender: str
    tenant: str
    campaign: str
    size: int
    smtputf8: bool
    body_8bit: bool
    expires: float
    ready_key: Hashable
    dispatched: float  # wall time the job was made
    serial: int  # unique per scheduler


@dataclass(frozen=True, slots=True)
class ReadyQueueStatistics:
    """A snapshot of one ready queue."""

    key: Hashable
    queued: int
    capacity: int
    parked: int
    concurrency: int
    dead: bool
    waiting_getters: int


class ReadyQueue:
    """Jobs ready for one destination, bounded; plus the destination's feedback state.

    Delivery sessions call `await get()` for the next job.  Taking a job makes room,
    which wakes one parked scheduled queue.  A job whose domain or tenant has been
    suspended since it was queued is handed back to the scheduler instead of being
    returned.  Once the scheduler reaps an idle ready queue it is closed, and `get()`
    raises `trio.EndOfChannel`.
    """

    def __init__(
        self,
        key: Hashable,
        capacity: int,
        policy: DestinationPolicy,
        *,
        on_room: Callable[[ReadyQueue], None],
        is_held: Callable[[Job], bool],
        on_held: Callable[[Job], None],
    ) -> None:
        if capacity < 1:
            raise ValueError("a ready queue needs a capacity of at least 1")
        self.key = key
        self.capacity = capacity
        self.policy = policy
        self.feedback = ConcurrencyFeedback(policy.feedback)
        self.message_bucket = policy.message_bucket()
        self.connection_bucket = policy.connection_bucket()
        self.parked: deque[ScheduledQueue] = deque()
        self.idle_since = trio.current_time()
        self.closed = False
        self._jobs: deque[Job] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._on_room = on_room
        self._is_held = is_held
        self._on_held = on_held

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def full(self) -> bool:
        """True when no more jobs may be queued here."""
        return len(self._jobs) >= self.capacity

    @property
    def room(self) -> int:
        """How many jobs may still be queued."""
        return max(0, self.capacity - len(self._jobs))

    def put(self, job: Job) -> None:
        """Queue a job (the scheduler checks `full` first; a split may overshoot a little)."""
        self._jobs.append(job)
        self.idle_since = trio.current_time()
        self._lot.unpark()

    def get_nowait(self) -> Job:
        """The next job, or `trio.WouldBlock` (`trio.EndOfChannel` once closed)."""
        while self._jobs:
            job = self._jobs.popleft()
            self._taken()
            if self._is_held(job):
                self._on_held(job)
                continue
            return job
        if self.closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def get(self) -> Job:
        """Wait for the next job."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                job = self.get_nowait()
            except trio.WouldBlock:
                await self._lot.park()
                continue
            await trio.lowlevel.cancel_shielded_checkpoint()
            return job

    def take_all(self) -> list[Job]:
        """Remove and return every queued job (e.g. to hand them back to the scheduler)."""
        jobs = list(self._jobs)
        self._jobs.clear()
        if jobs:
            self._taken()
        return jobs

    def close(self) -> None:
        """No more jobs will come: waiting and future getters get `trio.EndOfChannel`."""
        self.closed = True
        self._lot.unpark_all()

    def _taken(self) -> None:
        self.idle_since = trio.current_time()
        if self.parked:
            self._on_room(self)

    # --- feedback from delivery sessions ---------------------------------------------

    def delivered(self, count: int = 1) -> None:
        """Messages (or connections) that went through: positive feedback."""
        for _ in range(count):
            self.feedback.success()

    def connection_failed(self) -> None:
        """A connection could not be made or broke down: halve the window at once."""
        self.feedback.failure(trio.current_time())

    def throttled(self) -> None:
        """The destination answered 421: halve the window at once."""
        self.feedback.failure(trio.current_time())

    def concurrency_limit(self) -> int:
        """Connections that may be open to this destination now (0 while it is dead)."""
        return self.feedback.limit(trio.current_time())

    def is_dead(self) -> bool:
        """True while the destination is in its dead-destination cool-down."""
        return self.feedback.is_dead(trio.current_time())

    def message_wait(self, count: int = 1) -> float:
        """Take `count` message tokens (0.0) or say how long to wait for them."""
        return self.message_bucket.take(trio.current_time(), count)

    def connection_wait(self) -> float:
        """Take a connection token (0.0) or say how long to wait for one."""
        return self.connection_bucket.take(trio.current_time())

    def statistics(self) -> ReadyQueueStatistics:
        """A snapshot for monitoring and the admin summary."""
        return ReadyQueueStatistics(
            key=self.key,
            queued=len(self._jobs),
            capacity=self.capacity,
            parked=len(self.parked),
            concurrency=self.feedback.window,
            dead=self.is_dead(),
            waiting_getters=len(self._lot),
        )

    def __repr__(self) -> str:
        return f"<ReadyQueue {self.key!r} {len(self._jobs)}/{self.capacity}>"
