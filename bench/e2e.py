"""End to end: load -> relay (or Postfix) -> sink, with loss accounting, side by side.

Every run starts a sink, starts the system under test delivering everything to
that sink, drives it with a load generator, and waits until every message that
got a 250 has arrived at the sink (or the drain times out / stalls).  Measured:
first submission -> last arrival (messages/s end to end), per-message latency
from the 250 at submission to the arrival (p50/p99, by X-Bench-Id), loss and
duplicates, the CPU seconds the system used per 1,000 messages and its peak
resident memory (/proc, summed over its processes), and the CPU of the load
generator and the sink beside it.

The comparison is fair by construction: relay and Postfix are driven by the same
load generator and deliver to the same sink, with two tool sets:

- ``postfix`` tools: smtp-source -> system -> smtp-sink (smtp-source has no AUTH,
  so relay takes it on its port-25-style listener trusting 127.0.0.0/8, as Postfix
  does through mynetworks), and smtp-source -> smtp-sink directly: the wire limit;
- ``ours``: relay bench send -> system -> relay bench sink (AUTH PLAIN for relay;
  Postfix, which has no SASL backend here, takes it from mynetworks), the same
  with STARTTLS, and relay bench send -> relay bench sink directly.

Every system starts fresh per run (new relay data directory, new Postfix queue),
on 127.0.0.1 only; every process started is stopped by PID (Postfix with
``postfix -c DIR stop``).  Prints one table and the ratios relay/Postfix and
relay/wire, writes bench/results/e2e-<timestamp>.json and a PNG chart of
messages delivered per second over time.

    .venv/bin/python bench/e2e.py                 # 20,000 x 5 KB, 50 sessions, all systems
    .venv/bin/python bench/e2e.py --quick         # 2,000 messages, no STARTTLS runs
    .venv/bin/python bench/e2e.py --systems relay --tools ours --profile 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from e2e_procs import TreeWatch
from e2e_profile import record, shard_pids, summarise
from e2e_report import RunFigures, draw_chart, figures, print_table, ratios
from e2e_systems import POSTFIX_INSTALLED, PostfixSystem, RelaySystem, System, Wire
from e2e_tools import (
    BENCH_USER,
    SMTP_SINK,
    SMTP_SOURCE,
    LoadOutcome,
    LoadSpec,
    OurSink,
    PostfixSink,
    Sink,
    run_our_load,
    run_smtp_source,
)

from relay.log import configure_logging

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SAMPLE_INTERVAL = 0.5  # seconds between memory samples


@dataclass(frozen=True, slots=True)
class Plan:
    """One run: which tools drive which system, with or without STARTTLS."""

    tools: str  # "ours" | "postfix"
    system: str  # "wire" | "relay" | "postfix"
    tls: bool = False

    @property
    def label(self) -> str:
        if self.tools == "postfix":
            via = {"wire": "smtp-source->smtp-sink", "relay": "smtp-source, trusted port"}
            return f"{self.system} ({via.get(self.system, 'smtp-source')})"
        if self.system == "wire":
            return "wire (bench send->bench sink)"
        how = "AUTH" if self.system == "relay" else "mynetworks"
        return f"{self.system} (bench send, {'STARTTLS+' if self.tls else ''}{how})"

    @property
    def slug(self) -> str:
        return f"{self.tools}-{self.system}{'-tls' if self.tls else ''}"


def plans(args: argparse.Namespace) -> list[Plan]:
    """The runs asked for, in order."""
    found = []
    for tools in args.tools:
        for system in ("wire", "relay", "postfix"):
            if system in args.systems:
                found.append(Plan(tools, system))
        if tools == "ours" and args.tls:
            found += [Plan("ours", s, tls=True) for s in ("relay", "postfix") if s in args.systems]
    return found


def _system(plan: Plan, args: argparse.Namespace) -> System:
    if plan.system == "relay":
        return RelaySystem(args.workers, args.concurrency, args.relay_log_level)
    if plan.system == "postfix":
        return PostfixSystem(args.concurrency)
    return Wire()


async def _sample(watches: list[TreeWatch]) -> None:
    while True:
        await trio.sleep(SAMPLE_INTERVAL)
        for watch in watches:
            watch.sample()


async def _wait_delivered(sink: Sink, target: int, args: argparse.Namespace) -> str:
    """Wait until the sink counted `target` messages; how the wait ended."""
    now = trio.current_time()
    deadline, changed, seen = now + args.drain_timeout, now, sink.count
    while sink.count < target:
        now = trio.current_time()
        if sink.count != seen:
            seen, changed = sink.count, now
        if now > deadline:
            return "drain timeout"
        if now - changed > args.stall_timeout:
            return f"stalled (nothing arrived for {args.stall_timeout:g}s)"
        await trio.sleep(0.05)
    return "complete"


class RunFailed(Exception):
    """A process of the run died: its figures mean nothing."""


async def _guard(system: System, sink: Sink, work: trio.CancelScope, found: list[str]) -> None:
    """Stop the run when the system or the sink fails."""
    while True:
        await trio.sleep(0.5)
        problem = system.failure()
        if problem is None and sink.process is not None and sink.process.poll() is not None:
            problem = f"the sink exited with status {sink.process.returncode}"
        if problem is not None:
            found.append(problem)
            work.cancel()
            return


async def _profile(system: System, seconds: float, directory: Path, files: list[Path]) -> None:
    watch = system.watch
    if watch is None:
        return
    await trio.sleep(1.0)  # let the load reach its pace
    await record(shard_pids(watch.sample().pids, watch.root), seconds, directory, files)


async def execute(plan: Plan, args: argparse.Namespace, base: Path) -> RunFigures:
    """Run one plan and measure it; RunFailed if a process of it died."""
    directory = base / plan.slug
    directory.mkdir()
    spec = LoadSpec(args.messages, args.size, args.sessions, args.time_limit)
    sink: Sink = (
        OurSink(directory, args.sink_workers) if plan.tools == "ours" else PostfixSink(directory)
    )
    system = _system(plan, args)
    notes: dict[str, Any] = {}
    profiles: list[Path] = []
    problems: list[str] = []
    load: LoadOutcome | None = None
    async with trio.open_nursery() as readers:
        await sink.start(readers)
        try:
            await system.start(sink.port, directory, tls=plan.tls)
            assert sink.watch is not None
            watches = [sink.watch] + ([system.watch] if system.watch is not None else [])
            for watch in watches:
                watch.start()
            async with trio.open_nursery() as helpers:
                helpers.start_soon(_sample, watches)
                helpers.start_soon(_guard, system, sink, helpers.cancel_scope, problems)
                if args.profile and plan == Plan("ours", "relay"):
                    helpers.start_soon(_profile, system, args.profile, directory, profiles)
                if plan.tools == "ours":
                    auth = (
                        (BENCH_USER, system.password) if isinstance(system, RelaySystem) else None
                    )
                    load = await run_our_load(
                        system.port(authenticated=auth is not None),
                        spec,
                        directory,
                        auth=auth,
                        starttls=plan.tls,
                    )
                else:
                    load = await run_smtp_source(system.port(authenticated=False), spec, directory)
                target = load.accepted if load.accepted is not None else spec.messages
                notes["drain"] = await _wait_delivered(sink, target, args)
                for watch in watches:
                    watch.stop()
                helpers.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    notes["system"] = await system.stop()
                finally:
                    outcome = await sink.stop()
        readers.cancel_scope.cancel()
    if problems or load is None:
        raise RunFailed(problems[0] if problems else "the load did not finish")
    profiles = [path for path in profiles if path.exists()]
    if profiles:
        summary = summarise(profiles)
        RESULTS.mkdir(parents=True, exist_ok=True)
        kept = []
        for path in profiles:
            target_path = RESULTS / f"{args.stamp}-{path.name}"
            shutil.copy(path, target_path)
            kept.append(str(target_path.relative_to(ROOT)))
        notes["profile"] = {"files": kept} | summary.to_json()
        print("\n".join(f"  py-spy {line}" for line in summary.lines()))
    if outcome.summary is not None:
        notes["sink"] = (
            {
                k: outcome.summary["totals"].get(k)
                for k in ("messages", "connections", "duplicates", "reads", "groups_in_one_read")
            }
            if "totals" in outcome.summary
            else {}
        )
    return figures(
        label=plan.label,
        tools=plan.tools,
        system=plan.system,
        tls=plan.tls,
        messages=spec.messages,
        load=load,
        sink=outcome,
        system_cpu=system.watch.cpu if system.watch is not None else None,
        system_peak_pss=system.watch.peak_pss if system.watch is not None else None,
        system_peak_rss=system.watch.peak_rss if system.watch is not None else None,
        sink_cpu=sink.watch.cpu if sink.watch is not None else 0.0,
        notes=notes,
        step=args.step,
    )


def _postfix_version() -> str:
    try:
        out = subprocess.run(
            ["/usr/sbin/postconf", "-d", "mail_version"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except OSError:
        return "not installed"
    match = re.search(r"=\s*(\S+)", out)
    return match.group(1) if match else "unknown"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    from relay import fastparse

    return {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "fastparse": fastparse.IMPLEMENTATION,
        "postfix": _postfix_version() if POSTFIX_INSTALLED else "not installed",
        "commit": _commit(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=5120, help="bytes per message")
    parser.add_argument("--sessions", type=int, default=50, help="submission sessions")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="relay shards")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=20,
        help="sessions to the sink: relay max_sessions_per_site (split among shards), "
        "Postfix default_destination_concurrency_limit",
    )
    parser.add_argument("--sink-workers", type=int, default=1, help="relay bench sink processes")
    parser.add_argument("--systems", default="wire,relay,postfix", help="of wire,relay,postfix")
    parser.add_argument("--tools", default="postfix,ours", help="load/sink sets: postfix,ours")
    parser.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also the STARTTLS runs (default: yes, but not with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="2,000 messages, no STARTTLS runs")
    parser.add_argument("--time-limit", type=float, default=600.0, help="per load (s)")
    parser.add_argument("--drain-timeout", type=float, default=600.0, help="after the load (s)")
    parser.add_argument("--stall-timeout", type=float, default=60.0, help="no arrival for (s)")
    parser.add_argument(
        "--relay-log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--step", type=float, default=0.0, help="chart bin (s); 0: automatic")
    parser.add_argument(
        "--profile", type=float, default=0.0, help="py-spy relay for N s (ours, plain)"
    )
    parser.add_argument("--json-out", type=Path, help="default bench/results/e2e-<time>.json")
    parser.add_argument("--chart", type=Path, help="default bench/results/e2e-<time>.png")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages = min(args.messages, 2_000)
    if args.tls is None:
        args.tls = not args.quick
    if not args.step:
        args.step = 0.5 if args.messages <= 5_000 else 1.0
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for name in args.systems:
        if name not in ("wire", "relay", "postfix"):
            parser.error(f"unknown system {name!r}")
    for name in args.tools:
        if name not in ("ours", "postfix"):
            parser.error(f"unknown tool set {name!r}")
    if min(args.messages, args.sessions, args.workers, args.concurrency, args.sink_workers) < 1:
        parser.error("messages, sessions, workers, concurrency and sink workers must be >= 1")
    skipped = []
    if "postfix" in args.systems and not (POSTFIX_INSTALLED and os.geteuid() == 0):
        args.systems.remove("postfix")
        skipped.append("the Postfix system (needs /usr/sbin/postfix and root)")
    if "postfix" in args.tools and not (SMTP_SOURCE.exists() and SMTP_SINK.exists()):
        args.tools.remove("postfix")
        skipped.append("the smtp-source/smtp-sink runs (not installed)")
    args.skipped = skipped
    args.stamp = "e2e-" + time.strftime("%Y%m%d-%H%M%S")
    return args


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    """The exceptions inside a (nested) exception group."""
    found: list[Exception] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found += _leaves(exc)
        else:
            found.append(exc)
    return found


async def _stop_on_sigterm(scope: trio.CancelScope, stopped: list[str]) -> None:
    """SIGTERM ends the runs as Ctrl-C does: every process started is stopped."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            stopped.append("SIGTERM")
            scope.cancel()
            return


