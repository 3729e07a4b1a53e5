"""The pure-Python twin of relay._fastparse: SMTP line, DATA and reply parsing.

Both implementations export exactly this API, give the same results and raise the
same exception classes (from relay.errors) for every input and every chunking.
Every reader accepts bytes in any chunking; methods take and return ``bytes``.

``LineReader(max_length=512)``
    Command lines (RFC 5321 4.5.3.1.4: 512 octets including CRLF). ``max_length``
    is read/write.  ``feed(data)``; ``next_line()`` returns the next line without
    its CRLF or None, never rescanning bytes already scanned.  A line longer than
    max_length is dropped as it arrives (at most max_length bytes of it are held)
    and raises LineTooLongError once its LF has been consumed.  A bare LF, or a CR
    not followed by LF, consumes the whole line and raises BareLineEndingError.
    ``take_buffer()`` returns and clears every byte not yet returned as a line;
    ``buffered`` counts them.

``DataReader(max_size=0, max_line_length=1000, bare_line_ending="reject")``
    The bytes after ``354``.  ``feed(data)`` returns the un-stuffed content the
    bytes complete (CRLF endings; a leading "." removed).  The end of data is ONLY
    <CRLF>.<CRLF> (RFC 5321 4.1.1.4, 4.5.2); the DATA command's CRLF counts, so the
    reader starts at a line start, and only a real CRLF makes one: ``\\n.\\n``,
    ``\\r.\\r``, ``\\r\\n.\\n`` ... never end the data (SMTP smuggling).  Bare CR/LF
    (RFC 5321 2.3.8): "reject" sets ``error`` to BareLineEndingError; "normalize"
    outputs CRLF, but the position after it is no line start.  A line over
    max_line_length octets as received, CRLF included and the stuffed dot not
    (RFC 5321 4.5.3.1.6), sets LineTooLongError; content over max_size (0:
    unlimited) MessageTooLargeError.
    After the first error feed returns b"" but keeps consuming to the real end.
    Properties: ``done``, ``trailing`` (bytes after the end marker; later feeds
    append to it), ``error``, ``size`` (content bytes, counted after errors too).

``DotStuffer()`` / ``dot_stuff(message)``
    Wire form for sending: every CRLF, bare LF and bare CR becomes CRLF and a "."
    starting a line is doubled, in chunks (a chunk ending in CR emits CRLF and
    swallows an LF starting the next).  ``finish()`` returns ``.\\r\\n`` at a line
    start (or when empty), else ``\\r\\n.\\r\\n``, and resets.  ``dot_stuff(m) ==
    DotStuffer().feed(m) + finish()``.

``ReplyReader(max_line_length=4096)``
    SMTP replies (RFC 5321 4.2) with enhanced status codes (RFC 3463, RFC 2034).
    ``next_reply()`` returns ``(code, enhanced, texts)`` for a complete reply or
    None.  Lines end in CRLF (a bare LF is accepted).  ``enhanced`` is "C.S.D" when
    the first line's text starts with one whose class equals the code's first
    digit; that prefix (and one space) is stripped from every line carrying it.
    Malformed lines, continuations with a different code, lines over
    max_line_length and replies over 1000 lines raise ReplyParseError (the
    offending line and the reply so far are consumed).  ``take_buffer()`` returns
    and clears every byte not yet returned as part of a reply.

Theory of operation (DataReader): the content is a sequence of tokens: ordinary
bytes, CRLF, bare CR or LF, a stuffed dot at a line start, and the end marker.
Each token is decided as soon as its bytes are present (at most ``.\\r`` or
``\\r`` is held back).  Errors are found at the first offending token (at one
token a bare ending beats line length, which beats size); its output and all
output after it are suppressed, so the concatenated output, ``error``, ``size``
and ``trailing`` never depend on the chunking.  Output is produced as slices of
the input between "cuts" (stuffed dots, normalised endings, the error point).
"""

from __future__ import annotations

from relay.errors import (
    BareLineEndingError,
    LineTooLongError,
    MessageTooLargeError,
    ParseError,
    ReplyParseError,
)

__all__ = ["DataReader", "DotStuffer", "LineReader", "ReplyReader", "dot_stuff"]

_CR = 0x0D
_LF = 0x0A
_DOT = 0x2E
_SP = 0x20
_DASH = 0x2D
_ZERO = 0x30
_NINE = 0x39

#: A reply with more lines than this is treated as malformed (bounds memory).
MAX_REPLY_LINES = 1000


