"""Write the catalogs of one revision, nested ones first, root last (fact sheet 15.2).

Each catalog is a rollback-journal SQLite file (never WAL) with the schema 2.5 rev 7
DDL, the root entry inserted first (rowid 1), all 24 statistics counters and the
properties the reference client needs (`root_prefix` in nested catalogs). A catalog
whose rows are identical to the previous revision's is not written again: its
previous hash is reused, recognised by the `pycvmfs_digest` property (extra
properties are ignored by the reference client). A kept directory (publisher.kept) is
not built at all: the previous revision's catalog is grafted in with its mountpoint row,
hash, size and counters as they were, which gives the parent the rows (and digest) a
full walk of the unchanged directory would have.
"""

from __future__ import annotations

import hashlib
import stat
from collections import Counter as Multiset
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pycvmfs.errors import PublishError
from pycvmfs.format.catalog import (
    DDL,
    DIRECTORY_SIZE,
    ENTRY_COLUMNS,
    SCHEMA_REVISION,
    SCHEMA_VERSION,
    Counters,
    DirEntry,
    Flags,
    chunk_to_row,
    entry_to_row,
    row_to_entry,
    statistics_rows,
    type_flags,
)
from pycvmfs.format.compression import Compression, make_object
from pycvmfs.format.hashes import ContentHash, Suffix
from pycvmfs.publisher.pipeline import FileContent, Settings
from pycvmfs.publisher.sqlite_image import sqlite_image
from pycvmfs.publisher.storage_protocol import Storage
from pycvmfs.publisher.tree_walk import Node

DIGEST_PROPERTY = "pycvmfs_digest"
SETTINGS_PROPERTY = "pycvmfs_settings"  # root only: how contents were stored (see previous.py)


@dataclass(frozen=True, slots=True)
class CatalogRef:
    """A written (or reused) catalog and the counters its parent adds up."""

    path: str
    content_hash: ContentHash
    size: int
    self_counters: Counters
    subtree_counters: Counters


@dataclass(frozen=True, slots=True)
class PreviousCatalog:
    content_hash: ContentHash
    size: int
    revision: int
    digest: str


@dataclass(frozen=True, slots=True)
class KeptCatalog:
    """A previous revision's nested catalog, grafted unchanged at a kept directory."""

    content_hash: ContentHash
    size: int
    self_counters: Counters
    subtree_counters: Counters
    mountpoint_row: tuple[object, ...]  # its directory's row in the previous parent catalog


@dataclass(slots=True)
class _CatalogRows:
    entries: list[tuple[object, ...]] = field(default_factory=list)
    chunks: list[tuple[object, ...]] = field(default_factory=list)
    nested: list[tuple[str, str, int]] = field(default_factory=list)
    self_counters: Counters = field(default_factory=Counters)
    subtree: Counters = field(default_factory=Counters)
    hardlink_groups: int = 0


@dataclass(frozen=True, slots=True)
class CatalogContext:
    """Everything fixed for one publish that the catalogs record."""

    revision: int
    timestamp: int
    ttl_seconds: int | None
    owner: tuple[int, int] | None = None  # (uid, gid) override for every entry


