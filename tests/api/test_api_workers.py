"""`relay serve --workers 2`: two shard processes share the API port (SO_REUSEPORT).

Requests on fresh connections land on either shard; a message is found whichever
shard answers the GET; one Idempotency-Key sent to both shards at once still
stores one message; /metrics from either shard covers both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import trio
from api_support import wait_until

from relay.api.keys import ApiKeyStore
from relay.config import accounts_dir, load_config, shard_dir
from relay.loadgen import SinkConfig, open_sink
from relay.spool import open_spool
from relay.testing.ports import free_port

MESSAGES = 40


def write_config(tmp_path: Path, sink_port: int, api_port: int) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(
        f"""
[server]
hostname = "relay.test"
data_dir = "{tmp_path / "data"}"
workers = 2
shutdown_grace = "5s"
log_json = true
[submission]
listen = ["127.0.0.1:0"]
listen_tls = []
require_tls = false
[api]
listen = ["127.0.0.1:{api_port}"]
[delivery]
nameservers = ["127.0.0.1"]
[[route]]
domain = "*"
host = "127.0.0.1"
port = {sink_port}
tls = "disabled"
"""
    )
    return path


async def fresh(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request on a connection of its own (so the kernel picks a shard each time)."""
    async with httpx.AsyncClient(timeout=30) as c:
        return await c.request(method, url, **kwargs)


async def test_two_shards_share_the_port_the_keys_and_the_lookups(tmp_path: Path) -> None:
    async with open_sink(SinkConfig(host="127.0.0.1", port=0)) as sink:
        api_port = free_port()
        config_path = write_config(tmp_path, sink.port, api_port)
        cfg = load_config(config_path, env={})
        accounts_dir(cfg).mkdir(parents=True)
        async with open_spool(accounts_dir(cfg), map_size=1 << 30) as accounts:
            _key, token = await ApiKeyStore(accounts.aux("apikeys")).create("shop", ["shop.test"])
        log = (tmp_path / "relay.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "serve", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        base = f"http://127.0.0.1:{api_port}"
        auth = {"Authorization": f"Bearer {token}"}
        try:
            metrics = ""

            async def both_shards_up() -> bool:
                nonlocal metrics
                try:
                    metrics = (await fresh("GET", f"{base}/metrics")).text
                except httpx.TransportError:
                    return False
                return 'relay_queue_depth{shard="0"}' in metrics and 'shard="1"' in metrics

            with trio.fail_after(60):
                while not await both_shards_up():
                    assert proc.poll() is None, "relay serve exited early"
                    await trio.sleep(0.1)
            ids = []
            for i in range(MESSAGES):
                doc = {"from": "a@shop.test", "to": f"r{i}@example.test", "text": "t"}
                response = await fresh("POST", f"{base}/v1/messages", json=doc, headers=auth)
                assert response.status_code == 202, response.text
                ids.append(response.json()["messages"][0]["id"])
            shards = set()
            for message_id in ids:
                response = await fresh("GET", f"{base}/v1/messages/{message_id}", headers=auth)
                assert response.status_code == 200, response.text  # whichever shard answers
                shards.add(response.json()["shard"])
            assert shards == {0, 1}  # 2**-39 odds against, were the kernel to pick at random
            answers: list[bytes] = []

            async def keyed() -> None:
                doc = {"from": "a@shop.test", "to": "same@example.test", "text": "once"}
                headers = {**auth, "Idempotency-Key": "across-shards"}
                response = await fresh("POST", f"{base}/v1/messages", json=doc, headers=headers)
                assert response.status_code == 202
                answers.append(response.content)

            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(keyed)
            assert len(set(answers)) == 1
            await wait_until(lambda: sink.statistics().messages >= MESSAGES + 1, timeout=60)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await trio.to_thread.run_sync(proc.wait, 60)
            finally:
                if proc.poll() is None:  # pragma: no cover - only if the drain hangs
                    proc.kill()
                    proc.wait()
                log.close()
    assert proc.returncode == 0
    stored = 0
    for shard in (0, 1):
        async with open_spool(shard_dir(cfg, shard), map_size=cfg.spool.map_size) as spool:
            stats = spool.statistics()
            stored += stats.queued + stats.completed
    assert stored == MESSAGES + 1  # the ten keyed requests stored one message
