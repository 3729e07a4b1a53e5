"""py-spy profiles of relay's shards while bench/e2e.py loads them, and a summary.

`record` starts ``py-spy record -p PID -d SECONDS -f raw -o FILE`` for each shard
process (the raw format is one line per distinct stack: frames root first,
separated by ";", then the sample count).  `summarise` reads such files and
splits the main thread's samples (the trio loop, where relay's Python work runs)
by trio task (the function the task was started with), by package of the
innermost Python frame (time in C code, e.g. a socket call, counts for the
Python frame that called it), and by function, self and total; the other
threads (the spool's writer, trio's worker threads) by self time.  Line numbers
are dropped so a function counts once.
"""

from __future__ import annotations

import re
import shutil
import signal
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

__all__ = ["ProfileSummary", "py_spy", "record", "shard_pids", "summarise"]

_LINE_NUMBER: Final = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    """The py-spy executable (the venv's first), or None."""
    beside = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def record(pids: Iterable[int], seconds: float, directory: Path, files: list[Path]) -> None:
    """Profile each of `pids` for `seconds`, appending to `files` the raw file each
    py-spy writes.  py-spy ends early when its process does; when this is
    cancelled (the run is over) it gets SIGINT, on which it writes what it has."""
    executable = py_spy()
    if executable is None:
        return
    async with trio.open_nursery() as nursery:
        for pid in pids:
            output = directory / f"py-spy-{pid}.txt"
            files.append(output)
            command = [executable, "record", "-p", str(pid), "-d", str(int(seconds)), "-f", "raw",
                       "-o", str(output), "--nonblocking"]  # fmt: skip
            nursery.start_soon(_run, command, seconds + 30.0)


async def _interrupt(process: trio.Process) -> None:
    """How a cancelled py-spy is stopped: SIGINT (it writes its file), then SIGKILL."""
    process.send_signal(signal.SIGINT)
    with trio.move_on_after(15.0):
        await process.wait()
        return
    process.kill()


async def _run(command: list[str], timeout: float) -> None:
    with trio.move_on_after(timeout):
        await trio.run_process(
            command,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            deliver_cancel=_interrupt,
        )


#: Frames of the chain every main-thread stack starts with (runpy, click, trio.run).
_ROOT_CHAIN: Final = ("<frozen runpy>", "click/core.py", "relay/cli.py", "trio/_core/_run.py")
_FILE: Final = re.compile(r"\(([^()]*)\)$")

Shares = list[tuple[str, float]]


@dataclass(frozen=True, slots=True)
class ProfileSummary:
    """Where the samples were, split between the main thread (the trio loop) and
    the other threads (the spool's writer, trio's worker threads)."""

    samples: int
    main_samples: int
    by_task: Shares  # main thread: the function each trio task was started with
    by_package: Shares  # main thread: the package of the innermost Python frame
    main_self: Shares  # main thread: functions by self time
    main_total: Shares  # main thread: functions on the stack (root chain left out)
    thread_self: Shares  # other threads: functions by self time

    def lines(self, top: int = 12) -> list[str]:
        others = self.samples - self.main_samples
        out = [
            f"{self.samples} samples: main thread (trio loop) {self.main_samples}, "
            f"other threads {others}"
        ]
        sections = [
            ("main thread, by trio task", self.by_task),
            ("main thread, by package (innermost Python frame)", self.by_package),
            ("main thread, by self time", self.main_self),
            ("main thread, by total time", self.main_total),
            ("other threads, by self time", self.thread_self),
        ]
        for title, shares in sections:
            if shares:
                out.append(f"{title}:")
                out += [f"  {share:6.1%}  {name}" for name, share in shares[:top]]
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "samples": self.samples,
            "main_samples": self.main_samples,
            "by_task": self.by_task[:25],
            "by_package": self.by_package[:25],
            "main_self": self.main_self[:25],
            "main_total": self.main_total[:25],
            "thread_self": self.thread_self[:25],
        }


def _file_of(frame: str) -> str:
    match = _FILE.search(frame)
    return match.group(1) if match else frame


def _package(frame: str) -> str:
    """relay/<subpackage>, or the top-level name of another library's file."""
    parts = _file_of(frame).split("/")
    return "/".join(parts[:2]) if parts[0] == "relay" else parts[0]


def _task(frames: list[str]) -> str:
    """The function a trio task was started with: the frame after the last
    ``unrolled_run`` (py-spy may cut a stack short: "(truncated stack)")."""
    runs = [i for i, frame in enumerate(frames) if frame.startswith("unrolled_run ")]
    if not runs:
        return "(truncated stack)"
    after = runs[-1] + 1
    return frames[after] if after < len(frames) else "(trio's own scheduling)"


def _shares(counter: Counter[str], whole: int) -> Shares:
    return [(name, n / whole) for name, n in counter.most_common(40)] if whole else []


def summarise(files: Iterable[Path]) -> ProfileSummary:
    """Add up py-spy raw files (stacks whose root is ``Thread._bootstrap`` are
    threads other than the main one)."""
    counters: dict[str, Counter[str]] = {
        name: Counter() for name in ("task", "package", "self", "total", "thread")
    }
    samples = main_samples = 0
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [_LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]
            samples += count
            if frames[0].startswith("Thread._bootstrap"):
                counters["thread"][frames[-1]] += count
                continue
            main_samples += count
            counters["task"][_task(frames)] += count
            counters["package"][_package(frames[-1])] += count
            counters["self"][frames[-1]] += count
            for frame in set(frames):
                if not _file_of(frame).startswith(_ROOT_CHAIN):
                    counters["total"][frame] += count
    return ProfileSummary(
        samples,
        main_samples,
        _shares(counters["task"], main_samples),
        _shares(counters["package"], main_samples),
        _shares(counters["self"], main_samples),
        _shares(counters["total"], main_samples),
        _shares(counters["thread"], samples - main_samples),
    )


def shard_pids(pids: Iterable[int], root: int) -> list[int]:
    """relay's shard processes: the tree's processes other than the supervisor
    (or the root itself when it runs alone)."""
    shards = [pid for pid in pids if pid != root]
    return shards or [root]
