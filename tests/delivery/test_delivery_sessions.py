"""Delivery sessions against fake MX servers on loopback, through static routes.

Everything is real: the spool on disk, the Scheduler, Ingest, the engine, TCP
on 127.0.0.x, TLS with trustme certificates; the destination is a relay.loadgen
sink (or, where the sink cannot vary something, a bare server from the support
module).
"""

from __future__ import annotations

import collections
import email
import email.policy
import random
from pathlib import Path

import trio
from delivery_support import (
    SENDER,
    content,
    make_config,
    open_mini_mx,
    open_mx,
    open_sinks,
    received_by,
    route,
    running_relay,
    wait_until,
)

from relay.config import EgressSourceConfig
from relay.loadgen import CommandFault, Faults, ReceiverPolicy
from relay.model import NewMessage, RcptStatus
from relay.testing.tls import make_tls_files, write_server_certificate


async def test_rfc2920_pipelining_mail_rcpt_data_in_one_write(tmp_path: Path) -> None:
    async with open_mx() as sink:
        config = make_config(
            routes=[route("*", sink.port)], initial_sessions_per_site=1, max_sessions_per_site=1
        )
        async with running_relay(tmp_path, config) as relay:
            metas = [
                await relay.send([f"a{i}@dest.test", f"b{i}@dest.test", f"c{i}@dest.test"])
                for i in range(6)
            ]
            await relay.final(*(m.id for m in metas))
            statuses = {s for m in metas for s in relay.statuses(m.id).values()}
        assert statuses == {RcptStatus.DELIVERED}
        assert len(sink.records) == 6
        # MAIL, three RCPTs and DATA arrived in one read: one write, one round trip.
        assert all(record.command_reads == 1 for record in sink.records)
        # One session carried them all: the next message followed on the same connection.
        assert sink.statistics().connections == 1


async def test_each_recipient_outcome_is_recorded_and_logged(tmp_path: Path) -> None:
    faults = Faults(recipients={"gone@dest.test": (550, "5.1.1", "No such user")})
    async with open_mx(faults=faults) as sink:
        config = make_config(routes=[route("dest.test", sink.port), route("*", sink.port)])
        async with running_relay(tmp_path, config) as relay:
            meta = await relay.send(["ok@dest.test", "gone@dest.test"])
            await relay.final(meta.id)
            await relay.settled()
            stored = relay.meta(meta.id)
        by_address = {r.address: r for r in stored.recipients}
        assert by_address["ok@dest.test"].status is RcptStatus.DELIVERED
        assert by_address["ok@dest.test"].reply.startswith("250 ")
        assert by_address["gone@dest.test"].status is RcptStatus.BOUNCED
        assert by_address["gone@dest.test"].reply == "550 5.1.1 No such user"
        [attempt] = stored.history
        assert attempt.mx == f"127.0.0.1:{sink.port}"
        assert attempt.recipients == ("ok@dest.test", "gone@dest.test")
        assert attempt.reply == "550 5.1.1 No such user"
        # One accounting record per recipient outcome.
        [ok] = relay.outcomes("ok@dest.test")
        assert (ok.message_id, ok.status, ok.attempt, ok.mx) == (
            meta.id,
            RcptStatus.DELIVERED,
            1,
            attempt.mx,
        )
        assert ok.duration >= 0


async def test_messages_per_connection_respected(tmp_path: Path) -> None:
    async with open_mx() as sink:
        config = make_config(
            routes=[route("*", sink.port)],
            max_messages_per_connection=3,
            initial_sessions_per_site=1,
            max_sessions_per_site=1,
        )
        async with running_relay(tmp_path, config) as relay:
            metas = [await relay.send([f"user{i}@dest.test"]) for i in range(10)]
            await relay.final(*(m.id for m in metas))
        per_connection = collections.Counter(record.connection for record in sink.records)
        assert sum(per_connection.values()) == 10
        assert max(per_connection.values()) == 3
        assert len(per_connection) == 4  # 3 + 3 + 3 + 1


