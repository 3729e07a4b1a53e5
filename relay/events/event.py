"""One event: what happened to one recipient of one message, in webhook vocabulary.

The names are those users of the common ESP webhooks expect: ``accepted`` (stored
durably, the 250 or the 202 was given), ``delivered`` (2xx from the destination),
``deferred`` (a temporary failure; it will be retried), ``bounced`` (a permanent
failure), ``expired`` (given up after the queue lifetime, RFC 3463 4.4.7) and
``rejected`` (refused at the door by a limit: nothing was stored).  Every event
carries the message's tags and metadata as given when it was sent.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.config import EventName

#: Every event name, in life-cycle order.
EVENT_NAMES: tuple[EventName, ...] = typing.get_args(EventName)

#: The RFC 3463 status of a recipient given up on after the queue lifetime.
EXPIRED_STATUS = "4.4.7"


@dataclass(frozen=True, slots=True)
class Event:
    """An event, as logged and as sent to webhooks (see `to_json`)."""

    id: str  # time-sortable, unique: receivers de-duplicate on it
    event: EventName
    timestamp: float  # seconds since the epoch
    message_id: str | None  # None for `rejected` (nothing was stored)
    recipient: str
    reply: str = ""  # the SMTP reply behind the event ("250 2.0.0 Ok", "550 5.1.1 ...")
    sender: str = ""
    tenant: str = ""
    campaign: str = ""
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    mx: str = ""  # the host that answered (delivery events)
    attempt: int = 0  # delivery attempt number (delivery events)

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON object (the webhook payload's array items)."""
        return {
            "id": self.id,
            "event": self.event,
            "timestamp": round(self.timestamp, 3),
            "message_id": self.message_id,
            "recipient": self.recipient,
            "reply": self.reply,
            "sender": self.sender,
            "tenant": self.tenant,
            "campaign": self.campaign,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
            "mx": self.mx,
            "attempt": self.attempt,
        }


def is_expiry(reply: str) -> bool:
    """True if a bounce reply is the queue-lifetime expiry (enhanced status 4.4.7)."""
    parts = reply.split(maxsplit=2)
    return len(parts) >= 2 and parts[1] == EXPIRED_STATUS
