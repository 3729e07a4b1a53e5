"""Running the sink as a command: one process, or N worker processes on one port.

Theory of operation
-------------------
`serve_sink` is one sink's life as a command: open it, report its counters every
`interval` seconds, stop on a signal, after `duration`, or when told, then give
the open connections `STOP_GRACE` seconds and return the final counters and the
records.

`run_sink` with one worker runs `serve_sink` in this process.  With N workers it
is a supervisor without trio: it starts worker 0 (which binds the port, perhaps
a free one), then workers 1..N-1 on the same port; each binds its own socket
with SO_REUSEPORT and the kernel spreads connections among them.  Workers send
their counters over a pipe every interval; the supervisor adds them up for the
status line, forwards SIGINT/SIGTERM as a "stop" message (workers ignore SIGINT
themselves so that Ctrl-C in a terminal does not kill them before they report),
and merges the final counters and records.  A generated certificate is made once
by the supervisor so that every worker serves the same one.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import multiprocessing
import signal
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import FrameType
from typing import Any, Final

import trio

from relay.loadgen.sink import ReceivedMessage, Sink, SinkStatistics, open_sink
from relay.loadgen.sinkconfig import SinkConfig
from relay.log import configure_logging
from relay.net import ensure_self_signed_certificate

__all__ = ["STOP_GRACE", "SinkRunResult", "run_sink", "serve_sink", "write_records"]

#: Seconds the open connections get to finish once the sink is told to stop.
STOP_GRACE: Final = 2.0
#: Seconds a worker may take to start listening, or to report after "stop".
WORKER_TIMEOUT: Final = 60.0

StatusCallback = Callable[[Mapping[str, Any]], None]

# Summed when workers' counters are added up (the rest: see _merge).
_SUMMED: Final = (
    "messages",
    "recipients",
    "bytes",
    "connections",
    "connections_now",
    "connections_max",
    "tls_connections",
    "refused_connections",
    "rejected",
    "data_errors",
    "groups_in_one_read",
    "reads",
    "duplicates",
)


@dataclasses.dataclass(frozen=True, slots=True)
class SinkRunResult:
    """The end of a sink run: the totals, each worker's counters, the records."""

    port: int
    totals: Mapping[str, Any]  # as SinkStatistics.to_json(), summed over workers
    workers: list[Mapping[str, Any]]
    records: list[ReceivedMessage]
    worker_of_record: list[int]  # the worker that accepted each record

    def to_json(self) -> dict[str, Any]:
        """The JSON summary."""
        return {
            "port": self.port,
            "totals": dict(self.totals),
            "workers": [dict(w) for w in self.workers],
            "recorded": len(self.records),
        }


