"""Where downloaded bytes go while they stream in, and the one place objects are verified.

`Sink` (cvmfs `sink.h`): `budget` is the most bytes the download may bring, known before it
starts (the transport refuses a larger Content-Length without reading the body and reads no
more than one byte past it); `write` each received block, raising BudgetExceededError as soon
as the budget is passed so the transfer is cut; `reset` before every attempt.

`MemorySink` keeps raw bytes (manifest, whitelist) within a small budget. `VerifyingSink`
hashes the **compressed** stream, inflates it in bounded steps with a cap
(`format.compression.Inflater`), counts, and forwards inflated bytes to a `Destination` (a
cache transaction, a temp file, memory). Its budget is the stored-size bound of its cap. An
object of unknown size (catalog, history) is spooled compressed into an unlinked temporary
file and inflated only once its hash matched, so a zlib bomb is never inflated and nothing
unverified takes more room than it took on the wire. `verify()` is called once per attempt
by the download loop (or the local source); a mismatch becomes BAD_DATA.

Thread-safety: a sink belongs to one download at a time; none is safe for concurrent use.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from pycvmfs.errors import (
    LOCAL_RESOURCE_ERRNOS,
    BudgetExceededError,
    CacheFullError,
    DecompressionError,
    HashMismatchError,
    PycvmfsError,
    SizeMismatchError,
)
from pycvmfs.format.compression import Compression, Inflater, stored_size_bound
from pycvmfs.format.hashes import ContentHash, Hasher

DEFAULT_MAX_BYTES = 1 << 30  # inflated cap of unsized objects when the caller names none
SPOOL_READ_BYTES = 1 << 20  # blocks read back from the spool to inflate
SPOOL_IN_MEMORY_BYTES = 1 << 20  # a smaller budget is spooled in memory, a larger one on disk


class Sink(Protocol):
    @property
    def budget(self) -> int:
        """Most bytes this download may bring; the transport refuses or cuts beyond it."""
        ...

    def write(self, data: bytes) -> None:
        """Accept the next received block; raises IntegrityError (BudgetExceededError past
        the budget, DecompressionError for a corrupt stream): the transfer stops there."""
        ...

    def reset(self) -> None:
        """Forget everything written (a new attempt starts)."""
        ...


class Destination(Protocol):
    """Receiver of verified-as-we-go inflated bytes (a cache transaction implements this)."""

    def write(self, data: bytes) -> None: ...

    def reset(self) -> None: ...


def over_budget(received: int, budget: int, hint: str = "") -> str:
    """The message of a BudgetExceededError (also used for a refused Content-Length)."""
    extra = f"; {hint}" if hint else ""
    return f"{received} bytes, over the download budget of {budget} bytes{extra}"


def local_write_error(exc: OSError, where: str) -> Exception:
    """A destination's local write failure as a named error: disk full is CacheFullError
    (ENOSPC); running out of descriptors or memory stays the OSError it is (EMFILE for the
    caller, `errors.LOCAL_RESOURCE_ERRNOS`)."""
    if exc.errno in LOCAL_RESOURCE_ERRNOS:
        return OSError(exc.errno, f"{exc.strerror} (writing {where})")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CacheFullError(f"no space for {where}: {exc.strerror}; free space there "
                              "(TMPDIR moves the temporary files of pycvmfs ls/cat/stat)")
    return PycvmfsError(f"cannot write {where}: {exc.strerror or exc}")


class MemorySink:
    """Raw bytes in memory, refusing more than `max_bytes` (BudgetExceededError)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._max = max_bytes
        self._buffer = bytearray()

    @property
    def budget(self) -> int:
        return self._max

    def write(self, data: bytes) -> None:
        if len(self._buffer) + len(data) > self._max:
            raise BudgetExceededError(over_budget(len(self._buffer) + len(data), self._max))
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
    twice in memory. `read_all()`/`fileno()`/`blocks()` give access after verification,
    `reader()` hands the file over; `close()` frees it.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        import tempfile  # with shutil, random, bz2 and lzma: 0.65 MB a mount with its
        # catalogs cached never needs

        self._directory = directory if directory is not None else tempfile.gettempdir()
        try:
            self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - see close()
        except OSError as exc:
            raise self._local_error(exc) from exc
        self.size = 0

    def _local_error(self, exc: OSError) -> Exception:
        return local_write_error(exc, f"a temporary file in {os.fspath(self._directory)}")

    def _flush(self) -> None:
        try:
            self._file.flush()
        except OSError as exc:
            raise self._local_error(exc) from exc

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise self._local_error(exc) from exc
        self.size += len(data)

    def reset(self) -> None:
        try:
            self._file.seek(0)
            self._file.truncate()
        except OSError as exc:
            raise self._local_error(exc) from exc
        self.size = 0

    def fileno(self) -> int:
        self._flush()
        return self._file.fileno()

    def read_all(self) -> bytes:
        self._flush()
        self._file.seek(0)
        data = self._file.read()
        self._file.seek(0, os.SEEK_END)
        return data

    def blocks(self, size: int = SPOOL_READ_BYTES) -> Iterator[bytes]:
        """The content in blocks of at most `size` bytes, from the start."""
        self._flush()
        self._file.seek(0)
        while block := self._file.read(size):
            yield block
        self._file.seek(0, os.SEEK_END)

    def reader(self) -> BinaryIO:
        """The file itself, at offset 0, for the caller to read and close (this object no
        longer owns it)."""
        self._flush()
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        with contextlib.suppress(OSError):  # closing flushes: a full disk loses nothing here
            self._file.close()

    def __enter__(self) -> TempFileDestination:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class VerifyingSink:
    """Hash (compressed bytes), inflate with a cap, count; verify at the end of an attempt.

    `expected_size` is the inflated size from the catalog: it is the cap, and the budget is
    its stored-size bound (exactly the size for an uncompressed object). Without it (a
    catalog, a history database) the cap is `max_size`, the bytes are spooled (in memory for a
    budget up to `SPOOL_IN_MEMORY_BYTES`, else in an unlinked file in `spool_dir`, default
    the system temp dir) and inflated after the hash matched. `hint` is added to over-budget
    messages (e.g. which setting raises the cap). Passing the budget raises from `write` at
    once, so the transport stops reading; a corrupt or over-long zlib stream stops the
    inflation only and is reported by `verify()` after the hash (a wrong hash means the
    transfer, a right one the publisher), the bytes up to the budget still being hashed.
    Use as a context manager (or `close()`): it frees the spool.
    """

    def __init__(self, expected: ContentHash, compression: Compression, out: Destination, *,
                 expected_size: int | None = None, max_size: int = DEFAULT_MAX_BYTES,
                 spool_dir: str | os.PathLike[str] | None = None, hint: str = "") -> None:
        self.expected = expected
        self.compression = compression
        self.expected_size = expected_size
        self.max_size = max_size if expected_size is None else expected_size
        self.out = out
        self._hint = hint
        self._budget = stored_size_bound(self.max_size, compression)
        self._spool_dir = spool_dir
        self._spooled = expected_size is None
        self._spool: MemorySink | TempFileDestination | None = None
        self.reset()

    @property
    def budget(self) -> int:
        return self._budget

    def reset(self) -> None:
        self._hasher = Hasher(self.expected.algorithm)
        self._inflater = Inflater(self.compression, self.max_size)
        self._error: DecompressionError | None = None
        self.compressed_bytes = 0
        self.inflated_bytes = 0
        self._drop_spool()
        self.out.reset()

    def write(self, data: bytes) -> None:
        self.compressed_bytes += len(data)
        if self.compressed_bytes > self._budget:
            raise BudgetExceededError(f"object {self.expected}: "
                                      + over_budget(self.compressed_bytes, self._budget,
                                                    self._hint))
        self._hasher.update(data)  # always: the hash names the culprit (transfer or publisher)
        if self._spooled:
            self._open_spool().write(data)
        elif self._error is None:
            try:
                self._inflate(data)
            except DecompressionError as exc:
                self._error = exc  # reported by verify() unless the hash is wrong

    def _open_spool(self) -> MemorySink | TempFileDestination:
        if self._spool is None:
            self._spool = (MemorySink(self._budget) if self._budget <= SPOOL_IN_MEMORY_BYTES
                           else TempFileDestination(self._spool_dir))
        return self._spool

    def _drop_spool(self) -> None:
        spool, self._spool = self._spool, None
        if isinstance(spool, TempFileDestination):
            spool.close()

    def _inflate(self, data: bytes) -> None:
        try:
            for piece in self._inflater.feed(data):
                self.inflated_bytes += len(piece)
                self.out.write(piece)
        except DecompressionError as exc:
            extra = f"; {self._hint}" if self._hint else ""
            raise DecompressionError(f"object {self.expected}: {exc}{extra}") from None

    def verify(self) -> None:
        """Raise IntegrityError unless hash, decompression and size are all right."""
        try:
            got = self._hasher.finish()
            if got != self.expected:
                raise HashMismatchError(f"object {self.expected}: content hashes to {got}")
            if self._error is not None:
                raise self._error
            if isinstance(self._spool, MemorySink):
                self._inflate(self._spool.getvalue())
            elif self._spool is not None:
                for block in self._spool.blocks():
                    self._inflate(block)
        finally:
            self._drop_spool()
        try:
            self._inflater.finish()
        except DecompressionError as exc:
            raise DecompressionError(f"object {self.expected}: {exc}") from None
        if self.expected_size is not None and self.inflated_bytes != self.expected_size:
            raise SizeMismatchError(f"object {self.expected}: {self.inflated_bytes} bytes "
                                    f"after decompression, expected {self.expected_size}")

    def close(self) -> None:
        """Free the spool (idempotent); the destination is the caller's."""
        self._drop_spool()

    def __enter__(self) -> VerifyingSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
