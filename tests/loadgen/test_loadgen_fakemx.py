"""relay.testing.fakemx: the sink with the defaults a delivery test wants."""

from __future__ import annotations

from relay.loadgen import Faults, SendConfig, run_send
from relay.testing.fakemx import messages_for, open_fake_mx
from relay.testing.tls import TlsFiles


async def test_fake_mx_records_content_and_offers_starttls(tls_files: TlsFiles) -> None:
    faults = Faults(recipients={"gone@example.test": (550, "5.1.1", "No such user")})
    async with open_fake_mx(tls=tls_files, faults=faults) as mx:
        assert mx.config.starttls and mx.config.hostname == "mx.test"
        report = await run_send(
            SendConfig(
                "127.0.0.1",
                mx.port,
                sessions=1,
                messages=3,
                size=500,
                tls="starttls",
                cafile=tls_files.ca_file,
                tls_hostname="mx.test",
            )
        )
        assert report.accepted == 3
        await mx.wait_for(3)
        [first] = messages_for(mx, "USER0@example.test")
        assert first.tls and first.content is not None and b"X-Bench-Id:" in first.content
        assert messages_for(mx, "gone@example.test") == []