async def test_connection_cap_never_exceeded_under_5000_messages(tmp_path: Path) -> None:
    total = 5000
    async with open_mx(record_content=False) as sink:
        config = make_config(
            routes=[route("*", sink.port)],
            max_sessions_per_site=4,
            initial_sessions_per_site=2,
            max_messages_per_connection=250,
        )
        async with running_relay(tmp_path, config) as relay:
            body = content()
            ids = []
            for start in range(0, total, 500):
                batch = [
                    NewMessage(SENDER, (f"user{i}@dest.test",), body)
                    for i in range(start, min(total, start + 500))
                ]
                for meta in await relay.spool.store_many(batch):
                    relay.scheduler.add(meta)
                    ids.append(meta.id)
            await wait_until(lambda: relay.engine.statistics().delivered == total, timeout=90)
            await relay.settled()
            assert all(relay.meta(i).is_final for i in ids)
            [pool] = relay.engine.pools
            assert pool.peak_sessions <= 4
        stats = sink.statistics()
        assert stats.messages == total
        assert stats.duplicates == 0
        assert stats.connections_max <= 4
        assert stats.connections >= total // 250  # messages per connection respected too
        assert max(collections.Counter(r.connection for r in sink.records).values()) <= 250


async def test_4xx_then_success(tmp_path: Path) -> None:
    # A seed whose first draw fails MAIL with 451 and whose second lets it through.
    seed = next(s for s in range(1000) if (r := random.Random(s)).random() < 0.5 <= r.random())
    faults = Faults(mail=CommandFault(temporary=0.5), seed=seed)
    async with open_mx(faults=faults) as sink:
        config = make_config(routes=[route("*", sink.port)])
        async with running_relay(tmp_path, config) as relay:
            meta = await relay.send(["later@dest.test"])
            await relay.final(meta.id)
            await relay.settled()
            stored = relay.meta(meta.id)
        first, second = relay.outcomes("later@dest.test")
        assert first.status is RcptStatus.DEFERRED
        assert first.reply.startswith("451 4.3.0")
        assert second.status is RcptStatus.DELIVERED
        assert second.attempt == 2
        assert stored.recipients[0].attempts == 2
        assert len(received_by(sink, "later@dest.test")) == 1


async def test_5xx_bounces_with_a_dsn_delivered_to_the_sender(tmp_path: Path) -> None:
    faults = Faults(recipients={"nobody@dest.test": (550, "5.1.1", "No such user here")})
    async with open_mx(faults=faults) as dest, open_mx() as senders_mx:
        config = make_config(
            routes=[route("dest.test", dest.port), route("sender.test", senders_mx.port)]
        )
        async with running_relay(tmp_path, config) as relay:
            meta = await relay.send(
                ["nobody@dest.test", "somebody@dest.test"], content(subject="Spring sale")
            )
            await relay.final(meta.id)
            await senders_mx.wait_for(1, timeout=30)
        [dsn] = received_by(senders_mx, SENDER)
        assert dsn.sender == ""  # RFC 3464 / RFC 5321 6.1: bounces come from <>
        assert dsn.content is not None
        report = email.message_from_bytes(dsn.content, policy=email.policy.default)
        assert report.get_content_type() == "multipart/report"
        status = dsn.content.decode()
        assert "Final-Recipient: rfc822; nobody@dest.test" in status
        assert "Status: 5.1.1" in status
        assert "somebody@dest.test" not in status.split("text/rfc822-headers")[0]
        assert "Subject: Spring sale" in status  # the original headers come back
        assert len(received_by(dest, "somebody@dest.test")) == 1


async def test_no_dsn_for_a_bounce_from_the_null_sender(tmp_path: Path) -> None:
    faults = Faults(recipients={"nobody@dest.test": (550, "5.1.1", "No such user")})
    async with open_mx(faults=faults) as dest:
        config = make_config(routes=[route("*", dest.port)])
        async with running_relay(tmp_path, config) as relay:
            meta = await relay.send(["nobody@dest.test"], sender="")
            await relay.final(meta.id)
            await relay.settled()
            assert relay.statuses(meta.id) == {"nobody@dest.test": RcptStatus.BOUNCED}
        assert relay.bounces.sent == 0


