"""One job over an open session: MAIL FROM, every RCPT TO, DATA, the content.

With PIPELINING the client writes MAIL, the RCPTs and DATA in one go, and the
next job's group follows the end-of-data reply with no round trip in between
(RFC 2920); the waits are the 354 and the end-of-data reply.  Parameters are sent
when the message needs them and the server offers them:

- SIZE (RFC 1870): always when offered; a message over the server's announced
  limit bounces (5.3.4) without being sent.
- BODY=8BITMIME (RFC 6152): when the message has an 8-bit body and the server
  offers it.  To a server without 8BITMIME the message goes as it is, as Postfix,
  Exim and most MTAs do in practice: converting it to 7 bits would break its DKIM
  signature, and servers that would really mangle 8-bit data are long gone.
- SMTPUTF8 (RFC 6531): when the envelope has a non-ASCII address, or the message
  was submitted with SMTPUTF8 and its header has non-ASCII text.  A server without
  SMTPUTF8 cannot take such a message: it bounces with 5.6.7 (RFC 6531 3.2).  A
  message submitted with SMTPUTF8 that turns out to be pure ASCII goes without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.delivery.channel import ChannelBroken, SmtpChannel
from relay.delivery.connector import Timeouts
from relay.delivery.outcome import transaction_results, uniform_results
from relay.errors import LocalProtocolError, RemoteProtocolError
from relay.ingest import header_block
from relay.model import RcptStatus, RecipientResult
from relay.proto import NEED_DATA, ReadyForData, ServiceClosing, TransactionComplete
from relay.scheduler import Job


@dataclass(frozen=True, slots=True)
class TransactionOutcome:
    """What became of one job on a session.

    `results` is None when the job was never really tried (a reused connection
    found dead before any reply): it goes back to the scheduler untried.
    `closing` after a 421; `broken` when the connection is unusable.
    """

    results: list[RecipientResult] | None
    delivered: bool = False
    closing: bool = False
    broken: bool = False


def needs_smtputf8(job: Job, content: bytes) -> bool:
    """True when the message cannot be carried without SMTPUTF8 (see module docstring)."""
    if not job.sender.isascii() or not all(r.isascii() for r in job.recipients):
        return True
    return job.smtputf8 and not header_block(content).isascii()


def refused_locally(
    job: Job, content: bytes, channel: SmtpChannel, *, utf8: bool
) -> list[RecipientResult] | None:
    """Bounces for a message this server cannot take at all, or None to go ahead.

    `utf8` says whether the message needs SMTPUTF8 (`needs_smtputf8`).
    """
    ext = channel.conn.extensions
    if utf8 and not ext.smtputf8:
        reply = f"550 5.6.7 {channel.label} does not support SMTPUTF8, which this message needs"
        return uniform_results(job.recipients, RcptStatus.BOUNCED, reply, channel.label)
    if ext.size and len(content) > ext.size:
        reply = (
            f"552 5.3.4 Message of {len(content)} bytes exceeds the size limit of "
            f"{ext.size} bytes announced by {channel.label}"
        )
        return uniform_results(job.recipients, RcptStatus.BOUNCED, reply, channel.label)
    return None


def _stale(channel: SmtpChannel) -> TransactionOutcome | None:
    """A reused session the server already closed (e.g. a 421 that came right after
    the last 250, read with it): the next job is not tried on it."""
    try:
        event = channel.conn.next_event()  # replies already read; no I/O
    except RemoteProtocolError:
        return TransactionOutcome(None, broken=True)
    if event is NEED_DATA:
        return None
    if isinstance(event, ServiceClosing):
        return TransactionOutcome(None, closing=True)
    return TransactionOutcome(None, broken=True)


async def run_transaction(
    channel: SmtpChannel, job: Job, content: bytes, timeouts: Timeouts
) -> TransactionOutcome:
    """Deliver `job` (its `content` read from the spool) on an open session."""
    mx = channel.label
    conn = channel.conn
    if channel.transactions:
        stale = _stale(channel)
        if stale is not None:
            return stale
    needed = needs_smtputf8(job, content)
    refused = refused_locally(job, content, channel, utf8=needed)
    if refused is not None:
        return TransactionOutcome(refused)
    ext = conn.extensions
    try:
        conn.send_mail(
            job.sender,
            job.recipients,
            size=len(content),
            body="8BITMIME" if job.body_8bit and ext.eightbitmime else None,
            smtputf8=needed or (job.smtputf8 and ext.smtputf8),
        )
    except LocalProtocolError as exc:
        reply = f"553 5.1.3 Cannot send this envelope: {exc}"
        return TransactionOutcome(uniform_results(job.recipients, RcptStatus.BOUNCED, reply, mx))
    channel.transactions += 1
    replied = False
    body_sent = False
    try:
        while True:
            event = await channel.event(timeouts.data_end if body_sent else timeouts.command)
            replied = True
            if isinstance(event, ReadyForData):
                conn.send_data(content)
                body_sent = True
            elif isinstance(event, TransactionComplete):
                results = transaction_results(event.result, mx)
                return TransactionOutcome(results, delivered=event.result.delivered)
            elif isinstance(event, ServiceClosing):
                if event.transaction is not None:
                    results = transaction_results(event.transaction, mx)
                else:
                    results = uniform_results(
                        job.recipients, RcptStatus.DEFERRED, str(event.reply), mx
                    )
                return TransactionOutcome(results, closing=True)
            else:
                raise ChannelBroken(f"451 4.4.2 {mx} closed the session during the transaction")
    except ChannelBroken as exc:
        if not replied and channel.transactions > 1:
            # A cached connection the server had dropped: nothing was delivered or
            # even answered, so the job goes back untried (as Postfix's connection cache).
            return TransactionOutcome(None, broken=True)
        results = uniform_results(job.recipients, RcptStatus.DEFERRED, exc.reply, mx)
        return TransactionOutcome(results, broken=True)
