"""The composition root: one shard of relay under one top nursery.

Theory of operation: a shard opens its spool (its own LMDB environment) and the
accounts environment shared by all shards, reads every queued message back into
the scheduler (recovery) BEFORE it listens, then runs the scheduler, the delivery
engine and the submission listeners as tasks of one nursery.  Signals: SIGHUP
reloads the TLS certificate for new connections; SIGTERM/SIGINT drain: listeners
stop accepting at once, sessions and delivery transactions under way get
`server.shutdown_grace` seconds to finish, then everything left is cancelled.
Whatever was not delivered is safe in the spool and the next start picks it up.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import trio

from relay.config import Config, accounts_dir, shard_dir
from relay.delivery import (
    BounceGenerator,
    DeliveryEngine,
    Router,
    destination_policy,
    retry_policy,
)
from relay.ingest import Ingest, IngestLimits
from relay.log import get_logger
from relay.net import MxResolver, TlsCertificateStore, certificate_store
from relay.scheduler import Scheduler
from relay.spool import Spool, open_spool
from relay.submission import SubmissionService, UserStore

log = get_logger("app")


@dataclass
class Shard:
    """The running parts of one shard (for tests and the operator's tools)."""

    index: int
    config: Config
    spool: Spool
    accounts: Spool
    users: UserStore
    ingest: Ingest
    scheduler: Scheduler
    delivery: DeliveryEngine
    submission: SubmissionService
    tls: TlsCertificateStore
    stop: Callable[[], None]


async def run_shard(
    config: Config,
    *,
    shard: int = 0,
    shards: int = 1,
    task_status: trio.TaskStatus[Shard] = trio.TASK_STATUS_IGNORED,
    handle_signals: bool = True,
    resolver: MxResolver | None = None,
) -> None:
    """Run shard `shard` of `shards` until SIGTERM/SIGINT (or `Shard.stop()`)."""
    cfg = config
    data = cfg.data_path
    data.mkdir(parents=True, exist_ok=True)
    tls = certificate_store(
        cfg.tls.cert_file or None,
        cfg.tls.key_file or None,
        data_dir=data,
        hostname=cfg.server.hostname,
    )
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        spool = await stack.enter_async_context(
            open_spool(
                shard_dir(cfg, shard),
                map_size=cfg.spool.map_size,
                max_age=cfg.spool.max_age,
                completed_ttl=cfg.spool.completed_ttl,
            )
        )
        accounts = await stack.enter_async_context(open_spool(accounts_dir(cfg), map_size=1 << 30))
        users = UserStore(accounts.aux("users"))
        ingest = Ingest(
            spool,
            hostname=cfg.server.hostname,
            limits=IngestLimits(
                max_message_size=cfg.submission.max_message_size,
                max_recipients=cfg.submission.max_recipients,
            ),
            write_timeout=cfg.spool.write_timeout,
        )
        if resolver is None:
            resolver = MxResolver(
                nameservers=list(cfg.delivery.nameservers) or None,
                port=cfg.delivery.dns_port,
                timeout=cfg.delivery.dns_timeout,
            )
        router = Router(cfg, resolver, mx_port=cfg.delivery.mx_port)
        bounces = BounceGenerator(spool, ingest, reporting_mta=cfg.server.hostname)
        delivery = DeliveryEngine(cfg, spool, router, bounces=bounces)
        scheduler = Scheduler(
            spool,
            ready_key=router.ready_key,
            on_ready_queue=delivery.on_ready_queue,
            bounce_hook=bounces,
            destination=destination_policy(cfg.delivery, shard_count=shards, shard_index=shard),
            retry=retry_policy(cfg.delivery),
            max_rcpt_per_txn=cfg.delivery.max_recipients_per_transaction,
        )
        delivery.attach(scheduler)
        ingest.set_on_stored(scheduler.add)
        recovered = await scheduler.recover()
        log.info(
            "recovered",
            shard=shard,
            messages=recovered,
            seconds=round(time.monotonic() - started, 3),
        )
        submission = SubmissionService(cfg, ingest, users, tls)
        stop_requested = trio.Event()

        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            await nursery.start(delivery.run)
            await nursery.start(submission.serve)
            if handle_signals:
                nursery.start_soon(_signals, tls, stop_requested)
            log.info(
                "ready",
                shard=shard,
                shards=shards,
                listeners={
                    k.value: [f"{a.host}:{a.port}" for a in v]
                    for k, v in submission.addresses.items()
                },
                queued=recovered,
            )
            task_status.started(
                Shard(
                    index=shard,
                    config=cfg,
                    spool=spool,
                    accounts=accounts,
                    users=users,
                    ingest=ingest,
                    scheduler=scheduler,
                    delivery=delivery,
                    submission=submission,
                    tls=tls,
                    stop=stop_requested.set,
                )
            )
            await stop_requested.wait()
            grace = cfg.server.shutdown_grace
            log.info("draining", shard=shard, grace=grace)
            deadline = trio.current_time() + grace
            submission.stop(grace)
            await delivery.stop(deadline)
            # Sessions inside a store finish it and get their 250 before we cancel.
            with trio.move_on_at(deadline + 1.0):
                await submission.stopped.wait()
            nursery.cancel_scope.cancel()
        log.info("stopped", shard=shard, queued=spool.count_queued())


async def _signals(tls: TlsCertificateStore, stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                try:
                    tls.reload()
                    log.info("tls_reloaded", generation=tls.generation)
                except Exception as exc:
                    log.error("tls_reload_failed", error=str(exc))
            else:
                log.info("stop_requested", signal=signal.Signals(signum).name)
                stop.set()
