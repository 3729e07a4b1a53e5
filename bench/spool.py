"""Spool benchmark: durable store throughput with and without group commit, and recovery.

    .venv/bin/python bench/spool.py            # full: recovery at 100,000 and 1,000,000
    .venv/bin/python bench/spool.py --quick    # under a minute: recovery at 100,000

Part 1 stores 5 KB messages (sync=True: every commit fsyncs) from 1, 10, 100 and
1,000 concurrent trio tasks for a fixed time each, once with group commit (the
default writer) and once with one transaction per message (``max_batch=1``),
and prints stores/s, commits per message and CPU per message side by side.

Part 2 fills a spool with N queued messages, then -- in a fresh process, so the
figures are not those of the filling process -- times `iter_schedule()` over all
of them, with the data file's pages in the page cache ("warm") and after asking
the kernel to drop them (``posix_fadvise(DONTNEED)``, "cold"), and reports the
resident memory (anonymous, i.e. the heap, and file-backed, i.e. mapped pages).
Spool directories live under --dir (default: a fresh one under /tmp) and are
deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.model import NewMessage
from relay.spool import open_spool

MESSAGE_SIZE = 5 * 1024
CONTENT = (b"X-Bench: spool\r\nSubject: benchmark\r\n\r\n" + b"a" * 76 + b"\r\n") * (
    MESSAGE_SIZE // 80
)
CONTENT = CONTENT[:MESSAGE_SIZE]
DOMAINS = [f"dest{i}.example" for i in range(50)]


def message(i: int) -> NewMessage:
    return NewMessage(
        sender="bounces@sender.example",
        recipients=(f"user{i}@{DOMAINS[i % len(DOMAINS)]}",),
        content=CONTENT,
        tenant=f"tenant{i % 7}",
        campaign=f"campaign{i % 13}",
    )


def rss() -> dict[str, int]:
    """Resident memory of this process in bytes: anonymous and file-backed."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


# --- part 1: store throughput --------------------------------------------------------


