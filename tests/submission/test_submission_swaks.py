"""swaks as a second real client (skipped when it is not installed)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from submission_support import CLIENT_NAME, PASSWORD, SAFETY, USER, Harness, running_service

from relay.ingest import header_value

SWAKS = shutil.which("swaks") or "/usr/bin/swaks"

pytestmark = pytest.mark.skipif(not Path(SWAKS).exists(), reason="swaks is not installed")


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_service(tmp_path) as h:
        yield h


async def swaks(port: int, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run swaks against 127.0.0.1:port; never lets it resolve a name."""
    command = [
        SWAKS,
        "--server", f"127.0.0.1:{port}",
        "--helo", CLIENT_NAME,
        "--from", "news@acme.test",
        "--to", "someone@example.net",
        "--timeout", "20",
        "--header", "Subject: via swaks",
        *args,
    ]  # fmt: skip
    with trio.fail_after(SAFETY):
        return await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )


def auth_args(mechanism: str) -> list[str]:
    return ["--auth", mechanism, "--auth-user", USER, "--auth-password", PASSWORD]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_swaks_starttls_auth(harness: Harness, mechanism: str) -> None:
    result = await swaks(harness.submission_port, "--tls", *auth_args(mechanism))
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, output + result.stderr.decode(errors="replace")
    assert "<~  250 2.0.0 Ok: queued as" in output
    [(message_id, content)] = harness.queued()
    assert f"queued as {message_id}" in output
    assert header_value(content, "Subject") == "via swaks"
    assert "with ESMTPSA" in (header_value(content, "Received") or "")


async def test_swaks_implicit_tls_pipelined(harness: Harness) -> None:
    result = await swaks(harness.submissions_port, "--tlsc", "--pipeline", *auth_args("PLAIN"))
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, output + result.stderr.decode(errors="replace")
    assert "queued as" in output
    assert len(harness.queued()) == 1


async def test_swaks_starttls_pipeline_login(harness: Harness) -> None:
    result = await swaks(harness.submission_port, "--tls", "--pipeline", *auth_args("LOGIN"))
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, output + result.stderr.decode(errors="replace")
    assert len(harness.queued()) == 1


async def test_swaks_finds_no_auth_without_tls(harness: Harness) -> None:
    result = await swaks(harness.submission_port, *auth_args("PLAIN"))
    output = result.stdout.decode(errors="replace")
    assert result.returncode != 0
    assert "STARTTLS" in output and "AUTH" not in output  # never offered in cleartext
    assert harness.queued() == []


async def test_swaks_trusted_relay_port(harness: Harness) -> None:
    result = await swaks(harness.relay_port, "--pipeline")
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, output
    assert len(harness.queued()) == 1
