"""What the bench commands show people: a progress bar, the final table, the sink's line.

Rich writes to stderr here, so stdout stays free for JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from relay.loadgen.sendreport import SendProgress, SendReport

__all__ = ["SendProgressBar", "print_send_report", "sink_status_line"]


class SendProgressBar:
    """A live progress bar for a load run: done/total (or time), rate, errors.

    Disabled (every call a no-op) when `enabled` is False or stderr is not a terminal.
    """

    def __init__(self, total: int | None, duration: float | None, *, enabled: bool) -> None:
        self._console = Console(stderr=True)
        self._enabled = enabled and self._console.is_terminal
        self._total = total
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._duration = duration

    def __enter__(self) -> SendProgressBar:
        if self._enabled:
            self._progress = Progress(
                TextColumn("[bold]sending[/]"),
                BarColumn(),
                TextColumn("{task.fields[done]}"),
                TextColumn("{task.fields[rate]:>9.1f} msg/s"),
                TextColumn("[red]{task.fields[errors]} errors[/]"),
                TimeElapsedColumn(),
                console=self._console,
                auto_refresh=False,
                transient=False,
            )
            self._progress.start()
            total = self._total if self._total is not None else self._duration
            self._task = self._progress.add_task("send", total=total, done="", rate=0.0, errors=0)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, progress: SendProgress) -> None:
        """Show the run's state now."""
        if self._progress is None or self._task is None:
            return
        finished = progress.accepted + progress.failed
        if progress.total is not None:
            completed: float = finished
            done = f"{finished}/{progress.total}"
        else:
            completed = min(progress.elapsed, progress.duration or progress.elapsed)
            done = f"{finished} msgs"
        self._progress.update(
            self._task, completed=completed, done=done, rate=progress.rate, errors=progress.failed
        )
        self._progress.refresh()


def _table(title: str, rows: Mapping[str, object]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", min_width=40)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in rows.items():
        table.add_row(name, str(value))
    return table


def print_send_report(report: SendReport, console: Console) -> None:
    """The end-of-run tables: throughput, latency percentiles, errors by reply."""
    params = report.parameters
    latency = report.latency_ms
    summary: dict[str, object] = {
        "target": params.get("target"),
        "sessions": params.get("sessions"),
        "stopped by": report.stopped_by + (f" ({report.aborted})" if report.aborted else ""),
        "elapsed": f"{report.elapsed:.2f} s",
        "messages accepted": f"{report.accepted} of {report.attempted}",
        "messages failed": report.failed,
        "recipients accepted": report.recipients_accepted,
        "connections": report.connections,
        "messages/s": f"{report.messages_per_second:,.1f}",
        "MB/s": f"{report.megabytes_per_second:,.2f}",
    }
    if report.unfinished:
        summary["unfinished (time limit)"] = report.unfinished
    console.print(_table("relay bench send", summary))
    console.print(
        _table(
            "latency, end of DATA to 250 (ms)",
            {key: f"{latency[key]:.2f}" for key in ("p50", "p90", "p99", "max", "mean")},
        )
    )
    if report.errors or report.connection_errors:
        errors = Table(title="errors", title_justify="left", min_width=40)
        errors.add_column("reply or failure")
        errors.add_column("messages", justify="right")
        errors.add_column("connections", justify="right")
        for key in sorted(set(report.errors) | set(report.connection_errors)):
            errors.add_row(
                key, str(report.errors.get(key, "")), str(report.connection_errors.get(key, ""))
            )
        console.print(errors)


def sink_status_line(stats: Mapping[str, Any], previous: Mapping[str, Any] | None) -> str:
    """One line of sink counters (from `SinkStatistics.to_json()`), with the rate since
    the `previous` line."""
    rate = 0.0
    if previous is not None:
        seconds = stats["elapsed"] - previous["elapsed"]
        if seconds > 0:
            rate = (stats["messages"] - previous["messages"]) / seconds
    fired = sum(stats["policy"].values())
    faults = sum(stats["faults"].values())
    return (
        f"sink: {stats['messages']} msgs ({rate:,.0f}/s) {stats['recipients']} rcpts "
        f"{stats['bytes'] / 1e6:,.1f} MB | conns {stats['connections_now']} now, "
        f"{stats['connections_max']} max, {stats['connections']} total | "
        f"rejected {stats['rejected']} (policy {fired}, faults {faults})"
    )
