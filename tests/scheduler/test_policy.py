"""relay.scheduler.policy: plain `now` arithmetic, seeded random sources."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.scheduler.policy import (
    DEFAULT_MAX_AGE,
    ConcurrencyFeedback,
    DestinationPolicy,
    FeedbackPolicy,
    Jitter,
    RetryPolicy,
    TokenBucket,
    expires_at,
    expiry_reply,
    first_attempt,
    is_due,
    is_expired,
)

T0 = 1_700_000_000.0

backoffs = st.tuples(
    st.floats(min_value=0.5, max_value=3600.0), st.floats(min_value=1.0, max_value=50.0)
).map(lambda t: (t[0], t[0] * t[1]))


# --- retry backoff ---------------------------------------------------------------------


@given(
    bounds=backoffs,
    attempts=st.integers(min_value=0, max_value=10_000),
    seed=st.integers(min_value=0, max_value=2**32),
    jitter=st.sampled_from(list(Jitter)),
    previous=st.none() | st.floats(min_value=0.0, max_value=1e7),
)
def test_backoff_delay_stays_between_min_and_max(
    bounds: tuple[float, float], attempts: int, seed: int, jitter: Jitter, previous: float | None
) -> None:
    low, high = bounds
    policy = RetryPolicy(min_backoff=low, max_backoff=high, jitter=jitter)
    delay = policy.delay(attempts, random.Random(seed), previous)
    assert low <= delay <= high


@given(
    bounds=backoffs,
    attempts=st.integers(min_value=0, max_value=200),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_full_jitter_never_exceeds_the_exponential_ceiling(
    bounds: tuple[float, float], attempts: int, seed: int
) -> None:
    low, high = bounds
    policy = RetryPolicy(min_backoff=low, max_backoff=high, factor=2.0, jitter=Jitter.FULL)
    delay = policy.delay(attempts, random.Random(seed))
    assert delay <= min(high, low * 2.0**attempts) * (1 + 1e-12)


@given(
    previous=st.floats(min_value=0.0, max_value=1e6), seed=st.integers(min_value=0, max_value=2**32)
)
def test_decorrelated_jitter_at_most_three_times_the_previous_delay(
    previous: float, seed: int
) -> None:
    policy = RetryPolicy(min_backoff=10.0, max_backoff=100_000.0, jitter=Jitter.DECORRELATED)
    delay = policy.delay(3, random.Random(seed), previous)
    assert delay <= max(10.0, 3.0 * max(previous, 10.0)) * (1 + 1e-12)


def test_ceiling_grows_exponentially_then_caps() -> None:
    policy = RetryPolicy(min_backoff=60.0, max_backoff=1000.0, factor=2.0, jitter=Jitter.NONE)
    rng = random.Random(0)
    assert [policy.delay(n, rng) for n in range(6)] == [60, 120, 240, 480, 960, 1000]
    assert policy.ceiling(10**9) == 1000.0


def test_full_jitter_spreads_a_deferred_herd() -> None:
    # A destination that deferred 1,000 messages at once must not get them back at once.
    policy = RetryPolicy(min_backoff=300.0, max_backoff=4000.0)
    rng = random.Random(42)
    delays = [policy.delay(1, rng) for _ in range(1000)]
    assert min(delays) >= 300.0 and max(delays) <= 600.0
    buckets = {int((d - 300.0) // 30.0) for d in delays}
    assert len(buckets) == 10  # every 30-second slice of the window gets some


def test_decorrelated_jitter_grows_from_previous() -> None:
    policy = RetryPolicy(min_backoff=10.0, max_backoff=10_000.0, jitter=Jitter.DECORRELATED)
    rng = random.Random(7)
    previous: float | None = None
    seen = []
    for _ in range(50):
        previous = policy.delay(1, rng, previous)
        seen.append(previous)
    assert max(seen) > 1000.0  # it climbs towards the cap instead of staying near the minimum


def test_next_attempt_never_passes_expiry() -> None:
    policy = RetryPolicy(min_backoff=300.0, max_backoff=4000.0, jitter=Jitter.NONE)
    rng = random.Random(1)
    assert policy.next_attempt(T0, 1, T0 + 10_000, rng) == T0 + 600.0
    assert policy.next_attempt(T0, 1, T0 + 100, rng) == T0 + 100
    assert policy.next_attempt(T0, 1, T0 - 5, rng) == T0  # already expired: now


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(min_backoff=0.0)
    with pytest.raises(ValueError):
        RetryPolicy(min_backoff=10.0, max_backoff=5.0)
    with pytest.raises(ValueError):
        RetryPolicy(factor=0.5)


# --- expiry and send_at ----------------------------------------------------------------


def test_expiry_after_max_age_default_five_days() -> None:
    assert DEFAULT_MAX_AGE == 5 * 86400
    expires = expires_at(T0)
    assert not is_expired(expires, T0 + 5 * 86400 - 0.001)
    assert is_expired(expires, T0 + 5 * 86400)
    assert expires_at(T0, 3600) == T0 + 3600


def test_expiry_reply_is_4_4_7() -> None:
    # RFC 3463 4.4.7: delivery time expired (persistent transient, hence 4.x.x with 451).
    reply = expiry_reply(T0, T0 + 5 * 86400, "450 4.2.0 mailbox busy")
    assert reply.startswith("451 4.4.7 ")
    assert "5.0 days" in reply and "450 4.2.0 mailbox busy" in reply
    assert expiry_reply(T0, T0).startswith("451 4.4.7 ")


@given(
    created=st.floats(min_value=0, max_value=4e9),
    offset=st.none() | st.floats(min_value=-1e6, max_value=1e7),
)
def test_send_at_is_never_before_creation(created: float, offset: float | None) -> None:
    send_at = None if offset is None else created + offset
    first = first_attempt(created, send_at)
    assert first >= created
    if send_at is not None and send_at > created:
        assert first == send_at
        assert not is_due(first, created)
        assert is_due(first, send_at)


# --- concurrency feedback --------------------------------------------------------------


def test_feedback_starts_low_and_grows_about_one_per_window_of_successes() -> None:
    fb = ConcurrencyFeedback(FeedbackPolicy(initial=2, maximum=6))
    assert fb.window == 2
    fb.success()
    assert fb.window == 2
    fb.success()
    assert fb.window == 3  # 2 successes at window 2: +1
    for _ in range(3):
        fb.success()
    assert fb.window == 4  # 3 more at window 3: +1
    for _ in range(100):
        fb.success()
    assert fb.window == 6  # never past the maximum


def test_feedback_halves_at_once_on_421_or_failed_connection_not_below_one() -> None:
    fb = ConcurrencyFeedback(FeedbackPolicy(initial=16, maximum=20, dead_after=100))
    fb.failure(T0)
    assert fb.window == 8
    fb.failure(T0)
    fb.failure(T0)
    fb.failure(T0)
    assert fb.window == 1
    fb.failure(T0)
    assert fb.window == 1
    assert not fb.is_dead(T0)


def test_dead_destination_after_consecutive_failures_then_cool_down() -> None:
    fb = ConcurrencyFeedback(FeedbackPolicy(initial=4, dead_after=3, cooldown=600.0))
    fb.failure(T0)
    fb.success()  # a success breaks the run of failures
    fb.failure(T0)
    fb.failure(T0)
    assert not fb.is_dead(T0) and fb.limit(T0) >= 1
    fb.failure(T0 + 1)
    assert fb.is_dead(T0 + 1)
    assert fb.limit(T0 + 1) == 0
    assert fb.limit(T0 + 600.9) == 0
    assert not fb.is_dead(T0 + 601)
    assert fb.limit(T0 + 601) == 1  # probe with one connection
    fb.success()
    assert fb.dead_until is None


def test_feedback_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        FeedbackPolicy(initial=0)
    with pytest.raises(ValueError):
        FeedbackPolicy(initial=5, maximum=4)
    with pytest.raises(ValueError):
        FeedbackPolicy(dead_after=0)


@given(events=st.lists(st.booleans(), max_size=300))
def test_feedback_window_always_within_bounds(events: list[bool]) -> None:
    fb = ConcurrencyFeedback(FeedbackPolicy(initial=3, maximum=10, dead_after=4, cooldown=5.0))
    now = T0
    for ok in events:
        now += 1.0
        if ok:
            fb.success()
        else:
            fb.failure(now)
        assert 1 <= fb.window <= 10
        assert 0 <= fb.limit(now) <= 10


# --- token buckets ---------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_paces() -> None:
    bucket = TokenBucket(rate=10.0, burst=5.0)
    assert [bucket.take(T0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(T0) == pytest.approx(0.1)
    assert bucket.take(T0 + 0.05) == pytest.approx(0.05)  # nothing taken while waiting
    assert bucket.take(T0 + 0.1) == 0.0
    assert bucket.take(T0 + 0.1) == pytest.approx(0.1)
    assert bucket.take(T0 + 100.0) == 0.0
    assert bucket.tokens == pytest.approx(4.0)  # refilled only up to the burst


def test_token_bucket_rate_is_respected_over_time() -> None:
    bucket = TokenBucket(rate=50.0, burst=1.0)
    now, taken = T0, 0
    for _ in range(10_000):
        if now >= T0 + 10.0:
            break
        wait = bucket.take(now)
        if wait == 0.0:
            taken += 1
        else:
            now += wait
    assert 499 <= taken <= 501


def test_token_bucket_infinite_rate_and_errors() -> None:
    free = TokenBucket(rate=math.inf, burst=1.0)
    assert all(free.take(T0) == 0.0 for _ in range(1000))
    with pytest.raises(ValueError):
        TokenBucket(rate=0.0, burst=1.0)
    with pytest.raises(ValueError):
        TokenBucket(rate=1.0, burst=2.0).take(T0, 3.0)


def test_destination_policy_makes_fresh_buckets() -> None:
    policy = DestinationPolicy(messages_per_second=2.0, connections_per_second=1.0, burst=1.0)
    messages, connections = policy.message_bucket(), policy.connection_bucket()
    assert messages.take(T0) == 0.0 and messages.take(T0) == pytest.approx(0.5)
    assert connections.take(T0) == 0.0 and connections.take(T0) == pytest.approx(1.0)
    assert policy.message_bucket().take(T0) == 0.0
