"""Figures of bench/e2e.py: one run's accounting, the table, the JSON and the chart.

End to end is measured from the load generator's first submission to the last
arrival at the sink (our sink's per-message records; smtp-sink's counter as
sampled when it reached its last value).  Per-message latency pairs the time a
message's 250 came back to the sender with the time it arrived at the sink, by
its X-Bench-Id.  Loss: ids that got a 250 and never arrived; duplicates: arrivals
beyond the first of an id.  Without per-message records (smtp-source or
smtp-sink) only counts can be compared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from e2e_tools import LoadOutcome, SinkOutcome

__all__ = ["RunFigures", "draw_chart", "figures", "print_table", "ratios", "timeline"]


@dataclass(frozen=True, slots=True)
class RunFigures:
    """Everything one run measured."""

    label: str
    tools: str  # "ours" | "postfix"
    system: str  # "wire" | "relay" | "postfix"
    tls: bool
    messages: int
    accepted: int | None
    delivered: int
    missing: int | None  # accepted and never arrived
    duplicates: int | None  # None: the sink keeps no per-message records
    unexpected: int | None  # arrived without a 250 at the sender (e.g. a reply timeout)
    clean: bool  # every message accepted, every one arrived, none twice
    e2e_seconds: float
    e2e_rate: float  # delivered / e2e_seconds
    injection_rate: float  # accepted / time to the last 250
    latency_ms: dict[str, float] | None  # 250 at submission -> arrival: p50, p90, p99, max
    submit_latency_ms: dict[str, float] | None  # end of DATA -> 250, from the sender
    system_cpu: float | None  # seconds, first submission -> last arrival
    system_cpu_per_1000: float | None
    system_peak_pss_mb: float | None  # Pss: shared pages divided among the processes
    system_peak_rss_mb: float | None  # VmRSS summed: shared pages once per process
    load_cpu: float  # the whole load process
    sink_cpu: float  # the window
    errors: dict[str, int]
    notes: dict[str, Any] = field(default_factory=dict)
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (s, msgs/s)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _percentiles(values: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max (nearest rank), in milliseconds."""
    if not values:
        return {}
    values.sort()

    def rank(p: float) -> float:
        return values[max(0, math.ceil(len(values) * p / 100.0) - 1)] * 1000.0

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": values[-1] * 1000.0}


def timeline(
    curve: Sequence[tuple[float, int]], start: float, step: float
) -> list[tuple[float, float]]:
    """Deliveries per second in bins of `step` seconds from `start`, from a
    cumulative curve of (time, count)."""
    if not curve:
        return []
    end = curve[-1][0]
    bins = max(1, math.ceil((end - start) / step))
    counts = [0] * bins
    previous = 0
    for at, count in curve:
        index = min(bins - 1, max(0, int((at - start) / step)))
        counts[index] += count - previous
        previous = count
    return [(round((i + 1) * step, 3), n / step) for i, n in enumerate(counts)]


def figures(
    *,
    label: str,
    tools: str,
    system: str,
    tls: bool,
    messages: int,
    load: LoadOutcome,
    sink: SinkOutcome,
    system_cpu: float | None,
    system_peak_pss: int | None,
    system_peak_rss: int | None,
    sink_cpu: float,
    notes: dict[str, Any],
    step: float,
) -> RunFigures:
    """The figures of one run."""
    accepted = load.accepted
    missing = duplicates = unexpected = None
    latency = None
    delivered, curve = sink.delivered, sink.curve
    if sink.arrivals is not None and load.accepted_at is not None:
        ids, arrivals = load.accepted_at, sink.arrivals
        firsts = sorted(arrivals[key][0] for key in ids if key in arrivals)
        # Only the messages the sender was told were accepted count as delivered:
        # anything else at the sink (e.g. a postmaster notice) is "unexpected".
        delivered, curve = len(firsts), [(t, n) for n, t in enumerate(firsts, 1)]
        missing = len(ids) - delivered
        duplicates = sum(len(times) - 1 for times in arrivals.values())
        unexpected = sum(1 for key in arrivals if key not in ids)
        if system != "wire":  # the sink answers before the sender hears: no latency there
            latency = _percentiles(
                [arrivals[key][0] - at for key, at in ids.items() if key in arrivals]
            )
    elif accepted is not None:
        missing = max(0, accepted - delivered)
        unexpected = max(0, delivered - accepted)
    last = curve[-1][0] if curve else load.finished_at
    seconds = max(last - load.started_at, 1e-9)
    return RunFigures(
        label=label,
        tools=tools,
        system=system,
        tls=tls,
        messages=messages,
        accepted=accepted,
        delivered=delivered,
        missing=missing,
        duplicates=duplicates,
        unexpected=unexpected,
        clean=accepted == messages and missing == 0 and not duplicates,
        e2e_seconds=seconds,
        e2e_rate=delivered / seconds,
        injection_rate=load.injection_rate,
        latency_ms=latency,
        submit_latency_ms=load.submit_latency_ms,
        system_cpu=system_cpu,
        system_cpu_per_1000=(
            system_cpu / sink.delivered * 1000.0
            if system_cpu is not None and sink.delivered
            else None
        ),
        system_peak_pss_mb=system_peak_pss / 1e6 if system_peak_pss is not None else None,
        system_peak_rss_mb=system_peak_rss / 1e6 if system_peak_rss is not None else None,
        load_cpu=load.cpu,
        sink_cpu=sink_cpu,
        errors=load.errors,
        notes=notes | ({"load": load.note} if load.note else {}),
        timeline=timeline(curve, load.started_at, step),
    )


