"""The memory budget shared by sessions for message data."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.submission.budget import MemoryBudget


async def test_acquire_within_capacity_is_immediate() -> None:
    budget = MemoryBudget(100)
    await budget.acquire(60)
    await budget.acquire(40)
    assert budget.used == 100
    budget.release(100)
    assert budget.used == 0


async def test_waits_for_room_then_proceeds(autojump_clock: trio.testing.MockClock) -> None:
    budget = MemoryBudget(100)
    await budget.acquire(80)
    order: list[str] = []

    async def waiter(name: str, nbytes: int) -> None:
        await budget.acquire(nbytes)
        order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "big", 50)
        await trio.sleep(1)
        assert budget.waiting == 1 and order == []
        budget.release(40)
        await trio.sleep(1)
        assert order == ["big"] and budget.used == 90
    budget.release(90)


async def test_cancelled_wait_reserves_nothing(autojump_clock: trio.testing.MockClock) -> None:
    budget = MemoryBudget(10)
    await budget.acquire(10)
    with trio.move_on_after(5) as scope:
        await budget.acquire(5)
    assert scope.cancelled_caught
    assert budget.used == 10 and budget.waiting == 0
    budget.release(10)
    await budget.acquire(10)  # all of it is available again
    assert budget.used == 10


async def test_cancelled_before_acquiring_with_room() -> None:
    budget = MemoryBudget(10)
    with trio.CancelScope() as scope:
        scope.cancel()
        await budget.acquire(5)
    assert budget.used == 0


def test_impossible_requests_are_errors() -> None:
    budget = MemoryBudget(10)
    with pytest.raises(ValueError):
        trio.run(budget.acquire, 11)
    with pytest.raises(ValueError):
        budget.release(1)
    with pytest.raises(ValueError):
        MemoryBudget(0)
