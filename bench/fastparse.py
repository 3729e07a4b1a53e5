"""Throughput of relay.fastparse (compiled and twin) next to two naive baselines.

Sending: DotStuffer fed the message content in chunks, plus finish().
Receiving: DataReader fed the wire form (354 onwards) in chunks up to the end of data.
Baselines, both pure Python:
  * bytes.replace - sending: ``content.replace(b"\\r\\n.", b"\\r\\n..")`` plus the first
    line and the terminator (it assumes the content already has CRLF endings, so it
    does less than DotStuffer); receiving: collect the chunks, ``find`` the end
    marker, then ``replace(b"\\r\\n.", b"\\r\\n")`` (no bare CR/LF or length checks).
  * per-line loop - sending: ``splitlines()`` and a Python loop that doubles dots and
    appends CRLF; receiving: ``split(b"\\r\\n")`` per chunk and a Python loop over the
    lines that strips the dot and stops at ".".
Every implementation's output is checked against the others before timing.

    .venv/bin/python bench/fastparse.py            # 1 MiB and 64 MiB
    .venv/bin/python bench/fastparse.py --quick    # 1 MiB, fewer repetitions
"""

from __future__ import annotations

import argparse
import importlib
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MiB = 1 << 20
WORDS = (
    b"the of and to a in is you that it he was for on are as with his they I at be this "
    b"have from or one had by word but not what all were we when your can said there use "
    b"an each which she do how their if will up other about out many then them these so "
    b"unsubscribe offer newsletter https://example.com/track?id=12345 price order today"
).split()