class CatalogWriter:
    """Turns the walked tree + stored contents into uploaded catalogs."""

    def __init__(
        self,
        storage: Storage,
        settings: Settings,
        contents: dict[tuple[int, int], FileContent],
        context: CatalogContext,
        previous: Callable[[str], PreviousCatalog | None] = lambda path: None,
        kept: Mapping[str, KeptCatalog] | None = None,
        bundle_triggers: frozenset[str] = frozenset(),
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.contents = contents
        self.context = context
        self.previous = previous
        self.kept = kept or {}
        self.bundle_triggers = bundle_triggers  # paths flagged BUNDLE_TRIGGER (bundles.py)
        self.written: list[str] = []  # mountpoints of catalogs written this time
        self.grafted: list[str] = []  # mountpoints of kept catalogs taken over as they were

    def write(self, root: Node) -> CatalogRef:
        return self._build(root)

    # -- one catalog ---------------------------------------------------------------

    def _build(self, mount: Node) -> CatalogRef:
        rows = _CatalogRows()
        self._add(rows, mount, self._entry(mount, nested_root=mount.path != ""))
        stack = [mount]
        while stack:
            directory = stack.pop()
            links = _hardlink_members(directory)
            groups: dict[tuple[int, int], int] = {}
            for child in directory.children:
                if child.is_dir and child.nested_root:
                    self._attach_nested(rows, child)
                    continue
                group, count = 0, 1
                if child.inode_key in links:
                    if child.inode_key not in groups:
                        rows.hardlink_groups += 1
                        groups[child.inode_key] = rows.hardlink_groups
                    group, count = groups[child.inode_key], links[child.inode_key]
                self._add(rows, child, self._entry(child, group=group, linkcount=count))
                if child.is_dir:
                    stack.append(child)
        return self._finish(mount, rows)

    def _attach_nested(self, rows: _CatalogRows, child: Node) -> None:
        if child.kept:
            self._graft(rows, child.path)
            return
        ref = self._build(child)
        rows.nested.append((child.path, str(ref.content_hash), ref.size))
        rows.self_counters.values["nested"] += 1
        rows.subtree.add(ref.self_counters)
        rows.subtree.add(ref.subtree_counters)
        self._add(rows, child, self._entry(child, mountpoint=True))

    def _graft(self, rows: _CatalogRows, path: str) -> None:
        """The same rows, in the same order, as `_attach_nested` of the unchanged tree."""
        kept = self.kept.get(path)
        if kept is None:
            raise PublishError(f"{path}: kept directory, but the previous revision has no "
                               "nested catalog there")
        rows.nested.append((path, str(kept.content_hash), kept.size))
        rows.self_counters.values["nested"] += 1
        rows.subtree.add(kept.self_counters)
        rows.subtree.add(kept.subtree_counters)
        rows.entries.append(kept.mountpoint_row)
        rows.self_counters.count_entry(
            row_to_entry(dict(zip(ENTRY_COLUMNS, kept.mountpoint_row, strict=True))))
        self.grafted.append(path)

    def _add(self, rows: _CatalogRows, node: Node, entry: DirEntry) -> None:
        rows.entries.append(entry_to_row(entry, node.path))
        content = self.contents.get(node.inode_key) if node.is_regular else None
        chunks = content.chunks if content is not None else ()
        rows.chunks.extend(chunk_to_row(node.path, c) for c in chunks)
        rows.self_counters.count_entry(entry, len(chunks))

    def _entry(self, node: Node, *, group: int = 0, linkcount: int = 1,
               nested_root: bool = False, mountpoint: bool = False) -> DirEntry:
        st = node.st
        flags = type_flags(st.st_mode)
        size, content_hash, symlink = st.st_size, None, ""
        compression = Compression.ZLIB
        if node.is_dir:
            size = DIRECTORY_SIZE
            linkcount = 2 + sum(1 for c in node.children if c.is_dir)
            flags |= Flags.NESTED_ROOT if nested_root else 0
            flags |= Flags.NESTED_MOUNTPOINT if mountpoint else 0
        elif node.is_regular:
            content = self.contents[node.inode_key]
            size, content_hash = content.size, content.content_hash
            compression = content.compression
            flags |= Flags.CHUNKED if content.chunks else 0
            flags |= Flags.BUNDLE_TRIGGER if node.path in self.bundle_triggers else 0
        elif node.is_symlink:
            symlink = node.symlink
            size = len(symlink.encode("utf-8", "surrogateescape"))
        else:
            size = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
        uid, gid = self.context.owner or (st.st_uid, st.st_gid)
        return DirEntry(
            name=node.name, mode=st.st_mode, size=size, mtime=int(st.st_mtime_ns // 10**9),
            mtimens=st.st_mtime_ns % 10**9, flags=int(flags), uid=uid, gid=gid,
            linkcount=linkcount, hardlink_group=group, content_hash=content_hash,
            symlink=symlink, xattrs=tuple(sorted(node.xattrs.items())),
            hash_algorithm=self.settings.algorithm,
            compression=compression,
        )

    # -- output --------------------------------------------------------------------

    def _finish(self, mount: Node, rows: _CatalogRows) -> CatalogRef:
        digest = _rows_digest(rows, self.context, mount.path == "")
        previous = self.previous(mount.path)
        if mount.path != "" and previous is not None and previous.digest == digest:
            return CatalogRef(mount.path, previous.content_hash, previous.size,
                              rows.self_counters, rows.subtree)
        properties = {
            "schema": SCHEMA_VERSION,
            "schema_revision": str(SCHEMA_REVISION),
            "revision": str(self.context.revision if mount.path == "" or previous is None
                            else previous.revision + 1),
            "last_modified": str(self.context.timestamp),
            DIGEST_PROPERTY: digest,
        }
        if previous is not None:
            properties["previous_revision"] = str(previous.content_hash)
        if mount.path:
            properties["root_prefix"] = mount.path
        else:
            properties[SETTINGS_PROPERTY] = self.settings.fingerprint()
            if self.context.ttl_seconds is not None:
                properties["TTL"] = str(self.context.ttl_seconds)
        raw = self._sqlite_bytes(rows, properties)
        content_hash, stored = make_object(raw, self.settings.algorithm, Compression.ZLIB)
        self.storage.put_object(content_hash, stored, Suffix.CATALOG)
        self.written.append(mount.path or "/")
        return CatalogRef(mount.path, content_hash, len(raw), rows.self_counters, rows.subtree)

    def _sqlite_bytes(self, rows: _CatalogRows, properties: dict[str, str]) -> bytes:
        columns = ", ".join(ENTRY_COLUMNS)
        placeholders = ", ".join("?" * len(ENTRY_COLUMNS))
        return sqlite_image(self.storage.scratch_dir(), DDL, [
            ("INSERT INTO properties VALUES (?, ?)", properties.items()),
            (f"INSERT INTO catalog ({columns}) VALUES ({placeholders})", rows.entries),
            ("INSERT INTO chunks VALUES (?, ?, ?, ?, ?)", rows.chunks),
            ("INSERT INTO nested_catalogs VALUES (?, ?, ?)", rows.nested),
            ("INSERT INTO statistics VALUES (?, ?)",
             statistics_rows(rows.self_counters, rows.subtree)),
        ])


def _hardlink_members(directory: Node) -> dict[tuple[int, int], int]:
    """Inodes that appear more than once among a directory's non-directory children."""
    seen = Multiset(c.inode_key for c in directory.children
                    if not c.is_dir and c.st.st_nlink > 1)
    return {key: n for key, n in seen.items() if n > 1}


def _rows_digest(rows: _CatalogRows, context: CatalogContext, is_root: bool) -> str:
    """Digest over everything a catalog holds except revision bookkeeping."""
    h = hashlib.sha1()
    for group in (rows.entries, rows.chunks, rows.nested):
        for row in group:
            h.update(repr(row).encode("utf-8", "surrogateescape"))
        h.update(b"|")
    if is_root:
        h.update(repr(context.ttl_seconds).encode())
    return h.hexdigest()

