"""Where downloaded bytes go while they stream in, and the one place objects are verified.

`Sink` (cvmfs `sink.h`): `write` each received block, `reset` before every attempt.
`MemorySink` keeps raw bytes (manifest, whitelist) with a ceiling. `VerifyingSink` hashes the
**compressed** stream, inflates it on the fly with a cap (`format.compression.Inflater`), counts,
and forwards inflated bytes to a `Destination` (a cache transaction, a temp file, memory).
`verify()` is called once per attempt by the download loop; a mismatch becomes BAD_DATA.

Thread-safety: a sink belongs to one download at a time; none is safe for concurrent use.
"""

from __future__ import annotations

import os
import tempfile
from typing import Protocol

from pycvmfs.errors import DecompressionError, HashMismatchError, IntegrityError, SizeMismatchError
from pycvmfs.format.compression import Compression, Inflater
from pycvmfs.format.hashes import ContentHash, Hasher

DEFAULT_MAX_BYTES = 1 << 30  # ceiling for unsized objects; chunks and catalogs are far smaller


class Sink(Protocol):
    def write(self, data: bytes) -> None:
        """Accept the next received block; may raise IntegrityError (too big, corrupt)."""
        ...

    def reset(self) -> None:
        """Forget everything written (a new attempt starts)."""
        ...


class Destination(Protocol):
    """Receiver of verified-as-we-go inflated bytes (a cache transaction implements this)."""

    def write(self, data: bytes) -> None: ...

    def reset(self) -> None: ...


class MemorySink:
    """Raw bytes in memory, refusing more than `max_bytes` (IntegrityError)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._max = max_bytes
        self._buffer = bytearray()

    def write(self, data: bytes) -> None:
        if len(self._buffer) + len(data) > self._max:
            raise IntegrityError(f"object larger than {self._max} bytes")
        self._buffer += data

    def reset(self) -> None:
        self._buffer.clear()

    def getvalue(self) -> bytes:
        return bytes(self._buffer)

    def __len__(self) -> int:
        return len(self._buffer)


class MemoryDestination(MemorySink):
    """A `Destination` in memory (tests, small objects)."""


class TempFileDestination:
    """Inflated bytes go to an unlinked temporary file (fd-backed): a 16 MiB chunk is never held
    twice in memory. `read_all()`/`fileno()` give access after verification; `close()` frees it.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed by close()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)

    def reset(self) -> None:
        self._file.seek(0)
        self._file.truncate()
        self.size = 0

    def fileno(self) -> int:
        self._file.flush()
        return self._file.fileno()

    def read_all(self) -> bytes:
        self._file.flush()
        self._file.seek(0)
        data = self._file.read()
        self._file.seek(0, os.SEEK_END)
        return data

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TempFileDestination:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class VerifyingSink:
    """Hash (compressed bytes), inflate with a cap, count; verify at the end of an attempt.

    `expected_size` is the decompressed size from the catalog (None when unknown, e.g. a
    catalog); `max_size` caps the inflated output in any case (R7). Errors while streaming are
    remembered rather than raised, so the transport finishes cleanly and `verify()` reports
    them as BAD_DATA.
    """

    def __init__(self, expected: ContentHash, compression: Compression, out: Destination, *,
                 expected_size: int | None = None, max_size: int = DEFAULT_MAX_BYTES) -> None:
        self.expected = expected
        self.compression = compression
        self.expected_size = expected_size
        self.max_size = max_size if expected_size is None else min(max_size, expected_size)
        self.out = out
        self.reset()

    def reset(self) -> None:
        self._hasher = Hasher(self.expected.algorithm)
        self._inflater = Inflater(self.compression, self.max_size)
        self._error: IntegrityError | None = None
        self.compressed_bytes = 0
        self.inflated_bytes = 0
        self.out.reset()

    def write(self, data: bytes) -> None:
        self.compressed_bytes += len(data)
        self._hasher.update(data)  # always: the hash names the culprit (transfer vs publisher)
        if self._error is not None:
            return
        try:
            out = self._inflater.decode(data)
        except DecompressionError as exc:
            self._error = exc
            return
        self._emit(out)

    def _emit(self, data: bytes) -> None:
        if data:
            self.inflated_bytes += len(data)
            self.out.write(data)

    def verify(self) -> None:
        """Raise IntegrityError unless hash, decompression and size are all right."""
        got = self._hasher.finish()
        if got != self.expected:
            raise HashMismatchError(f"object {self.expected}: content hashes to {got}")
        if self._error is not None:
            raise self._error
        self._emit(self._inflater.flush())
        if self.expected_size is not None and self.inflated_bytes != self.expected_size:
            raise SizeMismatchError(f"object {self.expected}: {self.inflated_bytes} bytes "
                                    f"after decompression, expected {self.expected_size}")