def _as_bytes(data: bytes) -> bytes:
    return data if type(data) is bytes else bytes(data)


class _LineBuffer:
    """Bytes split at LF; the incomplete last line is capped at ``limit`` bytes.

    ``_tail`` is the offset where the incomplete last line starts; once it reaches
    ``limit`` bytes without an LF the line is certainly too long: it is truncated to
    ``limit`` bytes and the rest is dropped up to its LF, after which a lone LF is
    appended, so the line (``limit + 1`` bytes) is reported as too long.
    """

    __slots__ = ("_buf", "_overflow", "_scan", "_tail")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan = 0  # no LF in _buf[:_scan] beyond the lines already found
        self._tail = 0
        self._overflow = False

    def _append(self, data: bytes, limit: int) -> None:
        buf = self._buf
        if self._overflow:
            i = data.find(b"\n")
            if i < 0:
                return
            buf += b"\n"
            self._overflow = False
            self._tail = len(buf)
            data = data[i + 1 :]
        base = len(buf)
        buf += data
        j = data.rfind(b"\n")
        if j >= 0:
            self._tail = base + j + 1
        if len(buf) - self._tail >= limit:
            del buf[self._tail + limit :]
            self._overflow = True
            if self._scan > len(buf):
                self._scan = len(buf)

    def _next_end(self) -> int:
        """Offset just past the next LF at or after the scan offset, or -1."""
        i = self._buf.find(b"\n", self._scan)
        if i < 0:
            self._scan = len(self._buf)
            return -1
        self._scan = i + 1
        return i + 1

    def _drop(self, end: int) -> None:
        del self._buf[:end]
        self._scan -= end
        self._tail -= end

    def take_buffer(self) -> bytes:
        """Return and clear everything buffered and not yet returned."""
        data = bytes(self._buf)
        self._buf.clear()
        self._scan = self._tail = 0
        self._overflow = False
        return data

    @property
    def buffered(self) -> int:
        """Number of bytes buffered."""
        return len(self._buf)


class LineReader(_LineBuffer):
    """Incremental SMTP command-line reader (RFC 5321 4.5.3.1.4, 2.3.8)."""

    __slots__ = ("max_length",)

    def __init__(self, max_length: int = 512) -> None:
        if max_length < 1:
            raise ValueError("max_length must be at least 1")
        super().__init__()
        self.max_length = max_length

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._append(_as_bytes(data), self.max_length)

    def next_line(self) -> bytes | None:
        """The next complete line without its CRLF, or None."""
        end = self._next_end()
        if end < 0:
            return None
        buf = self._buf
        if end > self.max_length:
            self._drop(end)
            raise LineTooLongError(f"line longer than {self.max_length} octets")
        if end < 2 or buf[end - 2] != _CR:
            self._drop(end)
            raise BareLineEndingError("line ends in a bare LF")
        if buf.find(b"\r", 0, end - 2) >= 0:
            self._drop(end)
            raise BareLineEndingError("line contains a bare CR")
        line = bytes(buf[: end - 2])
        self._drop(end)
        return line


class ReplyReader(_LineBuffer):
    """Incremental SMTP reply parser (RFC 5321 4.2; RFC 3463 enhanced codes)."""

    __slots__ = ("_code", "_max", "_pos", "_texts")

    def __init__(self, max_line_length: int = 4096) -> None:
        if max_line_length < 1:
            raise ValueError("max_line_length must be at least 1")
        super().__init__()
        self._max = max_line_length
        self._pos = 0  # bytes of _buf already parsed into the pending reply
        self._code = 0
        self._texts: list[bytes] = []

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._append(_as_bytes(data), self._max)

    def take_buffer(self) -> bytes:
        """Return and clear every byte not yet returned as part of a reply."""
        self._pos = 0
        self._texts = []
        return super().take_buffer()

    def _fail(self, end: int, message: str) -> ReplyParseError:
        self._drop(end)
        self._pos = 0
        self._texts = []
        return ReplyParseError(message)

    def next_reply(self) -> tuple[int, str | None, list[str]] | None:
        """A complete reply as (code, enhanced, texts), or None if incomplete."""
        buf = self._buf
        while True:
            start = self._pos
            end = self._next_end()
            if end < 0:
                return None
            self._pos = end
            if end - start > self._max:
                raise self._fail(end, f"reply line longer than {self._max} octets")
            stop = end - 1
            if stop > start and buf[stop - 1] == _CR:
                stop -= 1
            if (
                stop - start < 3
                or not 0x32 <= buf[start] <= 0x35
                or not _ZERO <= buf[start + 1] <= _NINE
                or not _ZERO <= buf[start + 2] <= _NINE
            ):
                raise self._fail(end, "malformed reply code")
            code = (
                (buf[start] - _ZERO) * 100 + (buf[start + 1] - _ZERO) * 10 + buf[start + 2] - _ZERO
            )
            last = True
            if stop - start > 3:
                sep = buf[start + 3]
                if sep == _DASH:
                    last = False
                elif sep != _SP:
                    raise self._fail(end, "malformed reply separator")
            if self._texts and code != self._code:
                raise self._fail(end, "reply continuation with a different code")
            if len(self._texts) >= MAX_REPLY_LINES:
                raise self._fail(end, f"reply longer than {MAX_REPLY_LINES} lines")
            self._code = code
            self._texts.append(bytes(buf[start + 4 : stop]))
            if last:
                texts = self._texts
                self._drop(end)
                self._pos = 0
                self._texts = []
                enhanced, decoded = _enhanced(code, texts)
                return code, enhanced, decoded


