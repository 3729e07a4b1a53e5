"""The composition root: one shard of relay under one top nursery.

Theory of operation: a shard opens its spool (its own LMDB environment) and the
accounts environment shared by all shards, reads every queued message back into
the scheduler (recovery) BEFORE it listens, then runs the scheduler, the delivery
engine, the submission listeners, the HTTP API and the webhook senders as tasks
of one nursery; the event hub (relay.events) hears ingest, delivery and bounces
and feeds the durable webhook queue and /metrics.  Signals: SIGHUP reloads the
TLS certificate for new connections and the DKIM keys (a key that cannot be read
leaves the old ones in use); SIGTERM/SIGINT drain: listeners stop accepting at
once (/readyz answers 503), sessions, HTTP requests and delivery transactions
under way get `server.shutdown_grace` seconds to finish, the events of the last
outcomes are committed to the webhook queue, then everything left is cancelled.
Whatever was not delivered is safe in the spool and the next start picks it up.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import trio

from relay.api import (
    Activity,
    AdminFilter,
    ApiService,
    DomainOutcomes,
    Gauges,
    SiteActivity,
    SuspensionKind,
)
from relay.config import ACCOUNTS_MAP_SIZE, Config, accounts_dir, parse_hostport, shard_dir
from relay.delivery import (
    BounceGenerator,
    DeliveryEngine,
    DeliveryEvent,
    Router,
    destination_policy,
    retry_policy,
)
from relay.dkim import DkimSigner, build_signer
from relay.events import EventHub, WebhookService
from relay.ingest import Ingest, IngestLimits
from relay.log import get_logger
from relay.net import MxResolver, TlsCertificateStore, certificate_store, open_listeners
from relay.scheduler import MessageFilter, Scheduler
from relay.scheduler import admin as queue_admin
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
    dkim: DkimSigner | None = None  # None: DKIM not configured
    events: EventHub | None = None
    api: ApiService | None = None  # None: [api] enabled = false
    webhooks: WebhookService | None = None  # None: no [[api.webhooks]]


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
    signer = build_signer(cfg)  # keys load once, before anything opens
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
        accounts = await stack.enter_async_context(
            open_spool(accounts_dir(cfg), map_size=ACCOUNTS_MAP_SIZE)
        )
        users = UserStore(accounts.aux("users"))
        ingest = Ingest(
            spool,
            hostname=cfg.server.hostname,
            limits=IngestLimits(
                max_message_size=cfg.submission.max_message_size,
                max_recipients=cfg.submission.max_recipients,
            ),
            signer=signer,
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
        events = EventHub(spool.get, log_events=cfg.api.log_events)
        webhooks = WebhookService(cfg.api, spool.aux("webhooks")) if cfg.api.webhooks else None
        if webhooks is not None:
            events.subscribe(webhooks.queue)
        outcomes = DomainOutcomes() if cfg.api.admin_tokens else None  # for /status
        delivery = DeliveryEngine(
            cfg, spool, router, bounces=bounces, on_event=_outcome_hook(events, outcomes)
        )
        scheduler = Scheduler(
            spool,
            ready_key=router.ready_key,
            on_ready_queue=delivery.on_ready_queue,
            bounce_hook=events.reporting_bounces(bounces),
            destination=destination_policy(cfg.delivery, shard_count=shards, shard_index=shard),
            retry=retry_policy(cfg.delivery),
            max_rcpt_per_txn=cfg.delivery.max_recipients_per_transaction,
        )
        delivery.attach(scheduler)
        ingest.set_on_stored(events.reporting_stored(scheduler.add))
        recovered = await scheduler.recover()
        log.info(
            "recovered",
            shard=shard,
            messages=recovered,
            seconds=round(time.monotonic() - started, 3),
        )
        submission = SubmissionService(cfg, ingest, users, tls)
        api = None
        if cfg.api.enabled:
            sockets = await open_listeners([parse_hostport(a) for a in cfg.api.listen])
            api = ApiService(
                cfg,
                shard=shard,
                ingest=ingest,
                spool=spool,
                accounts=accounts,
                sockets=[listener.socket for listener in sockets],
                gauges=lambda: _gauges(
                    spool, ingest, scheduler, delivery, submission, events, webhooks
                ),
                listeners_up=lambda: (
                    submission.connection_statistics() is not None
                    and not submission.stopped.is_set()
                ),
                hub=events,
                admin=None
                if outcomes is None
                else _ShardAdmin(spool, scheduler, delivery, outcomes),
            )
        stop_requested = trio.Event()

        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            await nursery.start(delivery.run)
            await nursery.start(submission.serve)
            if webhooks is not None:
                await nursery.start(webhooks.run)
            if api is not None:
                await nursery.start(api.serve)
            if handle_signals:
                nursery.start_soon(_signals, tls, signer, stop_requested)
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
                    dkim=signer,
                    events=events,
                    api=api,
                    webhooks=webhooks,
                )
            )
            await stop_requested.wait()
            grace = cfg.server.shutdown_grace
            log.info("draining", shard=shard, grace=grace)
            deadline = trio.current_time() + grace
            submission.stop(grace)
            if api is not None:
                api.stop()
            await delivery.stop(deadline)
            # Sessions inside a store finish it and get their 250 before we cancel.
            with trio.move_on_at(deadline + 1.0):
                await submission.stopped.wait()
                if api is not None:
                    await api.stopped.wait()
            if webhooks is not None:
                with trio.move_on_after(10.0):  # events of the last outcomes, to the queue
                    await webhooks.close()
            nursery.cancel_scope.cancel()
        log.info("stopped", shard=shard, queued=spool.count_queued())


def _gauges(
    spool: Spool,
    ingest: Ingest,
    scheduler: Scheduler,
    delivery: DeliveryEngine,
    submission: SubmissionService,
    events: EventHub,
    webhooks: WebhookService | None,
) -> Gauges:
    """The shard's figures for /metrics, read from each component's own counters."""
    engine = delivery.statistics()
    return Gauges(
        accepted=ingest.statistics.accepted,
        rejected=ingest.statistics.rejected,
        delivered=engine.delivered,
        deferred=engine.deferred,
        bounced=engine.bounced,
        queue_depth=spool.count_queued(),
        submission_sessions=submission.statistics().active,
        delivery_sessions=engine.sessions,
        site_sessions={str(pool.key): pool.sessions for pool in delivery.pools},
        site_ready_jobs={str(r.key): r.queued for r in scheduler.statistics().ready},
        events={str(name): count for name, count in events.counts.items()},
        webhook_queue_records=webhooks.queued_records() if webhooks is not None else {},
        webhook_posts_failed=webhooks.failed_posts if webhooks is not None else 0,
    )


def _outcome_hook(
    events: EventHub, outcomes: DomainOutcomes | None
) -> Callable[[DeliveryEvent], None]:
    """The delivery engine's `on_event`: the event hub, and the /status figures if on."""
    if outcomes is None:
        return events.outcome

    def report(event: DeliveryEvent) -> None:
        outcomes.note(event)
        events.outcome(event)

    return report


