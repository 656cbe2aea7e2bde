"""Object loaders of a `Repository`: where its verified catalogs, histories and file objects
come from.

`Objects` (no cache; `pycvmfs ls | cat | stat`) streams every object through a
`VerifyingSink` (`source.fetch_into`), the one place object bytes are checked: hash over the
stored bytes, inflation in bounded steps, size. File objects over 1 MiB land in an unlinked
temporary file of the work directory and are read from there (memory stays flat for any
object size), smaller ones stay in memory; catalogs and histories are written to the work
directory under their hash and opened in place. `CachedObjects` (a mount) goes through the
cache `Fetcher` instead: downloaded once, verified while streaming, served from
`<cache>/XX/...` afterwards.

Budgets: a file object or chunk may bring no more than its catalog size allows
(`format.compression.stored_size_bound`); catalogs and histories may inflate to
`max_catalog_bytes` (the reader's default is `config.MAX_CATALOG_MB_DEFAULT`; a mount takes
`PYCVMFS_MAX_CATALOG_MB` through its fetcher).

Thread-safety: loaders may be used from several threads; each call has its own sink and
temporary file, and work directory files are renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pycvmfs.cache.fetcher import Fetcher, unsized_hint
from pycvmfs.cache.host import CacheHost
from pycvmfs.cache.quota import ObjectKind
from pycvmfs.config import MAX_CATALOG_MB_DEFAULT
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.network.sink import (
    Destination,
    MemoryDestination,
    TempFileDestination,
    VerifyingSink,
    local_write_error,
)
from pycvmfs.repository.catalog import Catalog
from pycvmfs.repository.source import ObjectSource
from pycvmfs.repository.trust import error_context

MAX_CATALOG_BYTES = MAX_CATALOG_MB_DEFAULT << 20  # inflate cap for catalogs and histories
PREFETCH_READ_BYTES = 1 << 20  # read-ahead warms the page cache in blocks of this size
IN_MEMORY_OBJECT_BYTES = 1 << 20  # `open` keeps objects up to this size in memory, not a file


def catalog_name(content_hash: ContentHash, mountpoint: str) -> str:
    """How errors name a catalog: `root catalog <hash>` or `catalog of /a/b <hash>`."""
    return f"catalog of {mountpoint} {content_hash}" if mountpoint else \
        f"root catalog {content_hash}"


class WorkFile:
    """A `Destination` writing one work directory file under a temporary name; `commit`
    renames it into place, `discard` removes it."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / name
        try:
            fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        except OSError as exc:
            raise local_write_error(exc, f"{self.path}") from exc
        self._temp = Path(temp)
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise local_write_error(exc, f"{self.path}") from exc

    def reset(self) -> None:
        try:
            self._file.seek(0)
            self._file.truncate()
        except OSError as exc:
            raise local_write_error(exc, f"{self.path}") from exc

    def commit(self) -> Path:
        try:
            self._file.close()
            os.replace(self._temp, self.path)
        except OSError as exc:
            self.discard()
            raise local_write_error(exc, f"{self.path}") from exc
        return self.path

    def discard(self) -> None:
        with contextlib.suppress(OSError):  # closing flushes, which may fail on a full disk
            self._file.close()
        self._temp.unlink(missing_ok=True)


class Workdir:
    """Private directory for verified, decompressed catalogs; removed by `cleanup`. Made on
    first use only: a mount, whose objects live in its cache, never creates one (nothing
    outside the mount point and the cache is touched)."""

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
                self._path = Path(tempfile.mkdtemp(prefix="pycvmfs-", dir=self._parent))
            return self._path

    @contextlib.contextmanager
    def new_file(self, name: str) -> Iterator[WorkFile]:
        """A file written atomically: in place under `name` only if the block succeeds."""
        out = WorkFile(self.path, name)
        try:
            yield out
        except BaseException:
            out.discard()
            raise
        out.commit()

    def cleanup(self) -> None:
        with self._lock:
            path, self._path = self._path, None
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


