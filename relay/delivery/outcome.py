"""Outcome per recipient: SMTP replies to statuses, and the accounting record.

2xx delivered; 4xx, timeouts and broken connections deferred (retried with
backoff); 5xx bounced.  Every recipient outcome of every attempt is one
`DeliveryEvent`, logged as ``delivery.outcome`` and handed to the engine's
`on_event` callback (webhooks, metrics).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from relay.model import RcptStatus, RecipientResult
from relay.proto import TransactionResult
from relay.scheduler import Job


def status_of(code: int) -> RcptStatus:
    """The recipient status an SMTP reply code means."""
    if 200 <= code < 300:
        return RcptStatus.DELIVERED
    if code >= 500:
        return RcptStatus.BOUNCED
    return RcptStatus.DEFERRED


def status_of_reply(reply: str) -> RcptStatus:
    """The status of a reply kept as text ("550 5.1.1 ..."); unparsable means deferred."""
    code = reply[:3]
    return status_of(int(code)) if code.isdigit() else RcptStatus.DEFERRED


def transaction_results(result: TransactionResult, mx: str) -> list[RecipientResult]:
    """Each recipient's result from its deciding reply (see TransactionResult.outcome)."""
    return [
        RecipientResult(r.address, status_of(r.reply.code), str(r.reply), mx)
        for r in result.outcome()
    ]


def uniform_results(
    recipients: Iterable[str], status: RcptStatus, reply: str, mx: str = ""
) -> list[RecipientResult]:
    """The same result for every recipient (a failed connection, a DNS error, ...)."""
    return [RecipientResult(address, status, reply, mx) for address in recipients]


def summary_reply(results: Iterable[RecipientResult]) -> str:
    """One reply for an attempt record: the first failure's, else the first result's."""
    first = ""
    for r in results:
        if r.status is not RcptStatus.DELIVERED:
            return r.reply
        first = first or r.reply
    return first


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """One recipient's outcome of one delivery attempt: the accounting record."""

    message_id: str
    recipient: str
    status: RcptStatus
    reply: str
    mx: str
    attempt: int
    duration: float  # seconds the attempt took (connection setup included for the first)
    at: float  # wall-clock time the attempt started
    tenant: str
    campaign: str
    source: str  # egress source name
    tls: bool = False

    @classmethod
    def of(
        cls,
        job: Job,
        result: RecipientResult,
        *,
        duration: float,
        at: float,
        source: str,
        tls: bool,
    ) -> DeliveryEvent:
        return cls(
            message_id=job.message_id,
            recipient=result.address,
            status=result.status,
            reply=result.reply,
            mx=result.mx,
            attempt=job.attempt,
            duration=duration,
            at=at,
            tenant=job.tenant,
            campaign=job.campaign,
            source=source,
            tls=tls,
        )
