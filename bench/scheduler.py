"""Scheduler benchmark: memory per queued message, and recovery from a real spool.

    .venv/bin/python bench/scheduler.py            # 100,000 and 1,000,000 messages
    .venv/bin/python bench/scheduler.py --quick    # 100,000 only (about a minute)

Part 1 (memory): builds N schedule records in memory (one recipient each; tenants,
campaigns and recipient domains drawn as a bulk sender's would be: a few big
mailbox providers and a long tail), then `Scheduler.add()`s them and reports what
the scheduler holds: bytes per message by tracemalloc (every Python allocation the
scheduler made) and by the growth of the process's anonymous resident memory, the
number of scheduled queues, and the add() rate.

Part 2 (recovery): fills a spool with N queued messages (small content, no fsync:
filling is not what is measured), then, in a fresh process, times
`spool.iter_schedule()` alone and `Scheduler.recover()` (which reads that and only
that), and reports the resident memory the recovered scheduler holds per message.
A second fresh process repeats the recovery under tracemalloc for the exact heap
figure.  Spools live under --dir (default: a fresh directory under /tmp) and are
deleted at the end.

The aims (ARCHITECTURE.md, issue 3): under 300 bytes per queued message, recovery
of 1,000,000 messages under 10 s.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.model import NewMessage, ScheduleRecord, new_message_id
from relay.scheduler import Scheduler
from relay.spool import open_spool

T0 = 1_700_000_000.0
DOMAINS = 1000
TENANTS = 10
CAMPAIGNS_PER_TENANT = 3
CONTENT = b"Subject: bench\r\n\r\n" + b"x" * 80 + b"\r\n"


def anon_rss() -> int:
    """Anonymous resident memory of this process (the heap), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class Population:
    """Who the messages go to: Zipf-like domains, a few tenants and campaigns."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        weights = [1.0 / (rank + 1) ** 1.1 for rank in range(DOMAINS)]
        self.domains = [f"mx{rank}.example" for rank in range(DOMAINS)]
        self.cumulative = list(_accumulate(weights))

    def pick(self) -> tuple[str, str, str]:
        rng = self.rng
        domain = self.domains[_bisect(self.cumulative, rng.random() * self.cumulative[-1])]
        tenant = rng.randrange(TENANTS)
        campaign = f"t{tenant}-c{rng.randrange(CAMPAIGNS_PER_TENANT)}"
        return f"tenant{tenant}", campaign, domain


def _accumulate(values: list[float]) -> list[float]:
    total, out = 0.0, []
    for value in values:
        total += value
        out.append(total)
    return out


def _bisect(cumulative: list[float], x: float) -> int:
    lo, hi = 0, len(cumulative) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cumulative[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


# --- part 1: memory held by add() ----------------------------------------------------------


def records(count: int) -> list[ScheduleRecord]:
    population = Population()
    out = []
    for i in range(count):
        tenant, campaign, domain = population.pick()
        at = T0 + i * 0.001
        out.append(
            ScheduleRecord(new_message_id(at), at + 60, at + 5 * 86400, tenant, campaign, (domain,))
        )
    return out


async def memory_run(count: int, spool_dir: Path, traced: bool) -> dict[str, float]:
    """add() `count` records; memory held by the scheduler (tracemalloc, or RSS growth)."""
    recs = records(count)
    gc.collect()
    async with open_spool(spool_dir, sync=False, map_size=1 << 26) as spool:
        rss0 = anon_rss()
        if traced:
            tracemalloc.start()
        scheduler = Scheduler(spool, clock=lambda: T0)
        started = time.perf_counter()
        for record in recs:
            scheduler.add(record)
        elapsed = time.perf_counter() - started
        heap = tracemalloc.get_traced_memory()[0] if traced else 0
        tracemalloc.stop()
        rss1 = anon_rss()
        stats = scheduler.statistics()
        assert stats.scheduled == count
    return {
        "queues": stats.queues,
        "traced_bytes_per_msg": heap / count,
        "rss_bytes_per_msg": (rss1 - rss0) / count,
        "add_per_s": count / elapsed,
    }


def memory(base: Path, counts: list[int]) -> None:
    print("part 1: memory held by the scheduler after add() (one recipient per message)")
    print(
        f"  {'messages':>10} {'queues':>7} {'traced B/msg':>13} {'RSS B/msg':>10} {'add()/s':>10}"
    )
    for count in counts:
        plain = trio.run(memory_run, count, base / f"mem-{count}", False)
        traced = trio.run(memory_run, count, base / f"mem-traced-{count}", True)
        print(
            f"  {count:>10,} {plain['queues']:>7,} {traced['traced_bytes_per_msg']:>13.1f}"
            f" {plain['rss_bytes_per_msg']:>10.1f} {plain['add_per_s']:>10,.0f}"
        )
        shutil.rmtree(base / f"mem-{count}", ignore_errors=True)
        shutil.rmtree(base / f"mem-traced-{count}", ignore_errors=True)


# --- part 2: recovery -------------------------------------------------------------------------


async def fill(directory: Path, count: int, chunk: int = 2000) -> float:
    population = Population()
    started = time.perf_counter()
    async with open_spool(directory, sync=False, map_size=16 << 30) as spool:
        for start in range(0, count, chunk):
            msgs = []
            for i in range(start, min(count, start + chunk)):
                tenant, campaign, domain = population.pick()
                msgs.append(
                    NewMessage(
                        sender="bounces@sender.example",
                        recipients=(f"user{i}@{domain}",),
                        content=CONTENT,
                        tenant=tenant,
                        campaign=campaign,
                    )
                )
            await spool.store_many(msgs, timeout=600)
    return time.perf_counter() - started


async def recover_child(directory: Path, traced: bool) -> dict[str, float]:
    async with open_spool(directory, sync=False, map_size=16 << 30) as spool:
        started = time.perf_counter()
        count = sum(1 for _ in spool.iter_schedule())
        iterated = time.perf_counter() - started
        gc.collect()
        rss0 = anon_rss()
        if traced:
            tracemalloc.start()
        scheduler = Scheduler(spool)
        started = time.perf_counter()
        recovered = await scheduler.recover()
        elapsed = time.perf_counter() - started
        heap = tracemalloc.get_traced_memory()[0] if traced else 0
        tracemalloc.stop()
        rss1 = anon_rss()
        assert recovered == count
        return {
            "messages": count,
            "queues": scheduler.statistics().queues,
            "iter_schedule_s": iterated,
            "recover_s": elapsed,
            "rss_bytes_per_msg": (rss1 - rss0) / count,
            "traced_bytes_per_msg": heap / count,
        }


def child(directory: Path, traced: bool) -> dict[str, float]:
    command = [sys.executable, __file__, "--recover-child", str(directory)]
    if traced:
        command.append("--traced")
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def recovery(base: Path, counts: list[int], traced: bool) -> None:
    print("part 2: recovery from a real spool (fresh process; iter_schedule alone, then recover())")
    print(
        f"  {'messages':>10} {'fill s':>7} {'iter s':>7} {'recover s':>10} {'msg/s':>10}"
        f" {'RSS B/msg':>10} {'traced B/msg':>13}"
    )
    for count in counts:
        directory = base / f"recover-{count}"
        filled = trio.run(fill, directory, count)
        figures = child(directory, traced=False)
        heap = child(directory, traced=True)["traced_bytes_per_msg"] if traced else float("nan")
        print(
            f"  {count:>10,} {filled:>7.1f} {figures['iter_schedule_s']:>7.2f}"
            f" {figures['recover_s']:>10.2f} {count / figures['recover_s']:>10,.0f}"
            f" {figures['rss_bytes_per_msg']:>10.1f} {heap:>13.1f}"
        )
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100,000 messages only")
    parser.add_argument("--dir", type=Path, help="parent directory for the spools (default: /tmp)")
    parser.add_argument(
        "--no-traced-recovery", action="store_true", help="skip the tracemalloc run"
    )
    parser.add_argument("--recover-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.recover_child:
        print(json.dumps(trio.run(recover_child, args.recover_child, args.traced)))
        return
    counts = [100_000] if args.quick else [100_000, 1_000_000]
    base = Path(tempfile.mkdtemp(prefix="relay-bench-scheduler-", dir=args.dir))
    print(
        f"python {sys.version.split()[0]}; {DOMAINS} recipient domains (Zipf s=1.1),"
        f" {TENANTS} tenants x {CAMPAIGNS_PER_TENANT} campaigns; aims: < 300 B/msg,"
        " recovery of 1,000,000 < 10 s"
    )
    try:
        memory(base, counts)
        recovery(base, counts, traced=not args.no_traced_recovery)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
