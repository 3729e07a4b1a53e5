"""The HTTP API: send (JSON or raw), message status, metrics, health, OpenAPI.

- `service`: `ApiService`, Hypercorn's trio worker inside the shard (relay.app).
- `routes`: the Starlette application and its routes.
- `compose`, `fields`, `templates`, `mime`: from request JSON to RFC 5322 messages.
- `keys`: API keys (`relay key ...`); `idempotency`: the Idempotency-Key records.
- `status`: messages looked up across shards; `metrics`: Prometheus for all shards.
- `openapi`: the document at /openapi.json.

It calls only ingest (to store) and the spool's read side, and knows nothing of SMTP.
"""

from relay.api.keys import ApiKey, ApiKeyError, ApiKeyStore
from relay.api.metrics import Gauges, MetricsBoard
from relay.api.problems import ApiError
from relay.api.service import ApiService

__all__ = [
    "ApiError",
    "ApiKey",
    "ApiKeyError",
    "ApiKeyStore",
    "ApiService",
    "Gauges",
    "MetricsBoard",
]
