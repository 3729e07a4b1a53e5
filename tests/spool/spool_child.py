"""A second process for the spool tests (run as a script, never collected).

    spool_child.py crash-writer PATH TASKS   store from TASKS tasks, print "id task n" per store
    spool_child.py hold-lock PATH MAP_SIZE   hold the write lock until a line arrives on stdin
    spool_child.py read PATH ID              print the message as JSON, then put an aux key

Every mode ends by itself within `SAFETY_SECONDS` (an alarm), whatever the parent does.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lmdb
import trio

from relay.model import NewMessage
from relay.spool import open_spool

SAFETY_SECONDS = 60


def crash_content(task: int, n: int) -> bytes:
    """The content the crash writer stores as message n of task `task`."""
    line = f"X-Task: {task}\r\nX-N: {n}\r\n\r\nmessage {n} of task {task}\r\n".encode()
    return line * 20


async def crash_writer(path: str, tasks: int) -> None:
    async with open_spool(path) as spool:

        async def storer(task: int) -> None:
            for n in range(100_000):
                meta = await spool.store(
                    NewMessage("s@example.org", (f"r{n}@example.net",), crash_content(task, n))
                )
                sys.stdout.write(f"{meta.id} {task} {n}\n")
                sys.stdout.flush()

        async with trio.open_nursery() as nursery:
            for task in range(tasks):
                nursery.start_soon(storer, task)


def hold_lock(path: str, map_size: int) -> None:
    env = lmdb.Environment(path, map_size=map_size, max_dbs=64)
    txn = env.begin(write=True)
    sys.stdout.write("locked\n")
    sys.stdout.flush()
    sys.stdin.readline()
    txn.abort()
    env.close()


async def read(path: str, message_id: str) -> None:
    async with open_spool(path) as spool:
        meta = spool.get(message_id)
        content = spool.read_content(message_id) if meta is not None else b""
        await spool.aux("control").put(b"seen-by-child", message_id)
        result = {
            "found": meta is not None,
            "sender": meta.sender if meta else None,
            "content": content.decode(),
        }
        sys.stdout.write(json.dumps(result) + "\n")


def main() -> None:
    signal.alarm(SAFETY_SECONDS)
    mode, path, *rest = sys.argv[1:]
    if mode == "crash-writer":
        trio.run(crash_writer, path, int(rest[0]))
    elif mode == "hold-lock":
        hold_lock(path, int(rest[0]))
    elif mode == "read":
        trio.run(read, path, rest[0])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
