"""`relay queue ...` against spool directories, and against a running scheduler."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from click.testing import CliRunner
from scheduler_support import message

import relay
from relay.cli import main
from relay.model import MessageMeta, NewMessage, RcptStatus
from relay.scheduler import ReadyQueue, Scheduler, control
from relay.spool import Spool, open_spool

T = TypeVar("T")


def with_spool(path: Path, action: Callable[[Spool], T]) -> T:
    """Open a spool in a trio run of its own (as a separate relay would) and act on it."""

    async def run() -> T:
        async with open_spool(path, sync=False, map_size=1 << 28) as spool:
            return action(spool)

    return trio.run(run)


def make_spool(path: Path, msgs: Sequence[NewMessage]) -> list[MessageMeta]:
    async def run() -> list[MessageMeta]:
        async with open_spool(path, sync=False, map_size=1 << 28) as spool:
            return await spool.store_many(msgs)

    return trio.run(run)


def queue(*args: str, input: str | None = None) -> Any:
    result = CliRunner().invoke(main, ["queue", *args], input=input)
    return result


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "shard-0"


def test_summary_and_show(shard: Path) -> None:
    metas = make_spool(
        shard,
        [
            message("a@one.example", "b@two.example", tenant="t1"),
            message("c@one.example", tenant="t2", campaign="promo"),
        ],
    )
    result = queue("summary", "--spool", str(shard))
    assert result.exit_code == 0, result.output
    assert "2 messages, 3 recipients" in result.output
    assert "one.example" in result.output and "t2" in result.output

    result = queue("summary", "--spool", str(shard), "--json")
    document = json.loads(result.output)
    assert document["messages"] == 2
    assert document["by_domain"]["one.example"]["messages"] == 2
    assert document["by_state"]["pending"] == 3

    result = queue("show", metas[0].id, "--spool", str(shard))
    assert result.exit_code == 0, result.output
    assert metas[0].id in result.output and "a@one.example  pending" in result.output
    assert "tenant:" in result.output and "t1" in result.output

    result = queue("show", "01HZZZZZZZZZZZZZZZZZZZZZZZ", "--spool", str(shard))
    assert result.exit_code == 1 and "no message" in result.output


def test_suspend_and_resume(shard: Path) -> None:
    make_spool(shard, [message("a@one.example")])
    result = queue(
        "suspend", "--domain", "One.Example", "--reason", "abuse desk", "--spool", str(shard)
    )
    assert result.exit_code == 0, result.output
    result = queue("suspend", "--tenant", "t1", "--for", "2h", "--spool", str(shard))
    assert result.exit_code == 0, result.output
    stored = with_spool(shard, control.read_suspensions)
    assert {(s.kind, s.name) for s in stored} == {("domain", "one.example"), ("tenant", "t1")}
    assert "suspended domain one.example" in queue("summary", "--spool", str(shard)).output

    assert queue("resume", "--domain", "one.example", "--spool", str(shard)).exit_code == 0
    result = queue("resume", "--domain", "one.example", "--spool", str(shard))
    assert "was not suspended" in result.output
    assert queue("suspend", "--spool", str(shard)).exit_code == 2  # neither domain nor tenant
    result = queue("suspend", "--domain", "x", "--tenant", "y", "--spool", str(shard))
    assert result.exit_code == 2
    assert queue("suspend", "--domain", "x", "--for", "soon", "--spool", str(shard)).exit_code == 2


def test_retry_delete_and_bounce(shard: Path) -> None:
    metas = make_spool(
        shard,
        [
            message("a@one.example", send_at=4e9),
            message("b@two.example", campaign="bad"),
            message("c@two.example", campaign="bad"),
            message("d@three.example", "e@four.example"),
        ],
    )
    assert queue("retry", "--spool", str(shard)).exit_code == 2  # no filter, no --all
    result = queue("retry", "--domain", "one.example", "--spool", str(shard))
    assert result.exit_code == 0 and "1 messages due now" in result.output
    requests = with_spool(shard, control.read_requests)
    assert [(r.op, r.ids) for r in requests] == [("refresh", (metas[0].id,))]
    retried = with_spool(shard, lambda spool: spool.get(metas[0].id))
    assert retried is not None and retried.next_attempt < 4e9

    result = queue("delete", "--campaign", "bad", "--spool", str(shard), input="n\n")
    assert result.exit_code == 1  # declined
    result = queue("delete", "--campaign", "bad", "--yes", "--spool", str(shard))
    assert result.exit_code == 0 and "2 messages deleted" in result.output
    assert with_spool(shard, lambda spool: spool.count_queued()) == 2

    result = queue(
        "bounce", "--domain", "three.example", "--reason", "closed", "--yes", "--spool", str(shard)
    )
    assert result.exit_code == 0 and "1 recipients bounced" in result.output
    bounced = with_spool(shard, lambda spool: spool.get(metas[3].id))
    assert bounced is not None
    assert [r.status for r in bounced.recipients] == [RcptStatus.BOUNCED, RcptStatus.PENDING]
    assert bounced.recipients[0].reply.endswith("closed")
    ops = [r.op for r in with_spool(shard, control.read_requests)]
    assert ops.count("bounced") == 1


def test_every_shard_of_a_spool_directory(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    make_spool(root / "shard-0", [message("a@one.example")])
    make_spool(root / "shard-1", [message("b@one.example"), message("c@one.example")])
    (root / "not-a-shard").mkdir()
    result = queue("summary", "--spool", str(root))
    assert result.exit_code == 0, result.output
    assert f"spool {root / 'shard-0'}: 1 messages" in result.output
    assert f"spool {root / 'shard-1'}: 2 messages" in result.output
    result = queue("retry", "--domain", "one.example", "--spool", str(root))
    assert result.output.count("due now") == 2

    result = queue("summary", "--spool", str(root / "not-a-shard"))
    assert result.exit_code == 1 and "no spool found" in result.output


async def test_a_running_scheduler_picks_up_changes_made_by_the_command(shard: Path) -> None:
    # The real thing: `relay queue` in another process, on the spool of a running relay.
    env = {**os.environ, "PYTHONPATH": str(Path(relay.__file__).resolve().parent.parent)}

    async def relay_queue(*args: str) -> None:
        command = [sys.executable, "-m", "relay.cli", "queue", *args, "--spool", str(shard)]
        done = await trio.run_process(command, env=env, capture_stdout=True, capture_stderr=True)
        assert done.returncode == 0, done.stderr

    ready: dict[object, ReadyQueue] = {}
    async with open_spool(shard, sync=False, map_size=1 << 28) as spool:
        [meta] = await spool.store_many([message("a@example.com", send_at=4e9)])
        scheduler = Scheduler(
            spool, refresh_interval=0.05, on_ready_queue=lambda q: ready.update({q.key: q})
        )
        with trio.fail_after(60):  # a safety net only; nothing here is timed
            async with trio.open_nursery() as nursery:
                await scheduler.recover()
                await nursery.start(scheduler.run)

                await relay_queue("suspend", "--domain", "example.com")
                while not scheduler.suspended("example.com", "acme"):
                    await trio.sleep(0.05)

                await relay_queue("resume", "--domain", "example.com")
                await relay_queue("retry", "--id", meta.id)
                while "example.com" not in ready:
                    await trio.sleep(0.05)
                job = await ready["example.com"].get()
                assert job.message_id == meta.id
                nursery.cancel_scope.cancel()
