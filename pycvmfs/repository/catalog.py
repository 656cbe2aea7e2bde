"""One file catalog opened read-only: entries by path, listings, chunks, nested catalogs.

The database file must already be verified (its content hash checked) and decompressed; it
is opened with `mode=ro&immutable=1`, which is safe because catalog files are
content-addressed and never change while attached (style R10). Schema, schema revision and
the available columns are read once at open; every query then uses statements prepared from
`catalog_sql` for exactly this catalog.

Thread-safety: one connection per catalog shared by all threads (`check_same_thread=False`)
and a lock held for each statement's execute + fetch, so every public method is atomic and
may be called from any thread.

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
    parse_schema,
    row_to_entry,
)
from pycvmfs.format.hashes import Algorithm, ContentHash
from pycvmfs.repository import catalog_sql as sql

READABLE_SCHEMAS = ((2, 4), (2, 5))  # (major, minor) the reference client still mounts
OPTIONAL_COLUMNS = frozenset({"mtimens", "xattr"})  # added in schema revisions 7 and 2
REQUIRED_TABLES = frozenset({"properties", "catalog"})


class NestedRef(NamedTuple):
    """A nested catalog (or bind mountpoint) listed in its parent: unpacks as a 3-tuple."""

    path: str
    hash: ContentHash
    size: int


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _connect(path: Path) -> sqlite3.Connection:
    uri = f"file:{quote(os.fspath(path))}?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
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
        self._children: tuple[list[NestedRef], list[NestedRef]] | None = None
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
        self._columns = tuple(c for c in ENTRY_COLUMNS if c in present)
        columns = ", ".join(self._columns)
        self._sql_entry = sql.ENTRY_BY_MD5PATH.format(columns=columns)
        self._sql_children = sql.ENTRIES_BY_PARENT.format(columns=columns)
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
    def _entry(self, row: tuple[object, ...]) -> DirEntry:
        values = dict(zip(self._columns, row, strict=True))
        for key in ("name", "symlink"):  # TEXT stored as BLOB by a sloppy writer
            raw = values[key]
            if isinstance(raw, bytes):
                values[key] = _decode_text(raw)
        try:
            return row_to_entry(values)
        except (ValueError, TypeError) as exc:
            raise CatalogError(f"{self._name()}: bad row {values.get('name')!r}: {exc}") from exc

    def lookup(self, path: str) -> DirEntry | None:
        """The row for absolute `path` ('' = this catalog's view of the repository root)."""
        rows = self._query(self._sql_entry, md5path(path))
        return self._entry(rows[0]) if rows else None

    def listdir(self, path: str) -> list[tuple[str, DirEntry]]:
        """Children of `path` as (name, entry), hidden entries skipped, in database order."""
        entries = (self._entry(row) for row in self._query(self._sql_children, md5path(path)))
        return [(e.name, e) for e in entries if not e.is_hidden]

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
    def _refs(self, table: str, statement: str) -> list[NestedRef]:
        if table not in self._tables:
            return []
        out = []
        for path, text, size in self._query(statement):
            parsed = _parse_hash(str(text)) if text is not None else None
            if parsed is None or not isinstance(path, str):
                raise CatalogError(f"{self._name()}: bad {table} row {path!r} -> {text!r}")
            out.append(NestedRef(path, parsed, int(size or 0)))  # type: ignore[call-overload]
        return out

    def _child_refs(self) -> tuple[list[NestedRef], list[NestedRef]]:
        refs = self._children  # one assignment below: threads see both lists or neither
        if refs is None:
            refs = (self._refs("nested_catalogs", sql.NESTED_CATALOGS),
                    self._refs("bind_mountpoints", sql.BIND_MOUNTPOINTS))
            self._children = refs
        return refs

    def nested_catalogs(self) -> list[NestedRef]:
        """Direct child catalogs: `nested_catalogs` plus `bind_mountpoints` (when present)."""
        nested, binds = self._child_refs()
        return nested + binds

    def bind_mountpoints(self) -> list[NestedRef]:
        """Only the bind mountpoints (links to other root catalogs)."""
        return list(self._child_refs()[1])

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
