"""What a Stratum-1 replica of a revision must hold, decided from verified catalogs and the
history, without any I/O beyond reading those SQLite files (`cvmfs_swissknife pull`'s
difference set, `catalog_sql.cc` SqlAllChunks).

Objects of a catalog: the `hash` of every regular-file row that is not external (a whole
file; for a chunked file the bulk object the row names, when the publisher wrote one) and
every row of `chunks` whose file is not external (suffix P), each with the compression and
hash algorithm of its file's flags and the inflated size the catalog states (the bytes are
checked against both when they are copied). Directory hashes (micro catalogs, suffix L,
reserved and never written by current publishers) are not copied. Nested catalogs and
bind mountpoints come from `repository.catalog.Catalog`, which refuses references that
could loop or escape their subtree. Tags come from the history database.

Also here: the refusal to go backwards (a source older than the replica), and the text of
`.cvmfs_last_snapshot` and `.cvmfs_status.json`, as `cvmfs_server snapshot` writes them.

Thread-safety: pure functions; each call opens its own SQLite connection.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pycvmfs.errors import CatalogError, PycvmfsError, ReplicationError
from pycvmfs.format.catalog import (
    COMPRESSION_MASK,
    COMPRESSION_SHIFT,
    HASH_ALGO_MASK,
    HASH_ALGO_SHIFT,
    Flags,
)
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import Algorithm, ContentHash, Suffix
from pycvmfs.format.history import Tag
from pycvmfs.format.manifest import Manifest, parse_manifest
from pycvmfs.repository import catalog_sql

LAST_SNAPSHOT_NAME = ".cvmfs_last_snapshot"
STATUS_NAME = ".cvmfs_status.json"
_FILE, _EXTERNAL = int(Flags.FILE), int(Flags.EXTERNAL)
FILE_OBJECTS_SQL = (
    f"SELECT DISTINCT hash, flags, size FROM catalog WHERE (flags & {_FILE}) != 0 "
    f"AND (flags & {_EXTERNAL}) = 0 AND hash IS NOT NULL AND length(hash) > 0")
CHUNK_OBJECTS_SQL = (
    "SELECT DISTINCT chunks.hash, catalog.flags, chunks.size FROM chunks JOIN catalog "
    "ON chunks.md5path_1 = catalog.md5path_1 AND chunks.md5path_2 = catalog.md5path_2 "
    f"WHERE (catalog.flags & {_EXTERNAL}) = 0 AND chunks.hash IS NOT NULL "
    "AND length(chunks.hash) > 0")
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One object a replica must hold: where it is, how its bytes are checked."""

    content_hash: ContentHash
    suffix: Suffix
    compression: Compression = Compression.ZLIB
    size: int | None = None  # inflated size the catalog states; None: unsized (metadata)

    @property
    def path(self) -> str:
        return self.content_hash.object_path(self.suffix)

    @property
    def key(self) -> tuple[bytes, str]:
        """What identifies the stored object (the algorithm is part of the digest's name,
        but two algorithms never share a digest length and value in practice)."""
        return self.content_hash.digest, self.suffix.value


def _connect(path: Path) -> sqlite3.Connection:
    uri = f"file:{quote(os.fspath(path))}?mode=ro&immutable=1"
    try:
        return sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise CatalogError(f"catalog {path}: cannot open: {exc}") from exc


def _ref(digest: object, flags: object, size: object, suffix: Suffix, what: str) -> ObjectRef:
    if not isinstance(digest, bytes) or not isinstance(flags, int):
        raise CatalogError(f"{what}: bad object row {digest!r}, flags {flags!r}")
    try:
        algorithm = Algorithm(((flags & HASH_ALGO_MASK) >> HASH_ALGO_SHIFT) + 1)
        compression = Compression((flags & COMPRESSION_MASK) >> COMPRESSION_SHIFT)
        content_hash = ContentHash(algorithm, digest)
    except ValueError as exc:
        raise CatalogError(f"{what}: object {digest.hex()}: {exc}") from None
    return ObjectRef(content_hash, suffix, compression,
                     size if isinstance(size, int) and size >= 0 else None)


