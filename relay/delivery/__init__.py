"""Outbound delivery: where mail goes, sessions per destination, outcomes, bounces.

- `routing`: static routes over MX resolution; `Router.ready_key` for the scheduler.
- `egress`: egress sources (bind address + EHLO name) and tenants' weighted pools.
- `shaping`: per-site limits from the configuration, split among shards.
- `engine`: `DeliveryEngine`, a `SitePool` of sessions per ready queue (`pool`),
  each session opened by `connector` and running `transaction`s over a `channel`.
- `outcome`, `reporter`: replies to recipient statuses, accounting, reports.
- `bounce`, `dsn`: RFC 3464 bounces re-entering through ingest from <>.
"""

from relay.delivery.bounce import BounceGenerator
from relay.delivery.egress import EgressPools, EgressSource
from relay.delivery.engine import DeliveryEngine, DeliveryStatistics
from relay.delivery.outcome import DeliveryEvent
from relay.delivery.routing import (
    MxSite,
    NextHop,
    ReadyKey,
    Router,
    RouteSite,
    Unroutable,
    mx_resolver,
)
from relay.delivery.shaping import destination_policy, retry_policy, site_policy

__all__ = [
    "BounceGenerator",
    "DeliveryEngine",
    "DeliveryEvent",
    "DeliveryStatistics",
    "EgressPools",
    "EgressSource",
    "MxSite",
    "NextHop",
    "ReadyKey",
    "RouteSite",
    "Router",
    "Unroutable",
    "destination_policy",
    "mx_resolver",
    "retry_policy",
    "site_policy",
]
