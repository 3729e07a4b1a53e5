"""Helpers of the API tests: a whole shard in-process with the API on loopback."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from relay.app import Shard, run_shard
from relay.config import (
    ApiConfig,
    Config,
    DeliveryConfig,
    RouteConfig,
    ServerConfig,
    SubmissionConfig,
)
from relay.loadgen import Sink, SinkConfig, open_sink


def api_config(tmp_path: Path, sink_port: int, **api: Any) -> Config:
    """A shard on loopback (ports chosen by the kernel) routing all mail to the sink."""
    return Config(
        server=ServerConfig(
            hostname="relay.test", data_dir=str(tmp_path / "data"), shutdown_grace=3.0
        ),
        submission=SubmissionConfig(listen=("127.0.0.1:0",), listen_tls=("127.0.0.1:0",)),
        delivery=DeliveryConfig(nameservers=("127.0.0.1",), retry_min=1.0, retry_max=2.0),
        api=ApiConfig(listen=("127.0.0.1:0",), **api),
        routes=(RouteConfig(domain="*", host="127.0.0.1", port=sink_port, tls="disabled"),),
    )


def with_api(cfg: Config, **api: Any) -> Config:
    return dataclasses.replace(cfg, api=dataclasses.replace(cfg.api, **api))


@asynccontextmanager
async def running_shard(cfg: Config) -> AsyncIterator[Shard]:
    """A shard running until the block ends (then drained)."""
    async with trio.open_nursery() as nursery:
        shard: Shard = await nursery.start(partial(run_shard, cfg, handle_signals=False))
        try:
            yield shard
        finally:
            shard.stop()


def base_url(shard: Shard) -> str:
    assert shard.api is not None
    host, port = shard.api.addresses[0]
    return f"http://{host}:{port}"


@asynccontextmanager
async def client(shard: Shard, token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=base_url(shard), headers=headers, timeout=30) as c:
        yield c


async def new_key(
    shard: Shard, tenant: str = "shop", domains: tuple[str, ...] = ("shop.test",), rate: int = 0
) -> str:
    assert shard.api is not None
    _key, token = await shard.api.keys.create(tenant, domains, rate_per_minute=rate)
    return token


async def wait_until(predicate: Any, timeout: float = 30.0, step: float = 0.02) -> None:
    """Poll `predicate()` until true (a safety-net timeout, never a timing assertion)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)


@asynccontextmanager
async def sink_and_shard(
    tmp_path: Path, *, record_content: bool = False, **api: Any
) -> AsyncIterator[tuple[Sink, Shard]]:
    """A fake MX (the sink) and a shard routing everything to it."""
    sink_config = SinkConfig(host="127.0.0.1", port=0, record_content=record_content)
    async with (
        open_sink(sink_config) as sink,
        running_shard(api_config(tmp_path, sink.port, **api)) as shard,
    ):
        yield sink, shard
