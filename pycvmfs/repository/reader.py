"""Reading regular files: the pieces a file is stored as, an open file that reads them
from their verified cache files, and the read-ahead policy.

A file is one object or a list of chunks (`Piece`s, fact sheet 6.11), checked at open to
tile the catalog size exactly. An `OpenFile` keeps the chunk list it was opened with (a
newer revision never changes what an open file reads) and the last few objects open as
cache files (at most `OPEN_PIECES_PER_HANDLE`), read with `pread`: nothing is loaded whole
into memory.

Never a short or wrong answer: a cache file whose size is not the chunk's, or a `pread`
that comes back short (the file was truncated under us), is a corrupt cache entry — it is
discarded (quarantined), fetched again, verified, and read once more; still short is an
IntegrityError. A piece whose fetch failed answers the same error for `FAILURE_MEMORY_S`
to the file that met it (the kernel asks again at once, read-ahead then read: one hostile
or dead server costs one timeout, not two); a new open tries again.

A `lasting` file is one whose closing nobody reports, and whose reopening nobody sees
either (FUSE no-open: the kernel opens files alone, and the mount keeps a file per inode).
It closes a piece's cache file once a read reached the piece's end, since the cache never
evicts an object held open, and remembers a failure for `LASTING_FAILURE_MEMORY_S` only:
enough for the kernel's second ask, short enough that a retry by hand finds the server
back.

Read-ahead: `read_ahead` (pure) picks the next pieces of a chunked file after the one just
read; a `Prefetcher` fetches them in the background, errors left for the real read.

The mount (`fs/vfs.py`) and the no-FUSE reader (`Repository.read_range`, `iter_read`) read
through the same `OpenFile`.

Thread-safety: every method may be called from any thread; each open file guards its slots
with its own lock. Downloads run outside it.
"""

from __future__ import annotations

import bisect
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from pycvmfs.errors import CatalogError, IntegrityError, PycvmfsError
from pycvmfs.format.catalog import DirEntry
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.repository.catalog import Catalog
from pycvmfs.repository.objects import ObjectLoader, OpenObject

log = logging.getLogger(__name__)
OPEN_PIECES_PER_HANDLE = 4  # cache files one open file keeps open (current + read-ahead)
READ_AHEAD_PIECES = 2  # chunks fetched in the background ahead of a sequential reader
PREFETCH_THREADS = 2  # read-ahead downloads at once; more only fight over the GIL
FAILURE_MEMORY_S = 5.0  # a piece that failed is not fetched again by the same file sooner
LASTING_FAILURE_MEMORY_S = 1.0  # the same for a `lasting` file (module docstring)


class Piece(NamedTuple):
    """One stored object of a regular file: the whole file, or one chunk (`P` suffix)."""

    offset: int
    size: int
    hash: ContentHash
    suffix: Suffix


class WouldBlockError(Exception):
    """The non-blocking read cannot answer without waiting (`OpenFile.read_nowait`)."""


def file_pieces(path: str, entry: DirEntry, catalog: Catalog | None) -> list[Piece]:
    """The objects that make up regular file `path`, checked to tile it exactly (a chunked
    file's chunk list comes from its `catalog`, which only such a file needs)."""
    if not entry.is_regular:
        raise PycvmfsError(f"{path or '/'}: not a regular file")
    if entry.is_external:
        raise PycvmfsError(f"{path}: external files (flag 128, served from "
                           "CVMFS_EXTERNAL_URL) are not supported")
    if entry.is_chunked:
        if catalog is None:
            raise CatalogError(f"{path}: a chunked file is read with its catalog")
        rows = catalog.chunks(path, entry.hash_algorithm)
        pieces = [Piece(r.offset, r.size, r.content_hash, Suffix.PARTIAL) for r in rows]
    elif entry.content_hash is not None:
        pieces = [Piece(0, entry.size, entry.content_hash, Suffix.NONE)]
    elif entry.size == 0:
        pieces = []
    else:
        raise CatalogError(f"{path}: regular file of {entry.size} bytes has no hash")
    _check_tiling(path, entry.size, pieces)
    return pieces


def _check_tiling(path: str, size: int, pieces: list[Piece]) -> None:
    """Pieces must start at 0, be contiguous and add up to the catalog size (6.11)."""
    position = 0
    for piece in pieces:
        if piece.offset != position or piece.size < 0:
            raise CatalogError(f"{path}: chunk at offset {piece.offset} (expected {position})")
        position += piece.size
    if position != size:
        raise CatalogError(f"{path}: chunks cover {position} bytes, catalog says {size}")


