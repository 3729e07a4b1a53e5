"""Scheduling policy: pure functions and small state machines, no I/O and no clocks.

Everything here takes the current time as an argument (`now`, seconds; absolute wall
time for message times, any monotonic origin for rates and feedback) and, where chance
is involved, an injectable random source, so the scheduler can drive it with a real or
a mock clock and tests can pin every outcome.

- Retry backoff: exponential between `min_backoff` and `max_backoff`, with jitter so
  that a destination coming back is not hit by the whole deferred queue at once.
  "full" jitter draws uniformly between the minimum and the exponential ceiling;
  "decorrelated" jitter (AWS architecture blog) draws between the minimum and three
  times the previous delay.  The next attempt never goes past the message's expiry.
- Expiry: a message lives `max_age` seconds (default 5 days); once past its expiry
  every recipient still pending bounces with enhanced status 4.4.7 (RFC 3463 4.4.7,
  "delivery time expired").
- Scheduled sending: the first attempt is not before `send_at`.
- Concurrency feedback in the manner of Postfix's queue manager: a destination starts
  at a low concurrency window, gains about one slot per window's worth of successful
  deliveries (positive feedback 1/window per delivery), halves at once on a failed
  connection or a 421 (never below 1), and after `dead_after` consecutive failures is
  declared dead for `cooldown` seconds; afterwards it is probed with one connection.
- Token buckets for message and connection rates: `take(now)` answers how long to wait.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_MAX_AGE = 5 * 86400.0
EXPIRED_STATUS = "4.4.7"


class RandomSource(Protocol):
    """The part of `random.Random` the policy uses (inject a seeded one in tests)."""

    def uniform(self, a: float, b: float) -> float: ...


class Jitter(enum.Enum):
    """How a retry delay is spread."""

    NONE = "none"  # the exponential ceiling itself (deterministic; for tests and tools)
    FULL = "full"  # uniform in [min_backoff, ceiling(attempt)]
    DECORRELATED = "decorrelated"  # uniform in [min_backoff, 3 * previous delay], capped


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential retry backoff with jitter, bounded by `min_backoff` and `max_backoff`."""

    min_backoff: float = 300.0
    max_backoff: float = 4000.0
    factor: float = 2.0
    jitter: Jitter = Jitter.FULL

    def __post_init__(self) -> None:
        if not 0 < self.min_backoff <= self.max_backoff:
            raise ValueError("retry policy needs 0 < min_backoff <= max_backoff")
        if self.factor < 1.0:
            raise ValueError("retry policy needs factor >= 1")

    def ceiling(self, attempts: int) -> float:
        """The largest delay after `attempts` failed attempts: min * factor**attempts, capped."""
        if attempts <= 0:
            return self.min_backoff
        # Compare in log space so huge attempt counts cannot overflow a float.
        if attempts * math.log(self.factor) >= math.log(self.max_backoff / self.min_backoff):
            return self.max_backoff
        return min(self.max_backoff, self.min_backoff * self.factor**attempts)

    def delay(self, attempts: int, rng: RandomSource, previous: float | None = None) -> float:
        """Seconds to wait after the `attempts`-th failed attempt.

        `previous` is the delay used before the last attempt (decorrelated jitter only;
        without it the minimum is used).  The result is always within
        [min_backoff, max_backoff].
        """
        low, high = self.min_backoff, self.max_backoff
        if self.jitter is Jitter.NONE:
            return self.ceiling(attempts)
        if self.jitter is Jitter.FULL:
            drawn = rng.uniform(low, self.ceiling(attempts))
        else:
            base = low if previous is None else min(high, max(low, previous))
            drawn = rng.uniform(low, min(high, 3.0 * base))
        return min(high, max(low, drawn))

    def next_attempt(
        self,
        now: float,
        attempts: int,
        expires: float,
        rng: RandomSource,
        previous: float | None = None,
    ) -> float:
        """When to try again after a transient failure: now + delay, never past `expires`."""
        return min(now + self.delay(attempts, rng, previous), max(now, expires))


# --- expiry and scheduled sending ------------------------------------------------------


def expires_at(created: float, max_age: float = DEFAULT_MAX_AGE) -> float:
    """The time a message created at `created` expires."""
    return created + max_age


def is_expired(expires: float, now: float) -> bool:
    """True once a message's lifetime is over: its pending recipients bounce (4.4.7)."""
    return now >= expires


def expiry_reply(created: float, now: float, last_reply: str = "") -> str:
    """The reply recorded for a recipient that expired in the queue (RFC 3463 4.4.7).

    The status is the persistent-transient 4.4.7 with a 451 code of the same class,
    as the DSN for it reports "Action: failed" with "Status: 4.4.7".
    """
    days = max(0.0, now - created) / 86400.0
    text = f"451 {EXPIRED_STATUS} Delivery time expired: undelivered after {days:.1f} days"
    if last_reply:
        text += f"; last reply: {last_reply}"
    return text


