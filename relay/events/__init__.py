"""Events: what happened to each message, to the log, /metrics and webhooks.

- `event`: the `Event` record and its vocabulary (accepted, delivered, deferred,
  bounced, expired, rejected).
- `hub`: `EventHub`, where the shard's hooks publish and subscribers listen.
- `webhook_queue`: the durable per-endpoint queue in the spool's "webhooks" table.
- `webhooks`: the senders (signed JSON batches, retries with backoff).
- `signing`: the X-Relay-Signature scheme and `verify_signature` for receivers.
"""

from relay.events.event import EVENT_NAMES, Event, is_expiry
from relay.events.hub import EventHub, Outcome
from relay.events.signing import (
    SIGNATURE_HEADER,
    signature,
    signature_header,
    verify_signature,
)
from relay.events.webhook_queue import Endpoint, QueueStatistics, WebhookQueue
from relay.events.webhooks import SenderStatistics, WebhookSender, WebhookService

__all__ = [
    "EVENT_NAMES",
    "SIGNATURE_HEADER",
    "Endpoint",
    "Event",
    "EventHub",
    "Outcome",
    "QueueStatistics",
    "SenderStatistics",
    "WebhookQueue",
    "WebhookSender",
    "WebhookService",
    "is_expiry",
    "signature",
    "signature_header",
    "verify_signature",
]