class _ShardAdmin:
    """The admin API's queue operations (relay.api.AdminOps) on this shard.

    The same functions as `relay queue ...` (relay.scheduler.admin), applied to the
    shard's own spool with its live scheduler, so a change takes effect at once.
    """

    def __init__(
        self, spool: Spool, scheduler: Scheduler, delivery: DeliveryEngine, outcomes: DomainOutcomes
    ) -> None:
        self._spool = spool
        self._scheduler = scheduler
        self._delivery = delivery
        self._outcomes = outcomes

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(queue_admin.summary(self._spool))

    async def suspend(
        self, kind: SuspensionKind, name: str, duration: float | None, reason: str
    ) -> dict[str, Any]:
        suspension = await queue_admin.suspend(
            self._spool, kind, name, reason=reason, duration=duration, scheduler=self._scheduler
        )
        return dataclasses.asdict(suspension)

    async def resume(self, kind: SuspensionKind, name: str) -> bool:
        return await queue_admin.resume(self._spool, kind, name, scheduler=self._scheduler)

    async def retry(self, selection: AdminFilter) -> list[str]:
        chosen = MessageFilter(**dataclasses.asdict(selection))
        return await queue_admin.retry_now(self._spool, chosen, scheduler=self._scheduler)

    async def bounce(self, selection: AdminFilter, reason: str, everything: bool) -> int:
        chosen = MessageFilter(**dataclasses.asdict(selection))
        return await queue_admin.bounce(
            self._spool, chosen, reason=reason, everything=everything, scheduler=self._scheduler
        )

    def activity(self) -> Activity:
        engine = self._delivery.statistics()
        sessions = {str(pool.key): pool.sessions for pool in self._delivery.pools}
        ready = {str(r.key): r for r in self._scheduler.statistics().ready}
        sites = []
        for name in sorted(sessions.keys() | ready.keys()):
            r = ready.get(name)
            sites.append(
                SiteActivity(
                    name=name,
                    sessions=sessions.get(name, 0),
                    queued=r.queued if r else 0,
                    window=r.concurrency if r else 0,
                    dead=r.dead if r else False,
                )
            )
        return Activity(
            queued=self._spool.count_queued(),
            delivered=engine.delivered,
            deferred=engine.deferred,
            bounced=engine.bounced,
            sessions=engine.sessions,
            sites=tuple(sites),
            domains=self._outcomes.snapshot(),
        )


async def _signals(tls: TlsCertificateStore, signer: DkimSigner | None, stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                try:
                    tls.reload()
                    log.info("tls_reloaded", generation=tls.generation)
                except Exception as exc:
                    log.error("tls_reload_failed", error=str(exc))
                if signer is not None:
                    try:
                        signer.reload()
                        log.info("dkim_reloaded", domains=len(signer.domains))
                    except Exception as exc:
                        log.error("dkim_reload_failed", error=str(exc))
            else:
                log.info("stop_requested", signal=signal.Signals(signum).name)
                stop.set()
