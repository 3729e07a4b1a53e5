"""The sink: a real SMTP server on loopback, driven by smtplib and by raw pipelined bytes."""

from __future__ import annotations

import pickle
import smtplib
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
from loadgen_wire import Wire, group, message

from relay.loadgen import (
    CommandFault,
    Faults,
    ReceiverPolicy,
    SinkConfig,
    header_ids,
    open_sink,
)
from relay.model import TlsMode
from relay.net import client_context
from relay.testing.tls import TlsFiles


async def greeted(port: int, *, source: str | None = None) -> Wire:
    wire = await Wire.open(port, source=source)
    assert (await wire.reply())[0] == 220
    assert (await wire.command("EHLO client.test"))[0] == 250
    return wire


async def test_smtplib_delivers_and_the_sink_counts_and_records() -> None:
    async with open_sink(SinkConfig(record_content=True)) as sink:

        def client() -> list[tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", sink.port, local_hostname="client.test") as smtp:
                smtp.sendmail("a@sender.test", ["x@a.test", "y@b.test"], message("m1")[:-3])
                smtp.sendmail("a@sender.test", ["z@a.test"], message("m2", ".dot")[:-3])
                return [smtp.noop()]

        await trio.to_thread.run_sync(client)
        await sink.wait_for(2)
        stats = sink.statistics()
        assert (stats.messages, stats.recipients, stats.connections) == (2, 3, 1)
        first, second = sink.records
        assert first.recipients == ("x@a.test", "y@b.test")
        assert (first.sender, first.bench_id, first.message_id) == (
            "a@sender.test",
            "m1",
            "<m1@bench.test>",
        )
        assert second.content is not None and second.content.endswith(b"\r\n.dot\r\n")
        assert stats.bytes == first.size + second.size
        assert first.client == "127.0.0.1" and first.tls is False
        assert first.queue_id != second.queue_id
        # smtplib does not pipeline: MAIL, two RCPTs and DATA came in four reads
        assert (first.command_reads, second.command_reads) == (4, 3)
        assert stats.groups_in_one_read == 0


async def test_rfc2920_a_pipelined_group_arrives_in_one_read() -> None:
    async with open_sink() as sink:
        wire = await greeted(sink.port)
        await wire.send(group("a@s.test", ["x@a.test", "y@a.test"]))
        assert await wire.codes(4) == [250, 250, 250, 354]
        await wire.send(message("p1"))
        code, enhanced, text = await wire.reply()
        assert (code, enhanced) == (250, "2.0.0")
        [record] = sink.records
        assert text[0].endswith(record.queue_id)
        assert record.command_reads == 1
        assert sink.statistics().groups_in_one_read == 1
        # the next group together with the end of the previous message: also one read
        await wire.send(group("a@s.test", ["x@a.test"]))
        assert await wire.codes(3) == [250, 250, 354]
        await wire.send(message("p2") + b"QUIT\r\n")
        assert await wire.codes(2) == [250, 221]
        assert await wire.at_eof()


async def test_pipelining_can_be_switched_off() -> None:
    async with open_sink(SinkConfig(pipelining=False)) as sink:
        wire = await Wire.open(sink.port)
        await wire.reply()
        _, _, lines = await wire.command("EHLO client.test")
        assert "PIPELINING" not in lines
    async with open_sink() as sink:
        wire = await Wire.open(sink.port)
        await wire.reply()
        _, _, lines = await wire.command("EHLO client.test")
        assert "PIPELINING" in lines


async def test_rfc3207_starttls_with_a_trustme_certificate(tls_files: TlsFiles) -> None:
    config = SinkConfig(starttls=True, cert_file=tls_files.cert_file, key_file=tls_files.key_file)
    async with open_sink(config) as sink:
        assert sink.certificate == tls_files.cert_file
        context = ssl.create_default_context(cafile=str(tls_files.ca_file))

        def client() -> None:
            with smtplib.SMTP("127.0.0.1", sink.port, local_hostname="client.test") as smtp:
                smtp.starttls(context=context)
                smtp.sendmail("a@s.test", ["x@a.test"], message("t1")[:-3])

        await trio.to_thread.run_sync(client)
        await sink.wait_for(1)
        assert sink.records[0].tls is True
        assert sink.statistics().tls_connections == 1


async def test_starttls_with_a_generated_certificate() -> None:
    async with open_sink(SinkConfig(starttls=True, hostname="mx.sink.test")) as sink:
        assert sink.certificate is not None and sink.certificate.exists()
        context = client_context(TlsMode.REQUIRED_VERIFY, cafile=sink.certificate)
        wire = await greeted(sink.port)
        await wire.starttls(context, "mx.sink.test")
        _, _, lines = await wire.command("EHLO client.test")
        assert "STARTTLS" not in lines
        await wire.send(group("a@s.test", ["x@a.test"]))
        assert await wire.codes(3) == [250, 250, 354]
        await wire.send(message("g1"))
        assert (await wire.reply())[0] == 250
        [record] = sink.records
        assert record.tls and record.command_reads == 1
    assert not sink.certificate.exists()  # the temporary directory is gone


async def test_implicit_tls(tls_files: TlsFiles) -> None:
    config = SinkConfig(
        implicit_tls=True, cert_file=tls_files.cert_file, key_file=tls_files.key_file
    )
    async with open_sink(config) as sink:
        wire = await Wire.open(sink.port)
        context = client_context(TlsMode.REQUIRED_VERIFY, cafile=tls_files.ca_file)
        wire.stream = await start_client_tls(wire, context)
        assert (await wire.reply())[0] == 220
        _, _, lines = await wire.command("EHLO client.test")
        assert "STARTTLS" not in lines
        await wire.send(group("a@s.test", ["x@a.test"]))
        assert await wire.codes(3) == [250, 250, 354]
        await wire.send(message("i1"))
        assert (await wire.reply())[0] == 250
        assert sink.records[0].tls


async def start_client_tls(wire: Wire, context: ssl.SSLContext) -> trio.abc.Stream:
    from relay.net import start_tls

    return await start_tls(wire.stream, context, server_side=False, server_hostname="127.0.0.1")


# --- faults -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "codes", "counter"),
    [
        (Faults(mail=CommandFault(temporary=1.0)), [451, 503, 503], "mail_4xx"),
        (Faults(mail=CommandFault(permanent=1.0)), [550, 503, 503], "mail_5xx"),
        (Faults(rcpt=CommandFault(temporary=1.0)), [250, 450, 554], "rcpt_4xx"),
        (Faults(rcpt=CommandFault(permanent=1.0)), [250, 550, 554], "rcpt_5xx"),
        (Faults(data=CommandFault(temporary=1.0)), [250, 250, 451], "data_4xx"),
        (Faults(data=CommandFault(permanent=1.0)), [250, 250, 554], "data_5xx"),
    ],
)
async def test_command_faults(faults: Faults, codes: list[int], counter: str) -> None:
    async with open_sink(SinkConfig(faults=faults)) as sink:
        wire = await greeted(sink.port)
        await wire.send(group("a@s.test", ["x@a.test"]))
        assert await wire.codes(3) == codes
        stats = sink.statistics()
        assert stats.faults == {counter: 1}
        assert stats.rejected == 1 and stats.messages == 0


