"""A compromised repository for tests: rewrite catalogs of a published storage and re-sign.

The attacker modelled here holds the repository's signing key (or the master key): every
object is content-addressed and every letter signed, so the whole trust chain passes and the
only thing wrong is what the catalogs say. Edits go through the product's own codecs
(`format.catalog`, `format.compression.make_object`, `format.manifest.sign_manifest`,
`publisher.whitelist_sign`), so a forged repository differs from a published one only where
a test asked it to.

How an edit works: the catalog mounted at a mountpoint ('' = root, '/a/b' = the nested
catalog mounted there) is decompressed into a private work directory and changed with SQL;
it is then stored as a new `data/XX/...C` object, and each catalog above it gets its
`nested_catalogs` row (hash and uncompressed size) and `subtree_*` statistics updated, up to
the root. Edits are staged: nothing is visible to a client until `publish()` (or leaving the
`with RepositoryForge(...)` block) writes a new signed `.cvmfspublished`, with the root
catalog's `revision`/`last_modified` properties and the history's trunk tag to match.

Every catalog the forge rewrites loses the publisher's `pycvmfs_digest` property, so a later
`pycvmfs publish` into the same storage never takes a forged catalog for an unchanged one.
Statistics: a rewritten catalog's `self_*` counters are recounted from its rows (unless
`recount=False`, for a test that wants them wrong, or a million rows), its ancestors'
`subtree_*` follow by difference; references made with `nested_ref`/`swap_catalog` are not
added to any statistics (a catalog graph that loops has no meaningful totals).

Example::

    forge = RepositoryForge(storage, keys)          # keys: tests.publish_helpers.Keys
    with forge.catalog("/nested") as db:            # a writable sqlite3.Connection
        db.execute("UPDATE catalog SET size = 5 WHERE name = 'file'")
    forge.nested_ref("/nested", "/nested")          # lists a catalog at its own mountpoint
    forge.set_property("", "TTL", "0")
    forge.add_entries("", "/big", 1_000_000)        # a huge directory in the root catalog
    forge.publish()                                 # new signed manifest, revision + 1
    forge.truncate_object(forge.entry("/plain.txt").content_hash, "", 5)  # raw, unsigned
    forge.close()
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import numpy as np

from pycvmfs.format.catalog import (
    COUNTER_FIELDS,
    DIRECTORY_SIZE,
    ENTRY_COLUMNS,
    Counters,
    DirEntry,
    Flags,
    encode_hardlinks,
    entry_to_row,
    md5path,
    parent_path,
    row_to_entry,
)
from pycvmfs.format.compression import Compression, make_object, open_object
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.format.history import TRUNK, Tag
from pycvmfs.format.manifest import Manifest, sign_manifest, verify_manifest
from pycvmfs.publisher.catalog_writer import DIGEST_PROPERTY
from pycvmfs.publisher.history_writer import TRUNK_DESCRIPTION, history_image, read_tags
from pycvmfs.publisher.keys import load_keys
from pycvmfs.publisher.storage import MANIFEST_NAME, TXN_DIR, LocalStorage
from pycvmfs.publisher.whitelist_sign import DEFAULT_WHITELIST_DAYS, write_whitelist
from tests.publish_helpers import Keys

MAX_GRAPH_DEPTH = 64  # the forge walks hostile graphs too: bound every walk
KEY_BATCH = 1 << 16  # add_entries turns sorted keys back into Python ints this many at a time
WORK_CACHE_KIB = 64 * 1024  # SQLite page cache of a work copy: the indexes of 1M rows fit
_ENTRY_SELECT = f"SELECT {', '.join(ENTRY_COLUMNS)} FROM catalog"
_BY_MD5PATH = "md5path_1 = ? AND md5path_2 = ?"
_NAME_COLUMN = ENTRY_COLUMNS.index("name")
_KEY_COLUMNS = slice(0, 2)  # md5path_1, md5path_2


class ForgeError(Exception):
    """The forge cannot do what a test asked (no such catalog, row or object)."""


@dataclass(frozen=True, slots=True)
class _Link:
    """One catalog on the way from the root: where it is mounted and which object it is."""

    mountpoint: str
    content_hash: ContentHash


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _under(path: str, mountpoint: str) -> bool:
    return path == mountpoint or path.startswith(mountpoint + "/")


class RepositoryForge:
    """Staged hostile edits of the repository in `storage_dir`; see the module docstring.

    It works from the manifest it found when made (and those it writes itself): after a
    `pycvmfs publish` into the same storage, make a new forge. `workdir` holds decompressed
    catalogs (about 150 MB per million rows; default: the system temp directory)."""

    def __init__(self, storage_dir: Path | str, keys: Keys, *,
                 workdir: Path | str | None = None) -> None:
        self.storage = LocalStorage(storage_dir)
        self.fqrn = keys.fqrn
        self.keys = load_keys(keys.fqrn, keys.keys_dir)
        raw = self.storage.read_file(MANIFEST_NAME)
        if raw is None:
            raise ForgeError(f"{self.storage.root} has no {MANIFEST_NAME}: publish first")
        self.manifest: Manifest = verify_manifest(raw, self.keys.certificate, fqrn=self.fqrn)
        self.algorithm = self.manifest.algorithm
        self._root = _Link("", self.manifest.root_hash)
        self._root_size = self.manifest.root_catalog_size or 0
        self._staged = False
        self._work = Path(tempfile.mkdtemp(prefix="forge-", dir=workdir))
        self._edits = 0

    # --- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Remove the work directory (staged, unpublished edits are dropped)."""
        shutil.rmtree(self._work, ignore_errors=True)

    def __enter__(self) -> RepositoryForge:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None and self._staged:
                self.publish()
        finally:
            self.close()

    # --- reading the (forged) graph ---------------------------------------------------------
    @property
    def root_hash(self) -> ContentHash:
        """The root catalog as staged (the manifest's until something is edited)."""
        return self._root.content_hash

    def catalog_hash(self, mountpoint: str) -> ContentHash:
        """The object of the catalog mounted at `mountpoint` as staged."""
        return self._chain(mountpoint)[-1].content_hash

    def catalog_size(self, content_hash: ContentHash | str) -> int:
        """Uncompressed size of a catalog object (what `nested_catalogs.size` holds)."""
        return self._image(_hash(content_hash)).stat().st_size

    def nested_refs(self, mountpoint: str) -> dict[str, tuple[ContentHash, int]]:
        """The `nested_catalogs` rows of the catalog at `mountpoint`: path -> (hash, size)."""
        return self._nested_rows(self.catalog_hash(mountpoint))

    def entry(self, path: str) -> DirEntry:
        """The row for `path` as a client would find it (first catalog that has it)."""
        return self._owner(path)[1]

    def object_path(self, content_hash: ContentHash | str, suffix: Suffix | str = "") -> Path:
        return self.storage.root / _hash(content_hash).object_path(suffix)

    # --- catalog edits (staged) -------------------------------------------------------------
    @contextlib.contextmanager
    def catalog(self, mountpoint: str, *, recount: bool = True) -> Iterator[sqlite3.Connection]:
        """A writable connection on a copy of the catalog at `mountpoint`; on a clean exit
        the copy is committed, stored and referenced from the root down (see the module
        docstring). `recount=False` keeps the `self_*` statistics as they are in the copy."""
        with self._rewrite(self._chain(mountpoint), recount=recount) as db:
            yield db

    def update_row(self, path: str, **columns: object) -> None:
        """Set catalog columns of `path`'s row in the catalog that holds it (the parent's
        mountpoint row for a nested catalog's mountpoint); a ContentHash for `hash` is
        stored as its digest."""
        unknown = sorted(set(columns) - set(ENTRY_COLUMNS))
        if unknown or not columns:
            raise ForgeError(f"update_row({path!r}): columns must be some of "
                             f"{', '.join(ENTRY_COLUMNS)}, not {unknown or 'none'}")
        values = [v.digest if isinstance(v, ContentHash) else v for v in columns.values()]
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._rewrite(self._owner(path)[0]) as db:
            db.execute(f"UPDATE catalog SET {assignments} WHERE {_BY_MD5PATH}",
                       (*values, *md5path(path)))

    def set_property(self, mountpoint: str, key: str, value: str | int | None) -> None:
        """Set (or with None delete) a catalog property, e.g. `TTL`, `root_prefix`."""
        with self._rewrite(self._chain(mountpoint)) as db:
            if value is None:
                db.execute("DELETE FROM properties WHERE key = ?", (key,))
            else:
                db.execute("INSERT OR REPLACE INTO properties VALUES (?, ?)", (key, str(value)))

    def nested_ref(self, parent_mountpoint: str, child_path: str,
                   content_hash: ContentHash | str | None = None, size: int | None = None) -> None:
        """Add or change the `nested_catalogs` row `child_path` of the catalog at
        `parent_mountpoint`: any path (itself, an ancestor, '' , outside its subtree) to any
        object. Default object: the catalog mounted at `child_path` if there is one (so its
        root_prefix fits and only the position is wrong), else the parent itself; either as
        it is before this edit (a catalog cannot contain its own new hash). Default size:
        the object's real uncompressed size."""
        chain = self._chain(parent_mountpoint)
        if content_hash is None:
            try:
                target = self.catalog_hash(child_path)
            except ForgeError:
                target = chain[-1].content_hash
        else:
            target = _hash(content_hash)
        if size is None:
            size = self.catalog_size(target) if self.storage.has_object(
                target, Suffix.CATALOG) else 0
        with self._rewrite(chain) as db:
            db.execute("INSERT OR REPLACE INTO nested_catalogs VALUES (?, ?, ?)",
                       (child_path, str(target), size))

    def swap_catalog(self, mountpoint: str, other_hash: ContentHash | str) -> None:
        """Make the parent reference another catalog object (e.g. the root's) for
        `mountpoint`, with that object's real size: only hash/root_prefix checks catch it."""
        chain = self._chain(mountpoint)
        if len(chain) < 2:
            raise ForgeError("the root catalog has no parent to swap it in; "
                             "publish(root=...) names another root object")
        target = _hash(other_hash)
        with self._rewrite(chain[:-1]) as db:
            db.execute("UPDATE nested_catalogs SET sha1 = ?, size = ? WHERE path = ?",
                       (str(target), self.catalog_size(target), mountpoint))

    def hardlink_group(self, mountpoint: str, paths: list[str], group_id: int,
                       linkcount: int | None = None) -> None:
        """Put the rows of `paths` (all in the catalog at `mountpoint`) into one hardlink
        group, whatever their type, hash or size; linkcount defaults to len(paths)."""
        value = encode_hardlinks(group_id, len(paths) if linkcount is None else linkcount)
        with self._rewrite(self._chain(mountpoint)) as db:
            for path in paths:
                if db.execute(f"UPDATE catalog SET hardlinks = ? WHERE {_BY_MD5PATH}",
                              (value, *md5path(path))).rowcount != 1:
                    raise ForgeError(f"hardlink_group: no row {path!r} in the catalog "
                                     f"at {mountpoint!r}")

    def add_entries(self, mountpoint: str, directory: str, count: int,
                    name_pattern: str = "f{:07d}", content: bytes = b"") -> None:
        """Insert `count` regular files `directory/name_pattern.format(i)` into the catalog
        at `mountpoint` (creating `directory` if its parent is there), all with `content`
        (stored once as an object). One transaction in primary-key order, no per-row
        recount: 1,000,000 rows take about 15 s on a busy 2-core machine, the catalog's
        recompression included (add 5 s at publish when it is the root catalog)."""
        chain = self._chain(mountpoint)
        content_hash = None
        if content:
            content_hash, stored = make_object(content, self.algorithm, Compression.ZLIB)
            self.storage.put_object(content_hash, stored)
        with self._rewrite(chain, recount=False) as db:
            parent, created = self._ensure_directory(db, directory)
            template = DirEntry(
                name="", mode=stat.S_IFREG | 0o644, size=len(content), mtime=parent.mtime,
                flags=int(Flags.FILE), uid=parent.uid, gid=parent.gid,
                content_hash=content_hash, hash_algorithm=self.algorithm)
            row = entry_to_row(template, f"{directory}/x")  # the codec decides every column
            head, tail = row[2:_NAME_COLUMN], row[_NAME_COLUMN + 1:]

            def rows() -> Iterator[tuple[object, ...]]:
                for index, key in _in_key_order(directory, name_pattern, count):
                    yield (*key, *head, name_pattern.format(index), *tail)

            db.executemany(_insert_sql(), rows())
            one = Counters()
            one.count_entry(template)
            _add_counters(db, "self", {k: v * count for k, v in one.values.items()})
        if created and parent_path(directory) == mountpoint != "":
            with self._rewrite(self._chain(mountpoint)[:-1]) as db:  # its mountpoint row
                db.execute(f"UPDATE catalog SET hardlinks = hardlinks + 1 WHERE {_BY_MD5PATH}",
                           md5path(mountpoint))

    # --- raw object tampering (immediate, unsigned) -------------------------------------------
    def truncate_object(self, content_hash: ContentHash | str, suffix: Suffix | str,
                        nbytes: int) -> None:
        """Cut a stored object to its first `nbytes` bytes."""
        path = self._existing_object(content_hash, suffix)
        self.replace_object(content_hash, suffix, path.read_bytes()[:nbytes])

    def replace_object(self, content_hash: ContentHash | str, suffix: Suffix | str,
                       data: bytes) -> None:
        """Put `data` under an object's name (atomically; no hash matches it any more)."""
        path = self.object_path(content_hash, suffix)
        tmp = path.with_name(path.name + ".forge")
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    # --- publishing ---------------------------------------------------------------------------
    def publish(self, revision: int | None = None, timestamp: int | None = None, *,
                root: ContentHash | str | None = None, resign_whitelist: bool = False,
                whitelist_days: int = DEFAULT_WHITELIST_DAYS) -> Manifest:
        """Write `.cvmfspublished` for the staged root (or another catalog object given as
        `root`), signed with the repository's certificate key. Default revision: the last
        one + 1; default timestamp: now, never before the last one. The root catalog's
        `revision`/`last_modified` properties and the trunk tag follow (a given `root` is
        taken as it is, and staged edits are dropped); the whitelist is kept unless
        `resign_whitelist` (then signed anew with the master key)."""
        old = self.manifest
        revision = old.revision + 1 if revision is None else revision
        if timestamp is None:
            timestamp = max(int(time.time()), old.timestamp or 0)
        if root is None:
            with self._rewrite([self._root], recount=False) as db:
                for key, value in (("revision", revision), ("last_modified", timestamp)):
                    db.execute("INSERT OR REPLACE INTO properties VALUES (?, ?)",
                               (key, str(value)))
            root_hash, root_size = self._root.content_hash, self._root_size
        else:
            root_hash = _hash(root)
            root_size = self.catalog_size(root_hash)
        manifest = replace(old, root_hash=root_hash, root_catalog_size=root_size,
                           revision=revision, timestamp=timestamp,
                           history=self._history(root_hash, root_size, revision, timestamp))
        with self.storage.lock():
            if resign_whitelist:
                write_whitelist(self.storage, self.fqrn, self.keys, whitelist_days)
            self.storage.put_file(MANIFEST_NAME, sign_manifest(manifest, self.keys.signing_key))
        self.manifest = manifest
        self._root, self._root_size = _Link("", root_hash), root_size
        self._staged = False
        return manifest

    def _history(self, root_hash: ContentHash, root_size: int, revision: int,
                 timestamp: int) -> ContentHash | None:
        """A history whose trunk tag names the new root (other tags kept)."""
        previous = self.manifest.history
        if previous is None:
            return None
        tags = read_tags(self._image(previous, Suffix.HISTORY).read_bytes())
        tags[TRUNK] = Tag(TRUNK, str(root_hash), revision, timestamp, TRUNK_DESCRIPTION,
                          size=root_size)
        image = history_image(tags, self.fqrn, str(previous), self.storage.path_of(TXN_DIR))
        content_hash, stored = make_object(image, self.algorithm, Compression.ZLIB)
        self.storage.put_object(content_hash, stored, Suffix.HISTORY)
        return content_hash

    # --- internals ----------------------------------------------------------------------------
    def _image(self, content_hash: ContentHash, suffix: Suffix = Suffix.CATALOG) -> Path:
        """The object decompressed (hash-checked) into the work directory, once."""
        path = self._work / f"{content_hash}{suffix.value}.db"
        if not path.exists():
            stored = self._existing_object(content_hash, suffix).read_bytes()
            data = open_object(stored, content_hash, Compression.ZLIB,
                               what=f"object {suffix.value}")
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return path

    def _existing_object(self, content_hash: ContentHash | str, suffix: Suffix | str) -> Path:
        path = self.object_path(content_hash, suffix)
        if not path.is_file():
            raise ForgeError(f"no object {path} in {self.storage.root}")
        return path

    def _read(self, content_hash: ContentHash) -> sqlite3.Connection:
        uri = f"file:{quote(os.fspath(self._image(content_hash)))}?mode=ro"
        db = sqlite3.connect(uri, uri=True)
        db.text_factory = _decode_text
        return db

    def _nested_rows(self, content_hash: ContentHash) -> dict[str, tuple[ContentHash, int]]:
        with contextlib.closing(self._read(content_hash)) as db:
            rows = db.execute("SELECT path, sha1, size FROM nested_catalogs").fetchall()
        refs = {}
        for path, text, size in rows:
            with contextlib.suppress(ValueError, TypeError):  # garbage a test wrote there
                refs[str(path)] = (ContentHash.parse(str(text)), int(size or 0))
        return refs

    def _descend(self, chain: list[_Link], path: str) -> _Link | None:
        """The deepest unvisited child of chain[-1] whose mountpoint holds `path`."""
        if len(chain) > MAX_GRAPH_DEPTH:
            raise ForgeError(f"catalog graph deeper than {MAX_GRAPH_DEPTH} towards {path!r}")
        visited = {link.mountpoint for link in chain}
        refs = self._nested_rows(chain[-1].content_hash)
        candidates = [p for p in refs if _under(path, p) and p not in visited]
        if not candidates:
            return None
        best = max(candidates, key=len)
        return _Link(best, refs[best][0])

    def _chain(self, mountpoint: str) -> list[_Link]:
        """Catalogs from the root to the one mounted at `mountpoint` (by position)."""
        chain = [self._root]
        while chain[-1].mountpoint != mountpoint:
            child = self._descend(chain, mountpoint)
            if child is None:
                raise ForgeError(f"no catalog is mounted at {mountpoint!r} "
                                 f"(below {chain[-1].mountpoint or '/'})")
            chain.append(child)
        return chain

    def _owner(self, path: str) -> tuple[list[_Link], DirEntry]:
        """Catalogs from the root to the first one holding `path`'s row, and the row."""
        chain = [self._root]
        while True:
            with contextlib.closing(self._read(chain[-1].content_hash)) as db:
                row = db.execute(f"{_ENTRY_SELECT} WHERE {_BY_MD5PATH}", md5path(path)).fetchone()
            if row is not None:
                return chain, row_to_entry(dict(zip(ENTRY_COLUMNS, row, strict=True)))
            child = self._descend(chain, path)
            if child is None:
                raise ForgeError(f"no catalog row for {path!r}")
            chain.append(child)

    @contextlib.contextmanager
    def _rewrite(self, chain: list[_Link], *, recount: bool = True
                 ) -> Iterator[sqlite3.Connection]:
        """Edit chain[-1]; store it and re-reference it up the chain on a clean exit."""
        target = chain[-1]
        self._edits += 1
        copy = self._work / f"edit-{self._edits}.db"
        shutil.copyfile(self._image(target.content_hash), copy)
        try:
            db = _open_copy(copy)
            try:
                before = _statistics(db)
                yield db
                db.commit()
                with db:
                    if recount:
                        _recount_self(db)
                    db.execute("DELETE FROM properties WHERE key = ?", (DIGEST_PROPERTY,))
                after = _statistics(db)
            finally:
                db.close()
            content_hash, size = self._store(copy)
            delta = {k: _total(after, k) - _total(before, k) for k in COUNTER_FIELDS}
            self._reference_upwards(chain, content_hash, size, delta)
        finally:
            copy.unlink(missing_ok=True)

    def _reference_upwards(self, chain: list[_Link], content_hash: ContentHash, size: int,
                           delta: Mapping[str, int]) -> None:
        """Point each parent at its new child and add the child's counter change."""
        child = chain[-1].mountpoint
        for depth in range(len(chain) - 2, -1, -1):
            self._edits += 1
            copy = self._work / f"edit-{self._edits}.db"
            shutil.copyfile(self._image(chain[depth].content_hash), copy)
            try:
                with contextlib.closing(_open_copy(copy)) as db, db:
                    db.execute("UPDATE nested_catalogs SET sha1 = ?, size = ? WHERE path = ?",
                               (str(content_hash), size, child))
                    _add_counters(db, "subtree", delta)
                    db.execute("DELETE FROM properties WHERE key = ?", (DIGEST_PROPERTY,))
                content_hash, size = self._store(copy)
            finally:
                copy.unlink(missing_ok=True)
            child = chain[depth].mountpoint
        self._root, self._root_size = _Link("", content_hash), size
        self._staged = True

    def _store(self, database: Path) -> tuple[ContentHash, int]:
        """Store a catalog file as an object (zlib, the repository's hash algorithm)."""
        raw = database.read_bytes()
        content_hash, stored = make_object(raw, self.algorithm, Compression.ZLIB)
        self.storage.put_object(content_hash, stored, Suffix.CATALOG)
        cached = self._work / f"{content_hash}{Suffix.CATALOG.value}.db"
        if not cached.exists():
            database.replace(cached)
        return content_hash, len(raw)

    def _ensure_directory(self, db: sqlite3.Connection, directory: str
                          ) -> tuple[DirEntry, bool]:
        """`directory`'s row in this catalog, created (one level) when missing; whether
        it was created."""
        found = db.execute(f"{_ENTRY_SELECT} WHERE {_BY_MD5PATH}", md5path(directory)).fetchone()
        if found is not None:
            return row_to_entry(dict(zip(ENTRY_COLUMNS, found, strict=True))), False
        above = parent_path(directory)
        parent = db.execute(f"{_ENTRY_SELECT} WHERE {_BY_MD5PATH}", md5path(above)).fetchone()
        if not directory or parent is None:
            raise ForgeError(f"add_entries: neither {directory!r} nor its parent "
                             f"{above or '/'!r} is in this catalog")
        entry = row_to_entry(dict(zip(ENTRY_COLUMNS, parent, strict=True)))
        created = replace(entry, name=directory.rsplit("/", 1)[1], size=DIRECTORY_SIZE,
                          flags=int(Flags.DIR), linkcount=2, hardlink_group=0, xattrs=(),
                          mode=stat.S_IFDIR | 0o755)
        db.execute(_insert_sql(), entry_to_row(created, directory))
        db.execute(f"UPDATE catalog SET hardlinks = hardlinks + 1 WHERE {_BY_MD5PATH}",
                   md5path(above))  # one more subdirectory: the parent's linkcount
        one = Counters()
        one.count_entry(created)
        _add_counters(db, "self", one.values)
        return created, True


