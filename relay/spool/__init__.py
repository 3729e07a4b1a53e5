"""The durable message spool: one LMDB environment per shard, one writer thread each.

See `relay.spool.spool` for the API, `relay.spool.writer` for group commit and
`relay.spool.records` for the record formats.
"""

from relay.spool.aux import AuxTable
from relay.spool.env import DEFAULT_AUX_TABLES
from relay.spool.records import schedule_record_of
from relay.spool.spool import (
    QuarantinedRecord,
    Spool,
    SpoolStatistics,
    open_spool,
)

__all__ = [
    "DEFAULT_AUX_TABLES",
    "AuxTable",
    "QuarantinedRecord",
    "Spool",
    "SpoolStatistics",
    "open_spool",
    "schedule_record_of",
]
