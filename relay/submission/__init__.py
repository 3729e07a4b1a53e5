"""SMTP submission: 587 with STARTTLS, 465 with implicit TLS, and a trusted port 25.

- `server`: `SubmissionService` (listeners, connection limits, stop) and
  `open_submission_listeners`.
- `session`: the per-connection loop around relay.proto's `ServerConnection`.
- `policy`: who may relay, sender domains, per-user limits (pure).
- `users`: accounts with scrypt-hashed passwords; `authguard`: AUTH brute-force guard.
- `budget`: the memory budget for message data held by all sessions.
"""

from relay.submission.authguard import AuthGuard
from relay.submission.budget import MemoryBudget
from relay.submission.policy import Refusal, TrustedNetworks
from relay.submission.server import (
    DEFAULT_DATA_MEMORY,
    SubmissionListeners,
    SubmissionService,
    open_submission_listeners,
    protocol_profiles,
)
from relay.submission.session import ListenerKind, SubmissionStatistics
from relay.submission.users import User, UserError, UserStore, generate_password

__all__ = [
    "DEFAULT_DATA_MEMORY",
    "AuthGuard",
    "ListenerKind",
    "MemoryBudget",
    "Refusal",
    "SubmissionListeners",
    "SubmissionService",
    "SubmissionStatistics",
    "TrustedNetworks",
    "User",
    "UserError",
    "UserStore",
    "generate_password",
    "open_submission_listeners",
    "protocol_profiles",
]
