"""Against foreign implementations: send -> Postfix's smtp-sink, smtp-source -> our sink."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from relay.loadgen import SinkConfig, open_sink
from relay.loadgen.send import run_send
from relay.loadgen.sendconfig import SendConfig
from relay.loadgen.sendreport import AcceptedMessage
from relay.testing.ports import free_port

SMTP_SINK = Path("/usr/sbin/smtp-sink")
SMTP_SOURCE = Path("/usr/sbin/smtp-source")
SAFETY = 30.0


@pytest.fixture
def smtp_sink() -> Iterator[int]:
    """Postfix's smtp-sink on a free loopback port (stopped by PID afterwards)."""
    if not SMTP_SINK.exists():
        pytest.skip("Postfix smtp-sink is not installed")
    port = free_port()
    command = [str(SMTP_SINK)]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]  # smtp-sink refuses to run as root otherwise
    command += [f"127.0.0.1:{port}", "100"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(
                        f"smtp-sink exited: {process.stderr.read() if process.stderr else ''!r}"
                    )
                time.sleep(0.02)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=SAFETY)


async def test_send_against_postfix_smtp_sink(smtp_sink: int) -> None:
    accepted: list[AcceptedMessage] = []
    report = await run_send(
        SendConfig(
            "127.0.0.1",
            smtp_sink,
            sessions=5,
            messages=100,
            size=3000,
            recipients=2,
            auth=("bench", "anything"),  # smtp-sink offers AUTH and accepts any credentials
            time_limit=SAFETY,
        ),
        on_accepted=accepted.append,
    )
    assert (report.accepted, report.failed, report.errors) == (100, 0, {})
    assert report.recipients_accepted == 200
    assert len({a.bench_id for a in accepted}) == 100


async def test_send_without_pipelining_against_smtp_sink(smtp_sink: int) -> None:
    report = await run_send(
        SendConfig("127.0.0.1", smtp_sink, sessions=2, messages=10, pipelining=False)
    )
    assert report.accepted == 10


async def test_postfix_smtp_source_against_our_sink() -> None:
    if not SMTP_SOURCE.exists():
        pytest.skip("Postfix smtp-source is not installed")
    async with open_sink(SinkConfig()) as sink:
        command = [str(SMTP_SOURCE), "-s", "5", "-m", "50", "-l", "2048", "-d"]
        with trio.fail_after(SAFETY):
            await trio.run_process([*command, f"127.0.0.1:{sink.port}"], capture_stdout=True)
        await sink.wait_for(50, timeout=SAFETY)
        stats = sink.statistics()
        assert stats.messages == 50 and stats.rejected == 0
        assert all(r.size >= 2048 for r in sink.records)