@pytest.mark.parametrize(
    ("fault", "code"), [(CommandFault(temporary=1.0), 451), (CommandFault(permanent=1.0), 554)]
)
async def test_end_of_data_faults(fault: CommandFault, code: int) -> None:
    async with open_sink(SinkConfig(faults=Faults(end_of_data=fault))) as sink:
        wire = await greeted(sink.port)
        await wire.send(group("a@s.test", ["x@a.test"]))
        assert await wire.codes(3) == [250, 250, 354]
        await wire.send(message("e1"))
        assert (await wire.reply())[0] == code
        assert sink.statistics().messages == 0 and sink.records == []
        # the session goes on
        await wire.send(b"NOOP\r\n")
        assert (await wire.reply())[0] == 250


async def run_probabilistic(seed: int) -> list[int]:
    faults = Faults(rcpt=CommandFault(temporary=0.3, permanent=0.3), seed=seed)
    async with open_sink(SinkConfig(faults=faults)) as sink:
        wire = await greeted(sink.port)
        await wire.send(group("a@s.test", [f"r{i}@a.test" for i in range(40)]))
        codes = await wire.codes(42)
        stats = sink.statistics()
        assert stats.faults.get("rcpt_4xx", 0) == codes.count(450)
        assert stats.faults.get("rcpt_5xx", 0) == codes.count(550)
        return codes[1:41]


async def test_faults_are_reproducible_with_a_seed() -> None:
    first = await run_probabilistic(7)
    assert first == await run_probabilistic(7)
    assert {450, 550, 250} == set(first)


async def test_added_latency_per_command() -> None:
    delay = 0.05
    faults = Faults(mail=CommandFault(delay=delay), rcpt=CommandFault(delay=delay))
    async with open_sink(SinkConfig(faults=faults)) as sink:
        wire = await greeted(sink.port)
        start = trio.current_time()
        await wire.send(group("a@s.test", ["x@a.test", "y@a.test"]))
        assert await wire.codes(4) == [250, 250, 250, 354]
        assert trio.current_time() - start >= 3 * delay  # a lower bound only
        assert sink.statistics().faults == {"mail_delay": 1, "rcpt_delay": 2}


