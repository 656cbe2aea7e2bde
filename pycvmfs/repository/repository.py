"""The composition root of the no-FUSE reader: one trusted revision of one repository.

`Repository.open` builds, in a fixed order: trust chain (`trust.establish_trust`) -> choice of
root catalog (manifest, a tag from the history database, or an explicit hash) -> object loader
(fetch + verify + inflate into a private work directory) -> catalog tree. The CLI (`ls`, `cat`,
`stat`) uses it today; the FUSE client of the next issue builds on the same object, replacing
the object loader by the cached network fetcher.

Where bytes are verified: every object (catalog, history, whole file, chunk) goes through
`format.compression.open_object`, which checks the content hash over the stored bytes,
inflates with a bound and checks the size the catalog declares, before anything uses it.

Thread-safety: `lookup`, `listdir`, `readlink`, `read*`, `walk` and `tags` may be called from
several threads at once (the catalog tree and catalogs lock internally; objects are written
to the work directory under unique temporary names and renamed). `close` must not race with
other calls.

Caveats: no object cache (every read fetches and verifies again); external files (flag 128)
and bind mountpoints are refused with a PycvmfsError; symlink targets are returned raw, without
`$(VAR)` expansion; tags by name only (no `CVMFS_REPOSITORY_DATE` lookup yet).
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import io
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NamedTuple
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric import rsa

from pycvmfs.cache.fetcher import Fetcher
from pycvmfs.cache.host import CacheHost
from pycvmfs.cache.quota import ObjectKind
from pycvmfs.errors import CatalogError, ConfigError, NotFoundError, PycvmfsError
from pycvmfs.format.blacklist import Blacklist
from pycvmfs.format.catalog import DirEntry, total_counters
from pycvmfs.format.compression import Compression, open_object
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.format.history import Tag
from pycvmfs.format.manifest import Manifest
from pycvmfs.repository import catalog_sql as sql
from pycvmfs.repository.catalog import Catalog
from pycvmfs.repository.catalog_tree import CatalogTree, Resolved
from pycvmfs.repository.source import ObjectSource
from pycvmfs.repository.trust import TrustedManifest, error_context, establish_trust

MAX_CATALOG_BYTES = 1 << 30  # inflate cap for catalogs and history databases (1 GiB)
DEFAULT_READ_BLOCK_BYTES = 1 << 20  # iter_read block: one FUSE-sized read
PREFETCH_READ_BYTES = 1 << 20  # read-ahead warms the page cache in blocks of this size


class Piece(NamedTuple):
    """One stored object of a regular file: the whole file, or one chunk (`P` suffix)."""

    offset: int
    size: int
    hash: ContentHash
    suffix: Suffix


def normalize_path(path: str) -> str:
    """'' or '/' -> '' (the root); otherwise '/a/b' without empty or trailing components."""
    parts = [part for part in path.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise NotFoundError(f"{path}: '.' and '..' are not resolved; use a canonical path")
    return "/" + "/".join(parts) if parts else ""


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


def catalog_name(content_hash: ContentHash, mountpoint: str) -> str:
    """How errors name a catalog: `root catalog <hash>` or `catalog of /a/b <hash>`."""
    return f"catalog of {mountpoint} {content_hash}" if mountpoint else \
        f"root catalog {content_hash}"


def apparent_size(entry: DirEntry) -> int:
    """st_size as the reference client reports it (13.3, 6.10): a symlink's is the length of
    its target (some writers, e.g. tarball ingestion, store 0 in the catalog)."""
    if entry.is_symlink:
        return len(entry.symlink.encode("utf-8", "surrogateescape"))
    return entry.size


def _name_key(item: tuple[str, DirEntry]) -> bytes:
    """Sort by raw name bytes (C-locale order), also for names that are not UTF-8."""
    return item[0].encode("utf-8", "surrogateescape")


class _Workdir:
    """Private directory for verified, decompressed catalogs; removed by `cleanup`."""

    def __init__(self, parent: str | os.PathLike[str] | None) -> None:
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="pycvmfs-", dir=parent))

    def write(self, name: str, data: bytes) -> Path:
        """Write atomically: a unique temporary file renamed into place."""
        final = self.path / name
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return final

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class _Objects:
    """Fetch an object from the source, verify and inflate it (the loader of this reader)."""

    def __init__(self, source: ObjectSource, fqrn: str, workdir: _Workdir) -> None:
        self.source = source
        self.fqrn = fqrn
        self.workdir = workdir

    def get(self, content_hash: ContentHash, suffix: Suffix, *, what: str,
            compression: Compression = Compression.ZLIB,
            expected_size: int | None = None, max_size: int = 1 << 32) -> bytes:
        with error_context(self.fqrn, self.source):
            stored = self.source.fetch(content_hash.object_path(suffix))
            return open_object(stored, content_hash, compression, expected_size=expected_size,
                               max_size=max_size, what=what)

    def open(self, content_hash: ContentHash, suffix: Suffix, *, what: str,
             compression: Compression, expected_size: int) -> BinaryIO:
        """The verified object as a readable file (in memory: this loader has no cache)."""
        return io.BytesIO(self.get(content_hash, suffix, what=what, compression=compression,
                                   expected_size=expected_size))

    def prefetch(self, content_hash: ContentHash, suffix: Suffix, *,
                 compression: Compression, expected_size: int) -> None:
        """Warm a cache ahead of a read; nothing to warm without one."""

    def discard(self, content_hash: ContentHash) -> None:
        """Forget a stored copy found corrupt; nothing is stored without a cache."""

    def database(self, content_hash: ContentHash, suffix: Suffix, what: str) -> Path:
        data = self.get(content_hash, suffix, what=what, max_size=MAX_CATALOG_BYTES)
        return self.workdir.write(f"{content_hash}{suffix.value}", data)

    def load_catalog(self, content_hash: ContentHash, mountpoint: str) -> Catalog:
        """The `CatalogTree` loader: download, verify, write, open read-only."""
        path = self.database(content_hash, Suffix.CATALOG, catalog_name(content_hash, mountpoint))
        with error_context(self.fqrn, self.source):
            return Catalog(path, content_hash=content_hash)


class _CachedObjects(_Objects):
    """Objects through the client cache: downloaded once, verified while streaming, served
    from `<cache>/XX/...` afterwards; catalogs are opened in place and pinned."""

    def __init__(self, source: ObjectSource, fqrn: str, workdir: _Workdir,
                 fetcher: Fetcher) -> None:
        super().__init__(source, fqrn, workdir)
        self.fetcher = fetcher
        self.on_pressure: Callable[[], object] = lambda: None

    def get(self, content_hash: ContentHash, suffix: Suffix, *, what: str,
            compression: Compression = Compression.ZLIB,
            expected_size: int | None = None, max_size: int = 1 << 32) -> bytes:
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


class _History:
    """The tag database (object H), downloaded on first use and queried read-only."""

    def __init__(self, objects: _Objects, content_hash: ContentHash | None) -> None:
        self._objects = objects
        self._hash = content_hash
        self._path: Path | None = None
        self._lock = threading.Lock()

    def _query(self, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        if self._hash is None:
            raise NotFoundError(f"repository {self._objects.fqrn} has no history (no H key)")
        with self._lock:
            if self._path is None:
                self._path = self._objects.database(self._hash, Suffix.HISTORY, "history")
        uri = f"file:{quote(os.fspath(self._path))}?mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True)
            try:
                return conn.execute(statement, params).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise CatalogError(f"history database {self._hash}: {exc}") from exc

    def tags(self) -> list[Tag]:
        if self._hash is None:
            return []
        return [Tag.from_row(row) for row in self._query(sql.ALL_TAGS)]

    def tag(self, name: str) -> Tag:
        rows = self._query(sql.TAG_BY_NAME, (name,))
        if not rows:
            names = [str(row[0]) for row in self._query(sql.TAG_NAMES)]
            raise NotFoundError(f"repository {self._objects.fqrn}: no tag {name!r}; "
                                f"available: {', '.join(names) or '(none)'}")
        return Tag.from_row(rows[0])

    def tag_at(self, timestamp: int) -> Tag:
        """The trunk tag of the highest revision published at or before `timestamp`."""
        candidates = [t for t in self.tags() if t.branch == "" and t.timestamp <= timestamp]
        if not candidates:
            moment = dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat()
            raise NotFoundError(f"repository {self._objects.fqrn}: no revision published "
                                f"at or before {moment}")
        return max(candidates, key=lambda t: t.revision)


class Repository:
    """One revision of one repository, trusted and readable; a context manager.

    Build it with `Repository.open`. Paths are '' or '/' for the root, '/a/b' otherwise."""

    def __init__(self, *, source: ObjectSource, fqrn: str, trusted: TrustedManifest | None,
                 tree: CatalogTree, objects: _Objects, history: _History, tag: Tag | None,
                 fixed: bool) -> None:
        self.source = source
        self._fqrn = fqrn
        self.trusted = trusted  # None: an offline mount of a cached root catalog
        self.fixed = fixed  # a tag, a date or a given root hash: never follows the trunk
        self.tree = tree
        self.tag = tag
        self._objects = objects
        self._history = history
        self._closed = False
        self._lease_lock = threading.Lock()
        self._leases = 0  # directory handles reading this revision (`acquire`)
        self._close_requested = False

    @classmethod
    def open(
        cls,
        source: ObjectSource,
        fqrn: str,
        public_keys: Sequence[rsa.RSAPublicKey],
        *,
        now: dt.datetime | None = None,
        tag: str | None = None,
        date: str | None = None,
        root_hash: ContentHash | str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        fetcher: Fetcher | None = None,
        min_timestamp: int | None = None,
        blacklist: Blacklist | None = None,
    ) -> Repository:
        """Verify the trust chain, pick the root catalog and attach it.

        `now` (default: current UTC) decides whitelist expiry. `tag` mounts a tagged root
        catalog from the history database, `date` (`YYYY-MM-DDTHH:MM:SSZ`) the newest trunk
        tag published at or before it, `root_hash` a given catalog (the manifest is still
        verified: it proves the source serves this repository). Catalogs are written to a
        fresh directory inside `workdir` (default: the system temp dir), removed on close.
        `min_timestamp` rejects a manifest published before it (OutdatedError); `blacklist`
        revokes certificates and revisions (BlacklistedError)."""
        if sum(x is not None for x in (tag, date, root_hash)) > 1:
            raise ConfigError("give at most one of a tag, a date and a root hash")
        trusted = establish_trust(source, fqrn, public_keys, now=now or dt.datetime.now(dt.UTC),
                                  min_timestamp=min_timestamp, blacklist=blacklist)
        return cls.attach(source, fqrn, trusted, tag=tag, date=date, root_hash=root_hash,
                          workdir=workdir, fetcher=fetcher)

    @classmethod
    def attach(
        cls,
        source: ObjectSource,
        fqrn: str,
        trusted: TrustedManifest | None,
        *,
        tag: str | None = None,
        date: str | None = None,
        root_hash: ContentHash | str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        fetcher: Fetcher | None = None,
    ) -> Repository:
        """Attach a root catalog of an already trusted manifest (the reload path), or,
        with `trusted=None`, the given `root_hash` alone: an offline mount of a catalog the
        cache verified when it was downloaded (no history, hence no tags)."""
        if trusted is None and root_hash is None:
            raise ConfigError("an untrusted attach needs the root catalog hash")
        work = _Workdir(workdir)
        try:
            objects = (_Objects(source, fqrn, work) if fetcher is None
                       else _CachedObjects(source, fqrn, work, fetcher))
            history = _History(objects, trusted.history if trusted is not None else None)
            chosen = (history.tag(tag) if tag is not None
                      else history.tag_at(parse_repository_date(date)) if date is not None
                      else None)
            root = _root_hash(trusted, chosen, root_hash)
            tree = CatalogTree(root, objects.load_catalog)
            if isinstance(objects, _CachedObjects):
                objects.on_pressure = tree.detach_nested
        except BaseException:
            work.cleanup()
            raise
        return cls(source=source, fqrn=fqrn, trusted=trusted, tree=tree, objects=objects,
                   history=history, tag=chosen,
                   fixed=trusted is not None
                   and any(x is not None for x in (tag, date, root_hash)))

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

    @property
    def workdir(self) -> Path:
        return self._objects.workdir.path

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
        if not entry.is_regular:
            raise PycvmfsError(f"{canonical or '/'}: not a regular file")
        if entry.is_external:
            raise PycvmfsError(f"{canonical}: external files (flag 128, served from "
                               "CVMFS_EXTERNAL_URL) are not supported")
        if entry.is_chunked:
            rows = catalog.chunks(canonical, entry.hash_algorithm)
            pieces = [Piece(r.offset, r.size, r.content_hash, Suffix.PARTIAL) for r in rows]
        elif entry.content_hash is not None:
            pieces = [Piece(0, entry.size, entry.content_hash, Suffix.NONE)]
        elif entry.size == 0:
            pieces = []
        else:
            raise CatalogError(f"{canonical}: regular file of {entry.size} bytes has no hash")
        _check_tiling(canonical, entry.size, pieces)
        return entry, pieces

    def load_piece(self, path: str, entry: DirEntry, piece: Piece) -> bytes:
        """One object of a file, fetched, verified and inflated."""
        kind = "chunk" if piece.suffix is Suffix.PARTIAL else "file"
        return self._objects.get(piece.hash, piece.suffix, compression=entry.compression,
                                 expected_size=piece.size,
                                 what=f"{kind} of {path} at offset {piece.offset}")

    def open_piece(self, path: str, entry: DirEntry, piece: Piece) -> BinaryIO:
        """One object of a file as a readable file, verified (the FUSE read path)."""
        kind = "chunk" if piece.suffix is Suffix.PARTIAL else "file"
        return self._objects.open(piece.hash, piece.suffix, compression=entry.compression,
                                  expected_size=piece.size,
                                  what=f"{kind} of {path} at offset {piece.offset}")

    def discard_piece(self, piece: Piece) -> None:
        """Drop the stored copy of a piece found corrupt, so it is fetched again."""
        self._objects.discard(piece.hash)

    def prefetch_piece(self, entry: DirEntry, piece: Piece) -> None:
        """Bring one object into the cache (read-ahead); errors are the caller's to drop."""
        self._objects.prefetch(piece.hash, piece.suffix, compression=entry.compression,
                               expected_size=piece.size)

    def iter_read(self, path: str,
                  block: int = DEFAULT_READ_BLOCK_BYTES) -> Iterator[bytes]:
        """The file's bytes in blocks of at most `block` bytes, each object verified."""
        if block <= 0:
            raise ValueError("block must be positive")
        entry, pieces = self.pieces(path)
        for piece in pieces:
            data = self.load_piece(path, entry, piece)
            for start in range(0, len(data), block):
                yield data[start:start + block]

    def read(self, path: str) -> bytes:
        """The whole file (every object verified)."""
        entry, pieces = self.pieces(path)
        return b"".join(self.load_piece(path, entry, piece) for piece in pieces)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """Up to `size` bytes from `offset`; loads only the objects that overlap."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        entry, pieces = self.pieces(path)
        return read_pieces(pieces, offset, min(offset + size, entry.size),
                           lambda index, start, stop:
                           self.load_piece(path, entry, pieces[index])[start:stop])

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
        """Detach all catalogs and remove the work directory (idempotent); deferred until
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
        self.tree.close()
        self._objects.workdir.cleanup()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Repository {self.fqrn} rev {self.revision} root {self.root_hash} "
                f"from {self.source.describe()}>")


