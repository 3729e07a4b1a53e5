"""Webhook delivery: one sender per endpoint POSTs the queue's records in order.

Each POST is a JSON array of events (oldest first, at most `batch_size`), signed
(relay.events.signing) and sent with a timeout.  A 2xx deletes the records; any
other answer, a timeout or a refused connection keeps them and the sender waits
(exponential backoff with full jitter between `retry_min` and `retry_max`) before
trying the same records again, so an endpoint's events arrive in order.  Records
older than `retention` are given up on (logged with their count).  Endpoints are
independent: one that is down does not hold back the others.

`WebhookService` owns the queue, the HTTP client and the senders: the hub feeds
`service.queue`; `run` starts the flusher and the senders; `close` commits what is
still buffered (a graceful stop calls it after delivery has stopped).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
import trio

from relay.config import ApiConfig
from relay.events.signing import SIGNATURE_HEADER, signature_header
from relay.events.webhook_queue import AuxStore, Endpoint, StoredBatch, WebhookQueue
from relay.log import get_logger

_log = get_logger("events.webhooks")

USER_AGENT = "relay-webhooks/1"


@dataclass(slots=True)
class SenderStatistics:
    """Counters of one endpoint's sender."""

    posts: int = 0  # POSTs answered with 2xx
    failures: int = 0  # POSTs that failed (non-2xx, timeout, connection)
    events: int = 0  # events delivered
    expired: int = 0  # events given up on after the retention time
    consecutive_failures: int = 0


class WebhookSender:
    """POSTs one endpoint's queued records (see the module docstring)."""

    def __init__(
        self,
        queue: WebhookQueue,
        endpoint: Endpoint,
        client: httpx.AsyncClient,
        *,
        batch_size: int,
        retry_min: float,
        retry_max: float,
        retention: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._queue = queue
        self.endpoint = endpoint
        self._client = client
        self._batch_size = batch_size
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._retention = retention
        self._clock = clock
        self._rng = rng or random.Random()
        self.statistics = SenderStatistics()

    async def run(self) -> None:
        """Send until cancelled."""
        queue = self._queue
        while True:
            wakeup = queue.wakeup(self.endpoint)
            batches = await self._drop_expired(queue.head(self.endpoint, self._batch_size))
            if not batches:
                await wakeup.wait()
                continue
            if await self._post(batches):
                await queue.remove(self.endpoint, batches)
            else:
                await trio.sleep(self._backoff())

    async def _drop_expired(self, batches: list[StoredBatch]) -> list[StoredBatch]:
        cutoff = self._clock() - self._retention
        expired = [b for b in batches if b.created < cutoff]
        if not expired:
            return batches
        count = sum(len(b.events) for b in expired)
        self.statistics.expired += count
        _log.error("webhooks.events_expired", endpoint=self.endpoint.label, events=count)
        await self._queue.remove(self.endpoint, expired)
        return [b for b in batches if b.created >= cutoff]

    def _backoff(self) -> float:
        failures = self.statistics.consecutive_failures
        ceiling = min(self._retry_max, self._retry_min * 2.0 ** min(failures - 1, 30))
        return self._retry_min + self._rng.random() * max(ceiling - self._retry_min, 0.0)

    async def _post(self, batches: Sequence[StoredBatch]) -> bool:
        events = [event for batch in batches for event in batch.events]
        body = json.dumps(events, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: signature_header(self.endpoint.secret, timestamp, body),
        }
        stats = self.statistics
        try:
            response = await self._client.post(self.endpoint.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= response.status_code < 300:
                stats.posts += 1
                stats.events += len(events)
                stats.consecutive_failures = 0
                return True
            error = f"HTTP {response.status_code}"
        stats.failures += 1
        stats.consecutive_failures += 1
        if stats.consecutive_failures in (1, 10) or stats.consecutive_failures % 100 == 0:
            _log.warning(
                "webhooks.post_failed",
                endpoint=self.endpoint.label,
                error=error,
                consecutive=stats.consecutive_failures,
                events=len(events),
            )
        return False


class WebhookService:
    """The queue, the client and a sender per configured endpoint."""

    def __init__(
        self,
        config: ApiConfig,
        table: AuxStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        endpoints = [Endpoint.of(w) for w in config.webhooks]
        self.queue = WebhookQueue(
            table,
            endpoints,
            batch_size=config.webhook_batch_size,
            flush_interval=config.webhook_flush_interval,
            clock=clock,
        )
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(config.webhook_timeout),
            follow_redirects=False,
            trust_env=False,  # no proxies or netrc from the environment
        )
        self.senders = [
            WebhookSender(
                self.queue,
                endpoint,
                self._client,
                batch_size=config.webhook_batch_size,
                retry_min=config.webhook_retry_min,
                retry_max=config.webhook_retry_max,
                retention=config.webhook_retention,
                clock=clock,
            )
            for endpoint in endpoints
        ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the flusher and the senders until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.queue.run_flusher)
                for sender in self.senders:
                    nursery.start_soon(sender.run, name=f"webhook {sender.endpoint.label}")
                _log.info("webhooks.started", endpoints=[s.endpoint.label for s in self.senders])
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._client.aclose()

    def queued_records(self) -> dict[str, int]:
        """Batches waiting, by endpoint label."""
        return {s.endpoint.label: self.queue.records[s.endpoint.id] for s in self.senders}

    @property
    def failed_posts(self) -> int:
        return sum(s.statistics.failures for s in self.senders)

    async def close(self) -> None:
        """Commit the events still buffered (before the spool closes)."""
        await self.queue.flush()
