"""`relay bench sink` and `relay bench send` end to end through the command line."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.cli import main

ROOT = Path(__file__).resolve().parent.parent.parent
SAFETY = 60.0


@contextmanager
def sink_process(*options: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`relay bench sink --port 0 ...` in a subprocess; yields its port and the process."""
    command = [sys.executable, "-m", "relay.cli", "bench", "sink", "--port", "0", *options]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        line = process.stderr.readline().decode()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, f"unexpected first line from the sink: {line!r}"
        yield int(match.group(1)), process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=SAFETY)


def stop(process: subprocess.Popen[bytes]) -> dict[str, object]:
    """SIGTERM, then the JSON summary the sink prints at exit."""
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=SAFETY)
    assert process.returncode == 0, err.decode()
    summary: dict[str, object] = json.loads(out)
    return summary


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("workers", [1, 2])
def test_send_to_sink_with_loss_and_duplicate_accounting(tmp_path: Path, workers: int) -> None:
    records, ids, summary_file = tmp_path / "records.csv", tmp_path / "ids.csv", tmp_path / "s.json"
    options = ["--workers", str(workers), "--starttls", "--quiet"]
    options += ["--records-out", str(records), "--json-out", str(summary_file)]
    with sink_process(*options) as (port, process):
        result = CliRunner().invoke(
            main,
            [
                "bench",
                "send",
                f"127.0.0.1:{port}",
                "--messages",
                "120",
                "--sessions",
                "6",
                "--size",
                "3k",
                "--recipients",
                "2",
                "--domains",
                "a.test:3,b.test:1",
                "--starttls",
                "--json",
                "--ids-out",
                str(ids),
            ],
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        summary = stop(process)
    assert report["accepted"] == 120 and report["errors"] == {}
    assert report["parameters"]["tls"] == "starttls"
    totals = summary["totals"]
    assert isinstance(totals, dict)
    assert totals["messages"] == 120 and totals["recipients"] == 240
    assert totals["tls_connections"] == totals["connections"] == 6
    assert totals["duplicates"] == 0 and totals["groups_in_one_read"] == 120
    assert json.loads(summary_file.read_text()) == summary
    sent = {row["bench_id"]: row for row in read_csv(ids)}
    received = read_csv(records)
    assert len(sent) == 120 and {row["bench_id"] for row in received} == set(sent)
    assert all(sent[row["bench_id"]]["queue_id"] == row["queue_id"] for row in received)
    if workers == 2:
        assert summary["workers"] and len(summary["workers"]) == 2  # type: ignore[arg-type]


def test_send_prints_tables_without_json(tmp_path: Path) -> None:
    with sink_process("--quiet") as (port, process):
        result = CliRunner().invoke(
            main, ["bench", "send", f"localhost:{port}", "--messages", "20", "--sessions", "2"]
        )
        stop(process)
    assert result.exit_code == 0, result.output
    for text in ("messages/s", "MB/s", "p50", "p90", "p99", "max", "20 of 20"):
        assert text in result.output


def test_sink_stops_after_duration_and_writes_the_summary(tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    result = CliRunner().invoke(
        main,
        ["bench", "sink", "--port", "0", "--duration", "0.2", "--json-out", str(summary_file)],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(summary_file.read_text())
    assert summary["totals"]["messages"] == 0 and summary["port"] > 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["bench", "sink", "--fault", "rcpt:9xx=1"], "STAGE:KIND=VALUE"),
        (["bench", "sink", "--fault", "mail:4xx=2"], "probability"),
        (["bench", "send", "mx.example.com:25"], "IP address"),
        (["bench", "send", "127.0.0.1"], "HOST:PORT"),
        (["bench", "send", "127.0.0.1:25", "--starttls", "--tls"], "not both"),
        (["bench", "send", "127.0.0.1:25", "--domains", "a.test:x"], "weight"),
        (["bench", "send", "127.0.0.1:25", "--auth", "nopassword"], "USER:PASSWORD"),
    ],
)
def test_bad_options_are_named(arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 2
    assert message in result.output


def test_send_reports_an_aborted_run(tmp_path: Path) -> None:
    with sink_process("--quiet") as (port, process):
        result = CliRunner().invoke(
            main, ["bench", "send", f"127.0.0.1:{port}", "--starttls", "--json", "--quiet"]
        )
        stop(process)
    assert result.exit_code == 1
    assert "run aborted: the server does not offer STARTTLS" in result.output