class Objects:
    """Fetch an object from the source, verified and inflated while it streams (the loader
    of the no-cache reader)."""

    def __init__(self, source: ObjectSource, fqrn: str, workdir: Workdir, *,
                 max_catalog_bytes: int = MAX_CATALOG_BYTES) -> None:
        self.source = source
        self.fqrn = fqrn
        self.workdir = workdir
        self.max_catalog_bytes = max_catalog_bytes

    def _fetch_into(self, content_hash: ContentHash, suffix: Suffix, out: Destination, *,
                    what: str, compression: Compression, expected_size: int | None) -> None:
        hint = unsized_hint(self.max_catalog_bytes) if expected_size is None else ""
        with error_context(self.fqrn, self.source, what), \
                VerifyingSink(content_hash, compression, out, expected_size=expected_size,
                              max_size=self.max_catalog_bytes, spool_dir=self.workdir.path,
                              hint=hint) as sink:
            self.source.fetch_into(content_hash.object_path(suffix), sink)

    def get(self, content_hash: ContentHash, suffix: Suffix, *, what: str,
            compression: Compression = Compression.ZLIB,
            expected_size: int | None = None) -> bytes:
        """The verified object in memory (small objects; `open` streams big ones)."""
        cap = self.max_catalog_bytes if expected_size is None else expected_size
        out = MemoryDestination(cap + 1)  # the sink's own cap reports an overflow first
        self._fetch_into(content_hash, suffix, out, what=what, compression=compression,
                         expected_size=expected_size)
        return out.getvalue()

    def open(self, content_hash: ContentHash, suffix: Suffix, *, what: str,
             compression: Compression, expected_size: int) -> BinaryIO:
        """The verified object as a readable unlinked temporary file (no cache here); a
        small one in memory."""
        if expected_size <= IN_MEMORY_OBJECT_BYTES:
            return io.BytesIO(self.get(content_hash, suffix, what=what, compression=compression,
                                       expected_size=expected_size))
        out = TempFileDestination(self.workdir.path)
        try:
            self._fetch_into(content_hash, suffix, out, what=what, compression=compression,
                             expected_size=expected_size)
        except BaseException:
            out.close()
            raise
        return out.reader()

    def prefetch(self, content_hash: ContentHash, suffix: Suffix, *,
                 compression: Compression, expected_size: int) -> None:
        """Warm a cache ahead of a read; nothing to warm without one."""

    def discard(self, content_hash: ContentHash) -> None:
        """Forget a stored copy found corrupt; nothing is stored without a cache."""

    def database(self, content_hash: ContentHash, suffix: Suffix, what: str) -> Path:
        """A catalog or history database, verified, in the work directory."""
        with self.workdir.new_file(f"{content_hash}{suffix.value}") as out:
            self._fetch_into(content_hash, suffix, out, what=what,
                             compression=Compression.ZLIB, expected_size=None)
        return out.path

    def load_catalog(self, content_hash: ContentHash, mountpoint: str) -> Catalog:
        """The `CatalogTree` loader: download, verify, write, open read-only."""
        path = self.database(content_hash, Suffix.CATALOG, catalog_name(content_hash, mountpoint))
        with error_context(self.fqrn, self.source):
            return Catalog(path, content_hash=content_hash)


