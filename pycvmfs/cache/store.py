"""Content-addressed object store: the files of a cache directory (fact sheet 9.2, R6, R8).

Layout (identical to the reference client's):

    <cache>/00 .. <cache>/ff       decompressed objects, `XX/rest` = ContentHash.cache_path()
    <cache>/txn/fetch<pid>.XXXXXX  objects being written (one per transaction)
    <cache>/quarantaine/<hash>     objects that failed a size check, kept for inspection
    <cache>/.cvmfscache            sentinel: "this directory is a cache"

Visibility contract: an object appears under `XX/rest` only by an atomic `rename(2)` (or
`link(2)` for the alien cache) of a complete temporary file, and only when the caller
commits — which it does after the network layer verified the hash (R6). A process killed
at any moment (kill -9 included) therefore leaves at worst a stale file in `txn/`, never
a partial object. Commits are fsync-less like the reference: after a *power* loss a
renamed object could be empty; the reference accepts the same trade-off.

Crash recovery: at start, temp files in `txn/` whose writer is gone are removed. Their
names carry the writer's pid (`fetch<pid>.XXXXXX`) because a shared cache may have other
live writers; a file is stale when its pid is dead or it is older than
`STALE_TXN_SECONDS`. The alien cache (other hosts' pids mean nothing) and foreign names
(the reference's `fetchXXXXXX`) use age only.

The store knows nothing of LRU, quotas or catalogs; `quota.py` keeps the index.

Thread-safety: an `ObjectStore` may be used from many threads; a `Txn` belongs to one
thread at a time. Process-safety: any number of processes (hosts, for the alien cache)
may share a directory; two writers of the same object both rename complete, identical
content, so whichever wins is right. Readers holding an object open keep their bytes when
it is replaced or evicted (POSIX unlink semantics).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from pycvmfs.cache.shared import owner_alive
from pycvmfs.errors import SizeMismatchError
from pycvmfs.format.hashes import ContentHash

SENTINEL_NAME = ".cvmfscache"
TXN_DIR_NAME = "txn"
QUARANTINE_DIR_NAME = "quarantaine"  # sic: the reference's spelling
TXN_PREFIX = "fetch"
DIR_MODE = 0o700
ALIEN_DIR_MODE = 0o770  # a group shares an alien cache
ALIEN_FILE_MODE = 0o660
STALE_TXN_SECONDS = 24 * 3600  # longer than any single download could take
HEX_DIGITS = "0123456789abcdef"


def object_relpath(key: str) -> str:
    """`XX/rest` for a textual hash (same as `ContentHash.cache_path`)."""
    return f"{key[:2]}/{key[2:]}"


class Txn:
    """One object being written. Use as the sink destination: `write`, `reset`, then
    `commit()` after verification or `abort()`; as a context manager it aborts unless
    committed."""

    def __init__(self, store: ObjectStore, key: ContentHash, fd: int, path: Path) -> None:
        self.store = store
        self.hash = key
        self.temp_path = path
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self.size = 0
        self.done = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._live().write(data)
        self.size += len(data)

    def reset(self) -> None:
        """Drop everything written (a failed download attempt retries into the same txn)."""
        fh = self._live()
        fh.seek(0)
        fh.truncate()
        self.size = 0

    def commit(self, expected_size: int | None = None) -> Path:
        return self.store.commit(self, expected_size)

    def abort(self) -> None:
        self.store.abort(self)

    def _live(self) -> BinaryIO:
        if self._file is None:
            raise ValueError(f"transaction for {self.hash} is finished")
        return self._file

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Txn:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.done:
            self.abort()


class ObjectStore:
    """Files of one cache directory; `alien=True` for `CVMFS_ALIEN_CACHE` semantics."""

    def __init__(self, directory: Path | str, *, alien: bool = False) -> None:
        self.directory = Path(directory)
        self.alien = alien
        self._dir_mode = ALIEN_DIR_MODE if alien else DIR_MODE
        self._txn_dir = self.directory / TXN_DIR_NAME
        self._quarantine_dir = self.directory / QUARANTINE_DIR_NAME
        self._create_layout()
        self.recover()

    # -- layout and recovery -------------------------------------------------------------

    def _create_layout(self) -> None:
        self._mkdir(self.directory)
        for a in HEX_DIGITS:
            for b in HEX_DIGITS:
                self._mkdir(self.directory / (a + b))
        self._mkdir(self._txn_dir)
        self._mkdir(self._quarantine_dir)
        sentinel = self.directory / SENTINEL_NAME
        if not sentinel.exists():
            sentinel.touch(mode=ALIEN_FILE_MODE if self.alien else 0o600)

    def _mkdir(self, path: Path) -> None:
        try:
            path.mkdir(mode=self._dir_mode)
        except FileExistsError:
            return
        os.chmod(path, self._dir_mode)  # mkdir's mode is filtered by the umask

    def recover(self, now: float | None = None) -> list[str]:
        """Remove stale temp files left by crashed writers; returns their names."""
        now = time.time() if now is None else now
        removed = []
        for entry in os.scandir(self._txn_dir):
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            pid = _txn_pid(entry.name)
            dead = pid is not None and not self.alien and not owner_alive(str(pid))
            if dead or age > STALE_TXN_SECONDS:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
        return removed

    # -- transactions ---------------------------------------------------------------------

    def begin(self, key: ContentHash) -> Txn:
        fd, name = tempfile.mkstemp(prefix=f"{TXN_PREFIX}{os.getpid()}.", dir=self._txn_dir)
        return Txn(self, key, fd, Path(name))

    def commit(self, txn: Txn, expected_size: int | None = None) -> Path:
        """Make the verified object visible. A size different from `expected_size` moves
        the file to `quarantaine/` and raises `SizeMismatchError`."""
        if txn.done:
            raise ValueError(f"transaction for {txn.hash} is finished")
        fh = txn._live()
        fh.flush()
        if self.alien:
            os.fchmod(fh.fileno(), ALIEN_FILE_MODE)
        txn._close()
        txn.done = True
        if expected_size is not None and txn.size != expected_size:
            target = self._quarantine_dir / str(txn.hash)
            os.replace(txn.temp_path, target)
            raise SizeMismatchError(
                f"object {txn.hash}: {txn.size} bytes, expected {expected_size}; "
                f"moved to {target}"
            )
        final = self.path_of(txn.hash)
        if self.alien:
            _publish_by_link(txn.temp_path, final)
        else:
            os.replace(txn.temp_path, final)
        return final

    def abort(self, txn: Txn) -> None:
        if txn.done:
            return
        txn._close()
        txn.done = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(txn.temp_path)

    # -- objects --------------------------------------------------------------------------

    def path_of(self, key: ContentHash | str) -> Path:
        return self.directory / object_relpath(str(key))

    def open(self, key: ContentHash | str) -> BinaryIO | None:
        """The object opened for reading (caller closes), or None when absent."""
        try:
            return open(self.path_of(key), "rb")  # noqa: SIM115 - ownership passes to caller
        except FileNotFoundError:
            return None

    def open_fd(self, key: ContentHash | str) -> int | None:
        """A raw read-only descriptor (for `os.pread` in the FUSE read path; caller closes),
        or None when absent."""
        try:
            return os.open(self.path_of(key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None

    def contains(self, key: ContentHash | str) -> bool:
        return self.path_of(key).is_file()

    def size_of(self, key: ContentHash | str) -> int | None:
        try:
            return self.path_of(key).stat().st_size
        except FileNotFoundError:
            return None

    def remove(self, key: ContentHash | str) -> bool:
        """Unlink the object; readers that have it open keep reading. True if it existed."""
        try:
            os.unlink(self.path_of(key))
        except FileNotFoundError:
            return False
        return True

    def quarantine(self, key: ContentHash | str) -> Path | None:
        """Move a committed object aside (it failed a size check); None if absent."""
        target = self._quarantine_dir / str(key)
        try:
            os.replace(self.path_of(key), target)
        except FileNotFoundError:
            return None
        return target

    def iter_objects(self) -> Iterator[tuple[str, int, float]]:
        """(textual hash, size, mtime) of every object file; unparsable names included
        as-is so `verify` can report them."""
        yield from iter_object_files(self.directory)


def iter_object_files(directory: Path) -> Iterator[tuple[str, int, float]]:
    for a in HEX_DIGITS:
        for b in HEX_DIGITS:
            try:
                it = os.scandir(directory / (a + b))
            except FileNotFoundError:
                continue
            with it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    yield a + b + entry.name, st.st_size, st.st_mtime


def _txn_pid(name: str) -> int | None:
    if not name.startswith(TXN_PREFIX):
        return None
    pid_text = name[len(TXN_PREFIX) :].partition(".")[0]
    return int(pid_text) if pid_text.isdigit() else None


def _publish_by_link(temp: Path, final: Path) -> None:
    """Alien cache on a shared filesystem: `link` + `unlink` never replaces a file another
    host may be reading (NFS would give it ESTALE); an existing object has the same bytes."""
    try:
        os.link(temp, final)
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        os.replace(temp, final)  # no hard links on this filesystem
        return
    os.unlink(temp)
