"""Sinks and load generators for bench/e2e.py, each run as its own process.

Two tool sets drive every system the same way:

- ours: `relay bench sink` (records every message's X-Bench-Id and arrival time)
  and `relay bench send` (records the time each 250 came back, --ids-out);
- Postfix's: `smtp-sink -c` (a running message counter, no per-message records)
  and `smtp-source -d` (connection reuse; no AUTH, no per-message figures).

A sink is followed while it runs (its live count decides when a run is complete)
and read back when stopped; a load runs to completion and reports what the
server accepted.  The CPU of each process is measured from /proc (e2e_procs).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio
from e2e_procs import TreeWatch, exited_cpu, free_port, kill_known

__all__ = [
    "BENCH_SENDER",
    "BENCH_USER",
    "SMTP_SINK",
    "SMTP_SOURCE",
    "LoadOutcome",
    "LoadSpec",
    "OurSink",
    "PostfixSink",
    "Sink",
    "SinkOutcome",
    "run_our_load",
    "run_smtp_source",
    "wait_listening",
]

ROOT: Final = Path(__file__).resolve().parent.parent
RELAY: Final = [sys.executable, "-m", "relay.cli"]
SMTP_SOURCE: Final = Path("/usr/sbin/smtp-source")
SMTP_SINK: Final = Path("/usr/sbin/smtp-sink")
#: The envelope and header sender of every load, and relay's benchmark user.
BENCH_SENDER: Final = "bench@loadgen.test"
BENCH_USER: Final = "bench"
BENCH_RECIPIENT: Final = "rcpt@example.test"
#: Header bytes smtp-source adds to its -l payload (From, To, Date, Message-Id with
#: -M loadgen.test), so its messages have the size ours have.
SMTP_SOURCE_HEADERS: Final = 145
STARTUP_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 60.0

_SINK_LINE: Final = re.compile(rb"^sink: (\d+) msgs")
_SINK_READY: Final = re.compile(rb"^sink: listening on [^:]+:(\d+)")
_SMTP_SINK_COUNT: Final = re.compile(rb"mesg=(\d+)\r?$")


async def wait_listening(port: int, process: trio.Process | None, timeout: float) -> None:
    """Return once 127.0.0.1:`port` accepts connections; RuntimeError if `process`
    exits first or nothing listens within `timeout` seconds."""
    with trio.move_on_after(timeout):
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with status {process.returncode}")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s")


async def _terminate(process: trio.Process, watch: TreeWatch, timeout: float) -> None:
    """SIGTERM `process`, wait `timeout` seconds, then SIGKILL what is left of its tree."""
    if process.returncode is None:
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout):
            await process.wait()
    kill_known(watch.known)
    with trio.move_on_after(10.0):
        await process.wait()


# --- sinks --------------------------------------------------------------------------------


@dataclass(slots=True)
class SinkOutcome:
    """What a sink received in one run."""

    delivered: int
    #: Cumulative deliveries over time, (time.time(), count), for rates and charts.
    curve: list[tuple[float, int]]
    #: Message key (X-Bench-Id, else Message-ID) -> arrival times; None without records.
    arrivals: dict[str, list[float]] | None
    summary: dict[str, Any] | None  # the sink's own JSON summary


class Sink(ABC):
    """A sink process: `start`, then `count`/`samples` while it runs, then `stop`."""

    name = "sink"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.count = 0
        self.samples: list[tuple[float, int]] = []
        self.process: trio.Process | None = None
        self.watch: TreeWatch | None = None

    @abstractmethod
    async def start(self, nursery: trio.Nursery) -> None:
        """Start the process (its readers run in `nursery`); return once it listens."""

    @abstractmethod
    async def stop(self) -> SinkOutcome:
        """Stop the process and say what it received."""

    def _seen(self, count: int) -> None:
        if count != self.count:
            self.count = count
            self.samples.append((time.time(), count))


class OurSink(Sink):
    """`relay bench sink`: per-message records (X-Bench-Id, arrival) at exit."""

    name = "relay bench sink"

    def __init__(self, directory: Path, workers: int = 1) -> None:
        super().__init__(directory)
        self.workers = workers
        self.records_file = directory / "sink-records.csv"
        self.summary_file = directory / "sink-summary.json"
        self._ready = trio.Event()

    async def start(self, nursery: trio.Nursery) -> None:
        command = [
            *RELAY,
            "bench",
            "sink",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--workers",
            str(self.workers),
            "--interval",
            "0.25",
            "--records-out",
            str(self.records_file),
            "--json-out",
            str(self.summary_file),
        ]
        self.process = await trio.lowlevel.open_process(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.watch = TreeWatch(self.process.pid)
        nursery.start_soon(self._follow)
        with trio.move_on_after(STARTUP_TIMEOUT):
            await self._ready.wait()
        if not self._ready.is_set():
            await _terminate(self.process, self.watch, 5.0)
            raise RuntimeError("relay bench sink did not start")
        self.watch.sample()

    async def _follow(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        pending = b""
        async for chunk in self.process.stderr:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                counted = _SINK_LINE.match(line)
                if counted:
                    self._seen(int(counted.group(1)))
                    continue
                ready = _SINK_READY.match(line)
                if ready:
                    self.port = int(ready.group(1))
                    self._ready.set()
                elif line.strip():
                    print(f"  [sink] {line.decode(errors='replace')}", file=sys.stderr)

    async def stop(self) -> SinkOutcome:
        assert self.process is not None and self.watch is not None
        await _terminate(self.process, self.watch, STOP_TIMEOUT)
        arrivals: dict[str, list[float]] = {}
        times: list[float] = []
        with suppress(FileNotFoundError), self.records_file.open(newline="") as records:
            for row in csv.DictReader(records):
                arrival = float(row["arrival"])
                key = row["bench_id"] or row["message_id"] or f"#{len(times)}"
                arrivals.setdefault(key, []).append(arrival)
                times.append(arrival)
        times.sort()
        summary = None
        with suppress(FileNotFoundError, ValueError):
            summary = json.loads(self.summary_file.read_text())
        return SinkOutcome(
            delivered=len(times),
            curve=[(t, n) for n, t in enumerate(times, 1)],
            arrivals=arrivals,
            summary=summary,
        )


class PostfixSink(Sink):
    """Postfix's `smtp-sink -c`: a message counter on stdout, sampled as it changes."""

    name = "smtp-sink"

    async def start(self, nursery: trio.Nursery) -> None:
        self.port = free_port()
        command = [str(SMTP_SINK)]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]  # it refuses to run as root otherwise
        command += ["-c", f"127.0.0.1:{self.port}", "1000"]
        self.process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self.watch = TreeWatch(self.process.pid)
        nursery.start_soon(self._follow)
        try:
            await wait_listening(self.port, self.process, STARTUP_TIMEOUT)
        except RuntimeError:
            await _terminate(self.process, self.watch, 5.0)
            raise
        self.watch.sample()

    async def _follow(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for chunk in self.process.stdout:
            # Records end in \r ("sess=1 quit=0 mesg=42\r"); the last one is the newest.
            last = chunk.rstrip(b"\r").rpartition(b"\r")[2]
            counted = _SMTP_SINK_COUNT.search(last)
            if counted:
                self._seen(int(counted.group(1)))

    async def stop(self) -> SinkOutcome:
        assert self.process is not None and self.watch is not None
        await _terminate(self.process, self.watch, STOP_TIMEOUT)
        return SinkOutcome(
            delivered=self.count, curve=list(self.samples), arrivals=None, summary=None
        )


# --- loads ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What every load sends: the same for every system of a run."""

    messages: int
    size: int
    sessions: int
    time_limit: float


@dataclass(slots=True)
class LoadOutcome:
    """What a load generator saw."""

    tool: str
    started_at: float  # time.time() of the first connection (about)
    finished_at: float  # time.time() of the last 250 (ours) or of the exit
    accepted: int | None  # None: the tool does not say (smtp-source that failed)
    attempted: int
    cpu: float  # seconds, the whole process (start-up included)
    #: bench id -> time.time() of its 250; None for smtp-source.
    accepted_at: dict[str, float] | None = None
    #: from the end of DATA to the 250 (ms): count, p50, p90, p99, max ...
    submit_latency_ms: dict[str, float] | None = None
    errors: dict[str, int] = field(default_factory=dict)
    note: str = ""

    @property
    def injection_rate(self) -> float:
        """Accepted messages per second at the submission side."""
        seconds = self.finished_at - self.started_at
        return (self.accepted or 0) / seconds if seconds > 0 else 0.0


async def _run_to_end(
    command: list[str], time_limit: float, stdout: Path, stderr: Path
) -> tuple[int, float, float]:
    """Run a load process to its end (killed after `time_limit` s); (exit status,
    CPU seconds, time.time() at exit)."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = await trio.lowlevel.open_process(command, cwd=ROOT, stdout=out, stderr=err)
    exited = False
    try:
        with trio.move_on_after(time_limit) as limit:
            # Wait for the exit without reaping: the zombie still shows its CPU time.
            await trio.to_thread.run_sync(exited_cpu, process.pid, abandon_on_cancel=True)
        if limit.cancelled_caught:
            process.kill()
        cpu = await trio.to_thread.run_sync(exited_cpu, process.pid)
        exited = True
        finished = time.time()
    finally:
        with trio.CancelScope(shield=True):
            if not exited:  # interrupted: the process may still run
                with suppress(ProcessLookupError):
                    process.kill()
            status = await process.wait()
    return status, cpu, finished


def _read_ids(path: Path) -> Iterator[tuple[str, float]]:
    with path.open(newline="") as ids:
        for row in csv.DictReader(ids):
            yield row["bench_id"], float(row["accepted_at"])


async def run_our_load(
    port: int,
    spec: LoadSpec,
    directory: Path,
    *,
    auth: tuple[str, str] | None = None,
    starttls: bool = False,
) -> LoadOutcome:
    """`relay bench send` against 127.0.0.1:`port`, to the end."""
    ids_file = directory / "send-ids.csv"
    report_file = directory / "send-report.json"
    command = [
        *RELAY,
        "bench",
        "send",
        f"127.0.0.1:{port}",
        "--messages",
        str(spec.messages),
        "--sessions",
        str(spec.sessions),
        "--size",
        str(spec.size),
        "--from",
        BENCH_SENDER,
        "--domains",
        "example.test",
        "--time-limit",
        str(spec.time_limit),
        "--ids-out",
        str(ids_file),
        "--json",
        "--quiet",
    ]
    if auth is not None:
        command += ["--auth", f"{auth[0]}:{auth[1]}"]
    if starttls:
        command.append("--starttls")
    status, cpu, exited = await _run_to_end(
        command, spec.time_limit + 30.0, report_file, directory / "send-stderr.txt"
    )
    try:
        report = json.loads(report_file.read_text())
    except ValueError:
        error = (directory / "send-stderr.txt").read_text(errors="replace")[-800:]
        raise RuntimeError(f"relay bench send failed (status {status}): {error}") from None
    accepted_at = dict(_read_ids(ids_file)) if ids_file.exists() else {}
    started = float(report["started_at"])
    last = max(accepted_at.values(), default=exited)
    errors = dict(report["errors"]) | {
        f"connection: {key}": value for key, value in report["connection_errors"].items()
    }
    return LoadOutcome(
        tool="relay bench send",
        started_at=started,
        finished_at=last,
        accepted=int(report["accepted"]),
        attempted=int(report["attempted"]),
        cpu=cpu,
        accepted_at=accepted_at,
        submit_latency_ms={k: float(v) for k, v in report["latency_ms"].items()},
        errors=errors,
        note=f"stopped by {report['stopped_by']}"
        + (f": {report['aborted']}" if report["aborted"] else ""),
    )


async def run_smtp_source(port: int, spec: LoadSpec, directory: Path) -> LoadOutcome:
    """Postfix's smtp-source against 127.0.0.1:`port` (connection reuse), to the end.

    smtp-source stops at the first reply it did not expect, so a clean exit means
    every message got its 250."""
    command = [
        str(SMTP_SOURCE),
        "-s",
        str(spec.sessions),
        "-m",
        str(spec.messages),
        "-l",
        str(max(0, spec.size - SMTP_SOURCE_HEADERS)),
        "-d",
        "-f",
        BENCH_SENDER,
        "-t",
        BENCH_RECIPIENT,
        "-M",
        "loadgen.test",
        f"127.0.0.1:{port}",
    ]
    started = time.time()
    status, cpu, exited = await _run_to_end(
        command, spec.time_limit, directory / "source-stdout.txt", directory / "source-stderr.txt"
    )
    note = ""
    if status != 0:
        note = (directory / "source-stderr.txt").read_text(errors="replace")[-300:].strip()
    return LoadOutcome(
        tool="smtp-source",
        started_at=started,
        finished_at=exited,
        accepted=spec.messages if status == 0 else None,
        attempted=spec.messages,
        cpu=cpu,
        errors={} if status == 0 else {f"exit {status}": 1},
        note=note,
    )
