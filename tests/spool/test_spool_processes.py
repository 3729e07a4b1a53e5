"""A second process on the same environment, and SIGKILL in the middle of storing."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import trio
from spool_helpers import CHILD, new_message, read_line

from relay.spool import open_spool

sys.path.insert(0, str(CHILD.parent))
from spool_child import crash_content


async def test_second_process_reads_and_writes_while_the_spool_is_open(spool_dir: Path) -> None:
    async with open_spool(spool_dir) as spool:
        meta = await spool.store(new_message(7))
        with trio.fail_after(60):
            child = await trio.run_process(
                [sys.executable, str(CHILD), "read", str(spool_dir), meta.id],
                capture_stdout=True,
                capture_stderr=True,
            )
        answer = json.loads(child.stdout.decode().strip().splitlines()[-1])
        assert answer == {
            "found": True,
            "sender": "sender@example.org",
            "content": new_message(7).content.decode(),
        }
        # The child's write is visible here, and this process still writes.
        assert spool.aux("control").get(b"seen-by-child") == meta.id
        later = await spool.store(new_message(8))
        assert spool.get(later.id) == later


async def crash_round(spool_dir: Path, rng: random.Random) -> dict[str, tuple[int, int]]:
    """Run the crash writer, SIGKILL it at a random moment; the ids it printed."""
    process = await trio.lowlevel.open_process(
        [sys.executable, str(CHILD), "crash-writer", str(spool_dir), "32"],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    printed: dict[str, tuple[int, int]] = {}
    buffer = bytearray()

    def take(line: bytes) -> None:
        if line.endswith(b"\n"):  # a line cut by the kill is not a confirmed store
            message_id, task, n = line.decode().split()
            printed[message_id] = (int(task), int(n))

    try:
        with trio.fail_after(60):
            take(await read_line(process.stdout, buffer))  # it is storing
        with trio.move_on_after(rng.uniform(0.2, 1.0)):
            while True:
                line = await read_line(process.stdout, buffer)
                if not line:
                    break
                take(line)
        process.kill()  # SIGKILL
        with trio.fail_after(60):
            while line := await read_line(process.stdout, buffer):
                take(line)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
    assert process.returncode == -9
    return printed


async def test_every_acknowledged_store_survives_sigkill(spool_dir: Path) -> None:
    rng = random.Random()
    confirmed: dict[str, tuple[int, int]] = {}
    for _round in range(2):
        confirmed.update(await crash_round(spool_dir, rng))
        async with open_spool(spool_dir) as spool:
            queued = spool.count_queued()
            assert queued >= len(confirmed)
            for message_id, (task, n) in confirmed.items():
                meta = spool.get(message_id)
                assert meta is not None, message_id
                assert meta.recipients[0].address == f"r{n}@example.net"
                assert spool.read_content(message_id) == crash_content(task, n)
            assert len(list(spool.iter_schedule())) == queued
            assert spool.statistics().quarantined == 0
    assert len(confirmed) > 0
