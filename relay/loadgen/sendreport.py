"""What a load run reports: `SendProgress` while it runs, `SendReport` at the end."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from relay.loadgen.stats import LatencyHistogram
from relay.proto import Reply

__all__ = ["AcceptedMessage", "SendProgress", "SendReport", "Tally", "queue_id_of", "reply_key"]

# "queued as ABC123" (Postfix, relay, smtp-sink), "id=1abc-..." (Exim), "<id> queued".
_QUEUE_ID: Final = re.compile(r"queued as\s+<?([^\s>]+)>?|\bid=([^\s]+)", re.IGNORECASE)


def queue_id_of(reply: Reply) -> str:
    """The queue id a 250 reply names, or its text when it names none."""
    text = reply.text
    match = _QUEUE_ID.search(text)
    if match:
        return match.group(1) or match.group(2)
    return text.strip()


def reply_key(reply: Reply) -> str:
    """How errors are grouped: the code and the enhanced code, e.g. "451 4.3.0"."""
    return f"{reply.code} {reply.enhanced}" if reply.enhanced else str(reply.code)


@dataclass(frozen=True, slots=True)
class AcceptedMessage:
    """One message the server took (for --ids-out)."""

    bench_id: str
    accepted_at: float  # time.time() when the 250 came back
    queue_id: str
    latency: float  # seconds from the end of the data to the 250


@dataclass(frozen=True, slots=True)
class SendProgress:
    """The run so far (given to the progress callback)."""

    elapsed: float
    attempted: int
    accepted: int
    failed: int
    total: int | None  # messages to send, or None for a run by duration
    duration: float | None

    @property
    def rate(self) -> float:
        """Accepted messages per second so far."""
        return self.accepted / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(slots=True)
class Tally:
    """The counters the sessions update (one per run; trio tasks share it)."""

    attempted: int = 0
    accepted: int = 0
    failed: int = 0
    recipients_accepted: int = 0
    recipients_rejected: int = 0
    bytes_accepted: int = 0
    connections: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # messages not taken, by reason
    connection_errors: Counter[str] = field(default_factory=Counter)  # outside messages
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


@dataclass(frozen=True, slots=True)
class SendReport:
    """The outcome of a run.  Rates count accepted messages over `elapsed`."""

    parameters: Mapping[str, object]
    started_at: float  # time.time()
    elapsed: float  # from the start to the last reply
    stopped_by: str  # "messages", "duration", "time limit", "sessions failed", "aborted"
    attempted: int
    accepted: int
    failed: int
    unfinished: int  # in flight when the time limit cut the run
    recipients_accepted: int
    recipients_rejected: int
    bytes_accepted: int
    connections: int
    latency_ms: Mapping[str, float]  # count, min, mean, p50, p90, p99, max
    errors: Mapping[str, int]
    connection_errors: Mapping[str, int]
    aborted: str | None = None

    @property
    def messages_per_second(self) -> float:
        """Accepted messages per second."""
        return self.accepted / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        """Accepted message bytes per second, in MB (10**6 bytes)."""
        return self.bytes_accepted / 1e6 / self.elapsed if self.elapsed > 0 else 0.0

    @classmethod
    def build(
        cls,
        parameters: Mapping[str, object],
        tally: Tally,
        *,
        started_at: float,
        elapsed: float,
        stopped_by: str,
        aborted: str | None,
    ) -> SendReport:
        """The report from the run's counters."""
        return cls(
            parameters=dict(parameters),
            started_at=started_at,
            elapsed=elapsed,
            stopped_by=stopped_by,
            attempted=tally.attempted,
            accepted=tally.accepted,
            failed=tally.failed,
            unfinished=tally.attempted - tally.accepted - tally.failed,
            recipients_accepted=tally.recipients_accepted,
            recipients_rejected=tally.recipients_rejected,
            bytes_accepted=tally.bytes_accepted,
            connections=tally.connections,
            latency_ms=tally.latency.summary_ms(),
            errors=dict(tally.errors.most_common()),
            connection_errors=dict(tally.connection_errors.most_common()),
            aborted=aborted,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "parameters": dict(self.parameters),
            "started_at": self.started_at,
            "elapsed": self.elapsed,
            "stopped_by": self.stopped_by,
            "aborted": self.aborted,
            "attempted": self.attempted,
            "accepted": self.accepted,
            "failed": self.failed,
            "unfinished": self.unfinished,
            "recipients_accepted": self.recipients_accepted,
            "recipients_rejected": self.recipients_rejected,
            "bytes_accepted": self.bytes_accepted,
            "connections": self.connections,
            "messages_per_second": self.messages_per_second,
            "megabytes_per_second": self.megabytes_per_second,
            "latency_ms": dict(self.latency_ms),
            "errors": dict(self.errors),
            "connection_errors": dict(self.connection_errors),
        }