def parse_repository_date(text: str) -> int:
    """`CVMFS_REPOSITORY_DATE` (`YYYY-MM-DDTHH:MM:SSZ`, UTC) as a Unix timestamp."""
    try:
        moment = dt.datetime.strptime(text.strip(), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise ConfigError(f"repository date {text!r}: expected YYYY-MM-DDTHH:MM:SSZ") from None
    return int(moment.replace(tzinfo=dt.UTC).timestamp())


def _root_hash(trusted: TrustedManifest | None, tag: Tag | None,
               given: ContentHash | str | None) -> ContentHash:
    if tag is not None:
        try:
            return ContentHash.parse(tag.hash)
        except ValueError:
            raise CatalogError(f"tag {tag.name}: bad root hash {tag.hash!r}") from None
    if isinstance(given, str):
        try:
            return ContentHash.parse(given)
        except ValueError as exc:
            raise ConfigError(f"root hash: {exc}") from None
    if given is not None:
        return given
    assert trusted is not None  # attach() refuses an untrusted attach without a hash
    return trusted.root_hash


def _check_tiling(path: str, size: int, pieces: list[Piece]) -> None:
    """Pieces must start at 0, be contiguous and add up to the catalog size (6.11)."""
    position = 0
    for piece in pieces:
        if piece.offset != position or piece.size < 0:
            raise CatalogError(f"{path}: chunk at offset {piece.offset} (expected {position})")
        position += piece.size
    if position != size:
        raise CatalogError(f"{path}: chunks cover {position} bytes, catalog says {size}")