def _hash(value: ContentHash | str) -> ContentHash:
    return value if isinstance(value, ContentHash) else ContentHash.parse(value)


def _in_key_order(directory: str, name_pattern: str, count: int
                  ) -> Iterator[tuple[int, list[int]]]:
    """(index, md5path) of each new name, in primary-key order: SQLite then appends to the
    key index instead of splitting pages all over it (about twice as fast for 1M rows).
    The keys are computed once and held as 16 bytes each."""
    keys = np.fromiter(itertools.chain.from_iterable(
        md5path(f"{directory}/{name_pattern.format(index)}") for index in range(count)),
        dtype=np.int64, count=2 * count).reshape(count, 2)
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    for start in range(0, count, KEY_BATCH):
        batch = order[start:start + KEY_BATCH]
        yield from zip(batch.tolist(), keys[batch].tolist(), strict=True)


def _open_copy(path: Path) -> sqlite3.Connection:
    """A work copy, tuned for bulk writes: it is a scratch file until it is stored (the
    journal mode is not kept in the file; a stored catalog is a plain rollback-journal one)."""
    db = sqlite3.connect(path)
    db.text_factory = _decode_text
    for pragma in ("journal_mode = MEMORY", "synchronous = OFF",
                   f"cache_size = -{WORK_CACHE_KIB}"):
        db.execute(f"PRAGMA {pragma}")
    return db