def first_attempt(created: float, send_at: float | None) -> float:
    """When a new message may first be tried: at creation, or at `send_at` if later."""
    return created if send_at is None else max(created, send_at)


def is_due(next_attempt: float, now: float) -> bool:
    """True when a message's time to be tried has come."""
    return next_attempt <= now


# --- concurrency feedback --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedbackPolicy:
    """Parameters of per-destination concurrency feedback (Postfix-style)."""

    initial: int = 3  # connections a fresh destination starts with
    maximum: int = 20  # the ceiling the window may grow to
    dead_after: int = 5  # consecutive failed connections before the destination is dead
    cooldown: float = 300.0  # seconds a dead destination is left alone

    def __post_init__(self) -> None:
        if not 1 <= self.initial <= self.maximum:
            raise ValueError("feedback needs 1 <= initial <= maximum")
        if self.dead_after < 1 or self.cooldown < 0:
            raise ValueError("feedback needs dead_after >= 1 and cooldown >= 0")


@dataclass(slots=True)
class ConcurrencyFeedback:
    """The concurrency window of one destination, adjusted by delivery outcomes.

    `window` is the number of simultaneous connections allowed.  Each successful
    delivery adds 1/window (so the window grows by about one per window's worth of
    successes); a failed connection or a 421 halves it at once.  `dead_after`
    consecutive failures mark the destination dead until `now + cooldown`; a dead
    destination allows no connection, and after the cool-down it is probed with one.
    """

    policy: FeedbackPolicy = field(default_factory=FeedbackPolicy)
    window: int = 0
    credit: float = 0.0
    failures: int = 0  # consecutive failed connections
    dead_until: float | None = None

    def __post_init__(self) -> None:
        if self.window == 0:
            self.window = self.policy.initial

    def is_dead(self, now: float) -> bool:
        """True while the destination is in its cool-down after being declared dead."""
        return self.dead_until is not None and now < self.dead_until

    def limit(self, now: float) -> int:
        """How many connections may be open now (0 while dead)."""
        return 0 if self.is_dead(now) else self.window

    def success(self) -> None:
        """One message delivered (or a connection that worked): positive feedback."""
        self.failures = 0
        self.dead_until = None
        if self.window >= self.policy.maximum:
            self.credit = 0.0
            return
        self.credit += 1.0 / self.window
        if self.credit >= 1.0 - 1e-9:
            self.credit = 0.0
            self.window += 1

    def failure(self, now: float) -> None:
        """A connection failed or the destination answered 421: negative feedback."""
        self.failures += 1
        self.credit = 0.0
        self.window = max(1, self.window // 2)
        if self.failures >= self.policy.dead_after:
            self.dead_until = now + self.policy.cooldown
            self.failures = 0
            self.window = 1  # after the cool-down: one probing connection


# --- rates ------------------------------------------------------------------------------


@dataclass(slots=True)
class TokenBucket:
    """A token bucket: `rate` tokens per second, holding at most `burst`.

    `take(now)` takes the tokens and returns 0.0 when they are there; otherwise it
    takes nothing and returns the seconds to wait before they will be.  A rate of
    `math.inf` never waits.
    """

    rate: float
    burst: float
    tokens: float = math.nan  # starts full
    updated: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        if math.isnan(self.tokens):
            self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if self.updated is not None and now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        if self.updated is None or now > self.updated:
            self.updated = now

    def take(self, now: float, amount: float = 1.0) -> float:
        """Take `amount` tokens if available (returns 0.0), else the wait in seconds."""
        if amount > self.burst:
            raise ValueError("cannot take more tokens than the bucket holds")
        if math.isinf(self.rate):
            return 0.0
        self._refill(now)
        # A microsecond's worth of tokens is "there": float time near the epoch is
        # only good to about 0.2 us, and a shorter wait could never be slept.
        if self.tokens + self.rate * 1e-6 >= amount:
            self.tokens = max(0.0, self.tokens - amount)
            return 0.0
        return (amount - self.tokens) / self.rate


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """How fast one ready queue (egress source x MX site) may be fed."""

    feedback: FeedbackPolicy = field(default_factory=FeedbackPolicy)
    messages_per_second: float = math.inf
    connections_per_second: float = math.inf
    burst: float = 10.0

    def message_bucket(self) -> TokenBucket:
        """A fresh bucket for the message rate."""
        return TokenBucket(self.messages_per_second, self.burst)

    def connection_bucket(self) -> TokenBucket:
        """A fresh bucket for the connection rate."""
        return TokenBucket(self.connections_per_second, self.burst)


def default_rng() -> random.Random:
    """A random source of its own (never the module-level one) for a scheduler."""
    return random.Random()
