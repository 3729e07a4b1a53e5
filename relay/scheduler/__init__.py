"""When each queued message may go, and how fast each destination takes mail.

`policy` is pure (backoff, expiry, send_at, concurrency feedback, token buckets);
`queues` holds the scheduled and ready queues; `scheduler` runs the timers and the
dispatch and takes delivery outcomes; `admin` is what the CLI and the HTTP admin API
call; `control` is the durable state those share with a running scheduler.
"""

from relay.scheduler.admin import (
    MessageFilter,
    QueueSummary,
    StateCounts,
    bounce,
    delete,
    inspect,
    list_suspensions,
    resume,
    retry_now,
    summary,
    suspend,
)
from relay.scheduler.control import Suspension
from relay.scheduler.policy import (
    ConcurrencyFeedback,
    DestinationPolicy,
    FeedbackPolicy,
    Jitter,
    RetryPolicy,
    TokenBucket,
)
from relay.scheduler.queues import Job, QueueKey, ReadyQueue, ReadyQueueStatistics
from relay.scheduler.scheduler import (
    BounceHook,
    ReadyKeyFunction,
    Scheduler,
    SchedulerStatistics,
    domain_ready_key,
)

__all__ = [
    "BounceHook",
    "ConcurrencyFeedback",
    "DestinationPolicy",
    "FeedbackPolicy",
    "Jitter",
    "Job",
    "MessageFilter",
    "QueueKey",
    "QueueSummary",
    "ReadyKeyFunction",
    "ReadyQueue",
    "ReadyQueueStatistics",
    "RetryPolicy",
    "Scheduler",
    "SchedulerStatistics",
    "StateCounts",
    "Suspension",
    "TokenBucket",
    "bounce",
    "delete",
    "domain_ready_key",
    "inspect",
    "list_suspensions",
    "resume",
    "retry_now",
    "summary",
    "suspend",
]