class CachedObjects(Objects):
    """Objects through the client cache: downloaded once, verified while streaming, served
    from `<cache>/XX/...` afterwards; catalogs are opened in place and pinned."""

    def __init__(self, source: ObjectSource, fqrn: str, workdir: Workdir,
                 fetcher: Fetcher) -> None:
        super().__init__(source, fqrn, workdir, max_catalog_bytes=fetcher.max_unsized_bytes)
        self.fetcher = fetcher
        self.on_pressure: Callable[[], object] = lambda: None

    def get(self, content_hash: ContentHash, suffix: Suffix, *, what: str,
            compression: Compression = Compression.ZLIB,
            expected_size: int | None = None) -> bytes:
        with error_context(self.fqrn, self.source), \
                self.fetcher.fetch(content_hash, suffix, compression,
                                   expected_size=expected_size) as fh:
            return fh.read()

    def open(self, content_hash: ContentHash, suffix: Suffix, *, what: str,
             compression: Compression, expected_size: int) -> BinaryIO:
        """The cached file itself, counted as open so this process never evicts it while a
        reader holds it (the descriptor would keep the bytes anyway; the quota should not
        count them as free)."""
        with error_context(self.fqrn, self.source):
            fh = self.fetcher.fetch(content_hash, suffix, compression,
                                    expected_size=expected_size)
        _advise(fh, os.POSIX_FADV_SEQUENTIAL)
        return _OpenObject(fh, content_hash, self.fetcher.host)

    def prefetch(self, content_hash: ContentHash, suffix: Suffix, *,
                 compression: Compression, expected_size: int) -> None:
        """Download it if missing; if cached, read it once so its pages are in memory when
        the reader gets there (the disk works while the reader is busy elsewhere)."""
        with error_context(self.fqrn, self.source), \
                self.fetcher.fetch(content_hash, suffix, compression,
                                   expected_size=expected_size) as fh:
            _warm_page_cache(fh)

    def discard(self, content_hash: ContentHash) -> None:
        """Move a cached object found corrupt (wrong size, short read) to quarantine and
        out of the index: the next open downloads and verifies it again."""
        host = self.fetcher.host
        host.store.quarantine(content_hash)
        host.quota.remove(content_hash)

    def database(self, content_hash: ContentHash, suffix: Suffix, what: str) -> Path:
        with error_context(self.fqrn, self.source, what), \
                self.fetcher.fetch(content_hash, suffix, Compression.ZLIB,
                                   kind=ObjectKind.CATALOG) as fh:
            path = Path(fh.name)
            self.fetcher.host.pin(content_hash, path.stat().st_size)
        return path

    def load_catalog(self, content_hash: ContentHash, mountpoint: str) -> Catalog:
        """Catalogs stay pinned in the cache while attached; when the cache gets crowded
        with pinned catalogs, `on_pressure` (the tree's `detach_nested`) gives them back."""
        if self.fetcher.host.quota.pin_pressure():
            self.on_pressure()
        path = self.database(content_hash, Suffix.CATALOG, catalog_name(content_hash, mountpoint))
        with error_context(self.fqrn, self.source):
            try:
                return Catalog(path, content_hash=content_hash,
                               on_release=lambda: self.fetcher.host.unpin(content_hash))
            except BaseException:
                self.fetcher.host.unpin(content_hash)
                raise


def _advise(fh: BinaryIO, advice: int) -> None:
    """Page-cache hints for cache files (best effort: some filesystems refuse them)."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(fh.fileno(), 0, 0, advice)


def _warm_page_cache(fh: BinaryIO) -> None:
    """Read a cache file into the page cache (into a scratch buffer: the GIL is free
    while the disk works; `WILLNEED` alone measured barely faster than nothing)."""
    scratch = bytearray(PREFETCH_READ_BYTES)
    fd, offset = fh.fileno(), 0
    with contextlib.suppress(OSError):
        while (done := os.preadv(fd, [scratch], offset)) > 0:
            offset += done


class _OpenObject(io.BufferedReader):
    """A cache file registered with the quota as open until closed."""

    def __init__(self, fh: BinaryIO, content_hash: ContentHash, host: CacheHost) -> None:
        super().__init__(io.FileIO(os.dup(fh.fileno()), "rb"))
        fh.close()
        self._hash, self._host = content_hash, host
        host.open_ref(content_hash)

    def close(self) -> None:
        if not self.closed:
            self._host.close_ref(self._hash)
        super().close()