def read_pieces(pieces: Sequence[Piece], offset: int, end: int,
                load: Callable[[int, int, int], bytes]) -> bytes:
    """Bytes [offset, end) of a file made of `pieces`, loading only the overlapping ones
    (`load(i, start, stop)` gives bytes [start, stop) of piece i, relative to the piece)."""
    if offset >= end:
        return b""
    index = bisect.bisect_right([p.offset for p in pieces], offset) - 1
    out = []
    while 0 <= index < len(pieces) and pieces[index].offset < end:
        piece = pieces[index]
        out.append(load(index, max(offset - piece.offset, 0), min(end - piece.offset, piece.size)))
        index += 1
    return b"".join(out)


def read_ahead(last: int, count: int, started: set[int],
               depth: int = READ_AHEAD_PIECES) -> list[int]:
    """The pieces to fetch after piece `last` was read: the next `depth` of `count` that
    no earlier read-ahead started."""
    return [i for i in range(last + 1, min(last + 1 + depth, count)) if i not in started]


class Prefetcher:
    """Background downloads for read-ahead, `PREFETCH_THREADS` at once (started on first
    use, stopped by `close`)."""

    def __init__(self, threads: int = PREFETCH_THREADS) -> None:
        self._threads = threads
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="read-ahead")
            self._pool.submit(_quietly, task)

    def close(self) -> None:
        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _quietly(task: Callable[[], None]) -> None:
    try:
        task()
    except Exception as exc:  # the reader fetches it again and reports the error
        log.debug("read-ahead failed: %s", exc)


class _Slot:
    """One object of an open file: the cached file, and how many reads are using it."""

    __slots__ = ("file", "uses", "retired")

    def __init__(self, file: OpenObject) -> None:
        self.file, self.uses, self.retired = file, 0, False


