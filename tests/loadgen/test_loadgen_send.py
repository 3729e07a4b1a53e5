"""relay bench send's engine (run_send) against the sink, in process, on loopback."""

from __future__ import annotations

import pytest
import trio

from relay.loadgen import CommandFault, Faults, ReceiverPolicy, SinkConfig, open_sink
from relay.loadgen import send as send_module
from relay.loadgen.send import run_send
from relay.loadgen.sendconfig import SendConfig, target_address
from relay.loadgen.sendreport import AcceptedMessage, SendProgress
from relay.testing.tls import TlsFiles


def config(port: int, **options: object) -> SendConfig:
    settings: dict[str, object] = {"sessions": 4, "messages": 40, "size": 2000, "time_limit": 60.0}
    settings.update(options)
    return SendConfig("127.0.0.1", port, **settings)  # type: ignore[arg-type]


async def test_every_accepted_message_arrives_once_with_its_id() -> None:
    accepted: list[AcceptedMessage] = []
    progress: list[SendProgress] = []
    async with open_sink() as sink:
        report = await run_send(
            config(
                sink.port,
                messages=60,
                recipients=2,
                domains=(("a.test", 3), ("b.test", 1)),
                run_id="run1",
            ),
            on_accepted=accepted.append,
            on_progress=progress.append,
        )
        await sink.wait_for(60)
        records = sink.records
    assert (report.attempted, report.accepted, report.failed, report.unfinished) == (60, 60, 0, 0)
    assert report.stopped_by == "messages" and report.recipients_accepted == 120
    assert report.bytes_accepted == 60 * 2000 == sum(r.size for r in records)
    assert report.connections == 4 and report.errors == {} and report.connection_errors == {}
    assert report.latency_ms["count"] == 60
    assert 0 < report.latency_ms["p50"] <= report.latency_ms["p99"] <= report.latency_ms["max"]
    assert sorted(r.bench_id or "" for r in records) == sorted(a.bench_id for a in accepted)
    assert len({a.bench_id for a in accepted}) == 60
    assert all(a.bench_id.startswith("run1-") for a in accepted)
    by_id = {r.bench_id: r for r in records}
    assert all(by_id[a.bench_id].queue_id == a.queue_id for a in accepted)
    # RFC 2920: MAIL, both RCPTs and DATA left in one write and arrived in one read
    assert {r.command_reads for r in records} == {1}
    domains = [rcpt.split("@")[1] for r in records for rcpt in r.recipients]
    assert domains.count("a.test") == 90 and domains.count("b.test") == 30
    assert progress[-1].accepted == 60


async def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    async with open_sink() as sink:
        report = await run_send(config(sink.port, messages=5, pipelining=False, recipients=2))
        assert report.accepted == 5
        assert {r.command_reads for r in sink.records} == {4}  # MAIL, RCPT, RCPT, DATA


async def test_messages_per_connection_reconnects() -> None:
    async with open_sink() as sink:
        report = await run_send(
            config(sink.port, sessions=1, messages=10, messages_per_connection=3)
        )
        assert report.accepted == 10 and report.connections == 4
        assert sink.statistics().connections == 4


async def test_rfc3207_starttls_verified_against_the_ca(tls_files: TlsFiles) -> None:
    sink_config = SinkConfig(
        starttls=True, cert_file=tls_files.cert_file, key_file=tls_files.key_file
    )
    async with open_sink(sink_config) as sink:
        report = await run_send(
            config(sink.port, messages=8, tls="starttls", cafile=tls_files.ca_file)
        )
        assert report.accepted == 8
        assert all(r.tls for r in sink.records)


async def test_implicit_tls_with_a_generated_certificate() -> None:
    async with open_sink(SinkConfig(implicit_tls=True, hostname="mx.sink.test")) as sink:
        assert sink.certificate is not None
        report = await run_send(
            config(
                sink.port,
                messages=8,
                tls="implicit",
                cafile=sink.certificate,
                tls_hostname="mx.sink.test",
            )
        )
        assert report.accepted == 8 and all(r.tls for r in sink.records)


async def test_rfc4954_auth() -> None:
    sink_config = SinkConfig(auth_users={"bench": "pw-123456"})
    async with open_sink(sink_config) as sink:
        report = await run_send(config(sink.port, messages=4, auth=("bench", "pw-123456")))
        assert report.accepted == 4
        refused = await run_send(config(sink.port, messages=4, auth=("bench", "wrong")))
        assert refused.stopped_by == "aborted" and refused.accepted == 0
        assert refused.aborted is not None and "535" in refused.aborted


async def test_starttls_asked_but_not_offered_aborts() -> None:
    async with open_sink() as sink:
        report = await run_send(config(sink.port, tls="starttls"))
        assert report.stopped_by == "aborted" and report.attempted == 0
        assert report.aborted == "the server does not offer STARTTLS"