def catalog_objects(path: Path, what: str = "catalog") -> Iterator[ObjectRef]:
    """The file objects and chunks the catalog database at `path` references (distinct
    within this catalog; streamed, so a catalog of millions of rows is never held)."""
    conn = _connect(path)
    try:
        tables = {row[0] for row in conn.execute(catalog_sql.LIST_TABLES)}
        if "catalog" not in tables:
            raise CatalogError(f"{what}: not a CernVM-FS catalog (no catalog table)")
        for digest, flags, size in conn.execute(FILE_OBJECTS_SQL):
            yield _ref(digest, flags, size, Suffix.NONE, what)
        if "chunks" in tables:
            for digest, flags, size in conn.execute(CHUNK_OBJECTS_SQL):
                yield _ref(digest, flags, size, Suffix.PARTIAL, what)
    except sqlite3.Error as exc:
        raise CatalogError(f"{what}: {exc}") from exc
    finally:
        conn.close()


def history_tags(path: Path) -> list[Tag]:
    """Every tag of the history database at `path`, newest revision first."""
    conn = _connect(path)
    try:
        return [Tag.from_row(row) for row in conn.execute(catalog_sql.ALL_TAGS)]
    except (sqlite3.Error, ValueError, TypeError) as exc:
        raise CatalogError(f"history database: {exc}") from exc
    finally:
        conn.close()


def tag_roots(tags: list[Tag], trunk: ContentHash) -> list[tuple[str, ContentHash]]:
    """(tag name, root catalog) of every tag whose root is not the trunk's, each root once."""
    seen = {trunk.digest}
    roots = []
    for tag in tags:
        try:
            root = ContentHash.parse(tag.hash)
        except ValueError:
            raise CatalogError(f"history database: tag {tag.name!r} has a bad root catalog "
                               f"hash {tag.hash!r}") from None
        if root.digest not in seen:
            seen.add(root.digest)
            roots.append((tag.name, root))
    return roots


def replica_manifest(raw: bytes | None, where: str) -> Manifest | None:
    """The manifest a replica serves now (None: nothing yet). Only its name and revision
    matter here, so it is parsed, not verified: the snapshot replaces it."""
    if raw is None:
        return None
    try:
        return parse_manifest(raw, what=f"manifest at {where}")[0]
    except PycvmfsError as exc:
        raise ReplicationError(f"{where} does not parse ({exc}); --force replaces it") from None


def check_direction(current: Manifest | None, source: Manifest, fqrn: str, where: str,
                    *, force: bool) -> None:
    """Refuse a replica of another repository, and (unless `force`) a source that serves
    an older revision than the replica: clients that saw the newer one would be stuck."""
    if current is None or force:
        return
    if current.fqrn and current.fqrn != fqrn:
        raise ReplicationError(f"{where} is a replica of {current.fqrn}, not {fqrn}: choose "
                               "another --storage (or --force to replace it)")
    if source.revision < current.revision:
        raise ReplicationError(
            f"the source serves revision {source.revision}, older than revision "
            f"{current.revision} at {where}: refusing to go backwards (--force replicates it "
            "anyway)")


def date_utc(moment: dt.datetime) -> str:
    """`date --utc` in the C locale (`Mon Dec  7 13:41:43 UTC 2026`), as the reference's
    `.cvmfs_last_snapshot` and `.cvmfs_status.json` hold it."""
    moment = moment.astimezone(dt.UTC)
    return (f"{_WEEKDAYS[moment.weekday()]} {_MONTHS[moment.month - 1]} {moment.day:2d} "
            f"{moment:%H:%M:%S} UTC {moment.year}")


def last_snapshot_text(moment: dt.datetime) -> bytes:
    return (date_utc(moment) + "\n").encode()


def status_json(previous: bytes | None, moment: dt.datetime) -> bytes:
    """`.cvmfs_status.json` with `last_snapshot` set, other keys kept (an unreadable old
    file is replaced)."""
    status: dict[str, object] = {}
    if previous:
        try:
            loaded = json.loads(previous)
        except ValueError:
            loaded = None
        if isinstance(loaded, dict):
            status = loaded
    status["last_snapshot"] = date_utc(moment)
    return (json.dumps(status, indent=2) + "\n").encode()
