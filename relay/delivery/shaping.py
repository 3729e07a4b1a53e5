"""Per-site limits from the configuration, divided among the shards.

`relay serve --workers N` runs N complete engines, each with its own ready queues
for the same destinations, so every per-site limit of `[delivery]` is split: the
session cap and the initial concurrency, the message rate and the connection rate.
The cap is split exactly (the first `max % N` shards get one more), never below one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

from relay.config import DeliveryConfig
from relay.scheduler import DestinationPolicy, FeedbackPolicy, RetryPolicy

#: Burst of the token buckets when no rate is configured (it then does not matter).
DEFAULT_BURST = 10.0


def share(total: int, shard_count: int, shard_index: int = 0) -> int:
    """Shard `shard_index`'s part of `total` among `shard_count` shards (at least 1)."""
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ValueError("need shard_count >= 1 and 0 <= shard_index < shard_count")
    base, extra = divmod(total, shard_count)
    return max(1, base + (1 if shard_index < extra else 0))


def site_policy(
    delivery: DeliveryConfig, *, shard_count: int = 1, shard_index: int = 0
) -> DestinationPolicy:
    """The shaping of every site for one shard (rates of 0 mean unlimited)."""
    maximum = share(delivery.max_sessions_per_site, shard_count, shard_index)
    initial = min(maximum, share(delivery.initial_sessions_per_site, shard_count, shard_index))
    rates = []
    messages = math.inf
    if delivery.message_rate_per_site > 0:
        messages = delivery.message_rate_per_site / shard_count
        rates.append(messages)
    connections = math.inf
    if delivery.connection_rate_per_site > 0:
        connections = delivery.connection_rate_per_site / shard_count
        rates.append(connections)
    # About one second's worth of the slowest rate may go at once.
    burst = max(1.0, min(rates)) if rates else DEFAULT_BURST
    return DestinationPolicy(
        feedback=FeedbackPolicy(initial=initial, maximum=maximum),
        messages_per_second=messages,
        connections_per_second=connections,
        burst=burst,
    )


def destination_policy(
    delivery: DeliveryConfig, *, shard_count: int = 1, shard_index: int = 0
) -> Callable[[Hashable], DestinationPolicy]:
    """The scheduler's `destination` argument: the same shaping for every ready key."""
    policy = site_policy(delivery, shard_count=shard_count, shard_index=shard_index)

    def for_key(key: Hashable) -> DestinationPolicy:
        return policy

    return for_key


def retry_policy(delivery: DeliveryConfig) -> RetryPolicy:
    """The scheduler's retry backoff from `delivery.retry_min` / `retry_max`."""
    return RetryPolicy(min_backoff=delivery.retry_min, max_backoff=delivery.retry_max)
