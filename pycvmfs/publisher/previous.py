"""The revision a publish builds on: its manifest (verified with our own certificate),
its catalogs (to keep unchanged ones), its tags, and what it knows about every file.

The file index lets a republish skip reading files that did not change: a regular file
whose size and nanosecond mtime equal the previous revision's entry at the same path,
published with the same settings and whose objects are all still in the storage, gets
the previous hash and chunks without being read (rsync's quick check). `--rehash`
turns this off for the rare edit that keeps size and mtime.

Catalogs at kept directories (publisher.kept) are grafted into the new revision as they
are, so only their statistics are needed (remembered by hash after the first read): neither
their file rows nor the nested catalogs below them are loaded, which keeps a publish of a
mostly kept tree cheap.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass, field

from pycvmfs.errors import PublishError
from pycvmfs.format.catalog import (
    COMPRESSION_MASK,
    COMPRESSION_SHIFT,
    ENTRY_COLUMNS,
    HASH_ALGO_MASK,
    HASH_ALGO_SHIFT,
    ChunkRow,
    Flags,
    counters_from_rows,
    md5path,
)
from pycvmfs.format.compression import Compression, open_object
from pycvmfs.format.hashes import Algorithm, ContentHash, Suffix
from pycvmfs.format.history import Tag
from pycvmfs.format.manifest import Manifest, verify_manifest
from pycvmfs.publisher.catalog_writer import (
    DIGEST_PROPERTY,
    SETTINGS_PROPERTY,
    KeptCatalog,
    PreviousCatalog,
)
from pycvmfs.publisher.history_writer import read_tags
from pycvmfs.publisher.keys import RepositoryKeys
from pycvmfs.publisher.pipeline import FileContent
from pycvmfs.publisher.sqlite_image import read_sqlite_rows
from pycvmfs.publisher.storage import MANIFEST_NAME
from pycvmfs.publisher.storage_protocol import Storage

# catalog hash -> its statistics, in the storage's memo_path (not part of the format)
STATISTICS_MEMO = ".pycvmfs_catalog_statistics.sqlite"
MAX_METADATA_OBJECT_BYTES = 1 << 30  # bound for inflating our own catalogs/history
Md5Path = tuple[int, int]

_FILES_SQL = (f"SELECT md5path_1, md5path_2, size, mtime, mtimens, flags, hash FROM catalog "
              f"WHERE flags & {int(Flags.FILE)} AND NOT flags & {int(Flags.LINK | Flags.SPECIAL)}")
_CHUNKS_SQL = "SELECT md5path_1, md5path_2, offset, size, hash FROM chunks ORDER BY offset"
_MOUNTPOINTS_SQL = (f"SELECT {', '.join(ENTRY_COLUMNS)} FROM catalog "
                    f"WHERE flags & {int(Flags.NESTED_MOUNTPOINT)}")


@dataclass(frozen=True, slots=True)
class PreviousFile:
    """A regular file as the previous revision recorded it."""

    mtime_ns: int
    content: FileContent

    def objects(self) -> list[tuple[ContentHash, Suffix]]:
        if self.content.content_hash is not None:
            return [(self.content.content_hash, Suffix.NONE)]
        return [(c.content_hash, Suffix.PARTIAL) for c in self.content.chunks]


@dataclass(frozen=True, slots=True)
class PreviousRevision:
    """What the publish builds on: the current manifest and its catalogs, tags, files."""

    manifest: Manifest
    catalogs: dict[str, PreviousCatalog]
    tags: dict[str, Tag]
    files: dict[Md5Path, PreviousFile]
    settings: str  # SETTINGS_PROPERTY of the previous root catalog ('' when unknown)
    kept: dict[str, KeptCatalog] = field(default_factory=dict)  # of the requested paths


def load_previous(storage: Storage, fqrn: str, keys: RepositoryKeys,
                  kept: Collection[str] = ()) -> PreviousRevision | None:
    """The storage's current revision, verified with our own certificate.

    `kept`: mountpoints to graft (not descended into); those that were nested catalogs
    are in `PreviousRevision.kept`, the others are missing from it."""
    raw = storage.read_file(MANIFEST_NAME)
    if raw is None:
        return None
    try:
        manifest = verify_manifest(raw, keys.certificate, fqrn=fqrn)
    except Exception as exc:
        raise PublishError(f"existing {storage.describe(MANIFEST_NAME)} does not verify with "
                           f"the keys of {fqrn}: {exc}") from exc
    catalogs: dict[str, PreviousCatalog] = {}
    files: dict[Md5Path, PreviousFile] = {}
    grafts: dict[str, KeptCatalog] = {}
    wanted = frozenset(kept)
    settings = ""
    pending = [("", manifest.root_hash)]
    with contextlib.closing(_StatisticsMemo(storage)) as memo:
        while pending:
            path, content_hash = pending.pop()
            image = _read_metadata(storage, content_hash, Suffix.CATALOG)
            nested = [(str(child), ContentHash.parse(str(text)), int(size))
                      for child, text, size in read_sqlite_rows(
                          image, "SELECT path, sha1, size FROM nested_catalogs")]
            if any(child in wanted for child, _hash, _size in nested):
                grafts.update(_kept_catalogs(memo, image, nested, wanted))
            props = {str(k): str(v) for k, v in
                     read_sqlite_rows(image, "SELECT key, value FROM properties")}
            catalogs[path] = PreviousCatalog(content_hash, len(image),
                                             int(props.get("revision", 0)),
                                             props.get(DIGEST_PROPERTY, ""))
            if path == "":
                settings = props.get(SETTINGS_PROPERTY, "")
            files.update(_files_of(image))
            pending.extend((child, h) for child, h, _size in nested if child not in wanted)
    tags: dict[str, Tag] = {}
    if manifest.history is not None:
        tags = read_tags(_read_metadata(storage, manifest.history, Suffix.HISTORY))
    return PreviousRevision(manifest, catalogs, tags, files, settings, grafts)


def _kept_catalogs(memo: _StatisticsMemo, parent_image: bytes,
                   nested: list[tuple[str, ContentHash, int]],
                   kept: Collection[str]) -> dict[str, KeptCatalog]:
    """The kept children of one catalog: its rows for them, their statistics."""
    rows = {(int(row[0]), int(row[1])): tuple(row)
            for row in read_sqlite_rows(parent_image, _MOUNTPOINTS_SQL)}
    grafts: dict[str, KeptCatalog] = {}
    for path, content_hash, size in nested:
        row = rows.get(md5path(path))
        if path not in kept or row is None:
            continue
        own, subtree = counters_from_rows(memo.statistics(content_hash))
        grafts[path] = KeptCatalog(content_hash, size, own, subtree, row)
    return grafts


class _StatisticsMemo:
    """Catalog statistics rows by catalog hash. A catalog never changes under its hash, so
    they are remembered beside the storage (STATISTICS_MEMO): a publish of many kept images
    then reads none of their catalogs again. Opened on first use, once per publish."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._db: sqlite3.Connection | None = None

    def statistics(self, content_hash: ContentHash) -> list[tuple[str, int]]:
        if self._db is None:
            self._db = sqlite3.connect(self._storage.memo_path(STATISTICS_MEMO))
            self._db.execute("CREATE TABLE IF NOT EXISTS statistics "
                             "(hash TEXT PRIMARY KEY, counters TEXT)")
        key = str(content_hash)
        found = self._db.execute("SELECT counters FROM statistics WHERE hash = ?",
                                 (key,)).fetchone()
        if found is not None:
            try:
                return [(str(name), int(value)) for name, value in json.loads(found[0])]
            except (ValueError, TypeError):
                pass  # unreadable: recomputed and replaced below
        image = _read_metadata(self._storage, content_hash, Suffix.CATALOG)
        rows = [(str(name), int(value)) for name, value in
                read_sqlite_rows(image, "SELECT counter, value FROM statistics")]
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO statistics VALUES (?, ?)",
                             (key, json.dumps(rows)))
        return rows

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def _files_of(image: bytes) -> dict[Md5Path, PreviousFile]:
    chunks: dict[Md5Path, list[tuple[int, int, bytes]]] = {}
    for p1, p2, offset, size, digest in read_sqlite_rows(image, _CHUNKS_SQL):
        chunks.setdefault((int(p1), int(p2)), []).append((int(offset), int(size), bytes(digest)))
    files: dict[Md5Path, PreviousFile] = {}
    for p1, p2, size, mtime, mtimens, flags, digest in read_sqlite_rows(image, _FILES_SQL):
        key = (int(p1), int(p2))
        flag_bits = int(flags)
        algorithm = Algorithm(((flag_bits & HASH_ALGO_MASK) >> HASH_ALGO_SHIFT) + 1)
        compression = Compression((flag_bits & COMPRESSION_MASK) >> COMPRESSION_SHIFT)
        rows = tuple(ChunkRow(o, s, ContentHash(algorithm, d)) for o, s, d in chunks.get(key, []))
        whole = ContentHash(algorithm, bytes(digest)) if digest else None
        if whole is None and not rows:
            continue
        mtime_ns = int(mtime) * 10**9 + int(mtimens or 0)
        files[key] = PreviousFile(mtime_ns, FileContent(int(size), whole, rows, compression))
    return files


def _read_metadata(storage: Storage, content_hash: ContentHash, suffix: Suffix) -> bytes:
    stored = storage.read_object(content_hash, suffix)
    return open_object(stored, content_hash, Compression.ZLIB,
                       max_size=MAX_METADATA_OBJECT_BYTES, what=f"stored object {suffix.value}")
