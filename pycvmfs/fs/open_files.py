"""Open regular files: the chunk list fixed at open, cache files read with `pread`, and the
next chunks fetched ahead.

A handle keeps the objects it reads open as cache files (at most `OPEN_PIECES_PER_HANDLE`),
never loaded whole into memory. A read never returns fewer bytes than the catalog promises:
a cache file whose size is not the chunk's, or a `pread` that comes back short (the file
was truncated under us), is a corrupt cache entry — it is discarded (quarantined), fetched
again and verified, and read once more; still short is an IntegrityError (EIO), never a
short answer. A piece whose fetch failed answers the same error for `FAILURE_MEMORY_S` to
the handle that met it (the kernel asks again at once, read-ahead then read: one hostile or
dead server costs one timeout, not two); a new open tries again.

Thread-safety: every method may be called from any thread; each open file guards its slots
with its own lock, the table of handles with another. Downloads run outside both.
"""

from __future__ import annotations

import errno
import io
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from pycvmfs.errors import IntegrityError, PycvmfsError
from pycvmfs.format.catalog import DirEntry
from pycvmfs.fs.errors import FsError
from pycvmfs.repository.repository import Piece, Repository, read_pieces

log = logging.getLogger(__name__)
OPEN_PIECES_PER_HANDLE = 4  # cache files one handle keeps open (current chunk + read-ahead)
READ_AHEAD_PIECES = 2  # chunks fetched in the background ahead of a sequential reader
PREFETCH_THREADS = 2  # read-ahead downloads at once; more only fight over the GIL
FAILURE_MEMORY_S = 5.0  # a piece that failed is not fetched again by the same handle sooner


class WouldBlockError(Exception):
    """The non-blocking read path cannot answer without waiting."""


class _Slot:
    """One object of an open file: the cached file, and how many reads are using it."""

    __slots__ = ("file", "uses", "retired")

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.uses, self.retired = file, 0, False


def _size_of(file: BinaryIO) -> int:
    if isinstance(file, io.BytesIO):
        return len(file.getbuffer())
    return os.fstat(file.fileno()).st_size


class OpenFile:
    """An open regular file: the chunk list fixed at open, and the last few of its objects
    held open as cache files."""

    def __init__(self, ino: int, path: str, entry: DirEntry, pieces: list[Piece]) -> None:
        self.ino, self.path, self.entry, self.pieces = ino, path, entry, pieces
        self._lock = threading.Lock()
        self._slots: dict[int, _Slot] = {}  # insertion order = age
        self._failed: dict[int, tuple[float, PycvmfsError]] = {}  # piece: when, why
        self.prefetched: set[int] = set()

    def _open_piece(self, index: int, repository: Repository) -> _Slot:
        """The verified object of piece `index`, opened; a cache file of the wrong size is
        discarded and fetched once more."""
        piece = self.pieces[index]
        for _ in range(2):
            file = repository.open_piece(self.path, self.entry, piece)
            if _size_of(file) == piece.size:
                return _Slot(file)
            file.close()
            log.warning("%s: cached object %s has the wrong size; fetching it again",
                        self.path, piece.hash)
            repository.discard_piece(piece)
        raise IntegrityError(f"{self.path}: object {piece.hash} keeps arriving with the wrong "
                             "size in the cache")

    def _acquire(self, index: int, repository: Repository) -> _Slot:
        with self._lock:
            slot = self._slots.get(index)
            if slot is not None:
                slot.uses += 1
                return slot
            failed = self._failed.get(index)
        if failed is not None and time.monotonic() - failed[0] < FAILURE_MEMORY_S:
            raise failed[1]  # the kernel asks again at once (read-ahead, then the read)
        # open (and maybe download) outside the lock: other pieces stay readable meanwhile
        try:
            fresh = self._open_piece(index, repository)
        except PycvmfsError as exc:
            with self._lock:
                self._failed[index] = (time.monotonic(), exc)
            raise
        with self._lock:
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

    def _forget_slot(self, index: int, slot: _Slot) -> None:
        with self._lock:
            if self._slots.get(index) is slot:
                del self._slots[index]
                self._retire_locked(slot)

    def read_slice(self, index: int, start: int, stop: int, repository: Repository) -> bytes:
        """Bytes [start, stop) of piece `index`, exactly (see the module docstring)."""
        for _ in range(2):
            slot = self._acquire(index, repository)
            try:
                if isinstance(slot.file, io.BytesIO):  # a loader without a cache
                    with slot.file.getbuffer() as view:
                        data = bytes(view[start:stop])
                else:
                    data = os.pread(slot.file.fileno(), stop - start, start)
            finally:
                self._release(slot)
            if len(data) == stop - start:
                return data
            log.warning("%s: cached object %s read short (%d of %d bytes); fetching it again",
                        self.path, self.pieces[index].hash, len(data), stop - start)
            self._forget_slot(index, slot)
            repository.discard_piece(self.pieces[index])
        raise IntegrityError(f"{self.path}: object {self.pieces[index].hash} reads short "
                             "even after fetching it again")

    def read_slice_nowait(self, index: int, start: int, stop: int) -> bytes:
        """Like `read_slice`, but only from an object already open whose bytes are in the
        page cache; `WouldBlockError` otherwise (the caller then takes the blocking path)."""
        with self._lock:
            slot = self._slots.get(index)
            if slot is None or isinstance(slot.file, io.BytesIO):
                raise WouldBlockError
            slot.uses += 1
        try:
            buffer = bytearray(stop - start)
            try:
                done = os.preadv(slot.file.fileno(), [buffer], start, os.RWF_NOWAIT)
            except (BlockingIOError, OSError):  # EAGAIN, or RWF_NOWAIT unsupported here
                raise WouldBlockError from None
            if done != len(buffer):  # not all cached, or short: the blocking path decides
                raise WouldBlockError
            return bytes(buffer)
        finally:
            self._release(slot)

    def close(self) -> None:
        with self._lock:
            for slot in self._slots.values():
                self._retire_locked(slot)
            self._slots.clear()


