"""The HTTP API: send (JSON or raw), message status, metrics, health, OpenAPI.

- `service`: `ApiService`, Hypercorn's trio worker inside the shard (relay.app).
- `routes`: the Starlette application and its routes.
- `compose`, `fields`, `templates`, `mime`: from request JSON to RFC 5322 messages.
- `keys`: API keys (`relay key ...`); `idempotency`: the Idempotency-Key records.
- `status`: messages looked up across shards; `metrics`: Prometheus for all shards.
- `openapi`: the document at /openapi.json.
- `admin`: the admin API (/admin/v1/...) over an `AdminOps` the composition root
  gives; `dashboard` and `status_page`: the live /status page.

It calls only ingest (to store) and the spool's read side, and knows nothing of SMTP.
"""

from relay.api.admin import AdminFilter, AdminOps, SuspensionKind
from relay.api.dashboard import Activity, DomainOutcomes, SiteActivity
from relay.api.keys import ApiKey, ApiKeyError, ApiKeyStore
from relay.api.metrics import Gauges, MetricsBoard
from relay.api.problems import ApiError
from relay.api.service import ApiService

__all__ = [
    "Activity",
    "AdminFilter",
    "AdminOps",
    "ApiError",
    "ApiKey",
    "ApiKeyError",
    "ApiKeyStore",
    "ApiService",
    "DomainOutcomes",
    "Gauges",
    "MetricsBoard",
    "SiteActivity",
    "SuspensionKind",
]
