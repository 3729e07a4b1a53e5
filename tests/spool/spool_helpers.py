"""Helpers of the spool tests: messages, polling, a second process holding LMDB's write lock."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from relay.model import NewMessage

CHILD = Path(__file__).resolve().parent / "spool_child.py"
TEST_MAP_SIZE = 64 << 20


def new_message(
    n: int = 0, *, recipients: tuple[str, ...] | None = None, **fields: Any
) -> NewMessage:
    """A small message whose content names `n`."""
    return NewMessage(
        sender="sender@example.org",
        recipients=recipients or (f"user{n}@example.net",),
        content=f"Subject: message {n}\r\n\r\nbody of message {n}\r\n".encode(),
        **fields,
    )


async def read_line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> bytes:
    """One line from `stream` (b"" at end of stream), using `buffer` for leftovers."""
    while b"\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            line = bytes(buffer)
            buffer.clear()
            return line
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line + b"\n"


class WriteLock:
    """Another process holding the environment's LMDB write lock until `release()`.

    `async with hold_write_lock(path) as lock:` -- the spool's writer blocks in
    ``begin(write=True)`` until ``await lock.release()``.
    """

    def __init__(self, process: trio.Process) -> None:
        self._process = process
        self.released = False

    async def release(self) -> None:
        if not self.released:
            self.released = True
            assert self._process.stdin is not None
            await self._process.stdin.send_all(b"\n")
            with trio.fail_after(30):
                await self._process.wait()


@asynccontextmanager
async def hold_write_lock(path: Path, map_size: int = TEST_MAP_SIZE) -> AsyncIterator[WriteLock]:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(CHILD), "hold-lock", str(path), str(map_size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    lock = WriteLock(process)
    try:
        assert process.stdout is not None
        with trio.fail_after(30):
            assert await read_line(process.stdout, bytearray()) == b"locked\n"
        yield lock
        await lock.release()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


async def wait_until(predicate: Callable[[], bool], *, limit: float = 20.0) -> None:
    """Poll `predicate` until true (a safety limit, not a timing assertion)."""
    with trio.fail_after(limit):
        while not predicate():
            await trio.sleep(0.005)
