"""Load benchmarking tools: a fast fake MX (the sink) and an SMTP load generator.

Both speak SMTP through relay.proto (no second parser) over relay.net's trio
adapters, so they work against relay, Postfix, smtp-sink or any SMTP server.

The sink, in process (tests use it as the destination MX)::

    from relay.loadgen import Faults, CommandFault, ReceiverPolicy, SinkConfig, open_sink

    config = SinkConfig(
        host="127.0.0.1", port=0,            # port 0: a free port, see sink.port
        pipelining=True,                     # announce PIPELINING (RFC 2920)
        starttls=False,                      # or implicit_tls=True; cert_file/key_file,
                                             # or a self-signed one (sink.certificate)
        faults=Faults(rcpt=CommandFault(temporary=0.1), disconnect_after=5, seed=1,
                      recipients={"nobody@b.test": (550, "5.1.1", "No such user")}),
        policy=ReceiverPolicy(max_connections_per_client=2, max_messages_per_connection=10,
                              max_message_rate=100.0),
        record=True, record_content=False,
    )
    async with open_sink(config) as sink:
        ... send to ("127.0.0.1", sink.port) ...
        await sink.wait_for(10, timeout=30)  # TimeoutError if fewer arrive
        stats = sink.statistics()            # SinkStatistics: messages, recipients, bytes,
                                             # connections(_now/_max), policy{}, faults{} ...
        for m in sink.records:               # ReceivedMessage: arrival, sender, recipients,
            ...                              # size, message_id, bench_id, queue_id, client,
                                             # connection, tls, command_reads, content
        sink.stop()                          # optional: leaving the block stops it too

`ReceivedMessage.command_reads == 1` shows that a message's MAIL, RCPTs and DATA
arrived in one read, i.e. were pipelined in one write.  Policy counters are named
"connections_per_client", "messages_per_connection" and "message_rate"; fault
counters "<stage>_4xx", "<stage>_5xx", "<stage>_delay" (stage: mail, rcpt, data,
end_of_data), "disconnect", "tarpit" (connections) and "scripted_rcpt".
`relay.testing.fakemx.open_fake_mx` wraps `open_sink` with test defaults.

The load generator (`relay bench send`)::

    from relay.loadgen import SendConfig, run_send

    report = await run_send(
        SendConfig("127.0.0.1", port, sessions=50, messages=20_000, size=5120,
                   recipients=1, domains=(("a.test", 3), ("b.test", 1)),
                   messages_per_connection=0, auth=None, tls="none"|"starttls"|"implicit",
                   pipelining=True, rate=0.0),
        on_progress=callback,            # SendProgress, every 0.25 s and at the end
        on_accepted=callback,            # AcceptedMessage(bench_id, accepted_at, queue_id,
    )                                    #                 latency) per 250
    report.messages_per_second, report.latency_ms["p99"], report.errors  # SendReport

Every message carries a unique X-Bench-Id (``<run_id>-<n>``) and Message-ID, so a
sink's records and the sender's accepted list give loss and duplicates.  The
command-line side: `relay.loadgen.sinkrun.run_sink` (one process or N workers on
one port), `relay.loadgen.console` (progress bar, tables).
"""

from relay.loadgen.headers import BENCH_ID_HEADER, header_ids
from relay.loadgen.send import run_send
from relay.loadgen.sendconfig import SendConfig
from relay.loadgen.sendreport import AcceptedMessage, SendProgress, SendReport
from relay.loadgen.sink import ReceivedMessage, Sink, SinkStatistics, open_sink
from relay.loadgen.sinkconfig import (
    FAULT_STAGES,
    CommandFault,
    Faults,
    ReceiverPolicy,
    ScriptedReply,
    SinkConfig,
)

__all__ = [
    "BENCH_ID_HEADER",
    "FAULT_STAGES",
    "AcceptedMessage",
    "CommandFault",
    "Faults",
    "ReceivedMessage",
    "ReceiverPolicy",
    "ScriptedReply",
    "SendConfig",
    "SendProgress",
    "SendReport",
    "Sink",
    "SinkConfig",
    "SinkStatistics",
    "header_ids",
    "open_sink",
    "run_send",
]