async def test_421_and_disconnect_after_n_messages() -> None:
    async with open_sink(SinkConfig(faults=Faults(disconnect_after=2))) as sink:
        wire = await greeted(sink.port)
        for i in range(2):
            await wire.send(group("a@s.test", ["x@a.test"]))
            assert await wire.codes(3) == [250, 250, 354]
            await wire.send(message(f"d{i}"))
            assert (await wire.reply())[0] == 250
        code, enhanced, _ = await wire.reply()  # unsolicited, right after the second 250
        assert (code, enhanced) == (421, "4.3.2")
        assert await wire.at_eof()
        stats = sink.statistics()
        assert stats.messages == 2 and stats.faults == {"disconnect": 1}


async def test_tarpit_sends_replies_byte_by_byte() -> None:
    async with open_sink(SinkConfig(hostname="t.test", faults=Faults(tarpit=0.002))) as sink:
        wire = await Wire.open(sink.port)
        code, _, text = await wire.reply()
        assert (code, text) == (220, ["t.test ESMTP ready"])
        assert wire.reads > 1  # the greeting did not come in one piece
        assert sink.statistics().faults == {"tarpit": 1}


async def test_scripted_recipient_replies() -> None:
    faults = Faults(recipients={"Nobody@A.test": (550, "5.1.1", "No such user")})
    async with open_sink(SinkConfig(faults=faults)) as sink:
        wire = await greeted(sink.port)
        await wire.send(group("a@s.test", ["nobody@a.test", "x@a.test"]))
        replies = [await wire.reply() for _ in range(4)]
        assert replies[1] == (550, "5.1.1", ["No such user"])
        assert [r[0] for r in replies] == [250, 550, 250, 354]
        await wire.send(message("s1"))
        assert (await wire.reply())[0] == 250
        assert sink.records[0].recipients == ("x@a.test",)
        assert sink.statistics().faults == {"scripted_rcpt": 1}


# --- receiver policy ---------------------------------------------------------------------


async def test_policy_concurrent_connections_per_client() -> None:
    policy = ReceiverPolicy(max_connections_per_client=2)
    async with open_sink(SinkConfig(policy=policy)) as sink:
        held = [await greeted(sink.port, source="127.0.0.2") for _ in range(2)]
        over = await Wire.open(sink.port, source="127.0.0.2")
        code, enhanced, _ = await over.reply()
        assert (code, enhanced) == (421, "4.7.0")
        assert await over.at_eof()
        other = await greeted(sink.port, source="127.0.0.3")  # another client is served
        stats = sink.statistics()
        assert stats.policy["connections_per_client"] == 1
        assert stats.refused_connections == 1
        assert (stats.connections_now, stats.connections_max) == (3, 3)
        for wire in [*held, other]:
            await wire.aclose()


async def test_policy_messages_per_connection() -> None:
    policy = ReceiverPolicy(max_messages_per_connection=1)
    async with open_sink(SinkConfig(policy=policy)) as sink:
        wire = await greeted(sink.port)
        await wire.send(group("a@s.test", ["x@a.test"]))
        assert await wire.codes(3) == [250, 250, 354]
        await wire.send(message("c1"))
        assert (await wire.reply())[0] == 250
        await wire.send(group("a@s.test", ["x@a.test"]))
        code, enhanced, _ = await wire.reply()
        assert (code, enhanced) == (421, "4.7.0")
        assert await wire.at_eof()
        stats = sink.statistics()
        assert stats.policy["messages_per_connection"] == 1 and stats.messages == 1


async def test_policy_message_rate(mock_clock: trio.testing.MockClock) -> None:
    # trio's clock stands still unless jumped, so the bucket refills only when told
    policy = ReceiverPolicy(max_message_rate=1.0, rate_burst=2)
    async with open_sink(SinkConfig(policy=policy)) as sink:
        wire = await greeted(sink.port)
        codes = []
        for _ in range(3):
            await wire.send(b"MAIL FROM:<a@s.test>\r\n")
            code, enhanced, _ = await wire.reply()
            codes.append((code, enhanced))
            if code == 250:
                await wire.send(b"RSET\r\n")
                await wire.reply()
        assert codes == [(250, "2.1.0"), (250, "2.1.0"), (450, "4.7.1")]
        mock_clock.jump(1.0)
        assert (await wire.command("MAIL FROM:<a@s.test>"))[0] == 250
        assert sink.statistics().policy["message_rate"] == 1


