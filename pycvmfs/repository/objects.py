"""The object loader of a `Repository`: where its verified catalogs, histories and file
objects come from — one class for the mount and for the no-FUSE reader.

Every object goes through a cache `Fetcher` (`cache/fetcher.py`), the one place object
bytes are checked: a `VerifyingSink` within the object's byte budget (hash over the stored
bytes, inflation in bounded steps, size), into a cache transaction that becomes visible
only once verified. A mount's loader uses the mount's cache (`cache_loader`); the no-FUSE
reader (`pycvmfs ls | cat | stat`) gets a temporary, unmanaged store in a private work
directory, removed on `close` (`temporary_loader`). Files are read from their verified
cache file, so memory stays flat for any object size.

Budgets: a file object or chunk may bring no more than its catalog size allows
(`format.compression.stored_size_bound`); catalogs and histories may inflate to the
fetcher's `max_unsized_bytes` (`PYCVMFS_MAX_CATALOG_MB`, default
`config.MAX_CATALOG_MB_DEFAULT`).

Catalogs and histories stay pinned in the cache while open (`Catalog.on_release` unpins).
Open files are counted (`CacheHost.open_ref`) so this process never evicts an object a
reader holds.

Thread-safety: every method may be called from several threads (the fetcher is
single-flight per object).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pycvmfs.cache.fetcher import Fetcher
from pycvmfs.cache.host import CacheConfig, CacheHost
from pycvmfs.cache.quota_protocol import UNLIMITED, ObjectKind
from pycvmfs.config import MAX_CATALOG_MB_DEFAULT
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.repository.catalog import Catalog
from pycvmfs.repository.source import ObjectSource
from pycvmfs.repository.trust import error_context

MAX_CATALOG_BYTES = MAX_CATALOG_MB_DEFAULT << 20  # inflate cap for catalogs and histories
PREFETCH_READ_BYTES = 1 << 20  # read-ahead warms the page cache in blocks of this size
SEQUENTIAL_HINT_BYTES = 1 << 20  # objects this big are read with a sequential hint


def catalog_name(content_hash: ContentHash, mountpoint: str) -> str:
    """How errors name a catalog: `root catalog <hash>` or `catalog of /a/b <hash>`."""
    return f"catalog of {mountpoint} {content_hash}" if mountpoint else \
        f"root catalog {content_hash}"


class Workdir:
    """A private temporary directory, made on first use, removed by `cleanup`."""

    def __init__(self, parent: str | os.PathLike[str] | None) -> None:
        self._parent = parent
        self._path: Path | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        with self._lock:
            if self._path is None:
                if self._parent is not None:
                    Path(self._parent).mkdir(parents=True, exist_ok=True)
                import tempfile  # not imported by every mount (0.65 MB resident)

                self._path = Path(tempfile.mkdtemp(prefix="pycvmfs-", dir=self._parent))
            return self._path

    def cleanup(self) -> None:
        with self._lock:
            path, self._path = self._path, None
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


class ObjectLoader:
    """Verified objects of one repository, by content hash (see the module docstring)."""

    def __init__(self, fetcher: Fetcher, fqrn: str, source: ObjectSource, *,
                 on_close: Callable[[], None] = lambda: None) -> None:
        self.fetcher = fetcher
        self.fqrn = fqrn
        self.source = source  # named in error messages
        self._on_close = on_close

    def _fetch(self, content_hash: ContentHash, suffix: Suffix, *, what: str,
               compression: Compression, expected_size: int | None,
               kind: ObjectKind = ObjectKind.REGULAR) -> BinaryIO:
        with error_context(self.fqrn, self.source, what):
            return self.fetcher.fetch(content_hash, suffix, compression,
                                      expected_size=expected_size, kind=kind)

    def open(self, content_hash: ContentHash, suffix: Suffix, *, what: str,
             compression: Compression, expected_size: int,
             download: bool = True) -> OpenObject | None:
        """The verified cache file itself, by descriptor, counted as open until closed (the
        descriptor would keep the bytes anyway; the quota should not count them as free).
        Without `download`: None when it is not in the cache (the caller must not wait)."""
        with error_context(self.fqrn, self.source, what):
            fd = self.fetcher.fetch_fd(content_hash, suffix, compression,
                                       expected_size=expected_size, download=download)
        if fd is None:
            return None
        if expected_size >= SEQUENTIAL_HINT_BYTES:
            _advise(fd, os.POSIX_FADV_SEQUENTIAL)
        return OpenObject(fd, content_hash, self.fetcher.host)

    def prefetch(self, content_hash: ContentHash, suffix: Suffix, *, what: str,
                 compression: Compression, expected_size: int) -> None:
        """Download it if missing; if cached, read it once so its pages are in memory when
        the reader gets there (the disk works while the reader is busy elsewhere)."""
        with error_context(self.fqrn, self.source, what):
            fd = self.fetcher.fetch_fd(content_hash, suffix, compression,
                                       expected_size=expected_size)
        assert fd is not None
        try:
            _warm_page_cache(fd)
        finally:
            os.close(fd)

    def discard(self, content_hash: ContentHash) -> None:
        """Move a cached object found corrupt (wrong size, short read) to quarantine and
        out of the index: the next open downloads and verifies it again."""
        host = self.fetcher.host
        host.store.quarantine(content_hash)
        host.quota.remove(content_hash)

    def database(self, content_hash: ContentHash, suffix: Suffix, what: str) -> Path:
        """A catalog or history database, verified, pinned, opened in place by SQLite."""
        with self._fetch(content_hash, suffix, what=what, compression=Compression.ZLIB,
                         expected_size=None, kind=ObjectKind.CATALOG) as fh:
            path = Path(fh.name)
            self.fetcher.host.pin(content_hash, path.stat().st_size)
        return path

    def load_catalog(self, content_hash: ContentHash, mountpoint: str) -> Catalog:
        """The `CatalogTree` loader: pinned while attached, unpinned on release."""
        path = self.database(content_hash, Suffix.CATALOG, catalog_name(content_hash, mountpoint))
        with error_context(self.fqrn, self.source):
            try:
                return Catalog(path, content_hash=content_hash,
                               on_release=lambda: self.fetcher.host.unpin(content_hash))
            except BaseException:
                self.fetcher.host.unpin(content_hash)
                raise

    def crowded(self) -> bool:
        """Pinned catalogs crowd the cache: the tree should give its nested ones back."""
        return self.fetcher.host.quota.pin_pressure()

    def close(self) -> None:
        """Release what this loader owns (a temporary store; nothing for a mount's cache)."""
        self._on_close()


def cache_loader(fetcher: Fetcher, fqrn: str, source: ObjectSource) -> ObjectLoader:
    """A mount's loader: objects in the mount's cache, shared by all its revisions."""
    return ObjectLoader(fetcher, fqrn, source)


def temporary_loader(source: ObjectSource, fqrn: str, *,
                     parent: str | os.PathLike[str] | None = None,
                     max_catalog_bytes: int = MAX_CATALOG_BYTES) -> ObjectLoader:
    """The no-FUSE reader's loader: an unmanaged store in a fresh directory inside `parent`
    (default: the system temporary directory), removed with everything in it on `close`."""
    work = Workdir(parent)
    try:
        host = CacheHost(CacheConfig(work.path / "objects", quota_limit_mb=UNLIMITED,
                                     shared=False, base=work.path))
    except BaseException:
        work.cleanup()
        raise

    def close() -> None:
        try:
            host.close()
        finally:
            work.cleanup()

    fetcher = Fetcher(host, source, max_unsized_bytes=max_catalog_bytes)
    return ObjectLoader(fetcher, fqrn, source, on_close=close)


def _advise(fd: int, advice: int) -> None:
    """Page-cache hints for cache files (best effort: some filesystems refuse them)."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, advice)


def _warm_page_cache(fd: int) -> None:
    """Read a cache file into the page cache (into a scratch buffer: the GIL is free
    while the disk works; `WILLNEED` alone measured barely faster than nothing)."""
    scratch = bytearray(PREFETCH_READ_BYTES)
    offset = 0
    with contextlib.suppress(OSError):
        while (done := os.preadv(fd, [scratch], offset)) > 0:
            offset += done


class OpenObject:
    """A verified cache file held by its descriptor (read with `pread`), registered with
    the quota as open until closed. No file object: a small file's read path opens and
    closes one of these per file."""

    __slots__ = ("_fd", "_hash", "_host")

    def __init__(self, fd: int, content_hash: ContentHash, host: CacheHost) -> None:
        self._fd, self._hash, self._host = fd, content_hash, host
        host.open_ref(content_hash)

    def fileno(self) -> int:
        return self._fd

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
            self._host.close_ref(self._hash)

    def __enter__(self) -> OpenObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