def ratios(runs: Sequence[RunFigures]) -> list[dict[str, Any]]:
    """relay / Postfix and relay / wire end-to-end rates, per tool set and TLS."""
    found = []
    by_key = {(r.tools, r.system, r.tls): r for r in runs}
    for (tools, system, tls), run in by_key.items():
        if system != "relay":
            continue
        entry: dict[str, Any] = {"tools": tools, "tls": tls, "relay_rate": run.e2e_rate}
        postfix = by_key.get((tools, "postfix", tls))
        if postfix is not None and postfix.e2e_rate:
            entry["postfix_rate"] = postfix.e2e_rate
            entry["relay_over_postfix"] = run.e2e_rate / postfix.e2e_rate
            if run.system_cpu_per_1000 and postfix.system_cpu_per_1000:
                entry["cpu_per_1000_relay_over_postfix"] = (
                    run.system_cpu_per_1000 / postfix.system_cpu_per_1000
                )
        wire = by_key.get((tools, "wire", False))
        if wire is not None and wire.e2e_rate:
            entry["wire_rate"] = wire.e2e_rate
            entry["relay_over_wire"] = run.e2e_rate / wire.e2e_rate
        found.append(entry)
    return found


def _cell(value: float | int | None, form: str = "{:,.0f}") -> str:
    return "-" if value is None else form.format(value)


def print_table(runs: Sequence[RunFigures]) -> None:
    """The runs side by side, then the ratios."""
    header = (
        f"{'run':42} {'accepted':>8} {'deliv.':>7} {'miss':>5} {'dup':>4} {'extra':>5} {'e2e s':>7} "
        f"{'e2e/s':>7} {'inj/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU s/1k':>8} "
        f"{'PSS MB':>7} {'load CPU':>8} {'sink CPU':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        latency = r.latency_ms or {}
        print(
            f"{r.label:42} {_cell(r.accepted):>8} {r.delivered:>7,} {_cell(r.missing):>5} "
            f"{_cell(r.duplicates):>4} {_cell(r.unexpected):>5} {r.e2e_seconds:7.2f} {r.e2e_rate:7,.0f} "
            f"{r.injection_rate:7,.0f} {_cell(latency.get('p50'), '{:,.1f}'):>7} "
            f"{_cell(latency.get('p99'), '{:,.1f}'):>7} "
            f"{_cell(r.system_cpu_per_1000, '{:.2f}'):>8} "
            f"{_cell(r.system_peak_pss_mb, '{:,.0f}'):>7} {r.load_cpu:8.2f} {r.sink_cpu:8.2f}"
        )
    for r in runs:
        if r.errors:
            print(f"  {r.label}: errors {r.errors}")
    print()
    for entry in ratios(runs):
        what = f"{'ours' if entry['tools'] == 'ours' else 'smtp-source/smtp-sink'}"
        what += ", STARTTLS" if entry["tls"] else ""
        parts = []
        if "relay_over_postfix" in entry:
            parts.append(f"relay/Postfix {entry['relay_over_postfix']:.2f}x")
        if "cpu_per_1000_relay_over_postfix" in entry:
            parts.append(
                f"CPU per msg relay/Postfix {entry['cpu_per_1000_relay_over_postfix']:.2f}x"
            )
        if "relay_over_wire" in entry:
            parts.append(f"relay/wire {entry['relay_over_wire']:.2f}x")
        if parts:
            print(f"ratios ({what}): " + "; ".join(parts))


def draw_chart(runs: Sequence[RunFigures], path: Path, title: str) -> str | None:
    """A PNG of deliveries per second over time, one panel per tool set; returns why
    not when it cannot (matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    tool_sets = [t for t in ("ours", "postfix") if any(r.tools == t for r in runs)]
    if not tool_sets:
        return "no run finished"
    figure, axes = plt.subplots(
        len(tool_sets), 1, figsize=(10, 3.6 * len(tool_sets)), squeeze=False
    )
    for axis, tools in zip(axes[:, 0], tool_sets, strict=True):
        wire = ""
        for run in runs:
            if run.tools != tools or not run.timeline:
                continue
            if run.system == "wire":  # a few seconds far above the rest: named, not drawn
                wire = f"; wire limit {run.e2e_rate:,.0f}/s"
                continue
            xs = [0.0] + [t for t, _ in run.timeline]
            ys = [run.timeline[0][1]] + [rate for _, rate in run.timeline]
            axis.step(xs, ys, where="pre", label=f"{run.label} ({run.e2e_rate:,.0f}/s)")
        axis.set_title(
            (
                "load: relay bench send -> relay bench sink"
                if tools == "ours"
                else "load: smtp-source -> smtp-sink (sink counter sampled)"
            )
            + wire
        )
        axis.set_xlabel("seconds since the first submission")
        axis.set_ylabel("messages delivered / s")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
    figure.suptitle(title, fontsize="medium")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None