def _insert_sql() -> str:
    return (f"INSERT INTO catalog ({', '.join(ENTRY_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(ENTRY_COLUMNS))})")


def _statistics(db: sqlite3.Connection) -> dict[str, int]:
    return {str(k): int(v or 0) for k, v in db.execute("SELECT counter, value FROM statistics")}


def _total(statistics: Mapping[str, int], field: str) -> int:
    return statistics.get(f"self_{field}", 0) + statistics.get(f"subtree_{field}", 0)


def _add_counters(db: sqlite3.Connection, scope: str, values: Mapping[str, int]) -> None:
    db.executemany("UPDATE statistics SET value = value + ? WHERE counter = ?",
                   [(v, f"{scope}_{k}") for k, v in values.items() if v])


def _recount_self(db: sqlite3.Connection) -> None:
    """`self_*` counters from the rows, as the publisher counts them (every row, one
    `nested` per nested_catalogs row); rows the codec cannot read are not counted."""
    chunks = {(a, b): n for a, b, n in db.execute(
        "SELECT md5path_1, md5path_2, count(*) FROM chunks GROUP BY md5path_1, md5path_2")}
    own = Counters()
    for row in db.execute(_ENTRY_SELECT):
        try:
            entry = row_to_entry(dict(zip(ENTRY_COLUMNS, row, strict=True)))
        except (ValueError, TypeError):
            continue
        own.count_entry(entry, chunks.get(tuple(row[_KEY_COLUMNS]), 0))
    own.values["nested"] = db.execute("SELECT count(*) FROM nested_catalogs").fetchone()[0]
    db.executemany("INSERT OR REPLACE INTO statistics VALUES (?, ?)",
                   [(f"self_{k}", v) for k, v in own.values.items()])
