# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled hot path of relay.fastparse (same API and results as relay._fastparse_py).

See relay/_fastparse_py.py for the API and the rules; this module mirrors it token
for token, and tests/test_fastparse_differential.py holds the two to that.

Theory of operation (DataReader, DotStuffer): both work on the raw ``const unsigned
char*`` buffer of the input bytes, in two gears.
  * The block fast path (C, below) takes 64 bytes at a time: AVX2 (chosen at run
    time) or SSE2 compares give bit masks of the CR, LF and '.' positions, and a few
    bit operations decide whether the block is plain CRLF text: then it is consumed
    with no per-byte work, its stuffed dots handled by bit position, its line
    lengths and size checked once per block.
  * Anything else (bare CR or LF, the end marker, a limit reached, the last bytes of
    a chunk) drops to the exact per-token loop in Cython, which walks from line
    ending to line ending with ``fp_find_eol`` and decides each token as the twin
    does; after one block it tries the fast path again.
The output goes into one bytes object allocated for the input's size plus a little
(``_first_capacity``), written with ``memcpy`` of runs cut only at stuffed dots,
normalised line endings and the error point, and shrunk in place at the end; when a
run of expanding tokens would not fit, the loop stops, the object is enlarged and
the loop resumes.  No Python object is created per line.  The command-line and
reply readers are not hot: they keep a bytearray scanned with ``memchr`` from a
saved offset.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytes cimport _PyBytes_Resize
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF
from libc.string cimport memchr, memcpy

from relay.errors import (
    BareLineEndingError,
    LineTooLongError,
    MessageTooLargeError,
    ReplyParseError,
)

__all__ = ["DataReader", "DotStuffer", "LineReader", "ReplyReader", "dot_stuff"]