def _merge(stats: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Add up workers' counters.  connections_max becomes the sum of the workers'
    maxima (an upper bound of the true maximum)."""
    total: dict[str, Any] = {key: 0 for key in _SUMMED}
    total.update(policy={}, faults={}, elapsed=0.0)
    for one in stats:
        for key in _SUMMED:
            total[key] += one[key]
        for group in ("policy", "faults"):
            for name, count in one[group].items():
                total[group][name] = total[group].get(name, 0) + count
        total["elapsed"] = max(total["elapsed"], one["elapsed"])
    return total


def _count_duplicates(records: Iterable[ReceivedMessage]) -> int:
    seen: set[str] = set()
    duplicates = 0
    for record in records:
        key = record.key
        if key is None:
            continue
        if key in seen:
            duplicates += 1
        seen.add(key)
    return duplicates


async def serve_sink(
    config: SinkConfig,
    *,
    worker: int = 0,
    interval: float = 5.0,
    duration: float | None = None,
    on_ready: Callable[[Sink], None] | None = None,
    on_status: Callable[[SinkStatistics], None] | None = None,
    stop: trio.Event | None = None,
    handle_signals: bool = False,
) -> tuple[SinkStatistics, list[ReceivedMessage]]:
    """Run one sink until `stop` is set, `duration` passes or (with `handle_signals`)
    SIGINT/SIGTERM arrives; report every `interval` seconds."""
    stop = stop if stop is not None else trio.Event()
    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(_stop_on_signal, stop)
        async with open_sink(config, worker=worker) as sink:
            if on_ready is not None:
                on_ready(sink)
            with trio.move_on_after(duration if duration is not None else math.inf):
                while not stop.is_set():
                    with trio.move_on_after(interval):
                        await stop.wait()
                    if on_status is not None and not stop.is_set():
                        on_status(sink.statistics())
            sink.stop(grace=STOP_GRACE)
        nursery.cancel_scope.cancel()
    return sink.statistics(), sink.records


async def _stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop.set()
            return


# --- worker processes -------------------------------------------------------------------


def _worker_main(
    config: SinkConfig, worker: int, interval: float, duration: float | None, pipe: Connection
) -> None:
    """A worker process: serve, report over `pipe`, stop when the supervisor says so."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging("error")
    trio.run(_worker, config, worker, interval, duration, pipe)


async def _worker(
    config: SinkConfig, worker: int, interval: float, duration: float | None, pipe: Connection
) -> None:
    stop = trio.Event()

    async def listen_for_stop() -> None:
        with suppress(EOFError):  # EOF: the supervisor is gone, stop as well
            await trio.to_thread.run_sync(pipe.recv, abandon_on_cancel=True)
        stop.set()

    def ready(sink: Sink) -> None:
        pipe.send(("ready", sink.port))

    def status(stats: SinkStatistics) -> None:
        pipe.send(("status", stats.to_json()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(listen_for_stop)
        final, records = await serve_sink(
            config,
            worker=worker,
            interval=interval,
            duration=duration,
            on_ready=ready,
            on_status=status,
            stop=stop,
        )
        nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(pipe.send, ("final", final.to_json(), records))


class _Stopper:
    """SIGINT/SIGTERM set a flag (the supervisor polls it)."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


@contextmanager
def _signals_to(stopper: _Stopper) -> Iterator[None]:
    previous = {sig: signal.signal(sig, stopper) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _receive(pipe: Connection, expected: str, deadline: float) -> tuple[Any, ...]:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not pipe.poll(remaining):
            raise TimeoutError(f"a sink worker did not send {expected!r} in time")
        message: tuple[Any, ...] = pipe.recv()
        if message[0] == expected:
            return message


def _supervise(
    config: SinkConfig,
    workers: int,
    *,
    interval: float,
    duration: float | None,
    on_status: StatusCallback | None,
    on_ready: Callable[[int], None] | None,
) -> SinkRunResult:
    context = multiprocessing.get_context("spawn")
    stopper = _Stopper()
    processes: list[multiprocessing.process.BaseProcess] = []
    pipes: list[Connection] = []
    with tempfile.TemporaryDirectory(prefix="relay-sink-") as tls_dir, _signals_to(stopper):
        if config.tls and config.cert_file is None:
            cert, key = ensure_self_signed_certificate(tls_dir, config.hostname)
            config = dataclasses.replace(config, cert_file=cert, key_file=key)
        try:
            for index in range(workers):
                parent_end, child_end = context.Pipe()
                process = context.Process(
                    target=_worker_main,
                    args=(config, index, interval, duration, child_end),
                    name=f"relay-sink-{index}",
                    daemon=True,
                )
                process.start()
                child_end.close()
                processes.append(process)
                pipes.append(parent_end)
                _, port = _receive(parent_end, "ready", time.monotonic() + WORKER_TIMEOUT)
                if index == 0:
                    config = dataclasses.replace(config, port=port)
            if on_ready is not None:
                on_ready(config.port)
            latest: dict[int, Mapping[str, Any]] = {}
            started = time.monotonic()
            next_status = started + interval
            while not stopper.requested:
                now = time.monotonic()
                if duration is not None and now - started >= duration:
                    break
                if not all(p.is_alive() for p in processes):
                    break
                for ready in wait(pipes, timeout=min(0.2, max(0.0, next_status - now))):
                    assert isinstance(ready, Connection)
                    try:
                        message = ready.recv()
                    except EOFError:
                        continue
                    if message[0] == "status":
                        latest[pipes.index(ready)] = message[1]
                if time.monotonic() >= next_status:
                    next_status += interval
                    if on_status is not None and latest:
                        on_status(_merge(latest.values()))
            for pipe in pipes:
                with suppress(OSError):  # a worker that is gone sends no final report
                    pipe.send("stop")
            deadline = time.monotonic() + STOP_GRACE + WORKER_TIMEOUT
            finals: list[Mapping[str, Any]] = []
            records: list[ReceivedMessage] = []
            worker_of_record: list[int] = []
            lost = 0
            for index, pipe in enumerate(pipes):
                try:
                    _, stats, worker_records = _receive(pipe, "final", deadline)
                except (EOFError, OSError, TimeoutError):
                    lost += 1
                    continue
                finals.append(stats)
                records.extend(worker_records)
                worker_of_record.extend([index] * len(worker_records))
        finally:
            for child in processes:
                child.join(timeout=STOP_GRACE + 5.0)
                if child.is_alive():
                    child.kill()
                    child.join()
    totals = _merge(finals)
    totals["workers_lost"] = lost
    if config.record:
        totals["duplicates"] = _count_duplicates(records)
    return SinkRunResult(config.port, totals, finals, records, worker_of_record)


def run_sink(
    config: SinkConfig,
    *,
    workers: int = 1,
    interval: float = 5.0,
    duration: float | None = None,
    on_status: StatusCallback | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> SinkRunResult:
    """Run the sink until SIGINT/SIGTERM (or `duration` seconds); blocking.

    `on_ready(port)` is called once every worker listens; `on_status(totals)`
    every `interval` seconds with the counters summed over the workers.
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if workers > 1:
        return _supervise(
            config,
            workers,
            interval=interval,
            duration=duration,
            on_status=on_status,
            on_ready=on_ready,
        )

    ports: list[int] = []

    def ready(sink: Sink) -> None:
        ports.append(sink.port)
        if on_ready is not None:
            on_ready(sink.port)

    def status(stats: SinkStatistics) -> None:
        if on_status is not None:
            on_status(stats.to_json())

    async def main() -> tuple[SinkStatistics, list[ReceivedMessage]]:
        return await serve_sink(
            config,
            interval=interval,
            duration=duration,
            on_ready=ready,
            on_status=status,
            handle_signals=True,
        )

    final, records = trio.run(main)
    stats = final.to_json()
    return SinkRunResult(ports[0], stats, [stats], records, [0] * len(records))


def write_records(path: Path, result: SinkRunResult) -> None:
    """The accepted messages as CSV, for loss, duplicate and latency accounting."""
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            [
                "bench_id",
                "message_id",
                "arrival",
                "queue_id",
                "size",
                "recipients",
                "client",
                "connection",
                "tls",
                "worker",
            ]
        )
        for record, worker in zip(result.records, result.worker_of_record, strict=True):
            writer.writerow(
                [
                    record.bench_id or "",
                    record.message_id or "",
                    f"{record.arrival:.6f}",
                    record.queue_id,
                    record.size,
                    len(record.recipients),
                    record.client,
                    record.connection,
                    int(record.tls),
                    worker,
                ]
            )
