"""One trusted revision of one repository, readable: paths, listings, file contents.

Built only by `repository.open` (trust chain -> root catalog -> catalog tree); the CLI's
reader (`ls`, `cat`, `stat`), a mount's revisions (`repository.revisions`) and the
publisher's checks all read through it. Metadata comes from the catalog tree; contents
through `reader.OpenFile` over the object loader (`objects.py`), the one place bytes are
verified: an object is used only after its hash, its inflation within a byte budget and
its size all checked out. Reads stream from the verified cache file, so memory stays flat
whatever the object size; `read` returns whole bytes for small uses.

Thread-safety: `lookup`, `listdir`, `readlink`, `read*`, `walk` and `tags` may be called from
several threads at once (the catalog tree and catalogs lock internally; the loader is
single-flight per object). `close` waits for `acquire`d leases, not for other calls.

Caveats: external files (flag 128) and bind mountpoints are refused with a PycvmfsError;
symlink targets are returned raw, without `$(VAR)` expansion (the mount expands them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import TracebackType

from pycvmfs.errors import NotFoundError, PycvmfsError
from pycvmfs.format.catalog import DirEntry, total_counters
from pycvmfs.format.hashes import ContentHash
from pycvmfs.format.history import Tag
from pycvmfs.format.manifest import Manifest
from pycvmfs.repository.catalog_tree import CatalogTree, Resolved
from pycvmfs.repository.history import History
from pycvmfs.repository.objects import ObjectLoader
from pycvmfs.repository.reader import OpenFile, Piece, Prefetcher, file_pieces
from pycvmfs.repository.source import ObjectSource
from pycvmfs.repository.trust import TrustedManifest

DEFAULT_READ_BLOCK_BYTES = 1 << 20  # iter_read block: one FUSE-sized read


def normalize_path(path: str) -> str:
    """'' or '/' -> '' (the root); otherwise '/a/b' without empty or trailing components."""
    parts = [part for part in path.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise NotFoundError(f"{path}: '.' and '..' are not resolved; use a canonical path")
    return "/" + "/".join(parts) if parts else ""


def apparent_size(entry: DirEntry) -> int:
    """st_size as the reference client reports it (13.3, 6.10): a symlink's is the length of
    its target (some writers, e.g. tarball ingestion, store 0 in the catalog)."""
    if entry.is_symlink:
        return len(entry.symlink.encode("utf-8", "surrogateescape"))
    return entry.size


def _name_key(item: tuple[str, DirEntry]) -> bytes:
    """Sort by raw name bytes (C-locale order), also for names that are not UTF-8."""
    return item[0].encode("utf-8", "surrogateescape")


class Repository:
    """One revision of one repository, trusted and readable; a context manager.

    Build it with `repository.open.open_repository`. Paths are '' or '/' for the root,
    '/a/b' otherwise."""

    def __init__(self, *, source: ObjectSource, fqrn: str, trusted: TrustedManifest | None,
                 tree: CatalogTree, loader: ObjectLoader, history: History, tag: Tag | None,
                 fixed: bool, owns_loader: bool) -> None:
        self.source = source
        self._fqrn = fqrn
        self.trusted = trusted  # None: an offline mount of a cached root catalog
        self.fixed = fixed  # a tag, a date or a given root hash: never follows the trunk
        self.tree = tree
        self.tag = tag
        self.loader = loader
        self._owns_loader = owns_loader  # a temporary store (the reader), not a mount's cache
        self._history = history
        self._closed = False
        self._lease_lock = threading.Lock()
        self._leases = 0  # directory handles reading this revision (`acquire`)
        self._close_requested = False

    # --- identity ------------------------------------------------------------------------
    @property
    def fqrn(self) -> str:
        return self._fqrn

    @property
    def manifest(self) -> Manifest | None:
        """The verified manifest (None for an offline mount)."""
        return self.trusted.manifest if self.trusted is not None else None

    @property
    def root_hash(self) -> ContentHash:
        """The root catalog being read (the manifest's, a tag's or the given one)."""
        return self.tree.root_hash

    @property
    def revision(self) -> int:
        """Revision of the root catalog being read (equals manifest S for the trunk)."""
        return self.tree.root.revision

    def tags(self) -> list[Tag]:
        """All tags of the history database, newest revision first ([] without history)."""
        return self._history.tags()

    def statistics(self) -> dict[str, int]:
        """Whole-repository counters (self + subtree of the root catalog)."""
        return total_counters(self.tree.root.statistics().items())

    # --- metadata ------------------------------------------------------------------------
    def resolve(self, path: str) -> Resolved:
        """Entry and owning catalog of `path`; NotFoundError if absent."""
        return self.tree.lookup(normalize_path(path))

    def lookup(self, path: str) -> DirEntry:
        return self.resolve(path).entry

    def listdir(self, path: str = "") -> list[tuple[str, DirEntry]]:
        """(name, entry) of the non-hidden children, sorted by name bytes."""
        return sorted(self.tree.listdir(normalize_path(path)), key=_name_key)

    def readlink(self, path: str) -> str:
        """The raw symlink target (no `$(VAR)` expansion)."""
        entry = self.lookup(path)
        if not entry.is_symlink:
            raise PycvmfsError(f"{path}: not a symbolic link")
        return entry.symlink

    def walk(self, path: str = "") -> Iterator[tuple[str, DirEntry]]:
        """Every entry below `path`: a directory's children sorted by name, then each
        subdirectory in the same order, depth first (the order of `expected-trunk.tsv`)."""
        stack = [normalize_path(path)]
        while stack:
            directory = stack.pop()
            subdirs = []
            for name, entry in self.listdir(directory):
                child = f"{directory}/{name}"
                yield child, entry
                if entry.is_dir:
                    subdirs.append(child)
            stack.extend(reversed(subdirs))

    # --- content -------------------------------------------------------------------------
    def pieces(self, path: str) -> tuple[DirEntry, list[Piece]]:
        """The objects that make up regular file `path`, checked to tile it exactly."""
        canonical = normalize_path(path)
        entry, catalog = self.tree.lookup(canonical)
        return entry, file_pieces(canonical, entry, catalog)

    def open_file(self, path: str, prefetcher: Prefetcher | None = None, *,
                  resolved: Resolved | None = None, lasting: bool = False) -> OpenFile:
        """Regular file `path` opened for reading (the caller closes it); with a
        `prefetcher`, the next chunks are fetched in the background as it is read.
        `resolved` saves the lookup when the caller just made it; `lasting`: see
        `reader`."""
        canonical = normalize_path(path)
        entry, catalog = resolved or self.tree.lookup(canonical)
        pieces = file_pieces(canonical, entry, catalog)
        return OpenFile(canonical, entry, pieces, self.loader, prefetcher,
                        lasting=lasting)

    def open_entry(self, path: str, entry: DirEntry, prefetcher: Prefetcher | None = None, *,
                   lasting: bool = False) -> OpenFile:
        """Like `open_file` for an `entry` of this revision the caller resolved before and
        kept (a file of one object: no catalog query; chunked files need `open_file`)."""
        return OpenFile(path, entry, file_pieces(path, entry, None), self.loader, prefetcher,
                        lasting=lasting)

    def iter_read(self, path: str,
                  block: int = DEFAULT_READ_BLOCK_BYTES) -> Iterator[bytes]:
        """The file's bytes in blocks of at most `block` bytes, each object verified before
        its first block (read from the verified file: memory stays flat)."""
        if block <= 0:
            raise ValueError("block must be positive")
        with self.open_file(path) as opened:
            offset = 0
            while data := opened.read(offset, block):
                yield data
                offset += len(data)

    def read(self, path: str) -> bytes:
        """The whole file in memory (every object verified); `iter_read` for big files."""
        with self.open_file(path) as opened:
            return opened.read(0, opened.entry.size)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """Up to `size` bytes from `offset`; loads only the objects that overlap."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        with self.open_file(path) as opened:
            return opened.read(offset, size)

    # --- lifecycle -----------------------------------------------------------------------
    def acquire(self) -> bool:
        """Keep this revision readable until `release`, even after `close` (a directory
        handle lists the revision it was opened on, page by page); False if it is closed."""
        with self._lease_lock:
            if self._closed or self._close_requested:
                return False
            self._leases += 1
            return True

    def release(self) -> None:
        """End one `acquire`; the last one completes a `close` asked for meanwhile."""
        with self._lease_lock:
            self._leases -= 1
            deferred = self._leases == 0 and self._close_requested
        if deferred:
            self._close_now()

    def close(self) -> None:
        """Detach all catalogs and remove a temporary store (idempotent); deferred until
        the last `acquire` is released."""
        with self._lease_lock:
            self._close_requested = True
            if self._leases > 0:
                return
        self._close_now()

    def _close_now(self) -> None:
        with self._lease_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.tree.close()
        finally:
            if self._owns_loader:
                self.loader.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Repository {self.fqrn} rev {self.revision} root {self.root_hash} "
                f"from {self.source.describe()}>")