#: A reply with more lines than this is treated as malformed (bounds memory).
MAX_REPLY_LINES = 1000

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif

    /* The first CR or LF in [p, end), or end. */
    static inline const unsigned char *
    fp_find_eol(const unsigned char *p, const unsigned char *end)
    {
    #if defined(__SSE2__)
        const __m128i cr = _mm_set1_epi8(13);
        const __m128i lf = _mm_set1_epi8(10);
        while (end - p >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)p);
            int m = _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, cr),
                                                   _mm_cmpeq_epi8(v, lf)));
            if (m)
                return p + __builtin_ctz((unsigned int)m);
            p += 16;
        }
    #endif
        while (p < end && *p != 13 && *p != 10)
            p++;
        return p;
    }

    /*
     * Block fast paths.  They consume 64-byte blocks of plain CRLF text at once, using
     * bit masks of the CR, LF and '.' positions in the block (bit i = byte i):
     *   - the block is plain when (cr << 1) == lf: every CR is followed by an LF and
     *     every LF preceded by a CR.  A block never splits a CRLF: when its last byte
     *     is a CR the block is 63 bytes long and the CR starts the next one;
     *   - line starts are (lf << 1) | bol, so stuffed dots are dot & line starts;
     *   - lines that end inside a block are shorter than 64 octets, so with a line
     *     limit of at least 64 only the first line of a block needs checking.
     * They stop (returning the start of the block) at anything else: a bare CR or LF,
     * ".\r" at a line start (perhaps the end of data), a limit that may be crossed, or
     * less than 64 bytes left; the exact per-token loop in Cython takes over from there.
     */
    #if defined(__SSE2__) && defined(__GNUC__)
    #include <immintrin.h>
    #define FP_BLOCK_MIN_LINE 64
    #define FP_AVX2 __attribute__((target("avx2,bmi,bmi2,lzcnt,popcnt")))
    #define FP_BODY static inline __attribute__((always_inline))

    static inline uint64_t
    fp_mask16(__m128i v, __m128i c)
    {
        return (uint64_t)(uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v, c));
    }

    /* The number of bits set (few: no hardware popcount assumed). */
    static inline int
    fp_bits(uint64_t m)
    {
        int k = 0;
        for (; m; m &= m - 1)
            k++;
        return k;
    }

    FP_AVX2 static inline void
    fp_masks_avx2(const unsigned char *p, uint64_t *cr, uint64_t *lf, uint64_t *dot)
    {
        const __m256i vcr = _mm256_set1_epi8(13), vlf = _mm256_set1_epi8(10);
        const __m256i vdot = _mm256_set1_epi8(46);
        __m256i v0 = _mm256_loadu_si256((const __m256i *)p);
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(p + 32));
        *cr = (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(v0, vcr))
            | (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(v1, vcr)) << 32;
        *lf = (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(v0, vlf))
            | (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(v1, vlf)) << 32;
        *dot = (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(v0, vdot))
             | (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(v1, vdot)) << 32;
    }

    static inline void
    fp_masks_sse2(const unsigned char *p, uint64_t *cr, uint64_t *lf, uint64_t *dot)
    {
        const __m128i vcr = _mm_set1_epi8(13), vlf = _mm_set1_epi8(10);
        const __m128i vdot = _mm_set1_epi8(46);
        __m128i v0 = _mm_loadu_si128((const __m128i *)p);
        __m128i v1 = _mm_loadu_si128((const __m128i *)(p + 16));
        __m128i v2 = _mm_loadu_si128((const __m128i *)(p + 32));
        __m128i v3 = _mm_loadu_si128((const __m128i *)(p + 48));
        *cr = fp_mask16(v0, vcr) | fp_mask16(v1, vcr) << 16
            | fp_mask16(v2, vcr) << 32 | fp_mask16(v3, vcr) << 48;
        *lf = fp_mask16(v0, vlf) | fp_mask16(v1, vlf) << 16
            | fp_mask16(v2, vlf) << 32 | fp_mask16(v3, vlf) << 48;
        *dot = fp_mask16(v0, vdot) | fp_mask16(v1, vdot) << 16
             | fp_mask16(v2, vdot) << 32 | fp_mask16(v3, vdot) << 48;
    }

    #define fp_masks(avx2, p, cr, lf, dot) \\
        ((avx2) ? fp_masks_avx2(p, cr, lf, dot) : fp_masks_sse2(p, cr, lf, dot))

    /* DATA reader.  o == NULL: no output and no limit checks (after an error). */
    FP_BODY const unsigned char *
    fp_data_blocks_body(int avx2, const unsigned char *p, const unsigned char *end,
                   unsigned char *o, Py_ssize_t *olen, const unsigned char **run,
                   Py_ssize_t *line, Py_ssize_t *size, int *bol,
                   Py_ssize_t max_line, Py_ssize_t max_size)
    {
        Py_ssize_t ln = *line, sz = *size, ol = *olen, nl, nsz;
        const unsigned char *q;
        uint64_t b = (uint64_t)(*bol != 0), cr, lf, dot, stuffed, dot0, nb;
        int len, f, h, i;
        if (o) {  /* copy the pending run: blocks are then copied while they are hot */
            memcpy(o + ol, *run, (size_t)(p - *run));
            ol += p - *run;
        }
        while (end - p >= 64) {
            fp_masks(avx2, p, &cr, &lf, &dot);
            len = 64;
            if (cr >> 63) {
                len = 63;
                cr &= ~(1ULL << 63);
            }
            if ((cr << 1) != lf)
                break;
            stuffed = dot & ((lf << 1) | b);
            if (stuffed) {
                if (stuffed & (cr >> 1))
                    break;
                if ((stuffed >> (len - 1)) && (p + len >= end || p[len] == 13))
                    break;
            }
            dot0 = stuffed & b;  /* the stuffed dot of a line starting at the block */
            if (lf) {
                f = __builtin_ctzll(lf);
                h = 63 - __builtin_clzll(lf);
                if (o && ln + f + 1 - (Py_ssize_t)dot0 > max_line)
                    break;
                nl = len - 1 - h;
                if (h + 1 < len)
                    nl -= (Py_ssize_t)((stuffed >> (h + 1)) & 1);
                nb = (h == len - 1);
            } else {
                nl = ln + len - (Py_ssize_t)dot0;
                if (o && nl > max_line)
                    break;
                nb = 0;
            }
            nsz = sz + len - fp_bits(stuffed);
            if (o) {
                if (nsz > max_size)
                    break;
                if (!stuffed) {
                    /* 64 bytes even when len is 63: o has room for the rest of the
                       input, and the extra byte is overwritten next */
                    memcpy(o + ol, p, 64);
                    ol += len;
                } else {
                    for (q = p; stuffed; stuffed &= stuffed - 1) {
                        i = __builtin_ctzll(stuffed);
                        memcpy(o + ol, q, (size_t)(p + i - q));
                        ol += p + i - q;
                        q = p + i + 1;
                    }
                    memcpy(o + ol, q, (size_t)(p + len - q));
                    ol += p + len - q;
                }
            }
            ln = nl;
            sz = nsz;
            b = nb;
            p += len;
        }
        *line = ln;
        *size = sz;
        if (o) {
            *olen = ol;
            *run = p;
        }
        *bol = (int)b;
        return p;
    }

    /* Dot-stuffer: o has room bytes; each doubled dot needs one more than its input. */
    FP_BODY const unsigned char *
    fp_stuff_blocks_body(int avx2, const unsigned char *p, const unsigned char *end,
                    unsigned char *o, Py_ssize_t *olen, const unsigned char **run,
                    int *bol, Py_ssize_t room)
    {
        Py_ssize_t ol = *olen;
        const unsigned char *r = *run;
        uint64_t b = (uint64_t)(*bol != 0), cr, lf, dot, stuffed;
        int len, i;
        while (end - p >= 64) {
            fp_masks(avx2, p, &cr, &lf, &dot);
            len = 64;
            if (cr >> 63) {
                len = 63;
                cr &= ~(1ULL << 63);
            }
            if ((cr << 1) != lf)
                break;
            stuffed = dot & ((lf << 1) | b);
            if (stuffed) {
                if (ol + (end - r) + fp_bits(stuffed) > room)
                    break;
                while (stuffed) {  /* copy through the dot; the next run starts at it */
                    i = __builtin_ctzll(stuffed);
                    memcpy(o + ol, r, (size_t)(p + i + 1 - r));
                    ol += p + i + 1 - r;
                    r = p + i;
                    stuffed &= stuffed - 1;
                }
            }
            b = (lf >> (len - 1)) & 1;
            p += len;
        }
        *olen = ol;
        *run = r;
        *bol = (int)b;
        return p;
    }

    /* Each fast path compiled twice: for AVX2 (chosen at run time) and for SSE2. */
    static int fp_avx2 = -1;

    static inline int
    fp_use_avx2(void)
    {
        if (fp_avx2 < 0) {
            __builtin_cpu_init();
            fp_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi")
                      && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
        }
        return fp_avx2;
    }

    #define FP_DATA_ARGS const unsigned char *p, const unsigned char *end, \\
        unsigned char *o, Py_ssize_t *olen, const unsigned char **run, \\
        Py_ssize_t *line, Py_ssize_t *size, int *bol, Py_ssize_t max_line, Py_ssize_t max_size
    #define FP_DATA_PASS p, end, o, olen, run, line, size, bol, max_line, max_size
    #define FP_STUFF_ARGS const unsigned char *p, const unsigned char *end, \\
        unsigned char *o, Py_ssize_t *olen, const unsigned char **run, int *bol, Py_ssize_t room
    #define FP_STUFF_PASS p, end, o, olen, run, bol, room

    FP_AVX2 static const unsigned char *
    fp_data_blocks_avx2(FP_DATA_ARGS) { return fp_data_blocks_body(1, FP_DATA_PASS); }
    static const unsigned char *
    fp_data_blocks_sse2(FP_DATA_ARGS) { return fp_data_blocks_body(0, FP_DATA_PASS); }
    FP_AVX2 static const unsigned char *
    fp_stuff_blocks_avx2(FP_STUFF_ARGS) { return fp_stuff_blocks_body(1, FP_STUFF_PASS); }
    static const unsigned char *
    fp_stuff_blocks_sse2(FP_STUFF_ARGS) { return fp_stuff_blocks_body(0, FP_STUFF_PASS); }

    static inline const unsigned char *
    fp_data_blocks(FP_DATA_ARGS)
    {
        return fp_use_avx2() ? fp_data_blocks_avx2(FP_DATA_PASS)
                             : fp_data_blocks_sse2(FP_DATA_PASS);
    }

    static inline const unsigned char *
    fp_stuff_blocks(FP_STUFF_ARGS)
    {
        return fp_use_avx2() ? fp_stuff_blocks_avx2(FP_STUFF_PASS)
                             : fp_stuff_blocks_sse2(FP_STUFF_PASS);
    }
    #else
    #define FP_BLOCK_MIN_LINE PY_SSIZE_T_MAX

    static inline const unsigned char *
    fp_data_blocks(const unsigned char *p, const unsigned char *end,
                   unsigned char *o, Py_ssize_t *olen, const unsigned char **run,
                   Py_ssize_t *line, Py_ssize_t *size, int *bol,
                   Py_ssize_t max_line, Py_ssize_t max_size)
    {
        return p;
    }

    static inline const unsigned char *
    fp_stuff_blocks(const unsigned char *p, const unsigned char *end,
                    unsigned char *o, Py_ssize_t *olen, const unsigned char **run,
                    int *bol, Py_ssize_t room)
    {
        return p;
    }
    #endif
    """
    const Py_ssize_t FP_BLOCK_MIN_LINE
    const unsigned char *fp_find_eol(const unsigned char *p, const unsigned char *end) nogil
    const unsigned char *fp_data_blocks(
        const unsigned char *p, const unsigned char *end,
        unsigned char *o, Py_ssize_t *olen, const unsigned char **run,
        Py_ssize_t *line, Py_ssize_t *size, int *bol,
        Py_ssize_t max_line, Py_ssize_t max_size) nogil
    const unsigned char *fp_stuff_blocks(
        const unsigned char *p, const unsigned char *end,
        unsigned char *o, Py_ssize_t *olen, const unsigned char **run,
        int *bol, Py_ssize_t room) nogil

cdef extern from "Python.h":
    PyObject *_fp_bytes_new "PyBytes_FromStringAndSize"(const char *v, Py_ssize_t n) except NULL
    char *_fp_bytes_data "PyBytes_AS_STRING"(PyObject *o)

cdef enum:
    CR = 13
    LF = 10
    DOT = 46
    SP = 32
    DASH = 45
    ZERO = 48
    NINE = 57

# DataReader error codes (set by the C loop; turned into exceptions afterwards)
cdef enum:
    E_NONE = 0
    E_BARE_CR = 1
    E_BARE_LF = 2
    E_LONG = 3
    E_LARGE = 4

cdef Py_ssize_t SIZE_UNLIMITED = <Py_ssize_t>(((<size_t>-1) >> 1))


cdef inline object _as_bytes(object data):
    return data if type(data) is bytes else bytes(data)


cdef inline Py_ssize_t _first_capacity(Py_ssize_t n):
    """Room for the output of n input bytes that grows by a little (stuffed dots, CRLFs)."""
    return n + (n >> 5) + 64


cdef object _finish(PyObject *raw, Py_ssize_t n):
    """Shrink the bytes object ``raw`` (one reference, owned) to ``n`` bytes and return it."""
    if n == 0:
        Py_DECREF(<object>raw)
        return b""
    _PyBytes_Resize(&raw, n)
    result = <object>raw
    Py_DECREF(result)
    return result


# --- command lines and replies -------------------------------------------------------


cdef class _LineBuffer:
    """Bytes split at LF; the incomplete last line is capped (see the twin)."""

    cdef bytearray _buf
    cdef Py_ssize_t _scan
    cdef Py_ssize_t _tail
    cdef bint _overflow

    def __cinit__(self):
        self._buf = bytearray()

    cdef int _append(self, bytes data, Py_ssize_t limit) except -1:
        cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t start = 0
        cdef Py_ssize_t base, j, size
        cdef const void *hit
        if self._overflow:
            hit = memchr(s, LF, n)
            if hit == NULL:
                return 0
            self._buf += b"\n"
            self._overflow = False
            self._tail = PyByteArray_GET_SIZE(self._buf)
            start = <const unsigned char *>hit - s + 1
        base = PyByteArray_GET_SIZE(self._buf)
        if start < n:
            self._buf += data[start:] if start else data
        j = n - 1
        while j >= start and s[j] != LF:
            j -= 1
        if j >= start:
            self._tail = base + (j - start) + 1
        size = PyByteArray_GET_SIZE(self._buf)
        if size - self._tail >= limit:
            del self._buf[self._tail + limit:]
            self._overflow = True
            size = PyByteArray_GET_SIZE(self._buf)
            if self._scan > size:
                self._scan = size
        return 0

    cdef Py_ssize_t _next_end(self):
        cdef const char *s = PyByteArray_AS_STRING(self._buf)
        cdef Py_ssize_t n = PyByteArray_GET_SIZE(self._buf)
        cdef const void *hit = memchr(s + self._scan, LF, n - self._scan)
        if hit == NULL:
            self._scan = n
            return -1
        self._scan = <const char *>hit - s + 1
        return self._scan

    cdef int _drop(self, Py_ssize_t end) except -1:
        del self._buf[:end]
        self._scan -= end
        self._tail -= end
        return 0

    def take_buffer(self):
        """Return and clear everything buffered and not yet returned."""
        data = bytes(self._buf)
        del self._buf[:]
        self._scan = self._tail = 0
        self._overflow = False
        return data

    @property
    def buffered(self):
        """Number of bytes buffered."""
        return PyByteArray_GET_SIZE(self._buf)


cdef class LineReader(_LineBuffer):
    """Incremental SMTP command-line reader (RFC 5321 4.5.3.1.4, 2.3.8)."""

    cdef public Py_ssize_t max_length

    def __init__(self, Py_ssize_t max_length=512):
        if max_length < 1:
            raise ValueError("max_length must be at least 1")
        self.max_length = max_length

    def feed(self, data):
        """Append received bytes."""
        self._append(_as_bytes(data), self.max_length)

    def next_line(self):
        """The next complete line without its CRLF, or None."""
        cdef Py_ssize_t end = self._next_end()
        cdef const char *s
        if end < 0:
            return None
        s = PyByteArray_AS_STRING(self._buf)
        if end > self.max_length:
            self._drop(end)
            raise LineTooLongError(f"line longer than {self.max_length} octets")
        if end < 2 or s[end - 2] != CR:
            self._drop(end)
            raise BareLineEndingError("line ends in a bare LF")
        if memchr(s, CR, end - 2) != NULL:
            self._drop(end)
            raise BareLineEndingError("line contains a bare CR")
        line = PyBytes_FromStringAndSize(s, end - 2)
        self._drop(end)
        return line


cdef class ReplyReader(_LineBuffer):
    """Incremental SMTP reply parser (RFC 5321 4.2; RFC 3463 enhanced codes)."""

    cdef Py_ssize_t _max
    cdef Py_ssize_t _pos
    cdef int _code
    cdef list _texts

    def __init__(self, Py_ssize_t max_line_length=4096):
        if max_line_length < 1:
            raise ValueError("max_line_length must be at least 1")
        self._max = max_line_length
        self._pos = 0
        self._code = 0
        self._texts = []

    def feed(self, data):
        """Append received bytes."""
        self._append(_as_bytes(data), self._max)

    def take_buffer(self):
        """Return and clear every byte not yet returned as part of a reply."""
        self._pos = 0
        self._texts = []
        return _LineBuffer.take_buffer(self)

    cdef object _fail(self, Py_ssize_t end, str message):
        self._drop(end)
        self._pos = 0
        self._texts = []
        return ReplyParseError(message)

    def next_reply(self):
        """A complete reply as (code, enhanced, texts), or None if incomplete."""
        cdef Py_ssize_t start, end, stop
        cdef const unsigned char *s
        cdef int code
        cdef bint last
        while True:
            start = self._pos
            end = self._next_end()
            if end < 0:
                return None
            self._pos = end
            if end - start > self._max:
                raise self._fail(end, f"reply line longer than {self._max} octets")
            s = <const unsigned char *>PyByteArray_AS_STRING(self._buf) + start
            stop = end - 1 - start
            if stop > 0 and s[stop - 1] == CR:
                stop -= 1
            if (
                stop < 3
                or not (0x32 <= s[0] <= 0x35)
                or not (ZERO <= s[1] <= NINE)
                or not (ZERO <= s[2] <= NINE)
            ):
                raise self._fail(end, "malformed reply code")
            code = (s[0] - ZERO) * 100 + (s[1] - ZERO) * 10 + (s[2] - ZERO)
            last = True
            if stop > 3:
                if s[3] == DASH:
                    last = False
                elif s[3] != SP:
                    raise self._fail(end, "malformed reply separator")
            if self._texts and code != self._code:
                raise self._fail(end, "reply continuation with a different code")
            if len(self._texts) >= MAX_REPLY_LINES:
                raise self._fail(end, f"reply longer than {MAX_REPLY_LINES} lines")
            self._code = code
            if stop > 4:
                self._texts.append(PyBytes_FromStringAndSize(<const char *>s + 4, stop - 4))
            else:
                self._texts.append(b"")
            if last:
                texts = self._texts
                self._drop(end)
                self._pos = 0
                self._texts = []
                return _reply(code, texts)


cdef Py_ssize_t _enhanced_length(int code, bytes first):
    """Length of the RFC 3463 code starting ``first`` (class = code's first digit), or 0."""
    cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(first)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(first)
    cdef Py_ssize_t i = 2, j
    cdef int part
    if n < 5 or code // 100 == 3 or s[0] != ZERO + code // 100 or s[1] != DOT:
        return 0
    for part in range(2):
        j = i
        while j < n and j - i < 4 and ZERO <= s[j] <= NINE:
            j += 1
        if not (1 <= j - i <= 3):
            return 0
        if part == 0:
            if j >= n or s[j] != DOT:
                return 0
            i = j + 1
        elif j == n or s[j] == SP:
            return j
    return 0


cdef tuple _reply(int code, list texts):
    cdef Py_ssize_t k = _enhanced_length(code, texts[0])
    cdef bytes t
    if k == 0:
        return code, None, [t.decode("utf-8", "replace") for t in texts]
    prefix = (<bytes>texts[0])[:k]
    out = []
    for t in texts:
        if t.startswith(prefix) and (PyBytes_GET_SIZE(t) == k or t[k] == SP):
            t = t[k + 1:]
        out.append(t.decode("utf-8", "replace"))
    return code, prefix.decode("ascii"), out


# --- DATA ----------------------------------------------------------------------------


cdef class DataReader:
    """Incremental DATA reader: un-stuffs content, ends only at <CRLF>.<CRLF>."""

    cdef Py_ssize_t _max_size
    cdef Py_ssize_t _max_line
    cdef bint _normalize
    cdef bint _bol
    cdef Py_ssize_t _line
    cdef Py_ssize_t _size
    cdef bytes _hold
    cdef bint _done
    cdef bytearray _trailing
    cdef object _error
    # scratch results of _scan()
    cdef int _err
    cdef Py_ssize_t _stop
    cdef bint _full

    def __init__(self, Py_ssize_t max_size=0, Py_ssize_t max_line_length=1000,
                 bare_line_ending="reject"):
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
        self._bol = True
        self._line = 0
        self._size = 0
        self._hold = b""
        self._done = False
        self._trailing = bytearray()
        self._error = None

    @property
    def done(self):
        """True once <CRLF>.<CRLF> has been consumed."""
        return self._done

    @property
    def trailing(self):
        """Bytes received after the end-of-data marker."""
        return bytes(self._trailing)

    @property
    def error(self):
        """The first problem seen, or None."""
        return self._error

    @property
    def size(self):
        """Un-stuffed content bytes seen so far (counting continues after an error)."""
        return self._size

    def feed(self, data):
        """Consume bytes; return the un-stuffed content they complete."""
        cdef Py_ssize_t n, pos = 0, olen = 0, cap = 0
        cdef PyObject *raw = NULL
        cdef const unsigned char *s
        data = _as_bytes(data)
        if self._done:
            self._trailing += data
            return b""
        if PyBytes_GET_SIZE(self._hold):
            data = self._hold + data
            self._hold = b""
        n = PyBytes_GET_SIZE(data)
        s = <const unsigned char *>PyBytes_AS_STRING(data)
        if self._error is None and n:
            # the output is never longer than the input, except for normalised endings
            cap = _first_capacity(n) if self._normalize else n
            raw = _fp_bytes_new(NULL, cap)
        while True:
            olen += self._scan(
                s + pos, n - pos,
                <unsigned char *>_fp_bytes_data(raw) + olen if raw != NULL else NULL,
                cap - olen,
            )
            pos += self._stop
            if not self._full:
                break
            cap = olen + 2 * (n - pos) + 16
            _PyBytes_Resize(&raw, cap)
        if self._err != E_NONE:
            self._set_error(self._err)
        if self._done:
            self._trailing += data[pos + 3:]
        elif pos < n:
            self._hold = data[pos:]
        if raw == NULL:
            return b""
        return _finish(raw, olen)

    cdef int _set_error(self, int code) except -1:
        if code == E_BARE_CR:
            self._error = BareLineEndingError("bare CR in message data")
        elif code == E_BARE_LF:
            self._error = BareLineEndingError("bare LF in message data")
        elif code == E_LONG:
            self._error = LineTooLongError(f"text line longer than {self._max_line} octets")
        else:
            self._error = MessageTooLargeError(f"message larger than {self._max_size} octets")
        return 0

    cdef Py_ssize_t _scan(self, const unsigned char *s, Py_ssize_t n, unsigned char *o,
                          Py_ssize_t room) noexcept:
        """Consume s[0:n]; write output to o (NULL: none; room bytes); return its length.

        Sets ``_stop`` (where consumption stopped: the end marker, held-back bytes, or a
        normalised line ending that would not fit: then ``_full`` is set and the caller
        calls again with more room), ``_done`` and ``_err`` (a new error, or E_NONE).
        """
        cdef const unsigned char *end = s + n
        cdef const unsigned char *p = s
        cdef const unsigned char *q
        cdef const unsigned char *run = s  # start of the pending output run
        cdef const unsigned char *retry = s  # where the block fast path may try again
        cdef bint emit = o != NULL
        cdef bint blocks = self._max_line >= FP_BLOCK_MIN_LINE
        cdef int bol = self._bol
        cdef bint normalize = self._normalize
        cdef Py_ssize_t line = self._line
        cdef Py_ssize_t size = self._size
        cdef Py_ssize_t max_line = self._max_line
        cdef Py_ssize_t max_size = self._max_size if self._max_size else SIZE_UNLIMITED
        cdef Py_ssize_t olen = 0, k, cut_line, cut_size, cut
        cdef int err = E_NONE
        self._full = False
        while p < end:
            if blocks and p >= retry and end - p >= 64:
                p = fp_data_blocks(p, end, o if emit else NULL, &olen, &run, &line, &size, &bol,
                                   max_line, max_size)
                retry = p + 64  # where it stopped, the exact loop below takes one block
                if p == end:
                    break
            if bol and p[0] == DOT:
                if p + 1 == end or (p + 2 == end and p[1] == CR):
                    break  # undecided: held back
                if p[1] == CR and p[2] == LF:
                    self._done = True
                    break
                if emit:  # a stuffed dot: removed
                    memcpy(o + olen, run, p - run)
                    olen += p - run
                    run = p + 1
                p += 1
                bol = False
            q = fp_find_eol(p, end)
            k = q - p
            if k:
                if emit and (line + k > max_line or size + k > max_size):
                    cut_line = max_line - line if line + k > max_line else k
                    cut_size = max_size - size if size + k > max_size else k
                    if cut_line <= cut_size:
                        cut = cut_line
                        err = E_LONG
                    else:
                        cut = cut_size
                        err = E_LARGE
                    memcpy(o + olen, run, p + cut - run)
                    olen += p + cut - run
                    emit = False
                line += k
                size += k
                bol = False
                p = q
                if q == end:
                    break
            if q[0] == CR:
                if q + 1 == end:
                    break  # a CR at the end: held back
                if q[1] == LF:
                    if emit and (line + 2 > max_line or size + 2 > max_size):
                        err = E_LONG if line + 2 > max_line else E_LARGE
                        memcpy(o + olen, run, q - run)
                        olen += q - run
                        emit = False
                    size += 2
                    line = 0
                    bol = True
                    p = q + 2
                    continue
            # a bare CR or a bare LF
            if emit and normalize and olen + (end - run) + 1 > room:
                # normalising grows the output by one byte, which might not fit: the
                # caller makes room and calls again from here
                self._full = True
                p = q
                break
            if emit:
                memcpy(o + olen, run, q - run)
                olen += q - run
                emit = False
                if not normalize:
                    err = E_BARE_CR if q[0] == CR else E_BARE_LF
                elif line + 1 > max_line:
                    err = E_LONG
                elif size + 2 > max_size:
                    err = E_LARGE
                else:
                    o[olen] = CR
                    o[olen + 1] = LF
                    olen += 2
                    run = q + 1
                    emit = True
            size += 2 if normalize else 1
            line = 0
            bol = False
            p = q + 1
        if emit:
            memcpy(o + olen, run, p - run)
            olen += p - run
        self._stop = p - s
        self._err = err
        self._bol = bol
        self._line = line
        self._size = size
        return olen


# --- sending -------------------------------------------------------------------------


cdef class DotStuffer:
    """Turns message content into SMTP wire form (RFC 5321 4.5.2), in chunks."""

    cdef bint _bol
    cdef bint _cr
    # scratch results of _stuff() and _wire()
    cdef Py_ssize_t _stop
    cdef Py_ssize_t _olen

    def __init__(self):
        self._bol = True
        self._cr = False

    def feed(self, chunk):
        """Return the wire form of ``chunk``."""
        chunk = _as_bytes(chunk)
        if PyBytes_GET_SIZE(chunk) == 0:
            return b""
        cdef PyObject *raw = self._wire(chunk, 0)
        return _finish(raw, self._olen)

    def finish(self):
        """The terminator (``.\\r\\n`` or ``\\r\\n.\\r\\n``); resets the stuffer."""
        term = b".\r\n" if self._bol else b"\r\n.\r\n"
        self._bol = True
        self._cr = False
        return term

    cdef PyObject *_wire(self, bytes chunk, Py_ssize_t reserve) except NULL:
        """A new bytes object (owned reference) holding the wire form of a non-empty
        chunk in its first ``_olen`` bytes, with at least ``reserve`` bytes to spare."""
        cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(chunk)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(chunk)
        cdef Py_ssize_t pos = 0, olen = 0
        cdef Py_ssize_t cap = _first_capacity(n) + reserve
        cdef PyObject *raw = _fp_bytes_new(NULL, cap)
        if self._cr:
            self._cr = False
            if s[0] == LF:  # the CRLF for the CR ending the last chunk is already out
                pos = 1
        while pos < n:
            olen += self._stuff(s + pos, n - pos,
                                <unsigned char *>_fp_bytes_data(raw) + olen,
                                cap - reserve - olen)
            pos += self._stop
            if pos < n:
                cap = olen + 2 * (n - pos) + reserve
                _PyBytes_Resize(&raw, cap)
        self._olen = olen
        return raw

    cdef Py_ssize_t _stuff(self, const unsigned char *s, Py_ssize_t n, unsigned char *o,
                           Py_ssize_t room) noexcept:
        """Write the wire form of s[0:n] to o (room >= n bytes); return its length.

        Sets ``_stop`` to the input consumed: all of it, unless a doubled dot or a new
        CRLF (each one byte longer than its input) might not fit; then the caller calls
        again from there with more room.
        """
        cdef const unsigned char *end = s + n
        cdef const unsigned char *p = s
        cdef const unsigned char *q
        cdef const unsigned char *run = s  # start of the pending output run
        cdef const unsigned char *retry = s  # where the block fast path may try again
        cdef int bol = self._bol
        cdef Py_ssize_t olen = 0
        while p < end:
            if p >= retry and end - p >= 64:
                p = fp_stuff_blocks(p, end, o, &olen, &run, &bol, room)
                retry = p + 64  # where it stopped, the exact loop below takes one block
                if p == end:
                    break
            if bol and p[0] == DOT:
                if olen + (end - run) + 1 > room:
                    break
                # copy through the dot and start the next run at it: the dot is doubled
                memcpy(o + olen, run, p + 1 - run)
                olen += p + 1 - run
                run = p
            q = fp_find_eol(p, end)
            if q != p:
                bol = False
            if q == end:
                p = end
                break
            if q[0] == CR and q + 1 < end and q[1] == LF:
                bol = True
                p = q + 2
                continue
            # a bare CR or LF (or a CR ending the chunk): becomes CRLF
            if olen + (end - run) + 1 > room:
                p = q
                break
            memcpy(o + olen, run, q - run)
            olen += q - run
            o[olen] = CR
            o[olen + 1] = LF
            olen += 2
            bol = True
            if q + 1 == end and q[0] == CR:
                self._cr = True
            p = q + 1
            run = p
        memcpy(o + olen, run, p - run)
        olen += p - run
        self._bol = bol
        self._stop = p - s
        return olen


def dot_stuff(message):
    """The whole message in wire form, terminator included."""
    cdef DotStuffer stuffer = DotStuffer()
    cdef PyObject *raw
    cdef char *o
    message = _as_bytes(message)
    if PyBytes_GET_SIZE(message) == 0:
        return b".\r\n"
    raw = stuffer._wire(message, 5)
    o = _fp_bytes_data(raw) + stuffer._olen
    if stuffer._bol:
        memcpy(o, b".\r\n", 3)
        return _finish(raw, stuffer._olen + 3)
    memcpy(o, b"\r\n.\r\n", 5)
    return _finish(raw, stuffer._olen + 5)
