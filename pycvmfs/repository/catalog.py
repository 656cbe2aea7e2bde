"""One file catalog opened read-only: entries by path, listings, chunks, nested catalogs.

The database file must already be verified (its content hash checked) and decompressed; it
is opened with `mode=ro&immutable=1`, which is safe because catalog files are
content-addressed and never change while attached (style R10). Schema, schema revision and
the available columns are read once at open; every query then uses statements prepared from
`catalog_sql` for exactly this catalog.

Thread-safety: one connection per catalog shared by all threads (`check_same_thread=False`)
and a lock held for each statement's execute + fetch, so every public method is atomic and
may be called from any thread.

Hostile catalogs: a catalog is signed content, not sane content. Listings serve only rows
whose name is a usable file name (not empty, `.`, `..`, no `/` or NUL, at most 255 bytes)
and whose md5path is the hash of the listed path, so a name always stats and opens as the
row that was listed; nested catalog references must lie strictly below this catalog's
own mount point and not below another reference of it. What fails a check is reported
(logged once, `integrity.report_once`) instead of raising for the whole catalog: only that entry or
subtree is lost.

Caveats: TEXT columns are decoded as UTF-8 with `surrogateescape`, so names that are not
valid UTF-8 survive as lone surrogates and hash back to the same md5path.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import NamedTuple
from urllib.parse import quote

from pycvmfs.errors import CatalogError, NotFoundError
from pycvmfs.format.catalog import (
    DEFAULT_TTL_SECONDS,
    ENTRY_COLUMNS,
    READABLE_SCHEMA_REVISIONS,
    ChunkRow,
    DirEntry,
    md5path,
    name_problem,
    parse_schema,
    row_to_entry,
)
from pycvmfs.format.hashes import Algorithm, ContentHash
from pycvmfs.repository import catalog_sql as sql
from pycvmfs.repository.integrity import report_once

READABLE_SCHEMAS = ((2, 4), (2, 5))  # (major, minor) the reference client still mounts
OPTIONAL_COLUMNS = frozenset({"mtimens", "xattr"})  # added in schema revisions 7 and 2
REQUIRED_TABLES = frozenset({"properties", "catalog"})


class ListingPage(NamedTuple):
    """Up to `limit` children of a directory after a rowid, and where the next page starts
    (`last_rowid` also covers refused and hidden rows, so paging always advances)."""

    entries: list[DirEntry]
    last_rowid: int
    more: bool


class NestedRef(NamedTuple):
    """A nested catalog (or bind mountpoint) listed in its parent: unpacks as a 3-tuple."""

    path: str
    hash: ContentHash
    size: int


class _ChildRefs(NamedTuple):
    nested: list[NestedRef]
    binds: list[NestedRef]
    broken: dict[str, str]


def _below(path: str, mountpoint: str) -> bool:
    """Whether `path` is strictly inside `mountpoint` ('' is the repository root)."""
    return path.startswith(mountpoint + "/") and len(path) > len(mountpoint) + 1


def ref_problem(path: str, root_prefix: str) -> str | None:
    """Why a catalog mounted at `root_prefix` cannot have a child catalog at `path` (None:
    it can): the path must be canonical and strictly below the catalog's mount point, so
    every step of a walk goes deeper and no reference loops."""
    prefix = "" if root_prefix == "/" else root_prefix
    parts = path.split("/")
    if parts[0] != "" or any(name_problem(part) for part in parts[1:]):
        return "not a canonical absolute path"
    if path == prefix:
        return "it is the catalog's own mount point"
    if not _below(path, prefix):
        return f"it is not inside the catalog's subtree {prefix or '/'}"
    return None


CATALOG_CACHE_KIB = 512  # SQLite's page cache per catalog (default 2 MiB): the file's
# pages are in the kernel's page cache anyway, and a mount may hold hundreds of catalogs


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _connect(path: Path) -> sqlite3.Connection:
    uri = f"file:{quote(os.fspath(path))}?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
        raise CatalogError(f"catalog {path}: cannot open: {exc}") from exc
    try:
        conn.execute(f"PRAGMA cache_size=-{CATALOG_CACHE_KIB}")
    except sqlite3.Error as exc:
        conn.close()
        raise CatalogError(f"catalog {path}: cannot open: {exc}") from exc
    conn.text_factory = _decode_text
    return conn


class Catalog:
    """A verified catalog database, read-only; see the module docstring for the contract."""

    def __init__(self, path: str | os.PathLike[str], *,
                 content_hash: ContentHash | None = None,
                 on_release: Callable[[], None] | None = None) -> None:
        self.path = Path(path)
        self.content_hash = content_hash
        self._on_release = on_release  # e.g. unpin it in the cache; called once
        self._lock = threading.Lock()
        self._conn = _connect(self.path)
        self._children: _ChildRefs | None = None
        try:
            self._open()
        except BaseException:
            self._conn.close()
            raise

    # --- open: everything decided once ------------------------------------------------
    def _open(self) -> None:
        tables = {row[0] for row in self._query(sql.LIST_TABLES)}
        missing = REQUIRED_TABLES - tables
        if missing:
            raise CatalogError(f"{self._name()}: not a CernVM-FS catalog "
                               f"(missing tables {', '.join(sorted(missing))})")
        self._tables = frozenset(tables)
        self.properties: dict[str, str] = {
            str(k): str(v) for k, v in self._query(sql.SELECT_PROPERTIES) if k is not None
        }
        self.schema = self._parse_schema()
        present = {row[1] for row in self._query(sql.CATALOG_COLUMNS)}
        absent = [c for c in ENTRY_COLUMNS if c not in present and c not in OPTIONAL_COLUMNS]
        if absent:
            raise CatalogError(f"{self._name()}: catalog table lacks columns {', '.join(absent)}")
        if self.schema[2] >= 7 and "mtimens" not in present:
            raise CatalogError(f"{self._name()}: schema revision {self.schema[2]} "
                               "requires the mtimens column")
        self._columns = ("rowid", *(c for c in ENTRY_COLUMNS if c in present))
        columns = ", ".join(self._columns)
        self._sql_entry = sql.ENTRY_BY_MD5PATH.format(columns=columns)
        self._sql_children = sql.ENTRIES_BY_PARENT.format(columns=columns)
        self._sql_page = sql.ENTRIES_BY_PARENT_AFTER.format(columns=columns)
        self._sql_hardlinked = sql.HARDLINKED.format(columns=columns)
        self.root_prefix = self.properties.get("root_prefix", "")
        self.revision = self._int_property("revision", 0)
        self.ttl = self._int_property("TTL", DEFAULT_TTL_SECONDS)
        self.last_modified = self._int_property("last_modified", 0)
        self.previous_revision = _parse_hash(self.properties.get("previous_revision"))

    def _parse_schema(self) -> tuple[int, int, int]:
        try:
            schema = parse_schema(self.properties.get("schema"),
                                  self.properties.get("schema_revision"))
        except ValueError as exc:
            raise CatalogError(f"{self._name()}: {exc}") from None
        if schema[:2] not in READABLE_SCHEMAS:
            raise CatalogError(f"{self._name()}: unsupported catalog schema "
                               f"{schema[0]}.{schema[1]} (readable: 2.4, 2.5)")
        if schema[2] not in READABLE_SCHEMA_REVISIONS:
            raise CatalogError(f"{self._name()}: unsupported schema revision {schema[2]} "
                               f"(readable: {READABLE_SCHEMA_REVISIONS.start}.."
                               f"{READABLE_SCHEMA_REVISIONS.stop - 1})")
        return schema

    def _int_property(self, key: str, default: int) -> int:
        value = self.properties.get(key)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise CatalogError(f"{self._name()}: property {key}={value!r} "
                               "is not an integer") from None

    def _name(self) -> str:
        return f"catalog {self.content_hash}" if self.content_hash else f"catalog {self.path}"

    def _query(self, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        try:
            with self._lock:
                return self._conn.execute(statement, params).fetchall()
        except sqlite3.Error as exc:
            raise CatalogError(f"{self._name()}: {exc}") from exc

    # --- entries ------------------------------------------------------------------------
    def _values(self, row: tuple[object, ...]) -> dict[str, object]:
        values = dict(zip(self._columns, row, strict=True))
        for key in ("name", "symlink"):  # TEXT stored as BLOB by a sloppy writer
            raw = values[key]
            if isinstance(raw, bytes):
                values[key] = _decode_text(raw)
        return values

    def _entry(self, values: dict[str, object]) -> DirEntry:
        try:
            return row_to_entry(values)
        except (ValueError, TypeError) as exc:
            raise CatalogError(f"{self._name()}: bad row {values.get('name')!r}: {exc}") from exc

    def lookup(self, path: str) -> DirEntry | None:
        """The row for absolute `path` ('' = this catalog's view of the repository root)."""
        rows = self._query(self._sql_entry, md5path(path))
        return self._entry(self._values(rows[0])) if rows else None

    def _child(self, path: str, values: dict[str, object]) -> DirEntry | None:
        """A listed row as an entry, or None if it is hidden or must not be listed (see
        the module docstring; refused rows are reported once through `refused`)."""
        entry = self._entry(values)
        if entry.is_hidden:
            return None
        problem = name_problem(entry.name)
        if problem is None and (values["md5path_1"], values["md5path_2"]) \
                != md5path(f"{path}/{entry.name}"):
            problem = "its md5path is not the hash of its path"
        if problem is not None:
            report_once(f"{self._name()}: entry {entry.name!r} in {path or '/'} refused: "
                         f"{problem}")
            return None
        return entry

    def listdir(self, path: str) -> list[tuple[str, DirEntry]]:
        """Children of `path` as (name, entry), hidden and refused rows skipped, in
        database order."""
        children = []
        for row in self._query(self._sql_children, md5path(path)):
            entry = self._child(path, self._values(row))
            if entry is not None:
                children.append((entry.name, entry))
        return children

    def listdir_page(self, path: str, after_rowid: int, limit: int) -> ListingPage:
        """Children of `path` with a rowid above `after_rowid`, in rowid order, at most
        `limit` rows read (the index on the parent columns serves this as a range scan:
        a directory of millions of entries is read page by page, never whole)."""
        parent = md5path(path)
        rows = self._query(self._sql_page, (*parent, after_rowid, limit))
        entries = []
        for row in rows:
            entry = self._child(path, self._values(row))
            if entry is not None:
                entries.append(entry)
        last = int(rows[-1][0]) if rows else after_rowid  # type: ignore[call-overload]
        return ListingPage(entries, last, len(rows) == limit)

    def hardlinked(self, limit: int) -> list[DirEntry] | None:
        """Every row that belongs to a hardlink group (one scan of the table), or None if
        there are more than `limit` of them."""
        rows = self._query(self._sql_hardlinked, (limit + 1,))
        if len(rows) > limit:
            return None
        return [self._entry(self._values(row)) for row in rows]

    def chunks(self, path: str, algorithm: Algorithm | None = None) -> list[ChunkRow]:
        """Chunk list of the file at `path`, ordered by offset.

        Chunk hashes use the owning file's algorithm; pass it when the entry is at hand,
        otherwise it is looked up."""
        if algorithm is None:
            entry = self.lookup(path)
            if entry is None:
                raise NotFoundError(f"{self._name()}: no entry {path!r}")
            algorithm = entry.hash_algorithm
        if "chunks" not in self._tables:
            return []
        out = []
        for offset, size, digest in self._query(sql.CHUNKS_BY_MD5PATH, md5path(path)):
            if not isinstance(digest, bytes) or not isinstance(offset, int) \
                    or not isinstance(size, int):
                raise CatalogError(f"{self._name()}: bad chunk row for {path!r}")
            try:
                out.append(ChunkRow(offset, size, ContentHash(algorithm, digest)))
            except ValueError as exc:
                raise CatalogError(f"{self._name()}: chunk of {path!r}: {exc}") from None
        return out

    # --- nested catalogs ------------------------------------------------------------------
    def _refs(self, table: str, statement: str) -> tuple[list[NestedRef], dict[str, str]]:
        """(usable references, {path: why refused}) of one reference table."""
        if table not in self._tables:
            return [], {}
        out, broken = [], {}
        for path, text, size in self._query(statement):
            parsed = _parse_hash(str(text)) if text is not None else None
            if not isinstance(path, str):
                raise CatalogError(f"{self._name()}: bad {table} row {path!r} -> {text!r}")
            problem = ref_problem(path, self.root_prefix)
            if problem is None and parsed is None:
                problem = f"bad catalog hash {text!r}"
            if problem is not None:
                broken[path] = f"{self._name()}: {table} entry {path!r} refused: {problem}"
                continue
            assert parsed is not None
            out.append(NestedRef(path, parsed, int(size or 0)))  # type: ignore[call-overload]
        return out, broken

    def _child_refs(self) -> _ChildRefs:
        refs = self._children  # one assignment below: threads see all of it or nothing
        if refs is None:
            nested, broken = self._refs("nested_catalogs", sql.NESTED_CATALOGS)
            binds, broken_binds = self._refs("bind_mountpoints", sql.BIND_MOUNTPOINTS)
            broken.update(broken_binds)
            usable = nested + binds
            for ref in usable:  # a grandchild listed here would make the walk ambiguous
                outer = next((o for o in usable if o is not ref and _below(ref.path, o.path)),
                             None)
                if outer is not None:
                    broken[ref.path] = (f"{self._name()}: nested catalog {ref.path!r} refused: "
                                        f"it lies inside nested catalog {outer.path!r}")
            nested = [r for r in nested if r.path not in broken]
            binds = [r for r in binds if r.path not in broken]
            refs = _ChildRefs(nested, binds, broken)
            self._children = refs
        return refs

    def nested_catalogs(self) -> list[NestedRef]:
        """Direct child catalogs: `nested_catalogs` plus `bind_mountpoints` (when present),
        without the refused ones (`broken_refs`)."""
        refs = self._child_refs()
        return refs.nested + refs.binds

    def bind_mountpoints(self) -> list[NestedRef]:
        """Only the bind mountpoints (links to other root catalogs)."""
        return list(self._child_refs().binds)

    def broken_refs(self) -> dict[str, str]:
        """Mount point -> why its reference was refused (itself, an ancestor, outside this
        catalog's subtree, inside another reference, a bad hash)."""
        return dict(self._child_refs().broken)

    def statistics(self) -> dict[str, int]:
        """Raw counters (`self_*`, `subtree_*`); empty when the table is absent."""
        if "statistics" not in self._tables:
            return {}
        rows = self._query(sql.SELECT_STATISTICS)
        return {str(k): int(v or 0) for k, v in rows}  # type: ignore[call-overload]

    def max_rowid(self) -> int:
        """Largest rowid: the width of this catalog's inode range (fact sheet 6.14)."""
        value = self._query(sql.MAX_ROWID)[0][0]
        return int(value) if isinstance(value, int) else 0

    # --- lifecycle --------------------------------------------------------------------------
    def release(self) -> None:
        """Give up the claim on the database file (the cache may evict it); the open
        connection keeps reading it until `close`. Idempotent."""
        with self._lock:
            on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release()

    def close(self) -> None:
        self.release()
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        prefix = self.root_prefix or "/"
        return f"<Catalog {self.content_hash or self.path} at {prefix} rev {self.revision}>"


def _parse_hash(text: str | None) -> ContentHash | None:
    if not text:
        return None
    try:
        return ContentHash.parse(text)
    except ValueError:
        return None