def make_content(size: int, dot_fraction: float, seed: int) -> bytes:
    """Realistic message text: CRLF lines of up to 76 characters, some starting with '.'."""
    rnd = random.Random(seed)
    block_lines: list[bytes] = []
    total = 0
    while total < min(size, MiB):
        words: list[bytes] = []
        length = 0
        target = rnd.randint(60, 76)
        while True:
            word = rnd.choice(WORDS)
            if length + len(word) + 1 > target:
                break
            words.append(word)
            length += len(word) + 1
        line = b" ".join(words)
        if rnd.random() < dot_fraction:
            line = b"." + line[1:]
        block_lines.append(line + b"\r\n")
        total += len(line) + 2
    block = b"".join(block_lines)
    return (block * (size // len(block) + 1))[: size - size % len(block) or len(block)]


def split(data: bytes, chunk: int) -> list[bytes]:
    return [data[i : i + chunk] for i in range(0, len(data), chunk)]


# --- the baselines ----------------------------------------------------------------------


def stuff_replace(chunks: list[bytes]) -> bytes:
    content = b"".join(chunks)
    wire = content.replace(b"\r\n.", b"\r\n..")
    if wire.startswith(b"."):
        wire = b"." + wire
    return wire + (b".\r\n" if not wire or wire.endswith(b"\r\n") else b"\r\n.\r\n")


def stuff_lines(chunks: list[bytes]) -> bytes:
    out = bytearray()
    for line in b"".join(chunks).splitlines():
        if line.startswith(b"."):
            out += b"."
        out += line
        out += b"\r\n"
    out += b".\r\n"
    return bytes(out)


def unstuff_replace(chunks: list[bytes]) -> bytes:
    buf = bytearray()
    end = -1
    for chunk in chunks:
        start = max(len(buf) - 4, 0)
        buf += chunk
        end = buf.find(b"\r\n.\r\n", start)
        if end >= 0:
            break
    content = bytes(buf[: end + 2]).replace(b"\r\n.", b"\r\n")
    return content[1:] if content.startswith(b".") else content


def unstuff_lines(chunks: list[bytes]) -> bytes:
    out = bytearray()
    pending = b""
    for chunk in chunks:
        lines = (pending + chunk).split(b"\r\n")
        pending = lines.pop()
        for line in lines:
            if line == b".":
                return bytes(out)
            out += line[1:] if line.startswith(b".") else line
            out += b"\r\n"
    return bytes(out)


# --- the implementations ----------------------------------------------------------------


Impl = Callable[[list[bytes]], "bytes | list[bytes]"]

# The two incremental implementations are timed as a stream (each output chunk is
# handed on and dropped, as when writing to a socket) and, for comparison, keeping
# every output chunk in memory (at 64 MiB that is dominated by page faults).


def stuffer(fp: ModuleType, keep: bool = True) -> Impl:
    def run(chunks: list[bytes]) -> list[bytes]:
        s = fp.DotStuffer()
        if not keep:
            for c in chunks:
                s.feed(c)
            return [s.finish()]
        out = [s.feed(c) for c in chunks]
        out.append(s.finish())
        return out

    return run


def reader(fp: ModuleType, keep: bool = True) -> Impl:
    def run(chunks: list[bytes]) -> list[bytes]:
        r = fp.DataReader()
        if not keep:
            for c in chunks:
                r.feed(c)
            out = []
        else:
            out = [r.feed(c) for c in chunks]
        assert r.done and r.error is None
        return out

    return run


def joined(result: bytes | list[bytes]) -> bytes:
    return result if isinstance(result, bytes) else b"".join(result)


def best_time(fn: Impl, chunks: list[bytes], min_time: float) -> tuple[float, int]:
    """The best of at least 3 runs, more until ``min_time`` seconds have been spent."""
    best, spent, runs = float("inf"), 0.0, 0
    while runs < 3 or (spent < min_time and runs < 1000):
        t0 = time.perf_counter()
        fn(chunks)
        elapsed = time.perf_counter() - t0
        best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
    return best, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 MiB only, fewer repetitions")
    parser.add_argument("--chunk", type=int, default=64 * 1024, help="feed size in bytes")
    parser.add_argument("--dots", type=float, default=0.05, help="fraction of lines with '.'")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    py = importlib.import_module("relay._fastparse_py")
    try:
        c: ModuleType | None = importlib.import_module("relay._fastparse")
    except ImportError:
        c = None
    sizes = [MiB] if args.quick else [MiB, 64 * MiB]
    min_time = 0.05 if args.quick else 0.5

    print("relay.fastparse throughput (MB/s = 10^6 bytes of input per second, best of N runs)")
    print(
        f"  python {platform.python_version()} on {platform.machine()};"
        f" compiled module: {'loaded' if c else 'MISSING'}"
    )
    print(
        f"  sizes: {', '.join(f'{s // MiB} MiB' for s in sizes)};"
        f" chunks of {args.chunk} bytes; lines of 60-76 characters + CRLF;"
        f" {args.dots:.0%} of lines start with '.'; seed {args.seed}"
    )
    print(f"  each figure: the best run of at least 3, more until {min_time} s were spent")
    print()

    rows: dict[str, list[float]] = {}
    runs: dict[str, list[int]] = {}
    for size in sizes:
        content = make_content(size, args.dots, args.seed)
        wire = py.dot_stuff(content)
        # (name, what is timed, what is checked: the same but keeping the output)
        sending: list[tuple[str, Impl, Impl]] = [
            ("bytes.replace", stuff_replace, stuff_replace),
            ("per-line loop", stuff_lines, stuff_lines),
            ("twin", stuffer(py, keep=False), stuffer(py)),
        ]
        receiving: list[tuple[str, Impl, Impl]] = [
            ("bytes.replace", unstuff_replace, unstuff_replace),
            ("per-line loop", unstuff_lines, unstuff_lines),
            ("twin", reader(py, keep=False), reader(py)),
        ]
        if c is not None:
            sending.append(("compiled", stuffer(c, keep=False), stuffer(c)))
            sending.append(("compiled, output kept", stuffer(c), stuffer(c)))
            receiving.append(("compiled", reader(c, keep=False), reader(c)))
            receiving.append(("compiled, output kept", reader(c), reader(c)))
        for op, impls, data, expected in (
            ("send", sending, content, wire),
            ("receive", receiving, wire + b"QUIT\r\n", content),
        ):
            chunks = split(data, args.chunk)
            for name, timed, checked in impls:
                assert joined(checked(chunks)) == expected, f"{op} {name}: wrong output"
                seconds, n = best_time(timed, chunks, min_time)
                rows.setdefault(f"{op} {name}", []).append(len(data) / seconds / 1e6)
                runs.setdefault(f"{op} {name}", []).append(n)

    names = ("compiled", "compiled, output kept", "twin", "bytes.replace", "per-line loop")
    pairs = [("compiled", other) for other in ("bytes.replace", "per-line loop", "twin")]
    pairs += [("compiled, output kept", other) for other in ("bytes.replace", "per-line loop")]
    header = "".join(f"{f'{s // MiB} MiB':>14}" for s in sizes)
    for op, title in (("send", "sending: dot-stuffing"), ("receive", "receiving: DATA reader")):
        print(f"{title:<42}{header}   (runs)")
        for name in names:
            if f"{op} {name}" in rows:
                figures = "".join(f"{v:>9.0f} MB/s" for v in rows[f"{op} {name}"])
                print(f"  {name:<40}{figures}   ({', '.join(map(str, runs[f'{op} {name}']))})")
        if c is not None:
            for mine, other in pairs:
                ratios = [
                    a / b for a, b in zip(rows[f"{op} {mine}"], rows[f"{op} {other}"], strict=True)
                ]
                label = f"{mine} / {other}"
                print(f"  {label:<40}" + "".join(f"{r:>13.1f}x" for r in ratios))
        print()


if __name__ == "__main__":
    main()
