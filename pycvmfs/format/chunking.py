"""The CernVM-FS xor32 content-defined chunker: which byte offsets start a new chunk.

Pure (bytes in, offsets out; no files, no threads) so the publisher can feed it whatever
it reads, and numpy-vectorised because a per-byte Python loop over a multi-GiB file takes
minutes: the 32-byte rolling value is computed for a whole slice at once, only the rare
positions whose value falls in the magic band are walked in Python.

Algorithm (matches the reference cut marks byte for byte):

* ``W(p) = XOR_{j=0..31} (data[p-j] << j)`` truncated to 32 bits, i.e. the rolling update
  ``x = ((x << 1) ^ byte) & 0xFFFFFFFF`` run from offset 0 of the file;
* from chunk start ``c``, the first ``p`` in ``[c+min, c+max)`` (and ``p < size``) with
  ``abs(W(p) - 0x7FFFFFFF) < 0xFFFFFFFF // avg`` starts the next chunk; without one, a
  hard cut at ``c+max`` if the file is longer; the last chunk runs to EOF.

Files of at most ``min`` bytes are never cut; a single piece means "store unchunked".
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DEFAULT_MIN_CHUNK_BYTES = 4 * 1024 * 1024
DEFAULT_AVG_CHUNK_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_CHUNK_BYTES = 16 * 1024 * 1024

MAGIC = 0x7FFFFFFF
WINDOW = 32  # bytes that influence W(p)
_HISTORY = WINDOW - 1  # bytes before a slice needed to compute W over it
_SLICE = 1 << 18  # elements per vectorised slice: 1 MiB of uint32, stays in cache
_U32_MAX = 0xFFFFFFFF

BytesLike = bytes | bytearray | memoryview | npt.NDArray[np.uint8]

_SIZE_RE = re.compile(r"^\s*(\d+)\s*(k|kib|m|mib)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "k": 1024, "kib": 1024, "m": 1024 * 1024, "mib": 1024 * 1024}


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """Chunk size bounds in bytes: ``0 < min <= avg <= max``, ``min >= 32``."""

    min_size: int
    avg_size: int
    max_size: int

    def __post_init__(self) -> None:
        for name in ("min_size", "avg_size", "max_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"ChunkParams.{name} must be an int, got {value!r}")
        if self.min_size < WINDOW:
            raise ValueError(f"minimal chunk size must be at least {WINDOW} bytes")
        if not self.min_size <= self.avg_size <= self.max_size:
            raise ValueError(
                "chunk sizes must satisfy min <= avg <= max, got "
                f"{self.min_size},{self.avg_size},{self.max_size}"
            )
        if self.avg_size > _U32_MAX:
            raise ValueError("average chunk size must be below 4 GiB")

    @property
    def threshold(self) -> int:
        """``T``: a position is a cut candidate when ``abs(W - MAGIC) < T``."""
        return _U32_MAX // self.avg_size

    @classmethod
    def parse(cls, text: str) -> ChunkParams:
        """Parse ``"MIN,AVG,MAX"`` in bytes; each may carry a K/KiB or M/MiB suffix."""
        parts = text.split(",")
        if len(parts) != 3:
            raise ValueError(f"chunk sizes must be 'MIN,AVG,MAX', got {text!r}")
        sizes = []
        for part in parts:
            match = _SIZE_RE.match(part)
            if match is None:
                raise ValueError(
                    f"bad chunk size {part.strip()!r} in {text!r}: "
                    "expected a byte count with optional K or M suffix"
                )
            unit = match.group(2).lower() if match.group(2) else None
            sizes.append(int(match.group(1)) * _UNITS[unit])
        return cls(*sizes)

    def __str__(self) -> str:
        return f"{self.min_size},{self.avg_size},{self.max_size}"


DEFAULT_CHUNK_PARAMS = ChunkParams(
    DEFAULT_MIN_CHUNK_BYTES, DEFAULT_AVG_CHUNK_BYTES, DEFAULT_MAX_CHUNK_BYTES
)


def _as_uint8(data: BytesLike) -> npt.NDArray[np.uint8]:
    """A flat uint8 view of ``data`` (no copy for contiguous buffers)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise TypeError(f"expected a uint8 array, got dtype {data.dtype}")
        return data.reshape(-1)
    return np.frombuffer(data, dtype=np.uint8)


def _window_hits(
    history: npt.NDArray[np.uint8], block: npt.NDArray[np.uint8], params: ChunkParams
) -> npt.NDArray[np.intp]:
    """Indices ``i`` into ``block`` where ``abs(W - MAGIC) < T`` or ``W == 0xFFFFFFFF``.

    The second case is the reference's: it computes ``abs(int32(W) - MAGIC)`` in wrapping
    32-bit arithmetic, which for ``W == 0xFFFFFFFF`` is ``abs(INT32_MIN)``, still negative,
    hence "below" every threshold (checked against the reference chunk detector built
    from source: it is the only value of W where the two formulations differ).

    ``history`` holds the (at most 31) bytes preceding ``block``; fewer only at file start,
    where missing bytes count as zero. Works in slices so temporaries stay small.
    """
    threshold = params.threshold
    lo = np.uint32(MAGIC - threshold + 1)  # band [lo, lo + width) == |W - MAGIC| < T
    width = np.uint32(2 * threshold - 1)
    all_ones = np.uint32((0xFFFFFFFF - int(lo)) & 0xFFFFFFFF)  # W == 0xFFFFFFFF after the shift
    cap = min(len(block), _SLICE) + _HISTORY
    x = np.empty(cap, dtype=np.uint32)
    tmp = np.empty(cap, dtype=np.uint32)
    found = []
    for start in range(0, len(block), _SLICE):
        before = history if start == 0 else block[start - _HISTORY : start]
        piece = block[start : start + _SLICE]
        h, n = len(before), len(before) + len(piece)
        x[:h] = before
        x[h:n] = piece
        # Doubling: A_2m(p) = A_m(p) ^ (A_m(p-m) << m), A_1(p) = data[p], W = A_32.
        for m in (1, 2, 4, 8, 16):
            if m >= n:
                break
            np.left_shift(x[: n - m], m, out=tmp[: n - m])
            np.bitwise_xor(x[m:n], tmp[: n - m], out=x[m:n])
        w = x[h:n]
        np.subtract(w, lo, out=w)  # wraps modulo 2**32 by design
        found.append(np.flatnonzero((w < width) | (w == all_ones)) + start)
    if not found:
        return np.empty(0, dtype=np.intp)
    return np.concatenate(found)


