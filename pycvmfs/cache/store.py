"""Content-addressed object store: the files of a cache directory (fact sheet 9.2, R6, R8).

Layout (identical to the reference client's):

    <cache>/00 .. <cache>/ff         decompressed objects, `XX/rest` = ContentHash.cache_path()
    <cache>/txn/fetch<pid>.XXXXXXXX  objects being written (one per transaction)
    <cache>/quarantaine/<hash>       objects that failed a size check, kept for inspection
    <cache>/.cvmfscache              sentinel: "this directory is a cache"

Visibility contract: an object appears under `XX/rest` only by an atomic `rename(2)` (or
`link(2)` for the alien cache) of a complete temporary file, and only when the caller
commits — which it does after the network layer verified the hash (R6). A process killed
at any moment (kill -9 included) therefore leaves at worst a stale file in `txn/`, never
a partial object. Commits are fsync-less like the reference: after a *power* loss a
renamed object could be empty; the reference accepts the same trade-off.

Other users (issue 9, class 4): the store works only through the checked directory
descriptors of `safe_dir` — its own directory and every layout subdirectory are refused
when they are symlinks, another user's or writable by others. Objects are opened with
`O_NOFOLLOW` relative to the cache descriptor; an entry that is a symlink, not a regular
file or not the cache owner's is a corrupt cache entry: removed (logged) and reported as
a miss, so it is fetched and verified again, never served.

Failures (issue 9, class 12): an aborted or failed transaction always removes its
temporary file, even when closing it fails (flushing the last buffer into a full disk);
ENOSPC/EDQUOT while writing surface as `CacheFullError` naming the cache directory.

Crash recovery: at start, temp files in `txn/` whose writer is gone are removed. Only files
it can prove are transaction files go: the name pattern `fetch<pid>.XXXXXXXX` (or the
reference's `fetchXXXXXX`), a regular file, the cache owner's, inside the real `txn/`
opened by descriptor. A file is stale when its pid is dead or it is older than
`STALE_TXN_SECONDS`; the alien cache (other hosts' pids mean nothing) uses age only.

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
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from pycvmfs.cache.safe_dir import (
    DIR_MODE,
    FILE_FLAGS,
    SafeDir,
    Trust,
    file_problem,
    open_directory,
)
from pycvmfs.cache.shared import owner_alive
from pycvmfs.errors import CacheFullError, SizeMismatchError
from pycvmfs.format.hashes import ContentHash

log = logging.getLogger(__name__)

SENTINEL_NAME = ".cvmfscache"
TXN_DIR_NAME = "txn"
QUARANTINE_DIR_NAME = "quarantaine"  # sic: the reference's spelling
TXN_PREFIX = "fetch"
TXN_NAME = re.compile(r"fetch(?:(\d+)\.)?[A-Za-z0-9_]{1,32}")  # ours, the reference's
ALIEN_DIR_MODE = 0o770  # a group shares an alien cache
ALIEN_FILE_MODE = 0o660
STALE_TXN_SECONDS = 24 * 3600  # longer than any single download could take
HEX_DIGITS = "0123456789abcdef"
OBJECT_DIRS = tuple(a + b for a in HEX_DIGITS for b in HEX_DIGITS)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def object_relpath(key: str) -> str:
    """`XX/rest` for a textual hash (same as `ContentHash.cache_path`)."""
    return f"{key[:2]}/{key[2:]}"


def as_safe_dir(directory: Path | str | SafeDir, *, alien: bool = False,
                create: bool = False) -> tuple[SafeDir, bool]:
    """(checked directory, whether the caller opened it and so must close it)."""
    if isinstance(directory, SafeDir):
        return directory, False
    mode = ALIEN_DIR_MODE if alien else DIR_MODE
    return open_directory(directory, Trust(alien=alien), create=create, mode=mode), True


def cache_full(directory: Path, what: str, exc: OSError) -> CacheFullError:
    return CacheFullError(
        f"cache directory {directory} is full ({os.strerror(exc.errno or errno.ENOSPC)}) "
        f"while writing {what}: free space on its file system or set CVMFS_QUOTA_LIMIT "
        "(MB) below the free space")


class Txn:
    """One object being written. Use as the sink destination: `write`, `reset`, then
    `commit()` after verification or `abort()`; as a context manager it aborts unless
    committed."""

    def __init__(self, store: ObjectStore, key: ContentHash, fd: int, name: str) -> None:
        self.store = store
        self.hash = key
        self.name = name  # in the store's txn/ directory
        self.temp_path = store.directory / TXN_DIR_NAME / name
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self.size = 0
        self.done = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._live().write(data)
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise cache_full(self.store.directory, f"object {self.hash}", exc) from exc
            raise
        self.size += len(data)

    def reset(self) -> None:
        """Drop everything written (a failed download attempt retries into the same txn)."""
        fh = self._live()
        if self.size == 0:  # nothing written: every download starts with a reset
            return
        try:
            fh.seek(0)
            fh.truncate()
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise cache_full(self.store.directory, f"object {self.hash}", exc) from exc
            raise
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
        """Close the file. A failing flush (full disk) is raised, but the descriptor is
        closed either way (BufferedWriter.close closes its raw file after a failed flush)."""
        fh, self._file = self._file, None
        if fh is not None:
            fh.close()

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
    """Files of one cache directory; `alien=True` for `CVMFS_ALIEN_CACHE` semantics.
    `directory` is a checked `SafeDir` (kept open by its owner) or a path, opened here
    (its parent as the base) and closed by `close`."""

    def __init__(self, directory: Path | str | SafeDir, *, alien: bool = False) -> None:
        self.root, self._owns_root = as_safe_dir(directory, alien=alien, create=True)
        self.directory = self.root.path
        self.alien = alien
        self._dir_mode = ALIEN_DIR_MODE if alien else DIR_MODE
        try:
            self._create_layout()
            self.recover()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for directory in (getattr(self, "_txn", None), getattr(self, "_quarantine", None)):
            if directory is not None:
                directory.close()
        if self._owns_root:
            self.root.close()

    # -- layout and recovery -------------------------------------------------------------

    def _create_layout(self) -> None:
        for name in OBJECT_DIRS:
            self.root.subdir(name, create=True, mode=self._dir_mode).close()
        self._txn = self.root.subdir(TXN_DIR_NAME, create=True, mode=self._dir_mode)
        self._quarantine = self.root.subdir(QUARANTINE_DIR_NAME, create=True,
                                            mode=self._dir_mode)
        with contextlib.suppress(FileExistsError):  # never opens what is there already
            os.close(os.open(SENTINEL_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                             | os.O_NOFOLLOW | os.O_CLOEXEC,
                             ALIEN_FILE_MODE if self.alien else 0o600, dir_fd=self.root.fd))

    def recover(self, now: float | None = None) -> list[str]:
        """Remove stale temp files left by crashed writers; returns their names. Anything
        in `txn/` that is not provably one of our transaction files stays."""
        now = time.time() if now is None else now
        removed = []
        for name in self._txn.names():
            match = TXN_NAME.fullmatch(name)
            st = self._txn.lstat(name) if match else None
            if match is None or st is None or not stat.S_ISREG(st.st_mode):
                continue
            if not self.root.trust.owner_ok(st.st_uid, st.st_gid):
                continue
            pid = int(match.group(1)) if match.group(1) else None
            dead = pid is not None and not self.alien and not owner_alive(str(pid))
            if (dead or now - st.st_mtime > STALE_TXN_SECONDS) and self._txn.unlink(name):
                removed.append(name)
        return removed

    # -- transactions ---------------------------------------------------------------------

    def begin(self, key: ContentHash) -> Txn:
        try:
            fd, name = self._txn.create_temp(f"{TXN_PREFIX}{os.getpid()}.")
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise cache_full(self.directory, f"object {key}", exc) from exc
            raise
        return Txn(self, key, fd, name)

    def commit(self, txn: Txn, expected_size: int | None = None) -> Path:
        """Make the verified object visible. A size different from `expected_size` moves
        the file to `quarantaine/` and raises `SizeMismatchError`. Whatever fails, the
        temporary file does not stay behind."""
        if txn.done:
            raise ValueError(f"transaction for {txn.hash} is finished")
        txn.done = True
        moved = False
        try:
            try:
                if self.alien:
                    _share_with_group(txn._live().fileno(), self.root.trust)
                txn._close()
            except OSError as exc:
                if exc.errno in DISK_FULL:
                    raise cache_full(self.directory, f"object {txn.hash}", exc) from exc
                raise
            if expected_size is not None and txn.size != expected_size:
                os.replace(txn.name, str(txn.hash), src_dir_fd=self._txn.fd,
                           dst_dir_fd=self._quarantine.fd)
                moved = True
                raise SizeMismatchError(
                    f"object {txn.hash}: {txn.size} bytes, expected {expected_size}; "
                    f"moved to {self._quarantine.path / str(txn.hash)}")
            relpath = object_relpath(str(txn.hash))
            if self.alien:
                _publish_by_link(self._txn, txn.name, self.root, relpath)
            else:
                os.replace(txn.name, relpath, src_dir_fd=self._txn.fd, dst_dir_fd=self.root.fd)
            moved = True
        finally:
            if not moved:
                self._discard(txn)
        return self.path_of(txn.hash)

    def abort(self, txn: Txn) -> None:
        if txn.done:
            return
        txn.done = True
        self._discard(txn)

    def _discard(self, txn: Txn) -> None:
        """Close (a failing flush does not matter: the file goes) and unlink the temp file."""
        try:
            with contextlib.suppress(OSError):
                txn._close()
        finally:
            try:
                self._txn.unlink(txn.name)
            except OSError as exc:  # never mask the error that made us abort
                log.warning("cannot remove %s: %s", txn.temp_path, exc.strerror)

    # -- objects --------------------------------------------------------------------------

    def path_of(self, key: ContentHash | str) -> Path:
        """Where the object is, for messages and tests (the store itself uses descriptors)."""
        return self.directory / object_relpath(str(key))

    def open(self, key: ContentHash | str) -> BinaryIO | None:
        """The object opened for reading (caller closes), or None when absent. Its `name`
        is a `/proc/self/fd` path through the cache descriptor (SQLite opens catalogs by
        name)."""
        fd = self.open_fd(key)
        return None if fd is None else self.file_of(fd, key)

    def file_of(self, fd: int, key: ContentHash | str) -> BinaryIO:
        """Descriptor `fd` of object `key` (from `open_fd`) as a file object that owns it."""
        name = self.root.proc_path(object_relpath(str(key)))
        return open(name, "rb", opener=lambda _path, _flags: fd)  # noqa: SIM115 - caller closes

    def open_fd(self, key: ContentHash | str) -> int | None:
        """A raw read-only descriptor (for `os.pread` in the FUSE read path; caller closes),
        or None when absent or not a trustworthy cache entry (then removed)."""
        relpath = object_relpath(str(key))
        try:
            fd = os.open(relpath, os.O_RDONLY | FILE_FLAGS, dir_fd=self.root.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            self._drop_corrupt(key, "is a symbolic link")
            return None
        try:
            problem = file_problem(os.fstat(fd), self.root.trust, links=False)
            if problem is None:
                os.set_blocking(fd, True)  # O_NONBLOCK only guarded the open
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        self._drop_corrupt(key, problem)
        return None

    def _drop_corrupt(self, key: ContentHash | str, problem: str) -> None:
        log.warning("cache entry %s %s: removed; it is fetched and verified again",
                    self.path_of(key), problem)
        relpath = object_relpath(str(key))
        try:
            os.unlink(relpath, dir_fd=self.root.fd)
        except IsADirectoryError:
            with contextlib.suppress(OSError):
                os.rmdir(relpath, dir_fd=self.root.fd)
        except FileNotFoundError:
            pass

    def _entry(self, key: ContentHash | str) -> os.stat_result | None:
        """The object's own status if it is a regular file of the cache owner."""
        try:
            st = os.stat(object_relpath(str(key)), dir_fd=self.root.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if file_problem(st, self.root.trust, links=False) is not None:
            return None
        return st

    def contains(self, key: ContentHash | str) -> bool:
        return self._entry(key) is not None

    def size_of(self, key: ContentHash | str) -> int | None:
        st = self._entry(key)
        return None if st is None else st.st_size

    def remove(self, key: ContentHash | str) -> bool:
        """Unlink the object; readers that have it open keep reading. True if it existed."""
        try:
            os.unlink(object_relpath(str(key)), dir_fd=self.root.fd)
        except FileNotFoundError:
            return False
        return True

    def quarantine(self, key: ContentHash | str) -> Path | None:
        """Move a committed object aside (it failed a size check); None if absent."""
        try:
            os.replace(object_relpath(str(key)), str(key), src_dir_fd=self.root.fd,
                       dst_dir_fd=self._quarantine.fd)
        except FileNotFoundError:
            return None
        return self._quarantine.path / str(key)

    def iter_objects(self) -> Iterator[tuple[str, int, float]]:
        """(textual hash, size, mtime) of every object file; unparsable names included
        as-is so `verify` can report them."""
        yield from iter_object_files(self.root)


def iter_object_entries(directory: SafeDir) -> Iterator[tuple[str, os.stat_result]]:
    """(textual hash, lstat) of every entry of the object directories, whatever it is."""
    for sub in OBJECT_DIRS:
        try:
            fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=directory.fd)
        except OSError:  # missing, or not a directory: the layout check reports it
            continue
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    yield sub + entry.name, st
        finally:
            os.close(fd)