def _enhanced(code: int, texts: list[bytes]) -> tuple[str | None, list[str]]:
    """Split an RFC 3463 enhanced status code off the texts of a reply."""
    first = texts[0]
    n = len(first)
    enhanced: bytes | None = None
    if n >= 5 and code // 100 != 3 and first[0] == _ZERO + code // 100 and first[1] == _DOT:
        i = 2
        for part in range(2):
            j = i
            while j < n and j - i < 4 and _ZERO <= first[j] <= _NINE:
                j += 1
            if not 1 <= j - i <= 3:
                break
            if part == 0:
                if j >= n or first[j] != _DOT:
                    break
                i = j + 1
            elif j == n or first[j] == _SP:
                enhanced = first[:j]
    if enhanced is None:
        return None, [t.decode("utf-8", "replace") for t in texts]
    k = len(enhanced)
    out = []
    for t in texts:
        if t.startswith(enhanced) and (len(t) == k or t[k] == _SP):
            t = t[k + 1 :]
        out.append(t.decode("utf-8", "replace"))
    return enhanced.decode("ascii"), out


class DataReader:
    """Incremental DATA reader: un-stuffs content, ends only at <CRLF>.<CRLF>."""

    __slots__ = (
        "_bol",
        "_done",
        "_error",
        "_hold",
        "_line",
        "_max_line",
        "_max_size",
        "_normalize",
        "_size",
        "_trailing",
    )

    def __init__(
        self, max_size: int = 0, max_line_length: int = 1000, bare_line_ending: str = "reject"
    ) -> None:
        if bare_line_ending not in ("reject", "normalize"):
            raise ValueError(
                f"bare_line_ending must be 'reject' or 'normalize', not {bare_line_ending!r}"
            )
        if max_size < 0:
            raise ValueError("max_size must be 0 (unlimited) or positive")
        if max_line_length < 1:
            raise ValueError("max_line_length must be at least 1")
        self._max_size = max_size
        self._max_line = max_line_length
        self._normalize = bare_line_ending == "normalize"
        self._bol = True  # at a line start: after a real CRLF, or the very start
        self._line = 0  # octets of the current line so far (a stuffed dot not counted)
        self._size = 0
        self._hold = b""
        self._done = False
        self._trailing = bytearray()
        self._error: ParseError | None = None

    @property
    def done(self) -> bool:
        """True once <CRLF>.<CRLF> has been consumed."""
        return self._done

    @property
    def trailing(self) -> bytes:
        """Bytes received after the end-of-data marker."""
        return bytes(self._trailing)

    @property
    def error(self) -> ParseError | None:
        """The first problem seen, or None."""
        return self._error

    @property
    def size(self) -> int:
        """Un-stuffed content bytes seen so far (counting continues after an error)."""
        return self._size

    def _too_long(self) -> LineTooLongError:
        return LineTooLongError(f"text line longer than {self._max_line} octets")

    def _too_large(self) -> MessageTooLargeError:
        return MessageTooLargeError(f"message larger than {self._max_size} octets")

    def feed(self, data: bytes) -> bytes:
        """Consume bytes; return the un-stuffed content they complete."""
        data = _as_bytes(data)
        if self._done:
            self._trailing += data
            return b""
        if self._hold:
            data = self._hold + data
            self._hold = b""
        n = len(data)
        out: list[bytes] = []
        run = -1 if self._error is not None else 0  # start of the pending output slice
        bol, line, size = self._bol, self._line, self._size
        max_line, max_size, normalize = self._max_line, self._max_size, self._normalize
        next_cr = next_lf = -1
        pos = 0
        while pos < n:
            if bol and data[pos] == _DOT:
                if pos + 1 == n or (pos + 2 == n and data[pos + 1] == _CR):
                    break  # undecided: held back
                if data[pos + 1] == _CR and data[pos + 2] == _LF:
                    self._done = True
                    break
                if run >= 0:  # a stuffed dot: removed
                    if pos > run:
                        out.append(data[run:pos])
                    run = pos + 1
                pos += 1
                bol = False
                continue
            if next_lf < pos:
                next_lf = data.find(b"\n", pos)
                if next_lf < 0:
                    next_lf = n
            if next_cr < pos:
                next_cr = data.find(b"\r", pos)
                if next_cr < 0:
                    next_cr = n
            i = next_cr if next_cr < next_lf else next_lf
            k = i - pos
            if k:
                if run >= 0 and (line + k > max_line or (max_size and size + k > max_size)):
                    cut_line = max_line - line if line + k > max_line else k
                    cut_size = max_size - size if max_size and size + k > max_size else k
                    cut = cut_line if cut_line <= cut_size else cut_size
                    self._error = self._too_long() if cut_line <= cut_size else self._too_large()
                    if pos + cut > run:
                        out.append(data[run : pos + cut])
                    run = -1
                line += k
                size += k
                bol = False
                pos = i
                if i == n:
                    break
            if data[i] == _CR:
                if i + 1 == n:
                    break  # a CR at the end: held back
                if data[i + 1] == _LF:
                    if run >= 0 and (line + 2 > max_line or (max_size and size + 2 > max_size)):
                        self._error = self._too_long() if line + 2 > max_line else self._too_large()
                        if i > run:
                            out.append(data[run:i])
                        run = -1
                    size += 2
                    line = 0
                    bol = True
                    pos = i + 2
                    continue
            # a bare CR or a bare LF
            if run >= 0:
                if i > run:
                    out.append(data[run:i])
                run = -1
                if not normalize:
                    what = "CR" if data[i] == _CR else "LF"
                    self._error = BareLineEndingError(f"bare {what} in message data")
                elif line + 1 > max_line:
                    self._error = self._too_long()
                elif max_size and size + 2 > max_size:
                    self._error = self._too_large()
                else:
                    out.append(b"\r\n")
                    run = i + 1
            size += 2 if normalize else 1
            line = 0
            bol = False
            pos = i + 1
        if run >= 0 and pos > run:
            out.append(data[run:pos])
        if self._done:
            self._trailing += data[pos + 3 :]
        elif pos < n:
            self._hold = data[pos:]
        self._bol, self._line, self._size = bol, line, size
        return b"".join(out)