class StreamingChunker:
    """Incremental :func:`cut_points` for data arriving block by block.

    Keeps only the last 31 bytes and the pending candidate offsets, so memory does not
    grow with the file. Gives the same cuts as :func:`cut_points` for any block split.
    """

    def __init__(self, params: ChunkParams = DEFAULT_CHUNK_PARAMS) -> None:
        self._params = params
        self._history = np.empty(0, dtype=np.uint8)
        self._fed = 0
        self._last_cut = 0
        self._pending: list[int] = []  # candidate offsets >= last_cut + min, ascending
        self._finished = False

    @property
    def params(self) -> ChunkParams:
        return self._params

    @property
    def bytes_fed(self) -> int:
        return self._fed

    @property
    def last_cut(self) -> int:
        """Start offset of the chunk currently being filled (0 before the first cut)."""
        return self._last_cut

    def feed(self, block: BytesLike) -> list[int]:
        """Consume the next block; return the cut offsets newly decided by it."""
        if self._finished:
            raise RuntimeError("StreamingChunker.feed() called after finish()")
        arr = _as_uint8(block)
        if len(arr) == 0:
            return []
        hits = _window_hits(self._history, arr, self._params) + self._fed
        self._pending.extend(hits.tolist())
        self._fed += len(arr)
        if len(arr) >= _HISTORY:
            self._history = arr[-_HISTORY:].copy()  # the caller may reuse its buffer
        else:
            self._history = np.concatenate((self._history, arr))[-_HISTORY:]
        return self._decide()

    def finish(self) -> list[int]:
        """Signal end of file; return the cuts still unreported (always all known by now).

        Every cut is decided as soon as the bytes deciding it are fed, so this returns an
        empty list; it exists so callers need not rely on that.
        """
        self._finished = True
        return self._decide()

    def _decide(self) -> list[int]:
        """Emit every cut determined by the bytes fed so far."""
        params, pending = self._params, self._pending
        cuts: list[int] = []
        idx = 0
        while True:
            first, limit = self._last_cut + params.min_size, self._last_cut + params.max_size
            idx = bisect.bisect_left(pending, first, idx)
            if idx < len(pending) and pending[idx] < limit:
                cut = pending[idx]  # all earlier positions were seen: it is the first hit
            elif self._fed > limit:
                cut = limit  # no hit in [first, limit) and the file goes on: hard cut
            else:
                break
            cuts.append(cut)
            self._last_cut = cut
        first = self._last_cut + params.min_size
        del pending[: bisect.bisect_left(pending, first, idx)]
        return cuts


def cut_points(data: BytesLike, params: ChunkParams = DEFAULT_CHUNK_PARAMS) -> list[int]:
    """Offsets where a new chunk starts, excluding 0 and ``len(data)``.

    Empty when ``len(data) <= params.min_size``.
    """
    arr = _as_uint8(data)
    if len(arr) <= params.min_size:
        return []
    chunker = StreamingChunker(params)
    cuts: list[int] = []
    step = 16 * _SLICE
    for start in range(0, len(arr), step):
        cuts += chunker.feed(arr[start : start + step])
    return cuts + chunker.finish()


def bounds_from_cuts(size: int, cuts: Sequence[int]) -> list[tuple[int, int]]:
    """``(offset, length)`` pairs covering ``[0, size)`` split at ``cuts``.

    Always at least one pair (``[(0, 0)]`` for an empty file), so a single pair means
    "store unchunked".
    """
    starts = [0, *cuts]
    ends = [*cuts, size]
    if cuts and any(end <= begin for begin, end in zip(starts, ends, strict=True)):
        raise ValueError(f"cut offsets must be strictly increasing inside (0, {size})")
    return [(begin, end - begin) for begin, end in zip(starts, ends, strict=True)]


def chunk_bounds(
    size_or_data: int | BytesLike,
    params: ChunkParams = DEFAULT_CHUNK_PARAMS,
    *,
    cuts: Sequence[int] | None = None,
) -> list[tuple[int, int]]:
    """``(offset, length)`` pairs of the chunks of ``size_or_data``, contiguous from 0.

    With data, the cuts are computed (unless given). With only a size, pass the ``cuts``
    (e.g. collected from a :class:`StreamingChunker`); a size of at most ``min_size``
    needs none since such files are never cut.
    """
    if isinstance(size_or_data, int):
        size = size_or_data
        if size < 0:
            raise ValueError(f"size must not be negative, got {size}")
        if cuts is None:
            if size > params.min_size:
                raise TypeError("chunk_bounds(size) needs cuts=... or the data itself")
            cuts = []
    else:
        size = len(_as_uint8(size_or_data))
        if cuts is None:
            cuts = cut_points(size_or_data, params)
    return bounds_from_cuts(size, cuts)