async def store_run(
    directory: Path, concurrency: int, seconds: float, max_batch: int
) -> dict[str, float]:
    """Store from `concurrency` tasks for `seconds`; the figures of the run."""
    msg = message(1)
    counts = [0] * concurrency
    async with open_spool(directory, max_batch=max_batch) as spool:
        await spool.store(msg)  # warm up: environment, first pages
        before = spool.statistics()
        cpu0 = time.process_time()
        start = time.perf_counter()
        deadline = start + seconds

        async def storer(slot: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                await spool.store(msg)
                n += 1
            counts[slot] = n

        async with trio.open_nursery() as nursery:
            for slot in range(concurrency):
                nursery.start_soon(storer, slot)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        after = spool.statistics()
    stored = sum(counts)
    commits = after.commits - before.commits
    return {
        "stored": stored,
        "rate": stored / elapsed,
        "commits_per_msg": commits / stored,
        "cpu_us_per_msg": cpu / stored * 1e6,
        "largest_batch": after.largest_batch,
    }


def throughput(base: Path, seconds: float, batch1_seconds: float) -> None:
    print(f"\n## Durable stores ({MESSAGE_SIZE} B messages, sync=True, {seconds:g} s per run)")
    print(
        f"{'storers':>8} | {'group commit: stores/s':>22} {'commits/msg':>11} {'CPU us/msg':>10}"
        f" {'max batch':>9} | {'1 txn/msg: stores/s':>19} {'commits/msg':>11} {'CPU us/msg':>10}"
    )
    for concurrency in (1, 10, 100, 1000):
        results = []
        for max_batch, secs in ((4096, seconds), (1, batch1_seconds)):
            directory = base / f"store-{concurrency}-{max_batch}"
            results.append(trio.run(store_run, directory, concurrency, secs, max_batch))
            shutil.rmtree(directory)
        group, single = results
        print(
            f"{concurrency:>8} | {group['rate']:>22,.0f} {group['commits_per_msg']:>11.4f}"
            f" {group['cpu_us_per_msg']:>10.1f} {group['largest_batch']:>9,.0f} |"
            f" {single['rate']:>19,.0f} {single['commits_per_msg']:>11.4f}"
            f" {single['cpu_us_per_msg']:>10.1f}",
            flush=True,
        )


# --- part 2: recovery ----------------------------------------------------------------


async def fill(directory: Path, count: int, chunk: int = 1000) -> float:
    """Queue `count` messages (store_many in chunks); returns seconds taken."""
    start = time.perf_counter()
    async with open_spool(directory) as spool:
        for first in range(0, count, chunk):
            await spool.store_many([message(i) for i in range(first, min(first + chunk, count))])
    return time.perf_counter() - start


async def recover(directory: Path, cold: bool) -> dict[str, float]:
    """In the child: open the spool and read the whole schedule index."""
    if cold:
        fd = os.open(directory / "data.mdb", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    before = rss()
    async with open_spool(directory) as spool:
        start = time.perf_counter()
        count = 0
        for _record in spool.iter_schedule():
            count += 1
        elapsed = time.perf_counter() - start
        after = rss()
        start = time.perf_counter()
        kept = list(spool.iter_schedule())
        kept_elapsed = time.perf_counter() - start
        kept_rss = rss()
        del kept
    return {
        "count": count,
        "seconds": elapsed,
        "anon_before": before["RssAnon"],
        "anon_after": after["RssAnon"],
        "file_after": after["RssFile"],
        "kept_seconds": kept_elapsed,
        "kept_anon": kept_rss["RssAnon"],
    }


def recovery(base: Path, counts: list[int]) -> None:
    print("\n## Recovery: iter_schedule() over every queued message, in a fresh process")
    print(
        f"{'queued':>10} | {'fill s':>7} | {'cache':>5} {'read s':>7} {'records/s':>11}"
        f" {'RssAnon MB':>10} {'RssFile MB':>10} | {'as list: s':>10} {'RssAnon MB':>10}"
        f" {'B/record':>8}"
    )
    for count in counts:
        directory = base / f"recovery-{count}"
        filled = trio.run(fill, directory, count)
        for cold in (True, False):
            child = subprocess.run(
                [sys.executable, __file__, "--recover-child", str(directory)]
                + (["--cold"] if cold else []),
                check=True,
                capture_output=True,
                text=True,
            )
            r = json.loads(child.stdout.strip().splitlines()[-1])
            assert r["count"] == count, r
            per_record = (r["kept_anon"] - r["anon_after"]) / count
            print(
                f"{count:>10,} | {filled:>7.1f} | {'cold' if cold else 'warm':>5}"
                f" {r['seconds']:>7.2f} {count / r['seconds']:>11,.0f}"
                f" {r['anon_after'] / 2**20:>10.1f} {r['file_after'] / 2**20:>10.1f} |"
                f" {r['kept_seconds']:>10.2f} {r['kept_anon'] / 2**20:>10.1f} {per_record:>8.0f}",
                flush=True,
            )
        size = (directory / "data.mdb").stat().st_blocks * 512
        print(f"{'':>10}   data.mdb: {size / 2**30:.2f} GiB on disk")
        shutil.rmtree(directory)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs; recovery at 100,000 only")
    parser.add_argument("--dir", type=Path, help="parent directory for the spools (default: /tmp)")
    parser.add_argument("--recover-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.recover_child:
        print(json.dumps(trio.run(recover, args.recover_child, args.cold)))
        return
    seconds, batch1_seconds = (2.0, 1.0) if args.quick else (5.0, 3.0)
    counts = [100_000] if args.quick else [100_000, 1_000_000]
    base = Path(tempfile.mkdtemp(prefix="relay-bench-spool-", dir=args.dir or "/tmp"))
    print("# relay spool benchmark")
    print(f"python {sys.version.split()[0]}, cpus {os.cpu_count()}, dir {base}, quick={args.quick}")
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    try:
        throughput(base, seconds, batch1_seconds)
        recovery(base, counts)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        print("\nload average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
