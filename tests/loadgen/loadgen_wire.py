"""A raw SMTP client for the sink tests: exact bytes out, whole replies in."""

from __future__ import annotations

import ssl

import trio

from relay.fastparse import ReplyReader
from relay.net import connect, start_tls

SAFETY = 10.0  # seconds: only a net against hanging, never a measure

Reply = tuple[int, str | None, list[str]]


class Wire:
    """One connection; `send` writes bytes as given (one write), `reply` reads one reply."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.replies = ReplyReader()
        self.reads = 0

    @classmethod
    async def open(cls, port: int, *, source: str | None = None) -> Wire:
        return cls(await connect("127.0.0.1", port, source=source))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def reply(self) -> Reply:
        with trio.fail_after(SAFETY):
            while (parsed := self.replies.next_reply()) is None:
                data = await self.stream.receive_some()
                if not data:
                    raise EOFError("the server closed the connection")
                self.reads += 1
                self.replies.feed(bytes(data))
        return parsed

    async def codes(self, count: int) -> list[int]:
        return [(await self.reply())[0] for _ in range(count)]

    async def command(self, line: str) -> Reply:
        await self.send(line.encode() + b"\r\n")
        return await self.reply()

    async def starttls(self, context: ssl.SSLContext, hostname: str) -> None:
        assert (await self.command("STARTTLS"))[0] == 220
        self.stream = await start_tls(
            self.stream, context, server_side=False, server_hostname=hostname
        )

    async def at_eof(self) -> bool:
        """True when the server has closed (after any replies were read)."""
        with trio.fail_after(SAFETY):
            return await self.stream.receive_some() == b""

    async def aclose(self) -> None:
        await self.stream.aclose()


def message(bench_id: str, body: str = "hello") -> bytes:
    """A small message with both id header fields, CRLF endings, dot-stuffed, ended."""
    return (
        f"Message-ID: <{bench_id}@bench.test>\r\nX-Bench-Id: {bench_id}\r\n"
        f"Subject: test\r\n\r\n{body}\r\n.\r\n"
    ).encode()


def group(sender: str, recipients: list[str]) -> bytes:
    """MAIL, the RCPTs and DATA as one pipelined write."""
    lines = [f"MAIL FROM:<{sender}>"] + [f"RCPT TO:<{r}>" for r in recipients] + ["DATA"]
    return "".join(f"{line}\r\n" for line in lines).encode()
