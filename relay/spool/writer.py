"""The one writer of a spool environment: a dedicated thread doing group commits.

Theory of operation
-------------------
LMDB allows one write transaction per environment at a time, and a write
transaction belongs to the OS thread that began it.  So every write of a spool
goes through one `Writer`: a plain ``threading.Thread`` that owns every write
transaction of the environment for its whole life.

Feeding it costs the trio side one ``SimpleQueue.put`` per operation (C code, no
lock convoy, no trio scheduling): the caller builds a `WriteOp` with its records
already encoded, puts it on the queue and parks its task with
``wait_task_rescheduled``.  The queue itself is unbounded; the bound lives on the
trio side (a semaphore of ``commit_queue`` slots acquired before the put), where
back-pressure belongs.  This gives what a bounded trio memory channel drained by
a trio task would give -- a bound, back-pressure, FIFO order -- without a channel
send, a receive and a hop through a relay task per message (measured: those
trio scheduling steps cost more than the rest of a store's trio side).

The thread blocks on the queue (releasing the GIL).  When an operation arrives it
drains everything else already waiting (up to ``max_batch`` operations and
``max_batch_bytes``), applies them all in ONE write transaction and commits it:
group commit.  While it waits for the disk (``fdatasync`` with the GIL released)
the trio side keeps queueing, so the next batch is as large as the load is
heavy -- 1,000 concurrent storers cost about one commit per batch, not one each.

After the commit it hands the whole batch back to trio with ONE
``TrioToken.run_sync_soon`` call; that callback (in the trio thread) releases the
slots and reschedules the waiting tasks.  One cross-thread wake-up per batch.

Deadlines, not cancellation: a waiter that gives up (its deadline passed -- see
deadlines.py -- or it was cancelled) marks its operation abandoned under
`claim_lock` if the writer has not claimed it yet -- then it is never applied --
and otherwise just stops waiting: a claimed operation commits or fails
atomically with its batch, and nobody mid-transaction is interrupted.

Failures: an operation's own logical error (unknown id, duplicate id, a record it
had to quarantine) fails that operation only.  ``MDB_MAP_FULL`` aborts the
transaction; the writer then retries each operation of the batch in a
transaction of its own, so whatever fits -- above all the operations that free
space -- still commits, and the rest get `SpoolFullError`.  Any other LMDB error
fails the batch with `SpoolIOError`.  The thread itself never dies of them.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable

import lmdb
import trio

from relay.errors import SpoolError, SpoolFullError, SpoolIOError
from relay.log import get_logger
from relay.spool.env import SpoolEnv, translate_error
from relay.spool.operations import WriteOp

_log = get_logger("spool")

# Free space is measured again after this many growing batches, or when the
# estimate falls below 1/8 of the map (and at least this many pages).
_REMEASURE_EVERY = 256
_REMEASURE_MIN_PAGES = 1024


class Writer:
    """The writer thread of one environment and its counters."""

    def __init__(
        self,
        senv: SpoolEnv,
        *,
        token: trio.lowlevel.TrioToken,
        on_done: Callable[[list[WriteOp]], None],
        max_batch: int,
        max_batch_bytes: int,
    ) -> None:
        if max_batch < 1 or max_batch_bytes < 1:
            raise ValueError("max_batch and max_batch_bytes must be positive")
        self._senv = senv
        self._token = token
        self._on_done = on_done
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        self._queue: queue.SimpleQueue[WriteOp | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name=f"spool-writer:{senv.path}", daemon=True
        )
        #: Held by the writer while it claims a batch, and by a waiter giving up.
        self.claim_lock = threading.Lock()
        #: Set if the thread died of a bug: writes then fail at once.
        self.crashed = False
        # Counters, written by the writer thread only.
        self.stored = 0  # messages committed
        self.commits = 0  # committed transactions (each one fsync when sync=True)
        self.batches = 0  # batches taken from the queue
        self.ops = 0  # operations committed
        self.largest_batch = 0
        self.failed_commits = 0  # transactions aborted by an LMDB error
        # Free-space estimate (see _free_pages_estimate).
        self._free_pages: float | None = None
        self._remeasure_below = 0
        self._batches_since_measure = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, op: WriteOp) -> None:
        """Queue an operation (any thread; never blocks)."""
        self._queue.put(op)

    def stop(self) -> None:
        """Ask the thread to finish what is queued, then exit."""
        self._queue.put(None)

    def join(self, timeout: float) -> bool:
        """Wait (blocking) for the thread to exit; whether it did within `timeout`."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # a bug: log it; the finally below still answers everyone
            self.crashed = True
            _log.exception("spool.writer_crashed", path=str(self._senv.path))
        finally:
            self._fail_leftovers()

    def _loop(self) -> None:
        carry: WriteOp | None = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is None:
                return
            batch = [first]
            nbytes = first.nbytes
            stopping = False
            while len(batch) < self._max_batch:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    stopping = True
                    break
                if nbytes + op.nbytes > self._max_batch_bytes:
                    carry = op
                    break
                batch.append(op)
                nbytes += op.nbytes
            self._process(batch)
            if stopping:
                return

    def _process(self, batch: list[WriteOp]) -> None:
        with self.claim_lock:
            live = [op for op in batch if not op.abandoned]
            for op in live:
                op.claimed = True
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(live))
        try:
            if live:
                self._execute(live)
        except Exception as exc:  # a bug in an operation: fail the batch, keep running
            _log.exception("spool.writer_error", path=str(self._senv.path))
            for op in live:
                op.error = SpoolIOError(f"spool writer error: {exc!r}")
        self._notify(self._on_done, batch)

    def _execute(self, ops: list[WriteOp]) -> None:
        try:
            self._commit(ops)
        except lmdb.MapFullError as exc:
            self.failed_commits += 1
            self._senv.env.reader_check()  # a dead process's reader may pin free pages
            if len(ops) == 1:
                ops[0].error = translate_error(exc)
                return
            # Isolate: each operation alone, so whatever fits still commits.
            for op in ops:
                try:
                    self._commit([op])
                except lmdb.Error as single:
                    self.failed_commits += 1
                    op.error = translate_error(single)
        except lmdb.Error as exc:
            self.failed_commits += 1
            _log.error("spool.commit_failed", path=str(self._senv.path), error=str(exc))
            for op in ops:
                op.error = translate_error(exc)

    def _commit(self, ops: list[WriteOp]) -> None:
        senv = self._senv
        txn = senv.env.begin(write=True)
        try:
            budget: float | None = None
            for op in ops:
                op.result = None
                op.error = None
                if op.grows:
                    if budget is None:
                        budget = self._free_pages_estimate(txn)
                    if op.grows > budget:
                        op.error = SpoolFullError(
                            "spool is full: free space is down to the reserve"
                        )
                        continue
                    budget -= op.grows
                try:
                    op.result = op.apply(txn, senv)
                except SpoolError as exc:
                    op.error = exc
        except BaseException:
            txn.abort()
            self._free_pages = None
            raise
        try:
            txn.commit()  # on failure LMDB has already released the transaction
        except BaseException:
            self._free_pages = None
            raise
        if budget is not None:
            self._free_pages = budget
            self._batches_since_measure += 1
        self.commits += 1
        self.ops += len(ops)
        self.stored += sum(op.stored() for op in ops)
        for op in ops:
            op.after_commit()

    def _free_pages_estimate(self, txn: lmdb.Transaction) -> float:
        """Pages new data may still take before reaching the reserve.

        Measured (a stat of every database) when the last figure is low or stale;
        otherwise the last figure less what was added since -- an estimate from
        below, as space freed since is not counted.
        """
        if (
            self._free_pages is None
            or self._free_pages < self._remeasure_below
            or self._batches_since_measure >= _REMEASURE_EVERY
        ):
            senv = self._senv
            map_pages = senv.map_pages()
            self._remeasure_below = max(map_pages // 8, _REMEASURE_MIN_PAGES)
            self._free_pages = float(map_pages - senv.reserve_pages - senv.live_pages(txn))
            self._batches_since_measure = 0
        return self._free_pages

    def _fail_leftovers(self) -> None:
        leftovers: list[WriteOp] = []
        while True:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            if op is not None:
                op.error = SpoolIOError("the spool writer has stopped")
                leftovers.append(op)
        if leftovers:
            self._notify(self._on_done, leftovers)

    def _notify(self, fn: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn, *args)
