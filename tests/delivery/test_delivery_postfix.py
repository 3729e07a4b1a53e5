"""Postfix as a real destination MX (when installed, as in CI): relay delivers to a
private Postfix smtpd on a loopback port, and Postfix accepts every message."""

from __future__ import annotations

from pathlib import Path

import pytest
from delivery_support import content, make_config, route, running_relay, wait_until

from relay.model import RcptStatus
from relay.testing.postfix import open_postfix, postfix_available

pytestmark = pytest.mark.skipif(
    not postfix_available(), reason="Postfix is not installed (/usr/sbin/postfix) or not root"
)


async def test_postfix_accepts_every_message(tmp_path: Path) -> None:
    messages, per_message = 40, 3
    async with open_postfix() as postfix:
        config = make_config(routes=[route("*", postfix.port, tls="opportunistic")])
        async with running_relay(tmp_path, config) as relay:
            metas = [
                await relay.send(
                    [f"user{i}-{j}@postfix-dest.test" for j in range(per_message)],
                    content(subject=f"message {i}", body="Caf\u00e9\r\n"),
                    body_8bit=True,
                )
                for i in range(messages)
            ]
            await relay.final(*(m.id for m in metas))
            results = [r for m in metas for r in relay.meta(m.id).recipients]
        assert {r.status for r in results} == {RcptStatus.DELIVERED}
        assert all(r.reply.startswith("250 2.0.0 Ok: queued as ") for r in results)
        # Postfix took responsibility for each one and finished with it (discarded).
        await wait_until(lambda: postfix.sent() >= messages * per_message, timeout=60)
        assert postfix.sent() == messages * per_message