async def test_421_mid_session_defers_in_flight_and_delivers_later(tmp_path: Path) -> None:
    # The server takes two messages per connection, then answers MAIL with 421 and closes.
    policy = ReceiverPolicy(max_messages_per_connection=2)
    async with open_mx(policy=policy) as sink:
        config = make_config(
            routes=[route("*", sink.port)],
            max_sessions_per_site=1,
            initial_sessions_per_site=1,
        )
        async with running_relay(tmp_path, config) as relay:
            metas = [await relay.send([f"user{i}@dest.test"]) for i in range(5)]
            await relay.final(*(m.id for m in metas))
            await relay.settled()
        deferred = [e for e in relay.events if e.status is RcptStatus.DEFERRED]
        assert deferred
        assert all(e.reply.startswith("421 4.7.0") for e in deferred)
        assert sink.statistics().messages == 5
        assert sink.statistics().connections >= 3


async def test_unsolicited_421_after_a_message_ends_the_session(tmp_path: Path) -> None:
    faults = Faults(disconnect_after=2)  # 421 right after the 2nd 250, then close
    async with open_mx(faults=faults) as sink:
        config = make_config(
            routes=[route("*", sink.port)],
            max_sessions_per_site=1,
            initial_sessions_per_site=1,
        )
        async with running_relay(tmp_path, config) as relay:
            metas = [await relay.send([f"user{i}@dest.test"]) for i in range(6)]
            await relay.final(*(m.id for m in metas))
        stats = sink.statistics()
        assert stats.messages == 6
        assert stats.duplicates == 0
        assert max(collections.Counter(r.connection for r in sink.records).values()) <= 2


async def test_tls_opportunistic_when_offered(tmp_path: Path) -> None:
    async with open_mx(starttls=True) as sink:
        config = make_config(routes=[route("*", sink.port, tls="opportunistic")])
        async with running_relay(tmp_path, config) as relay:
            meta = await relay.send(["secret@dest.test"])
            await relay.final(meta.id)
        [record] = sink.records
        assert record.tls
        assert relay.outcomes("secret@dest.test")[0].tls


async def test_tls_opportunistic_falls_back_to_clear_and_remembers(tmp_path: Path) -> None:
    async with open_mini_mx(broken_starttls=True) as mx:
        config = make_config(
            routes=[route("*", mx.port, tls="opportunistic")], initial_sessions_per_site=1
        )
        async with running_relay(tmp_path, config) as relay:
            first = await relay.send(["one@dest.test"])
            await relay.final(first.id)
            second = await relay.send(["two@dest.test"])
            await relay.final(second.id)
        assert [m.recipients for m in mx.messages] == [("one@dest.test",), ("two@dest.test",)]
        # The handshake failed once; the retry went in clear at once, and the host is
        # remembered: later sessions do not try STARTTLS again.
        assert mx.starttls_accepted == 1
        assert all(not e.tls for e in relay.events)
        assert len(relay.engine.tls_memory) == 1


