"""The TTL cache under the resolver, on a hand-moved clock."""

from __future__ import annotations

import pytest

from relay.net.ttlcache import TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(max_entries=10, clock=clock)
    cache.put("a", 1, ttl=10)
    cache.put("b", 2, ttl=20)
    clock.now = 9.9
    assert (cache.get("a"), cache.get("b")) == (1, 2)
    clock.now = 10
    assert cache.get("a") is None
    assert cache.get("b") == 2
    assert len(cache) == 1


def test_zero_ttl_is_not_stored_and_replaces() -> None:
    cache: TtlCache[str, int] = TtlCache(max_entries=10, clock=Clock())
    cache.put("a", 1, ttl=5)
    cache.put("a", 2, ttl=0)
    assert cache.get("a") is None
    assert len(cache) == 0


def test_least_recently_used_entry_is_evicted() -> None:
    cache: TtlCache[str, int] = TtlCache(max_entries=2, clock=Clock())
    cache.put("a", 1, ttl=5)
    cache.put("b", 2, ttl=5)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.put("c", 3, ttl=5)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    cache.clear()
    assert len(cache) == 0


def test_needs_room_for_one_entry() -> None:
    with pytest.raises(ValueError):
        TtlCache(max_entries=0, clock=Clock())
