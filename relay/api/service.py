"""The API service of one shard: Hypercorn's trio worker in the shard's own loop.

The listening sockets are bound by the composition root with SO_REUSEPORT (as
the SMTP listeners: every shard binds the same port and the kernel spreads the
connections) and handed to Hypercorn as ``fd://`` binds -- duplicates of the
descriptors, which Hypercorn owns and closes.  `stop()` starts the drain: /readyz
answers 503 and new sends 503 at once, Hypercorn stops accepting and gives the
requests in progress `grace` seconds; a send already storing finishes anyway (it
is shielded and bounded by the spool's write deadline).

Besides serving, the service runs the idempotency purger, the writer of this
shard's metrics snapshot (relay.api.metrics) and, when the admin API is on
(``api.admin_tokens`` and the shard's `AdminOps`), the sampler of /status.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import ASGIFramework

from relay.api.admin import AdminAuth, AdminOps, AdminSetup
from relay.api.dashboard import StatusBoard
from relay.api.idempotency import IdempotencyStore
from relay.api.keys import ApiKeyStore
from relay.api.metrics import Gauges, MetricsBoard
from relay.api.routes import ApiContext, create_app
from relay.api.status import MessageFinder, register_local
from relay.config import Config, accounts_dir, spool_root
from relay.errors import SpoolError
from relay.events import EventHub
from relay.ingest import Ingest
from relay.log import get_logger
from relay.spool import Spool

_log = get_logger("api")

#: How long a successful spool probe counts for /readyz.
PROBE_TTL = 1.0
PROBE_TIMEOUT = 5.0
PROBE_KEY = b"probe/readyz"  # in the shard spool's "webhooks" table, beside the queue


def socket_address(sock: trio.socket.SocketType) -> tuple[str, int]:
    name = sock.getsockname()
    return str(name[0]), int(name[1])


class ApiService:
    """Serves the HTTP API of one shard (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        shard: int,
        ingest: Ingest,
        spool: Spool,
        accounts: Spool,
        sockets: Sequence[trio.socket.SocketType],
        gauges: Callable[[], Gauges],
        listeners_up: Callable[[], bool],
        hub: EventHub | None = None,
        admin: AdminOps | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._spool = spool
        self._sockets = list(sockets)
        self.addresses = [socket_address(s) for s in self._sockets]
        self._listeners_up = listeners_up
        self._clock = clock
        self.keys = ApiKeyStore(accounts.aux("apikeys"), clock=clock)
        self.idempotency = IdempotencyStore(
            accounts.aux("idempotency"),
            accounts_dir(config) / "idempotency.lock",
            ttl=config.api.idempotency_ttl,
            clock=clock,
        )
        self._unregister = register_local(spool.path, spool)
        self.finder = MessageFinder(spool, spool.path, spool_root(config))
        self.metrics = MetricsBoard(shard, config.data_path / "metrics", gauges, clock=clock)
        self.draining = False
        self._serving = False
        self._stop = trio.Event()
        self.stopped = trio.Event()
        self._probe_ok_until = 0.0
        self.status_board: StatusBoard | None = None
        setup = None
        if admin is not None and config.api.admin_tokens:
            self.status_board = StatusBoard(admin.activity, shard=shard, clock=clock)
            setup = AdminSetup(admin, AdminAuth(config.api.admin_tokens), self.status_board, shard)
        self.context = ApiContext(
            config=config.api,
            ingest=ingest,
            keys=self.keys,
            idempotency=self.idempotency,
            finder=self.finder,
            metrics=self.metrics,
            readiness=self.readiness,
            hub=hub,
            max_age=config.spool.max_age,
            clock=clock,
            draining=lambda: self.draining,
            admin=setup,
        )
        self.app = create_app(self.context)

    def _hypercorn_config(self) -> HypercornConfig:
        hc = HypercornConfig()
        hc.bind = [f"fd://{os.dup(s.fileno())}" for s in self._sockets]
        hc.graceful_timeout = self._config.server.shutdown_grace
        hc.accesslog = None
        hc.errorlog = logging.getLogger("relay.api.hypercorn")
        hc.include_server_header = False
        return hc

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until `stop()` and the drain are over."""
        try:
            hc = self._hypercorn_config()
            for sock in self._sockets:
                sock.close()  # Hypercorn serves the duplicates
            async with trio.open_nursery() as background:
                background.start_soon(self.metrics.run)
                if self.status_board is not None:
                    background.start_soon(self.status_board.run)
                background.start_soon(
                    partial(
                        self.idempotency.run_purger,
                        interval=max(self._config.api.idempotency_ttl / 24, 60.0),
                    )
                )
                async with trio.open_nursery() as http:
                    await http.start(
                        partial(
                            hypercorn_serve,
                            cast(ASGIFramework, self.app),
                            hc,
                            shutdown_trigger=self._stop.wait,
                            mode="asgi",
                        )
                    )
                    self._serving = True
                    _log.info("api.listening", addresses=[f"{h}:{p}" for h, p in self.addresses])
                    task_status.started()
                background.cancel_scope.cancel()
        finally:
            self._serving = False
            self.metrics.remove_snapshot()
            self.finder.close()
            self.idempotency.close()
            self._unregister()
            self.stopped.set()

    def stop(self) -> None:
        """Start draining: /readyz 503, no new sends, Hypercorn stops accepting."""
        self.draining = True
        self._stop.set()

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """(ready, checks): serving, SMTP listeners up, spool writable, not draining."""
        checks = {
            "draining": "yes" if self.draining else "no",
            "http": "ok" if self._serving else "down",
            "listeners": "ok" if self._listeners_up() else "down",
            "spool": await self._probe_spool(),
        }
        ready = not self.draining and all(checks[k] == "ok" for k in ("http", "listeners", "spool"))
        return ready, checks

    async def _probe_spool(self) -> str:
        """A real write (a commit with fsync), at most once per PROBE_TTL."""
        now = time.monotonic()
        if now < self._probe_ok_until:
            return "ok"
        try:
            await self._spool.aux("webhooks").put(PROBE_KEY, self._clock(), timeout=PROBE_TIMEOUT)
        except SpoolError as exc:
            return f"error: {exc}"
        self._probe_ok_until = time.monotonic() + PROBE_TTL
        return "ok"
