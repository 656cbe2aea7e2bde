"""zlib objects: stored bytes are hashed after compression (fact sheet section 5).

Inflation is bounded twice: in total (a zlib bomb or a wrong catalog size fails at the
object's size, not at the end of memory) and per step (`Inflater.feed` yields at most
`INFLATE_STEP_BYTES` at a time, so a 1 MB -> 1 GiB bomb never holds more than one step in
memory). `stored_size_bound` is the most stored bytes an honest object of a given size can
take: the download budget of a data object.

Inflation of objects that may exceed `ISAL_ABOVE_BYTES` runs through ISA-L (`isal.isal_zlib`,
zlib's stream API, about twice zlib's speed on repository objects) when it is installed;
smaller ones (the certificate every mount fetches) through zlib, so a mount served from a
filled cache never loads the library. Compression stays zlib's, whose output at level 6 is
what the reference publisher writes.
"""

from __future__ import annotations

import enum
import functools
import zlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from pycvmfs.errors import DecompressionError, HashMismatchError, SizeMismatchError
from pycvmfs.format.hashes import Algorithm, ContentHash, Hasher

ZLIB_LEVEL = 6  # Z_DEFAULT_COMPRESSION, what the reference publisher uses
INFLATE_STEP_BYTES = 1 << 20  # bounded output per decompress() call
ISAL_ABOVE_BYTES = 64 << 10  # no larger, it inflates in microseconds either way


class Compression(enum.IntEnum):
    """Compression algorithms as stored in catalog flags bits 11-13."""

    ZLIB = 0
    NONE = 1

    @classmethod
    def from_name(cls, name: str) -> Compression:
        key = name.strip().lower()
        if key in ("zlib", "default"):
            return cls.ZLIB
        if key in ("none", "no"):
            return cls.NONE
        raise ValueError(f"unknown compression {name!r} (use zlib or none)")


def compress(data: bytes | memoryview, compression: Compression = Compression.ZLIB) -> bytes:
    if compression is Compression.NONE:
        return bytes(data)
    return zlib.compress(data, ZLIB_LEVEL)


def make_object(
    data: bytes | memoryview,
    algorithm: Algorithm = Algorithm.SHA1,
    compression: Compression = Compression.ZLIB,
) -> tuple[ContentHash, bytes]:
    """Compress then hash: returns (content hash, stored bytes)."""
    stored = compress(data, compression)
    return ContentHash.of(algorithm, stored), stored


def stored_size_bound(size: int, compression: Compression) -> int:
    """Most stored bytes an object of `size` inflated bytes can take: exactly `size` when
    stored uncompressed, else zlib's `compressBound` (the worst case of deflate at any level,
    stored blocks included, with the 2-byte header and 4-byte trailer)."""
    if size < 0:
        raise ValueError(f"negative object size {size}")
    if compression is Compression.NONE:
        return size
    return size + (size >> 12) + (size >> 14) + (size >> 25) + 13


@functools.cache
def inflate_module() -> ModuleType:
    """`isal.isal_zlib` if importable, else `zlib` (imported when first needed)."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib
    return isal_zlib


class Inflater:
    """Incremental decoder with an output cap: `feed` each received block and write out
    what it yields (pieces of at most `step` bytes), then `finish`.

    Exceeding `max_output` raises DecompressionError at the step that crosses it, having
    produced at most one byte too many. `module` is the inflating library (`zlib`'s API;
    default: `inflate_module()` when `max_output` exceeds `ISAL_ABOVE_BYTES`, else zlib)."""

    def __init__(self, compression: Compression, max_output: int, *,
                 step: int = INFLATE_STEP_BYTES, module: ModuleType | None = None) -> None:
        if step <= 0:
            raise ValueError("step must be positive")
        self._compression = compression
        self._max = max_output
        self._step = step
        self._out = 0
        self.module: ModuleType | None = None  # the inflating library (None: stored as is)
        self._z: Any = None  # its decompressor
        self._error: type[Exception] = zlib.error
        if compression is Compression.ZLIB:
            self.module = module or (inflate_module() if max_output > ISAL_ABOVE_BYTES
                                     else zlib)
            self._z, self._error = self.module.decompressobj(), self.module.error

    @property
    def produced(self) -> int:
        """Inflated bytes yielded so far."""
        return self._out

    def _count(self, produced: int) -> None:
        self._out += produced
        if self._out > self._max:
            raise DecompressionError(f"object inflates beyond {self._max} bytes")

    def feed(self, data: bytes | memoryview) -> Iterator[bytes]:
        """Inflated pieces of `data`, each at most `step` bytes (consume them all)."""
        if self._z is None:
            if isinstance(data, bytes) and len(data) <= self._step:
                self._count(len(data))
                yield data
                return
            view = memoryview(data)
            for start in range(0, len(view), self._step):
                piece = bytes(view[start:start + self._step])
                self._count(len(piece))
                yield piece
            return
        pending: bytes | memoryview = data
        while True:
            limit = min(self._step, self._max - self._out + 1)
            try:
                out = self._z.decompress(pending, limit)
            except self._error as exc:
                raise DecompressionError(f"corrupt zlib stream: {exc}") from None
            self._count(len(out))
            if out:
                yield out
            pending = self._z.unconsumed_tail
            if not pending and len(out) < limit:
                return  # input used up and zlib holds no more output for it

    def finish(self) -> None:
        """The stream must have ended exactly at the end of the input."""
        if self._z is None:
            return
        if not self._z.eof:
            raise DecompressionError("truncated zlib stream")
        if self._z.unused_data:
            raise DecompressionError("trailing bytes after zlib stream")

    def decode(self, data: bytes | memoryview) -> bytes:
        """All of `feed(data)` joined (small objects; big ones should stream `feed`)."""
        return b"".join(self.feed(data))

    def flush(self) -> bytes:
        """`finish()`; kept for callers of `decode` (`feed` leaves nothing to flush)."""
        self.finish()
        return b""


def open_object(
    stored: bytes,
    expected: ContentHash,
    compression: Compression = Compression.ZLIB,
    *,
    expected_size: int | None = None,
    max_size: int = 1 << 32,
    what: str = "object",
) -> bytes:
    """Verify the hash of stored bytes, inflate (bounded) and check the size."""
    h = Hasher(expected.algorithm)
    h.update(stored)
    got = h.finish()
    if got != expected:
        raise HashMismatchError(f"{what} {expected}: content hashes to {got}")
    limit = expected_size if expected_size is not None else max_size
    inf = Inflater(compression, limit)
    try:
        data = inf.decode(stored)
        inf.finish()
    except DecompressionError as exc:
        raise DecompressionError(f"{what} {expected}: {exc}") from None
    if expected_size is not None and len(data) != expected_size:
        raise SizeMismatchError(
            f"{what} {expected}: {len(data)} bytes, catalog says {expected_size}"
        )
    return data