async def test_refusals_are_counted_by_reply() -> None:
    faults = Faults(rcpt=CommandFault(temporary=1.0))
    async with open_sink(SinkConfig(faults=faults)) as sink:
        report = await run_send(config(sink.port, messages=6))
        assert (report.accepted, report.failed) == (0, 6)
        assert report.errors == {"450 4.2.1": 6}
        assert sink.statistics().faults == {"rcpt_4xx": 6}


async def test_a_server_refusing_everything_is_not_a_failing_connection() -> None:
    faults = Faults(mail=CommandFault(permanent=1.0))
    async with open_sink(SinkConfig(faults=faults)) as sink:
        report = await run_send(
            config(sink.port, sessions=1, messages=30, messages_per_connection=1)
        )
        assert report.stopped_by == "messages"  # no backoff, no giving up
        assert (report.attempted, report.failed, report.connections) == (30, 30, 30)
        assert report.errors == {"550 5.7.1": 30}


async def test_partly_refused_recipients() -> None:
    faults = Faults(recipients={"user1@example.test": (550, "5.1.1", "No such user")})
    async with open_sink(SinkConfig(faults=faults)) as sink:
        report = await run_send(config(sink.port, sessions=1, messages=1, recipients=3))
        assert report.accepted == 1 and report.recipients_accepted == 2
        assert report.recipients_rejected == 1 and report.errors == {"550 5.1.1": 1}


async def test_unsolicited_421_costs_no_message() -> None:
    async with open_sink(SinkConfig(faults=Faults(disconnect_after=2))) as sink:
        report = await run_send(config(sink.port, sessions=1, messages=6))
        assert (report.accepted, report.failed) == (6, 0)
        assert report.connections == 3
        assert report.connection_errors == {"421 4.3.2": 3}  # one per connection


async def test_receiver_policy_messages_per_connection() -> None:
    policy = ReceiverPolicy(max_messages_per_connection=2)
    async with open_sink(SinkConfig(policy=policy)) as sink:
        unshaped = await run_send(config(sink.port, sessions=1, messages=6))
        assert unshaped.errors == {"421 4.7.0": 2} and unshaped.accepted == 4
        shaped = await run_send(
            config(sink.port, sessions=1, messages=6, messages_per_connection=2)
        )
        assert shaped.accepted == 6 and shaped.errors == {}
        assert sink.statistics().policy["messages_per_connection"] == 2


async def test_receiver_policy_connections_per_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(send_module, "BACKOFF", (0.001, 0.01))
    policy = ReceiverPolicy(max_connections_per_client=1)
    async with open_sink(SinkConfig(policy=policy)) as sink:
        report = await run_send(
            config(sink.port, sessions=3, messages=30, messages_per_connection=5)
        )
        assert report.accepted == 30
        refused = sink.statistics().policy["connections_per_client"]
        assert report.connection_errors.get("421 4.7.0", 0) == refused


async def test_rate_cap() -> None:
    async with open_sink() as sink:
        start = trio.current_time()
        report = await run_send(config(sink.port, messages=10, rate=100.0))
        assert report.accepted == 10
        assert trio.current_time() - start >= 9 / 100.0  # a lower bound only


async def test_run_by_duration() -> None:
    async with open_sink() as sink:
        report = await run_send(config(sink.port, messages=None, duration=0.3, rate=50.0))
        assert report.stopped_by == "duration"
        assert report.accepted == report.attempted > 0


async def test_time_limit_cuts_the_run() -> None:
    faults = Faults(end_of_data=CommandFault(delay=30.0))
    async with open_sink(SinkConfig(faults=faults)) as sink:
        report = await run_send(config(sink.port, sessions=2, messages=5, time_limit=0.3))
        assert report.stopped_by == "time limit"
        assert (report.attempted, report.unfinished, report.accepted) == (2, 2, 0)


async def test_reply_timeout() -> None:
    faults = Faults(mail=CommandFault(delay=30.0))
    async with open_sink(SinkConfig(faults=faults)) as sink:
        report = await run_send(config(sink.port, sessions=1, messages=1, reply_timeout=0.1))
        assert report.errors == {"timeout": 1} and report.failed == 1


async def test_sessions_give_up_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(send_module, "BACKOFF", (0.001, 0.001))
    async with open_sink() as sink:
        port = sink.port
    report = await run_send(config(port, sessions=2))
    assert report.stopped_by == "sessions failed" and report.attempted == 0
    [(key, count)] = report.connection_errors.items()
    assert key.startswith("connect: ") and count == 2 * send_module.MAX_CONSECUTIVE_FAILURES


def test_targets_are_ip_literals() -> None:
    assert target_address("localhost") == "127.0.0.1"
    assert target_address("[::1]") == "::1"
    with pytest.raises(ValueError, match="IP address"):
        SendConfig("mx.example.com")
    with pytest.raises(ValueError, match="not both"):
        SendConfig("127.0.0.1", messages=1, duration=1.0)
    with pytest.raises(ValueError, match="sender"):
        SendConfig("127.0.0.1", sender="not an address")
    assert SendConfig("127.0.0.1").total == 1000
    assert SendConfig("127.0.0.1", duration=5.0).total is None
