"""GET /metrics: Prometheus exposition of every shard, whichever shard answers.

Shards share the API port (SO_REUSEPORT), so a scrape reaches one of them at
random.  So that every scrape sees the whole instance, each shard writes a
snapshot of its figures to ``<data_dir>/metrics/shard-N.json`` every few seconds
(atomically: temporary file, then rename), and the shard that answers exports
its own live figures plus the others' latest snapshots, each labelled
``shard="N"``.  A snapshot older than `STALE_AFTER` belongs to a shard that is
gone and is left out.  The figures are read at scrape time from the components'
own counters (`Gauges`, supplied by the composition root): nothing is counted
twice on the hot path.

Names: counters ``relay_messages_accepted_total``, ``relay_messages_rejected_total``,
``relay_recipients_{delivered,deferred,bounced}_total`` (recipient outcomes of
delivery attempts), ``relay_events_total{event}``,
``relay_webhook_posts_failed_total``; gauges ``relay_queue_depth`` (messages
queued), ``relay_sessions_open{kind}`` (submission, delivery),
``relay_site_sessions{site}`` (delivery sessions in flight per egress source and
MX site), ``relay_site_ready_jobs{site}`` and ``relay_webhook_queue_records{endpoint}``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.log import get_logger

_log = get_logger("api.metrics")

#: Seconds between snapshot files.
SNAPSHOT_INTERVAL = 5.0
#: A snapshot older than this is a shard that stopped.
STALE_AFTER = 60.0


@dataclass(frozen=True, slots=True)
class Gauges:
    """One shard's figures at one moment."""

    accepted: int = 0
    rejected: int = 0
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    queue_depth: int = 0
    submission_sessions: int = 0
    delivery_sessions: int = 0
    site_sessions: Mapping[str, int] = field(default_factory=dict)
    site_ready_jobs: Mapping[str, int] = field(default_factory=dict)
    events: Mapping[str, int] = field(default_factory=dict)
    webhook_queue_records: Mapping[str, int] = field(default_factory=dict)
    webhook_posts_failed: int = 0


_COUNTERS = (
    ("relay_messages_accepted", "Messages stored durably (all doors).", "accepted"),
    ("relay_messages_rejected", "Messages refused by a limit at the door.", "rejected"),
    ("relay_recipients_delivered", "Recipient outcomes: delivered.", "delivered"),
    ("relay_recipients_deferred", "Recipient outcomes: deferred (retried).", "deferred"),
    ("relay_recipients_bounced", "Recipient outcomes: bounced.", "bounced"),
    ("relay_webhook_posts_failed", "Webhook POSTs that failed.", "webhook_posts_failed"),
)
_GAUGES = (("relay_queue_depth", "Messages in the queue.", "queue_depth"),)
_LABELLED = (
    ("relay_site_sessions", "Delivery sessions in flight per site.", "site", "site_sessions"),
    ("relay_site_ready_jobs", "Jobs waiting per site.", "site", "site_ready_jobs"),
    (
        "relay_webhook_queue_records",
        "Webhook batches waiting per endpoint.",
        "endpoint",
        "webhook_queue_records",
    ),
)


class ShardCollector(Collector):
    """Yields the metric families of every live shard."""

    def __init__(self, snapshots: Callable[[], dict[str, Gauges]]) -> None:
        self._snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        shards = self._snapshots()
        for name, doc, attr in _COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["shard"])
            for shard, g in shards.items():
                family.add_metric([shard], getattr(g, attr))
            yield family
        for name, doc, attr in _GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=["shard"])
            for shard, g in shards.items():
                gauge.add_metric([shard], getattr(g, attr))
            yield gauge
        sessions = GaugeMetricFamily(
            "relay_sessions_open", "SMTP sessions open.", labels=["shard", "kind"]
        )
        events = CounterMetricFamily("relay_events", "Events published.", labels=["shard", "event"])
        for shard, g in shards.items():
            sessions.add_metric([shard, "submission"], g.submission_sessions)
            sessions.add_metric([shard, "delivery"], g.delivery_sessions)
            for event, count in g.events.items():
                events.add_metric([shard, event], count)
        yield sessions
        yield events
        for name, doc, label, attr in _LABELLED:
            gauge = GaugeMetricFamily(name, doc, labels=["shard", label])
            for shard, g in shards.items():
                for key, value in getattr(g, attr).items():
                    gauge.add_metric([shard, key], value)
            yield gauge


class MetricsBoard:
    """This shard's live figures, the other shards' snapshots, and the exposition."""

    def __init__(
        self,
        shard: int,
        directory: Path,
        gauges: Callable[[], Gauges],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._shard = shard
        self._directory = directory
        self._gauges = gauges
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ShardCollector(self.snapshots))

    def snapshots(self) -> dict[str, Gauges]:
        """Live figures of this shard and fresh snapshots of the others, by shard."""
        out = {str(self._shard): self._gauges()}
        try:
            paths = sorted(self._directory.glob("shard-*.json"))
        except OSError:
            paths = []
        now = self._clock()
        for path in paths:
            shard = path.stem.removeprefix("shard-")
            if shard == str(self._shard) or not shard.isdigit():
                continue
            try:
                doc = json.loads(path.read_bytes())
                if now - float(doc["at"]) > STALE_AFTER:
                    continue
                out[shard] = Gauges(**doc["gauges"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                _log.debug("metrics.snapshot_unreadable", path=str(path), error=repr(exc))
        return out

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def snapshot(self) -> bytes:
        """This shard's figures as a snapshot document (read in the trio thread)."""
        doc: dict[str, Any] = {"at": self._clock(), "gauges": dataclasses.asdict(self._gauges())}
        return json.dumps(doc).encode()

    def write_snapshot(self, data: bytes) -> None:
        """Write a snapshot for the other shards to export (atomically)."""
        self._directory.mkdir(parents=True, exist_ok=True)
        path = self._directory / f"shard-{self._shard}.json"
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        temporary.write_bytes(data)
        os.replace(temporary, path)

    async def run(self, *, interval: float = SNAPSHOT_INTERVAL) -> None:
        """Write snapshots every `interval` seconds until cancelled (never fails: the
        metrics of other shards are not worth stopping this one)."""
        while True:
            try:
                data = self.snapshot()
                await trio.to_thread.run_sync(self.write_snapshot, data)
            except Exception as exc:
                _log.warning("metrics.snapshot_failed", error=repr(exc))
            await trio.sleep(interval)

    def remove_snapshot(self) -> None:
        """Forget this shard's snapshot (it is stopping)."""
        (self._directory / f"shard-{self._shard}.json").unlink(missing_ok=True)
