"""The composition root of the no-FUSE reader: one trusted revision of one repository.

`Repository.open` builds, in a fixed order: trust chain (`trust.establish_trust`) -> choice of
root catalog (manifest, a tag from the history database, or an explicit hash) -> object loader
(`objects.py`: fetch + verify + inflate into a private work directory, or through the cache
fetcher for a mount) -> catalog tree. The CLI (`ls`, `cat`, `stat`) and the mount use it.

Where bytes are verified: every object (catalog, history, whole file, chunk) streams through a
`network.sink.VerifyingSink` within its byte budget, which checks the content hash over the
stored bytes, inflates in bounded steps and checks the size the catalog declares, before
anything uses it. Reads (`iter_read`, `read_range`) go through the verified object as a file,
so memory stays flat whatever the object size; `read` returns whole bytes for small uses.

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
import datetime as dt
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NamedTuple
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric import rsa

from pycvmfs.cache.fetcher import Fetcher
from pycvmfs.errors import CatalogError, ConfigError, NotFoundError, PycvmfsError
from pycvmfs.format.blacklist import Blacklist
from pycvmfs.format.catalog import DirEntry, total_counters
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.format.history import Tag
from pycvmfs.format.manifest import Manifest
from pycvmfs.repository import catalog_sql as sql
from pycvmfs.repository.catalog_tree import CatalogTree, Resolved
from pycvmfs.repository.objects import MAX_CATALOG_BYTES, CachedObjects, Objects, Workdir
from pycvmfs.repository.source import ObjectSource
from pycvmfs.repository.trust import TrustedManifest, establish_trust

DEFAULT_READ_BLOCK_BYTES = 1 << 20  # iter_read block: one FUSE-sized read


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


def apparent_size(entry: DirEntry) -> int:
    """st_size as the reference client reports it (13.3, 6.10): a symlink's is the length of
    its target (some writers, e.g. tarball ingestion, store 0 in the catalog)."""
    if entry.is_symlink:
        return len(entry.symlink.encode("utf-8", "surrogateescape"))
    return entry.size


def _name_key(item: tuple[str, DirEntry]) -> bytes:
    """Sort by raw name bytes (C-locale order), also for names that are not UTF-8."""
    return item[0].encode("utf-8", "surrogateescape")


class _History:
    """The tag database (object H), downloaded on first use and queried read-only."""

    def __init__(self, objects: Objects, content_hash: ContentHash | None) -> None:
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
                 tree: CatalogTree, objects: Objects, history: _History, tag: Tag | None,
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
        max_catalog_bytes: int = MAX_CATALOG_BYTES,
    ) -> Repository:
        """Verify the trust chain, pick the root catalog and attach it.

        `now` (default: current UTC) decides whitelist expiry. `tag` mounts a tagged root
        catalog from the history database, `date` (`YYYY-MM-DDTHH:MM:SSZ`) the newest trunk
        tag published at or before it, `root_hash` a given catalog (the manifest is still
        verified: it proves the source serves this repository). Catalogs are written to a
        fresh directory inside `workdir` (default: the system temp dir), removed on close.
        `min_timestamp` rejects a manifest published before it (OutdatedError); `blacklist`
        revokes certificates and revisions (BlacklistedError). `max_catalog_bytes` caps the
        inflated size of catalogs and histories without a `fetcher` (which has its own)."""
        if sum(x is not None for x in (tag, date, root_hash)) > 1:
            raise ConfigError("give at most one of a tag, a date and a root hash")
        trusted = establish_trust(source, fqrn, public_keys, now=now or dt.datetime.now(dt.UTC),
                                  min_timestamp=min_timestamp, blacklist=blacklist)
        return cls.attach(source, fqrn, trusted, tag=tag, date=date, root_hash=root_hash,
                          workdir=workdir, fetcher=fetcher, max_catalog_bytes=max_catalog_bytes)

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
        max_catalog_bytes: int = MAX_CATALOG_BYTES,
    ) -> Repository:
        """Attach a root catalog of an already trusted manifest (the reload path), or,
        with `trusted=None`, the given `root_hash` alone: an offline mount of a catalog the
        cache verified when it was downloaded (no history, hence no tags)."""
        if trusted is None and root_hash is None:
            raise ConfigError("an untrusted attach needs the root catalog hash")
        work = Workdir(workdir)
        try:
            objects = (Objects(source, fqrn, work, max_catalog_bytes=max_catalog_bytes)
                       if fetcher is None
                       else CachedObjects(source, fqrn, work, fetcher))
            history = _History(objects, trusted.history if trusted is not None else None)
            chosen = (history.tag(tag) if tag is not None
                      else history.tag_at(parse_repository_date(date)) if date is not None
                      else None)
            root = _root_hash(trusted, chosen, root_hash)
            tree = CatalogTree(root, objects.load_catalog)
            if isinstance(objects, CachedObjects):
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
        """The file's bytes in blocks of at most `block` bytes, each object verified before
        its first block (read from the verified file: memory stays flat)."""
        if block <= 0:
            raise ValueError("block must be positive")
        entry, pieces = self.pieces(path)
        for piece in pieces:
            with self.open_piece(path, entry, piece) as fh:
                while data := fh.read(block):
                    yield data

    def read(self, path: str) -> bytes:
        """The whole file in memory (every object verified); `iter_read` for big files."""
        entry, pieces = self.pieces(path)
        return b"".join(self.load_piece(path, entry, piece) for piece in pieces)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """Up to `size` bytes from `offset`; loads only the objects that overlap."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        entry, pieces = self.pieces(path)

        def load(index: int, start: int, stop: int) -> bytes:
            with self.open_piece(path, entry, pieces[index]) as fh:
                fh.seek(start)
                return fh.read(stop - start)

        return read_pieces(pieces, offset, min(offset + size, entry.size), load)

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