def _prefetch(repository: Repository, entry: DirEntry, piece: Piece) -> None:
    try:
        repository.prefetch_piece(entry, piece)
    except Exception as exc:  # the reader fetches it again and reports the error
        log.debug("read-ahead of %s failed: %s", piece.hash, exc)


class OpenFiles:
    """The open regular files of one mount, by handle."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: dict[int, OpenFile] = {}
        self._next = itertools.count(1)
        self._prefetcher: ThreadPoolExecutor | None = None

    def open(self, ino: int, path: str, entry: DirEntry, pieces: list[Piece]) -> int:
        with self._lock:
            handle = next(self._next)
            self._handles[handle] = OpenFile(ino, path, entry, pieces)
        return handle

    def get(self, handle: int) -> OpenFile:
        with self._lock:
            opened = self._handles.get(handle)
        if opened is None:
            raise FsError(errno.EBADF, f"file handle {handle} is not open")
        return opened

    def find(self, handle: int) -> OpenFile | None:
        with self._lock:
            return self._handles.get(handle)

    def holding(self, ino: int) -> OpenFile | None:
        """An open file of inode `ino` (what a replaced inode still reads), if any."""
        with self._lock:
            return next((h for h in self._handles.values() if h.ino == ino), None)

    def read(self, opened: OpenFile, offset: int, size: int, repository: Repository,
             read_slice: Callable[[int, int, int], bytes]) -> bytes:
        """Bytes [offset, offset + size) of an open file through `read_slice`, then the
        read-ahead behind the last piece touched."""
        touched: list[int] = []

        def load(index: int, start: int, stop: int) -> bytes:
            touched.append(index)
            return read_slice(index, start, stop)

        data = read_pieces(opened.pieces, offset, min(offset + size, opened.entry.size), load)
        if touched:
            self._read_ahead(opened, touched[-1], repository)
        return data

    def _read_ahead(self, opened: OpenFile, index: int, repository: Repository) -> None:
        """Fetch the next chunks of a chunked file in the background while this one is
        read; errors are left for the real read to report."""
        wanted = [i for i in range(index + 1, min(index + 1 + READ_AHEAD_PIECES,
                                                  len(opened.pieces)))
                  if i not in opened.prefetched]
        if not wanted:
            return
        with self._lock:
            if self._prefetcher is None:
                self._prefetcher = ThreadPoolExecutor(PREFETCH_THREADS,
                                                      thread_name_prefix="read-ahead")
            prefetcher = self._prefetcher
        for i in wanted:
            opened.prefetched.add(i)
            prefetcher.submit(_prefetch, repository, opened.entry, opened.pieces[i])

    def release(self, handle: int) -> None:
        with self._lock:
            opened = self._handles.pop(handle, None)
        if opened is not None:
            opened.close()

    def close(self) -> None:
        """Stop read-ahead and close every handle (at unmount)."""
        with self._lock:
            prefetcher, self._prefetcher = self._prefetcher, None
            handles, self._handles = list(self._handles.values()), {}
        if prefetcher is not None:
            prefetcher.shutdown(wait=True, cancel_futures=True)
        for opened in handles:
            opened.close()