class OpenFile:
    """An open regular file: the chunk list fixed at open, the last few of its objects held
    open as cache files (see the module docstring)."""

    def __init__(self, path: str, entry: DirEntry, pieces: list[Piece], loader: ObjectLoader,
                 prefetcher: Prefetcher | None = None, *, lasting: bool = False) -> None:
        self.path, self.entry, self.pieces = path, entry, pieces
        self._lasting = lasting  # see the module docstring
        self._loader = loader
        self._prefetcher = prefetcher
        self._lock = threading.Lock()
        self._slots: dict[int, _Slot] = {}  # insertion order = age
        self._closed = False  # a read still running after `close` keeps no slot
        self._failed: dict[int, tuple[float, PycvmfsError]] = {}  # piece: when, why
        self._prefetched: set[int] = set()
        self._starts = [piece.offset for piece in pieces]

    def _what(self, piece: Piece) -> str:
        kind = "chunk" if piece.suffix is Suffix.PARTIAL else "file"
        return f"{kind} of {self.path} at offset {piece.offset}"

    # --- reading ---------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes from `offset` (fewer only at the end of the file)."""
        return self._read(offset, size, self._read_slice)

    def read_nowait(self, offset: int, size: int) -> bytes:
        """Like `read`, but only from objects already in the cache (read from the local
        disk if their pages are not in memory); `WouldBlockError` if one must be
        downloaded (the caller then takes the path that may wait for the network)."""
        return self._read(offset, size, self._read_slice_local)

    def send_local(self, offset: int, size: int, send: Callable[[int, int, int], None]) -> bool:
        """If up to `size` bytes from `offset` lie in one object already in the cache, call
        `send(descriptor, position, length)` with them while that cache file is held open
        (a FUSE reply spliced from it: no copy through Python) and return True; False
        when they do not (the end of the file, two objects) or the cache file failed, so
        that `read` answers; `WouldBlockError` if the object must be downloaded first."""
        end = min(offset + size, self.entry.size)
        if offset >= end:
            return False
        index = bisect.bisect_right(self._starts, offset) - 1
        piece = self.pieces[index]
        if end > piece.offset + piece.size:
            return False
        try:
            slot = self._acquire(index, download=False)
        except PycvmfsError:
            return False
        try:  # the size was checked when the cache file was opened
            send(slot.file.fileno(), offset - piece.offset, end - offset)
        finally:
            self._release(slot)
        self._finished(index, slot, end - piece.offset)
        if self._prefetcher is not None:
            self._read_ahead(index, self._prefetcher)
        return True

    def _read(self, offset: int, size: int, load: Callable[[int, int, int], bytes]) -> bytes:
        touched: list[int] = []

        def loading(index: int, start: int, stop: int) -> bytes:
            touched.append(index)
            return load(index, start, stop)

        data = read_pieces(self.pieces, offset, min(offset + size, self.entry.size), loading)
        if touched and self._prefetcher is not None:
            self._read_ahead(touched[-1], self._prefetcher)
        return data

    def _read_ahead(self, last: int, prefetcher: Prefetcher) -> None:
        with self._lock:
            wanted = read_ahead(last, len(self.pieces), self._prefetched)
            self._prefetched.update(wanted)
        for index in wanted:
            prefetcher.submit(functools.partial(self._prefetch, self.pieces[index]))

    def _prefetch(self, piece: Piece) -> None:
        self._loader.prefetch(piece.hash, piece.suffix, what=self._what(piece),
                              compression=self.entry.compression, expected_size=piece.size)

    def _read_slice(self, index: int, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of piece `index`, exactly (see the module docstring)."""
        return self._read_exactly(index, start, stop, download=True)

    def _read_slice_local(self, index: int, start: int, stop: int) -> bytes:
        return self._read_exactly(index, start, stop, download=False)

    def _read_exactly(self, index: int, start: int, stop: int, *, download: bool) -> bytes:
        for _ in range(2):
            slot = self._acquire(index, download)
            try:
                data = slot.file.pread(stop - start, start)
            finally:
                self._release(slot)
            if len(data) == stop - start:
                self._finished(index, slot, stop)
                return data
            log.warning("%s: cached object %s read short (%d of %d bytes); fetching it again",
                        self.path, self.pieces[index].hash, len(data), stop - start)
            self._forget_slot(index, slot)
            self._loader.discard(self.pieces[index].hash)
        raise IntegrityError(f"{self.path}: object {self.pieces[index].hash} reads short "
                             "even after fetching it again")

    # --- slots -----------------------------------------------------------------------
    def _open_piece(self, index: int, download: bool) -> _Slot:
        """The verified object of piece `index`, opened; a cache file of the wrong size is
        discarded and fetched once more. Without `download`, WouldBlockError if it is
        not in the cache."""
        piece = self.pieces[index]
        for _ in range(2):
            file = self._loader.open(piece.hash, piece.suffix, what=self._what(piece),
                                     compression=self.entry.compression,
                                     expected_size=piece.size, download=download)
            if file is None:
                raise WouldBlockError
            if file.size() == piece.size:
                return _Slot(file)
            file.close()
            log.warning("%s: cached object %s has the wrong size; fetching it again",
                        self.path, piece.hash)
            self._loader.discard(piece.hash)
        raise IntegrityError(f"{self.path}: object {piece.hash} keeps arriving with the wrong "
                             "size in the cache")

    def _acquire(self, index: int, download: bool = True) -> _Slot:
        with self._lock:
            slot = self._slots.get(index)
            if slot is not None:
                slot.uses += 1
                return slot
            failed = self._failed.get(index)
        memory = LASTING_FAILURE_MEMORY_S if self._lasting else FAILURE_MEMORY_S
        if failed is not None and time.monotonic() - failed[0] < memory:
            raise failed[1]  # the kernel asks again at once (read-ahead, then the read)
        # open (and maybe download) outside the lock: other pieces stay readable meanwhile
        try:
            fresh = self._open_piece(index, download)
        except PycvmfsError as exc:
            with self._lock:
                self._failed[index] = (time.monotonic(), exc)
            raise
        with self._lock:
            if self._closed:  # closed meanwhile: this read's alone, closed at its release
                fresh.uses, fresh.retired = 1, True
                return fresh
            slot = self._slots.setdefault(index, fresh)
            slot.uses += 1
            if slot is fresh:
                self._retire_old_locked(keep=index)
        if slot is not fresh:
            fresh.file.close()
        return slot

    def _retire_old_locked(self, keep: int) -> None:
        while len(self._slots) > OPEN_PIECES_PER_HANDLE:
            oldest = next(i for i in self._slots if i != keep)
            self._retire_locked(self._slots.pop(oldest))

    @staticmethod
    def _retire_locked(slot: _Slot) -> None:
        slot.retired = True
        if slot.uses == 0:
            slot.file.close()

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            slot.uses -= 1
            if slot.retired and slot.uses == 0:
                slot.file.close()

    def _finished(self, index: int, slot: _Slot, stop: int) -> None:
        """A read of piece `index` ended at `stop` (within the piece): in a `lasting`
        file, the piece's end closes its cache file."""
        if self._lasting and stop == self.pieces[index].size:
            self._forget_slot(index, slot)

    def _forget_slot(self, index: int, slot: _Slot) -> None:
        with self._lock:
            if self._slots.get(index) is slot:
                del self._slots[index]
                self._retire_locked(slot)

    def close(self) -> None:
        """Close the cache files held. Reads still running finish; a cache file one of them
        opens after this is closed when it is done."""
        with self._lock:
            self._closed = True
            for slot in self._slots.values():
                self._retire_locked(slot)
            self._slots.clear()

    def __enter__(self) -> OpenFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
