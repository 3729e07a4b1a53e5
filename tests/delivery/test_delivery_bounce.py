"""BounceGenerator: the scheduler's bounce hook, entering RFC 3464 DSNs through ingest."""

from __future__ import annotations

from pathlib import Path

from delivery_support import SENDER, content

from relay.delivery import BounceGenerator
from relay.ingest import Ingest
from relay.model import MessageMeta, NewMessage, RcptStatus, Recipient, RecipientResult
from relay.spool import Spool, open_spool


async def _bounced(spool: Spool, sender: str, *, final: bool) -> MessageMeta:
    """A stored message with one bounced recipient (and, unless `final`, one pending)."""
    recipients = ("gone@dest.test",) if final else ("gone@dest.test", "later@dest.test")
    [meta] = await spool.store_many(
        [NewMessage(sender, recipients, content(subject="Original subject"))]
    )
    result = RecipientResult("gone@dest.test", RcptStatus.BOUNCED, "550 5.1.1 No such user")
    return await spool.record_results(meta.id, [result], next_attempt=None)


def _failed(meta: MessageMeta) -> list[Recipient]:
    return [r for r in meta.recipients if r.status is RcptStatus.BOUNCED]


async def test_dsn_enters_through_ingest_from_the_null_sender(tmp_path: Path) -> None:
    async with open_spool(tmp_path / "spool", sync=False, map_size=1 << 26) as spool:
        stored: list[MessageMeta] = []
        ingest = Ingest(spool, hostname="relay.test", on_stored=stored.append)
        bounces = BounceGenerator(spool, ingest, reporting_mta="relay.test")
        meta = await _bounced(spool, SENDER, final=False)
        await bounces(meta, _failed(meta))
        [dsn] = stored
        assert dsn.sender == ""
        assert [r.address for r in dsn.recipients] == [SENDER]
        assert dsn.tenant == meta.tenant and dsn.metadata["dsn_for"] == meta.id
        text = spool.read_content(dsn.id).decode()
        assert "Status: 5.1.1" in text
        assert "Subject: Original subject" in text  # read from the spool: still queued
        assert bounces.sent == 1


async def test_headers_stashed_by_delivery_survive_the_content(tmp_path: Path) -> None:
    async with open_spool(tmp_path / "spool", sync=False, map_size=1 << 26) as spool:
        stored: list[MessageMeta] = []
        ingest = Ingest(spool, hostname="relay.test", on_stored=stored.append)
        bounces = BounceGenerator(spool, ingest, reporting_mta="relay.test")
        [meta] = await spool.store_many([NewMessage(SENDER, ("gone@dest.test",), content())])
        bounces.stash(meta.id, b"Subject: Stashed\r\nFrom: <news@sender.test>")
        result = RecipientResult("gone@dest.test", RcptStatus.BOUNCED, "550 5.1.1 No")
        final = await spool.record_results(meta.id, [result], next_attempt=None)
        await bounces(final, _failed(final))  # the content is gone by now
        [dsn] = stored
        assert "Subject: Stashed" in spool.read_content(dsn.id).decode()


async def test_dsn_without_headers_rather_than_none(tmp_path: Path) -> None:
    async with open_spool(tmp_path / "spool", sync=False, map_size=1 << 26) as spool:
        stored: list[MessageMeta] = []
        ingest = Ingest(spool, hostname="relay.test", on_stored=stored.append)
        bounces = BounceGenerator(spool, ingest, reporting_mta="relay.test")
        meta = await _bounced(spool, SENDER, final=True)
        await bounces(meta, _failed(meta))
        [dsn] = stored
        assert "Final-Recipient: rfc822; gone@dest.test" in spool.read_content(dsn.id).decode()


async def test_rfc5321_6_1_never_a_dsn_to_the_null_sender(tmp_path: Path) -> None:
    async with open_spool(tmp_path / "spool", sync=False, map_size=1 << 26) as spool:
        stored: list[MessageMeta] = []
        ingest = Ingest(spool, hostname="relay.test", on_stored=stored.append)
        bounces = BounceGenerator(spool, ingest, reporting_mta="relay.test")
        meta = await _bounced(spool, "", final=False)
        await bounces(meta, _failed(meta))
        assert stored == [] and bounces.sent == 0