# --- the rest -----------------------------------------------------------------------------


async def test_auth_is_required_when_users_are_configured() -> None:
    async with open_sink(SinkConfig(auth_users={"bench": "secret-pw"})) as sink:

        def client() -> tuple[int, int]:
            with smtplib.SMTP("127.0.0.1", sink.port, local_hostname="client.test") as smtp:
                smtp.ehlo()
                refused = smtp.mail("a@s.test")[0]
                try:
                    smtp.login("bench", "wrong")
                except smtplib.SMTPAuthenticationError as exc:
                    bad = exc.smtp_code
                smtp.login("bench", "secret-pw")
                smtp.sendmail("a@s.test", ["x@a.test"], message("a1")[:-3])
                return refused, bad

        assert await trio.to_thread.run_sync(client) == (530, 535)
        assert sink.statistics().messages == 1


async def test_data_errors_are_answered_and_counted() -> None:
    async with open_sink(SinkConfig(max_message_size=100)) as sink:
        wire = await greeted(sink.port)
        await wire.send(group("a@s.test", ["x@a.test"]))
        assert await wire.codes(3) == [250, 250, 354]
        await wire.send(message("big", "x" * 200))
        assert (await wire.reply())[0] == 552
        assert sink.statistics().data_errors == 1


async def test_duplicates_are_counted_by_bench_id() -> None:
    async with open_sink() as sink:
        wire = await greeted(sink.port)
        for _ in range(2):
            await wire.send(group("a@s.test", ["x@a.test"]))
            await wire.codes(3)
            await wire.send(message("same"))
            await wire.reply()
        assert sink.statistics().duplicates == 1


async def test_without_records_only_counters_are_kept() -> None:
    async with open_sink(SinkConfig(record=False)) as sink:
        wire = await greeted(sink.port)
        await wire.send(group("a@s.test", ["x@a.test"]))
        await wire.codes(3)
        await wire.send(message("n1"))
        await wire.reply()
        assert sink.records == [] and sink.statistics().messages == 1


async def test_wait_for_times_out() -> None:
    async with open_sink() as sink:
        with pytest.raises(TimeoutError, match="0 of 1 messages"):
            await sink.wait_for(1, timeout=0.01)


async def test_idle_clients_get_421_and_are_closed() -> None:
    async with open_sink(SinkConfig(idle_timeout=0.2)) as sink:
        wire = await greeted(sink.port)
        code, enhanced, _ = await wire.reply()  # the client said nothing more
        assert (code, enhanced) == (421, "4.4.2")
        assert await wire.at_eof()


async def test_stop_cuts_open_connections() -> None:
    async with open_sink() as sink:
        wire = await greeted(sink.port)
        sink.stop()
        assert await wire.at_eof()


def test_config_is_checked_and_pickles(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="probability"):
        CommandFault(temporary=1.5)
    with pytest.raises(ValueError, match="exceed"):
        CommandFault(temporary=0.6, permanent=0.6)
    with pytest.raises(ValueError, match="both"):
        SinkConfig(cert_file=tmp_path / "c")
    with pytest.raises(ValueError, match="not both"):
        SinkConfig(starttls=True, implicit_tls=True)
    with pytest.raises(ValueError, match="not usable"):
        Faults(recipients={"a@b.test": (354, "", "x")})
    config = SinkConfig(
        auth_users={"u": "p"},
        faults=Faults(recipients={"A@b.test": (550, "5.1.1", "no")}, seed=3),
        policy=ReceiverPolicy(max_message_rate=2.5),
    )
    again = pickle.loads(pickle.dumps(config))
    assert again == config
    assert dict(again.faults.recipients) == {"a@b.test": (550, "5.1.1", "no")}
    assert config.policy.burst == 3


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"Message-ID: <a@b>\r\nX-Bench-Id: 42\r\n\r\nbody", ("<a@b>", "42")),
        (b"message-id:\r\n <folded@b>\r\nx-bench-id:7\r\n\r\n", ("<folded@b>", "7")),
        (b"Subject: x\r\n\r\nX-Bench-Id: in-body\r\n", (None, None)),
        (b"X-Bench-Id: no-body\r\n", (None, "no-body")),
        (b"X-Bench-Id-Other: 1\r\nX-Bench-Id: 2\r\n\r\n", (None, "2")),
    ],
)
def test_header_ids(content: bytes, expected: tuple[str | None, str | None]) -> None:
    assert header_ids(content) == expected