def iter_object_files(directory: Path | str | SafeDir) -> Iterator[tuple[str, int, float]]:
    """(textual hash, size, mtime) of every regular object file of the cache owner."""
    root, owned = as_safe_dir(directory)
    try:
        for key, st in iter_object_entries(root):
            if file_problem(st, root.trust, links=False) is None:
                yield key, st.st_size, st.st_mtime
    finally:
        if owned:
            root.close()


def _share_with_group(fd: int, trust: Trust) -> None:
    """Alien cache: the object belongs to the cache's group and the group may read it
    (group-writable only when the group is the cache's: `safe_dir` refuses others)."""
    try:
        if trust.gid is not None and os.fstat(fd).st_gid != trust.gid:
            os.fchown(fd, -1, trust.gid)
        os.fchmod(fd, ALIEN_FILE_MODE)
    except PermissionError:  # not a member of the cache's group: keep it to ourselves
        os.fchmod(fd, 0o640)


def _publish_by_link(txn_dir: SafeDir, temp: str, root: SafeDir, relpath: str) -> None:
    """Alien cache on a shared filesystem: `link` + `unlink` never replaces a file another
    host may be reading (NFS would give it ESTALE); an existing object has the same bytes."""
    try:
        os.link(temp, relpath, src_dir_fd=txn_dir.fd, dst_dir_fd=root.fd,
                follow_symlinks=False)
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        os.replace(temp, relpath, src_dir_fd=txn_dir.fd, dst_dir_fd=root.fd)
        return
    txn_dir.unlink(temp)
