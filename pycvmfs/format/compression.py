"""zlib objects: stored bytes are hashed after compression (fact sheet section 5).

Inflation is bounded: a zlib bomb or a wrong catalog size fails before memory does.
"""

from __future__ import annotations

import enum
import zlib

from pycvmfs.errors import DecompressionError, HashMismatchError, SizeMismatchError
from pycvmfs.format.hashes import Algorithm, ContentHash, Hasher

ZLIB_LEVEL = 6  # Z_DEFAULT_COMPRESSION, what the reference publisher uses
INFLATE_STEP_BYTES = 1 << 20  # bounded output per decompress() call


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


class Inflater:
    """Incremental decoder with an output cap; `decode` per received block, then `flush`."""

    def __init__(self, compression: Compression, max_output: int) -> None:
        self._compression = compression
        self._max = max_output
        self._out = 0
        self._z = zlib.decompressobj() if compression is Compression.ZLIB else None

    def decode(self, data: bytes | memoryview) -> bytes:
        if self._z is None:
            out = bytes(data)
        else:
            try:
                out = self._z.decompress(data, self._max - self._out + 1)
            except zlib.error as exc:
                raise DecompressionError(f"corrupt zlib stream: {exc}") from None
            if self._z.unconsumed_tail:
                raise DecompressionError(f"object inflates beyond {self._max} bytes")
        self._out += len(out)
        if self._out > self._max:
            raise DecompressionError(f"object inflates beyond {self._max} bytes")
        return out

    def flush(self) -> bytes:
        if self._z is None:
            return b""
        try:
            out = self._z.flush()
        except zlib.error as exc:
            raise DecompressionError(f"corrupt zlib stream: {exc}") from None
        if not self._z.eof:
            raise DecompressionError("truncated zlib stream")
        if self._z.unused_data:
            raise DecompressionError("trailing bytes after zlib stream")
        self._out += len(out)
        if self._out > self._max:
            raise DecompressionError(f"object inflates beyond {self._max} bytes")
        return out


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
        data = inf.decode(stored) + inf.flush()
    except DecompressionError as exc:
        raise DecompressionError(f"{what} {expected}: {exc}") from None
    if expected_size is not None and len(data) != expected_size:
        raise SizeMismatchError(
            f"{what} {expected}: {len(data)} bytes, catalog says {expected_size}"
        )
    return data
