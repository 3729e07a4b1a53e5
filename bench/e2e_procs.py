"""Process plumbing for bench/e2e.py: CPU and memory of process trees from /proc,
free ports, and stopping what the harness started by PID.

Theory of operation: a system under test is a tree of processes (relay's
supervisor and its shards; Postfix's master and its daemons; a sink and its
workers).  Its CPU time is the sum, over the live processes of the tree, of
utime + stime + cutime + cstime from /proc/<pid>/stat: a process that exited and
was reaped is counted in its parent's cutime/cstime, so nothing is lost or
counted twice.  The CPU a system used during a measurement window is the
difference of two such snapshots.  Memory is the sum over the tree,
sampled while the load runs (the peak of the samples is reported), as Pss
(shared pages divided among the processes sharing them) beside the plain VmRSS
sum, which counts a shared library once per process.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from relay.testing.ports import free_port

__all__ = [
    "CLOCK_TICKS",
    "TreeSample",
    "TreeWatch",
    "alive",
    "descendants",
    "exited_cpu",
    "free_port",
    "kill_known",
    "sample_tree",
    "start_time",
]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text.rsplit(")", 1)[1].split()


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process now."""
    parents: dict[int, int] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            parents[int(entry.name)] = int(fields[1])
    return parents


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), to tell it from a later process
    that reuses the number; None if it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def descendants(root: int) -> list[int]:
    """`root` and every process below it (that still exists), root first."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _cpu_of(pid: int) -> float:
    """CPU seconds of `pid` and of its reaped children (0.0 if it is gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime + cutime + cstime) / CLOCK_TICKS


def _memory_of(pid: int) -> tuple[int, int]:
    """(resident, proportional) bytes of `pid`: VmRSS counts shared pages in every
    process that maps them, Pss divides them among those processes, so the Pss of
    a tree adds up to what the tree really holds.  (0, 0) if it is gone."""
    found = [0, 0]
    try:
        text = (_PROC / str(pid) / "smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0, 0
    for line in text.splitlines():
        for index, name in enumerate(("Rss:", "Pss:")):
            if line.startswith(name):
                found[index] = int(line.split()[1]) * 1024
    return found[0], found[1]


@dataclass(frozen=True, slots=True)
class TreeSample:
    """One look at a process tree."""

    at: float  # time.time()
    pids: tuple[int, ...]
    cpu: float  # seconds, the tree's processes and everything they reaped
    rss: int  # bytes, summed over the tree's processes (shared pages counted in each)
    pss: int  # bytes, proportional set size summed (shared pages divided among them)


def sample_tree(root: int) -> TreeSample:
    """The CPU and memory of `root`'s tree now."""
    pids = descendants(root)
    memory = [_memory_of(pid) for pid in pids]
    return TreeSample(
        time.time(),
        tuple(pids),
        sum(_cpu_of(pid) for pid in pids),
        sum(rss for rss, _ in memory),
        sum(pss for _, pss in memory),
    )


def exited_cpu(pid: int) -> float:
    """CPU seconds of a child that has exited but is not reaped yet (a zombie keeps
    its counters until it is waited for)."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    return _cpu_of(pid)


@dataclass(slots=True)
class TreeWatch:
    """A process tree observed over a measurement window: CPU between `start()`
    and `stop()`, peak memory of the samples taken with `sample()` in between."""

    root: int
    first: TreeSample | None = None
    last: TreeSample | None = None
    peak_rss: int = 0
    peak_pss: int = 0
    known: dict[int, int | None] = field(default_factory=dict)  # pid -> start time

    def start(self) -> None:
        self.first = self.sample()

    def sample(self) -> TreeSample:
        taken = sample_tree(self.root)
        self.peak_rss = max(self.peak_rss, taken.rss)
        self.peak_pss = max(self.peak_pss, taken.pss)
        for pid in taken.pids:
            if pid not in self.known:
                self.known[pid] = start_time(pid)
        return taken

    def stop(self) -> None:
        self.last = self.sample()

    @property
    def cpu(self) -> float:
        """CPU seconds used in the window (0.0 before start/stop)."""
        if self.first is None or self.last is None:
            return 0.0
        return max(0.0, self.last.cpu - self.first.cpu)


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def kill_known(known: dict[int, int | None], timeout: float = 5.0) -> list[int]:
    """SIGKILL each process of `known` (pid -> start time, as `TreeWatch.known`
    recorded them under a process this harness started) that still runs as that
    same process; wait up to `timeout` seconds for them to go.  Returns the PIDs
    killed."""
    killed = []
    for pid, started in known.items():
        if started is not None and start_time(pid) == started and alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(pid)
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    return killed