class DotStuffer:
    """Turns message content into SMTP wire form (RFC 5321 4.5.2), in chunks."""

    __slots__ = ("_bol", "_cr")

    def __init__(self) -> None:
        self._bol = True  # the output so far ends at a line start
        self._cr = False  # the last chunk ended in CR (its CRLF is already out)

    def feed(self, chunk: bytes) -> bytes:
        """Return the wire form of ``chunk``."""
        chunk = _as_bytes(chunk)
        if self._cr and chunk:
            self._cr = False
            if chunk[0] == _LF:
                chunk = chunk[1:]
        if not chunk:
            return b""
        ends_cr = chunk[-1] == _CR
        crlf = chunk.count(b"\r\n")
        if chunk.count(b"\r") != crlf or chunk.count(b"\n") != crlf:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        out = chunk.replace(b"\r\n.", b"\r\n..")
        if self._bol and chunk[0] == _DOT:
            out = b"." + out
        self._bol = out.endswith(b"\r\n")
        self._cr = ends_cr
        return out

    def finish(self) -> bytes:
        """The terminator (``.\\r\\n`` or ``\\r\\n.\\r\\n``); resets the stuffer."""
        term = b".\r\n" if self._bol else b"\r\n.\r\n"
        self._bol = True
        self._cr = False
        return term


def dot_stuff(message: bytes) -> bytes:
    """The whole message in wire form, terminator included."""
    stuffer = DotStuffer()
    return stuffer.feed(message) + stuffer.finish()
