"""Bounces: an RFC 3464 DSN to the envelope sender, entered through ingest from <>.

`BounceGenerator` is the scheduler's `bounce_hook`.  It is called after the
outcome is in the spool, and the spool drops a message's content as soon as its
last recipient is final, so delivery sessions `stash` the header block of a
message whose report may bounce someone (a small LRU); failing that the content is
read from the spool (other recipients still pending), and failing that the DSN
goes without the original headers rather than not at all.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from relay.delivery.dsn import build_dsn
from relay.errors import SpoolError
from relay.ingest import Ingest, Trace, header_block
from relay.log import get_logger
from relay.model import MessageMeta, Recipient
from relay.spool import Spool

_log = get_logger("delivery.bounce")

#: Header blocks kept for DSNs to come.
STASH_ENTRIES = 1000


class BounceGenerator:
    """Makes and queues DSNs for bounced recipients (never to the null sender)."""

    def __init__(
        self,
        spool: Spool,
        ingest: Ingest,
        *,
        reporting_mta: str,
        clock: Callable[[], float] = time.time,
        stash_entries: int = STASH_ENTRIES,
    ) -> None:
        self._spool = spool
        self._ingest = ingest
        self._reporting_mta = reporting_mta
        self._clock = clock
        self._stash: OrderedDict[str, bytes] = OrderedDict()
        self._stash_entries = stash_entries
        self.sent = 0  # DSNs queued

    def stash(self, message_id: str, headers: bytes) -> None:
        """Keep a message's header block for a DSN that may follow."""
        self._stash[message_id] = headers
        self._stash.move_to_end(message_id)
        while len(self._stash) > self._stash_entries:
            self._stash.popitem(last=False)

    def _headers(self, message_id: str) -> bytes:
        headers = self._stash.get(message_id)
        if headers is not None:
            return headers
        try:
            return header_block(self._spool.read_content(message_id))
        except SpoolError:
            _log.warning("delivery.bounce_without_headers", message_id=message_id)
            return b""

    async def __call__(self, meta: MessageMeta, recipients: Sequence[Recipient]) -> None:
        """Queue the DSN for `recipients` of `meta` (the scheduler's bounce hook)."""
        if not meta.sender or not recipients:
            return  # RFC 5321 6.1: nothing ever bounces to <>
        dsn = build_dsn(
            meta,
            recipients,
            self._headers(meta.id),
            reporting_mta=self._reporting_mta,
            now=self._clock(),
        )
        if dsn is None:
            return
        stored = await self._ingest.accept(
            "",
            [meta.sender],
            dsn,
            trace=Trace(helo=self._reporting_mta, protocol="local"),
            tenant=meta.tenant,
            tags=("dsn",),
            metadata={"dsn_for": meta.id},
            smtputf8=not meta.sender.isascii(),
            body_8bit=not dsn.isascii(),
        )
        self.sent += 1
        _log.info(
            "delivery.bounce",
            message_id=meta.id,
            dsn_id=stored.id,
            sender=meta.sender,
            recipients=[r.address for r in recipients],
        )
