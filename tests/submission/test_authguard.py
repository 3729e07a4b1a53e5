"""AUTH brute-force protection: slow down, then refuse."""

from __future__ import annotations

from relay.submission.authguard import AuthGuard


def test_failures_slow_down_then_lock_out() -> None:
    guard = AuthGuard(max_failures=3, window=60, lockout=600, delay_step=1.0, max_delay=5.0)
    ip = "127.0.0.9"
    assert guard.delay(ip, 0) == 0
    assert not guard.failure(ip, 1)
    assert guard.delay(ip, 2) == 1.0
    assert not guard.failure(ip, 2)
    assert guard.delay(ip, 3) == 2.0
    assert not guard.locked(ip, 3)
    assert guard.failure(ip, 3)  # third failure locks
    assert guard.locked(ip, 4)
    assert guard.locked(ip, 602)
    assert not guard.locked(ip, 700)


def test_failures_expire_after_the_window() -> None:
    guard = AuthGuard(max_failures=2, window=10, lockout=100)
    guard.failure("127.0.0.1", 0)
    assert not guard.failure("127.0.0.1", 20)  # the first one has expired
    assert not guard.locked("127.0.0.1", 21)


def test_addresses_are_independent() -> None:
    guard = AuthGuard(max_failures=2)
    guard.failure("127.0.0.1", 0)
    assert guard.delay("127.0.0.1", 1) > 0
    assert guard.delay("127.0.0.2", 1) == 0
    assert not guard.locked("127.0.0.2", 1)


def test_table_is_bounded() -> None:
    guard = AuthGuard(max_entries=100)
    for i in range(1000):
        guard.failure(f"127.0.{i // 256}.{i % 256}", 0)
    assert len(guard) <= 100