async def main_async(
    args: argparse.Namespace, failures: dict[str, str], stopped: list[str]
) -> list[RunFigures]:
    """Every planned run in turn; failed runs go to `failures` (label -> why)."""
    base = Path(tempfile.mkdtemp(prefix="relay-e2e-"))
    os.chmod(base, 0o755)  # Postfix's daemons (user postfix) must reach their queue
    results: list[RunFigures] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_sigterm, nursery.cancel_scope, stopped)
            for plan in plans(args):
                print(f"- {plan.label} ...", flush=True)
                started = time.monotonic()
                run: RunFigures | None = None
                try:
                    run = await execute(plan, args, base)
                except* (RunFailed, RuntimeError, OSError) as group:  # nurseries wrap them
                    failures[plan.label] = "; ".join(str(e) for e in _leaves(group))
                    print(f"  FAILED: {failures[plan.label]}", flush=True)
                if run is None:
                    continue
                results.append(run)
                accepted = f"{run.accepted:,}" if run.accepted is not None else "?"
                print(
                    f"  {run.delivered:,} of {accepted} delivered, {run.e2e_rate:,.0f} msgs/s "
                    f"end to end, {run.notes.get('drain')} "
                    f"({time.monotonic() - started:.0f} s with start and stop)",
                    flush=True,
                )
            nursery.cancel_scope.cancel()
    finally:
        if args.keep:
            print(f"working directory kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("error")  # relay code used here (certificates) stays quiet
    info = machine()
    print(
        f"messages={args.messages} size={args.size} sessions={args.sessions} "
        f"workers={args.workers} concurrency={args.concurrency} sink_workers={args.sink_workers} "
        f"tls_runs={'yes' if args.tls else 'no'} relay_log={args.relay_log_level}"
    )
    print(
        f"cpus={info['cpus']} load average={' '.join(f'{x:.2f}' for x in info['load_average'])} "
        f"python={info['python']} fastparse={info['fastparse']} postfix={info['postfix']} "
        f"commit={info['commit']}"
    )
    for what in args.skipped:
        print(f"skipped: {what}")
    failures: dict[str, str] = {}
    stopped: list[str] = []
    results = trio.run(main_async, args, failures, stopped)
    if stopped:
        print(f"stopped by {stopped[0]}: the figures below are of the runs that finished")
    finished_load = os.getloadavg()
    print()
    print_table(results)
    print(
        "\ne2e: first submission -> last arrival at the sink; inj: accepted / time to the last 250;"
        "\np50/p99: 250 at submission -> arrival (by X-Bench-Id; ours only); CPU s/1k: the "
        "system's CPU\nseconds per 1,000 delivered (supervisor + shards, or Postfix's master "
        "and daemons);\nPSS: peak proportional memory of those processes (shared pages divided); "
        "load/sink CPU: seconds."
    )
    incomplete = [r.label for r in results if not r.clean]
    if incomplete:
        print(f"NOT CLEAN (refused, lost, duplicated or unknown): {', '.join(incomplete)}")
    for label, why in failures.items():
        print(f"FAILED: {label}: {why}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in finished_load)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = args.json_out or RESULTS / f"{args.stamp}.json"
    chart_path = args.chart or RESULTS / f"{args.stamp}.png"
    parameters = {
        key: value
        for key, value in vars(args).items()
        if key not in ("json_out", "chart", "skipped", "stamp")
    }
    document = {
        "parameters": parameters,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": info | {"load_average_end": finished_load},
        "skipped": args.skipped,
        "runs": [r.to_json() for r in results],
        "failed": failures,
        "ratios": ratios(results),
    }
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"JSON: {json_path}")
    why_not = draw_chart(
        results,
        chart_path,
        f"{args.messages:,} messages of {args.size:,} bytes, {args.sessions} sessions, "
        f"relay workers={args.workers}",
    )
    print(f"chart: {chart_path}" if why_not is None else f"chart: not drawn: {why_not}")
    return 0 if not (incomplete or failures or stopped) else 1


if __name__ == "__main__":
    raise SystemExit(main())
