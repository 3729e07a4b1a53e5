"""`relay serve --workers N`: N shard processes sharing the listening ports.

Theory of operation: every shard is a complete engine (its own trio loop and its
own LMDB environment under the spool directory) and opens the same listening
addresses with SO_REUSEPORT, so the kernel spreads connections among them.  This
module only starts the shard processes, forwards SIGTERM/SIGINT (drain and stop)
and SIGHUP (reload certificates) to them, and restarts a shard that died without
being asked to, with a growing delay so a shard that cannot start does not spin.
A shard's queue is never lost when it stops: it lives in its LMDB environment and
the next start of that shard number reads it back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

from relay.log import get_logger

log = get_logger("supervisor")

RESTART_DELAY_MIN = 0.5
RESTART_DELAY_MAX = 30.0


@dataclass
class _Shard:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = RESTART_DELAY_MIN
    restart_at: float = 0.0
    exits: list[int] = field(default_factory=list)


def shard_command(base_args: Sequence[str], index: int, count: int) -> list[str]:
    """The command line of shard `index` of `count`."""
    return [sys.executable, "-m", "relay.cli", "serve", *base_args, "--shard", str(index),
            "--shards", str(count)]  # fmt: skip


def supervise(base_args: Sequence[str], count: int, *, grace: float) -> int:
    """Run `count` shard processes until SIGTERM/SIGINT; return the exit status."""
    shards = [_Shard(i) for i in range(count)]
    pending: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        pending.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    def start(shard: _Shard) -> None:
        shard.process = subprocess.Popen(shard_command(base_args, shard.index, count))
        shard.started = time.monotonic()
        log.info("shard_started", shard=shard.index, pid=shard.process.pid)

    for shard in shards:
        start(shard)
    stopping = False
    stop_deadline = 0.0
    while True:
        while pending:
            signum = pending.pop(0)
            if signum == signal.SIGHUP:
                log.info("reload_requested")
            elif not stopping:
                stopping = True
                stop_deadline = time.monotonic() + grace + 5.0
                log.info("stopping", signal=signal.Signals(signum).name, grace=grace)
            for shard in shards:
                if shard.process is not None and shard.process.poll() is None:
                    shard.process.send_signal(
                        signal.SIGHUP if signum == signal.SIGHUP else signal.SIGTERM
                    )
        now = time.monotonic()
        for shard in shards:
            proc = shard.process
            if proc is not None and proc.poll() is not None:
                shard.exits.append(proc.returncode)
                shard.process = None
                if not stopping:
                    # Quick deaths grow the delay; a shard that ran a while restarts at once.
                    ran = now - shard.started
                    shard.delay = (
                        RESTART_DELAY_MIN if ran > 60 else min(RESTART_DELAY_MAX, shard.delay * 2)
                    )
                    shard.restart_at = now + shard.delay
                    log.error("shard_died", shard=shard.index, status=proc.returncode,
                              restart_in=round(shard.delay, 1))  # fmt: skip
            if shard.process is None and not stopping and shard.restart_at <= now:
                start(shard)
        if stopping:
            alive = [s for s in shards if s.process is not None and s.process.poll() is None]
            if not alive:
                break
            if now > stop_deadline:
                for s in alive:
                    assert s.process is not None
                    log.warning("shard_killed", shard=s.index, pid=s.process.pid)
                    s.process.kill()
                stop_deadline = now + 5.0
        time.sleep(0.1)
    failed = [
        s.index for s in shards if any(code not in (0, -signal.SIGTERM) for code in s.exits[-1:])
    ]
    return 1 if failed else 0


def default_workers() -> int:
    """One shard per core."""
    return max(1, len(os.sched_getaffinity(0)))