async def test_tls_required_verify_with_the_trusted_ca(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    async with open_mx(starttls=True, cert_file=tls.cert_file, key_file=tls.key_file) as sink:
        config = make_config(
            routes=[route("*", sink.port, tls="required-verify")], ca_file=str(tls.ca_file)
        )
        async with running_relay(tmp_path, config) as relay:
            meta = await relay.send(["verified@dest.test"])
            await relay.final(meta.id)
        [record] = sink.records
        assert record.tls


async def test_tls_required_verify_fails_on_a_wrong_host_name(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    cert, key = write_server_certificate(tls.ca, tmp_path / "other", ["other.test"])
    async with open_mx(starttls=True, cert_file=cert, key_file=key) as sink:
        config = make_config(
            routes=[route("*", sink.port, tls="required-verify")], ca_file=str(tls.ca_file)
        )
        async with running_relay(tmp_path, config) as relay:
            meta = await relay.send(["verified@dest.test"])
            await wait_until(lambda: bool(relay.outcomes("verified@dest.test")))
            await relay.settled()
            [outcome] = relay.outcomes("verified@dest.test")[:1]
            assert outcome.status is RcptStatus.DEFERRED
            assert outcome.reply.startswith("451 4.7.5")
            assert "certificate verification failed" in outcome.reply
            assert relay.statuses(meta.id) == {"verified@dest.test": RcptStatus.DEFERRED}
        assert sink.statistics().messages == 0


async def test_tls_required_but_not_offered_defers(tmp_path: Path) -> None:
    async with open_mx() as sink:
        config = make_config(routes=[route("*", sink.port, tls="required")])
        async with running_relay(tmp_path, config) as relay:
            await relay.send(["careful@dest.test"])
            await wait_until(lambda: bool(relay.outcomes("careful@dest.test")))
            outcome = relay.outcomes("careful@dest.test")[0]
        assert outcome.status is RcptStatus.DEFERRED
        assert outcome.reply.startswith("451 4.7.4")
        assert sink.statistics().messages == 0


async def test_egress_source_address_seen_by_the_mx(tmp_path: Path) -> None:
    async with open_mx() as sink:
        config = make_config(
            routes=[route("*", sink.port)],
            egress=[
                EgressSourceConfig(name="first", address="127.0.0.1", ehlo_name="out1.test"),
                EgressSourceConfig(name="second", address="127.0.0.2", ehlo_name="out2.test"),
            ],
            pools={"acme": ("second",), "globex": ("first",)},
        )
        async with running_relay(tmp_path, config) as relay:
            acme = await relay.send(["a@dest.test"], tenant="acme")
            globex = await relay.send(["g@dest.test"], tenant="globex")
            await relay.final(acme.id, globex.id)
        assert [m.client for m in received_by(sink, "a@dest.test")] == ["127.0.0.2"]
        assert [m.client for m in received_by(sink, "g@dest.test")] == ["127.0.0.1"]
        assert relay.outcomes("a@dest.test")[0].source == "second"


async def test_route_auth_credentials(tmp_path: Path) -> None:
    async with open_mx(auth_users={"relayuser": "s3cret"}) as sink:
        config = make_config(
            routes=[route("*", sink.port, tls="disabled", username="relayuser", password="s3cret")]
        )
        async with running_relay(tmp_path, config) as relay:
            meta = await relay.send(["auth@dest.test"])
            await relay.final(meta.id)
        assert len(received_by(sink, "auth@dest.test")) == 1


async def test_route_auth_never_in_clear_unless_tls_disabled(tmp_path: Path) -> None:
    async with open_mx(auth_users={"relayuser": "s3cret"}) as sink:
        config = make_config(
            routes=[
                route("*", sink.port, tls="opportunistic", username="relayuser", password="s3cret")
            ]
        )
        async with running_relay(tmp_path, config) as relay:
            await relay.send(["auth@dest.test"])
            await wait_until(lambda: bool(relay.outcomes("auth@dest.test")))
            outcome = relay.outcomes("auth@dest.test")[0]
        assert outcome.status is RcptStatus.DEFERRED
        assert "without TLS" in outcome.reply
        assert sink.statistics().messages == 0


async def test_rfc6531_smtputf8_message_bounces_5_6_7_without_server_support(
    tmp_path: Path,
) -> None:
    async with open_mini_mx(smtputf8=False) as mx, open_mx() as senders_mx:
        config = make_config(
            routes=[route("dest.test", mx.port), route("sender.test", senders_mx.port)]
        )
        async with running_relay(tmp_path, config) as relay:
            utf8 = await relay.send(["josé@dest.test"], smtputf8=True)
            ascii_only = await relay.send(["jose@dest.test"], smtputf8=True)
            await relay.final(utf8.id, ascii_only.id)
            await senders_mx.wait_for(1, timeout=30)
            bounced = relay.meta(utf8.id).recipients[0]
        assert bounced.status is RcptStatus.BOUNCED
        assert bounced.reply.startswith("550 5.6.7")
        # Flagged SMTPUTF8 but pure ASCII: delivered without the parameter.
        assert [m.recipients for m in mx.messages] == [("jose@dest.test",)]
        assert not mx.mail[0].smtputf8
        assert b"Status: 5.6.7" in (received_by(senders_mx, SENDER)[0].content or b"")


async def test_rfc6531_smtputf8_parameter_sent_when_offered(tmp_path: Path) -> None:
    async with open_mini_mx(smtputf8=True) as mx:
        config = make_config(routes=[route("*", mx.port)])
        async with running_relay(tmp_path, config) as relay:
            meta = await relay.send(["josé@dest.test"], smtputf8=True)
            await relay.final(meta.id)
        [mail] = mx.mail
        assert mail.smtputf8
        assert mx.messages[0].recipients == ("josé@dest.test",)


async def test_rfc6152_8bit_body_sent_as_is_to_a_server_without_8bitmime(tmp_path: Path) -> None:
    body = content(body="Caf\u00e9 cr\u00e8me\r\n")
    async with open_mini_mx(eightbitmime=False) as plain, open_mini_mx() as modern:
        config = make_config(routes=[route("plain.test", plain.port), route("*", modern.port)])
        async with running_relay(tmp_path, config) as relay:
            first = await relay.send(["a@plain.test"], body, body_8bit=True)
            second = await relay.send(["b@modern.test"], body, body_8bit=True)
            await relay.final(first.id, second.id)
        assert plain.mail[0].body is None
        assert "Café".encode() in plain.messages[0].content
        assert modern.mail[0].body == "8BITMIME"


async def test_rfc1870_size_over_the_servers_limit_bounces_unsent(tmp_path: Path) -> None:
    async with open_mx(max_message_size=2000) as sink:
        config = make_config(routes=[route("*", sink.port)])
        async with running_relay(tmp_path, config) as relay:
            small = await relay.send(["small@dest.test"])
            large = await relay.send(["large@dest.test"], content(body=("y" * 70 + "\r\n") * 40))
            await relay.final(small.id, large.id)
            reply = relay.meta(large.id).recipients[0].reply
        assert reply.startswith("552 5.3.4")
        assert [m.recipients for m in sink.records if m.sender] == [("small@dest.test",)]


async def test_graceful_stop_finishes_the_transaction_and_releases_the_rest(
    tmp_path: Path,
) -> None:
    slow = Faults(end_of_data=CommandFault(delay=2.0))
    async with open_mx(faults=slow) as sink:
        config = make_config(
            routes=[route("*", sink.port)], max_sessions_per_site=1, initial_sessions_per_site=1
        )
        async with running_relay(tmp_path, config) as relay:
            metas = [await relay.send([f"user{i}@dest.test"]) for i in range(4)]
            await wait_until(lambda: relay.engine.statistics().sessions == 1)
            await trio.sleep(0.3)  # the first message is waiting for its end-of-data reply
            await relay.engine.stop(trio.current_time() + 10.0)
            await relay.settled()
            states = [relay.statuses(m.id)[f"user{i}@dest.test"] for i, m in enumerate(metas)]
            pending = relay.scheduler.statistics()
        assert states[0] is RcptStatus.DELIVERED  # finished within the deadline
        assert states[1:] == [RcptStatus.PENDING] * 3  # untouched, still queued
        assert sink.statistics().messages == 1
        # Every job was handed back: the scheduler has them (queued again, not lost).
        assert pending.in_flight == sum(ready.queued for ready in pending.ready)


async def test_stop_deadline_cuts_a_slow_transaction_without_losing_it(tmp_path: Path) -> None:
    slow = Faults(end_of_data=CommandFault(delay=20.0))
    async with open_mx(faults=slow) as sink:
        config = make_config(routes=[route("*", sink.port)])
        async with running_relay(tmp_path, config) as relay:
            meta = await relay.send(["slow@dest.test"])
            await wait_until(lambda: relay.engine.statistics().sessions == 1)
            await trio.sleep(0.3)
            await relay.engine.stop(trio.current_time() + 0.5)
            state = relay.statuses(meta.id)["slow@dest.test"]
            pending = relay.scheduler.statistics()
        assert state is RcptStatus.PENDING  # not tried as far as the spool knows: kept
        assert pending.in_flight == sum(ready.queued for ready in pending.ready)
        assert sink.statistics().messages == 0


async def test_second_route_domain_shares_nothing_with_the_first(tmp_path: Path) -> None:
    async with open_sinks(["127.0.0.1", "127.0.0.3"]) as (one, three):
        config = make_config(
            routes=[route("one.test", one.port), route("three.test", three.port, "127.0.0.3")]
        )
        async with running_relay(tmp_path, config) as relay:
            meta = await relay.send(["x@one.test", "y@three.test"])
            await relay.final(meta.id)
            keys = {str(k) for k in relay.scheduler.ready_queues}
        assert [m.recipients for m in one.records] == [("x@one.test",)]
        assert [m.recipients for m in three.records] == [("y@three.test",)]
        assert keys == {
            f"default/route:127.0.0.1:{one.port}",
            f"default/route:127.0.0.3:{three.port}",
        }
