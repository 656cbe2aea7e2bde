"""File catalog format, schema 2.5 revision 7 (fact sheet section 6).

Pure: SQL text, row <-> entry mapping, md5path, flags, hardlink encoding and the
statistics counters. Opening databases is the job of `repository.catalog` (reading)
and `publisher.catalog_writer` (writing).
"""

from __future__ import annotations

import enum
import hashlib
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import Algorithm, ContentHash
from pycvmfs.format.xattr_blob import decode_xattrs, encode_xattrs

SCHEMA_VERSION = "2.5"
SCHEMA_REVISION = 7
READABLE_SCHEMA_REVISIONS = range(8)  # schema 2.5 revisions the reader understands
DEFAULT_TTL_SECONDS = 240  # client default when the root catalog has no TTL property
DIRECTORY_SIZE = 4096

DDL = (  # the reference publisher's statements, spacing included
    "CREATE TABLE properties (key TEXT, value TEXT, "
    "CONSTRAINT pk_properties PRIMARY KEY (key))",
    "CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, "
    "parent_2 INTEGER, hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER, "
    "mtime INTEGER, mtimens INTEGER, flags INTEGER, name TEXT, symlink TEXT, uid INTEGER, "
    "gid INTEGER, xattr BLOB,  CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2))",
    "CREATE INDEX idx_catalog_parent ON catalog (parent_1, parent_2)",
    "CREATE TABLE chunks (md5path_1 INTEGER, md5path_2 INTEGER, offset INTEGER, "
    "size INTEGER,  hash BLOB,  CONSTRAINT pk_chunks PRIMARY KEY "
    "(md5path_1, md5path_2, offset, size),  FOREIGN KEY (md5path_1, md5path_2) "
    "REFERENCES    catalog(md5path_1, md5path_2))",
    "CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT, size INTEGER, "
    "CONSTRAINT pk_nested_catalogs PRIMARY KEY (path))",
    "CREATE TABLE bind_mountpoints (path TEXT, sha1 TEXT, size INTEGER, "
    "CONSTRAINT pk_bind_mountpoints PRIMARY KEY (path))",
    "CREATE TABLE statistics (counter TEXT, value INTEGER, "
    "CONSTRAINT pk_statistics PRIMARY KEY (counter))",
)

# Column order used by INSERT and by the reader's SELECTs (by name, so order of the
# table itself does not matter).
ENTRY_COLUMNS = (
    "md5path_1", "md5path_2", "parent_1", "parent_2", "hardlinks", "hash", "size",
    "mode", "mtime", "mtimens", "flags", "name", "symlink", "uid", "gid", "xattr",
)
ROOT_PARENT = (0, 0)


class Flags(enum.IntFlag):
    """Catalog `flags` bits (fact sheet 6.7)."""

    DIR = 1
    NESTED_MOUNTPOINT = 2
    FILE = 4
    LINK = 8
    SPECIAL = 16
    NESTED_ROOT = 32
    CHUNKED = 64
    EXTERNAL = 128
    BIND_MOUNTPOINT = 0x4000
    HIDDEN = 0x8000
    DIRECT_IO = 0x10000
    BUNDLE_TRIGGER = 0x20000  # opening it prefetches the files its .cvmfsbundle-<name> lists


_CHUNKED, _EXTERNAL, _HIDDEN = int(Flags.CHUNKED), int(Flags.EXTERNAL), int(Flags.HIDDEN)
_NESTED_MOUNTPOINT, _NESTED_ROOT = int(Flags.NESTED_MOUNTPOINT), int(Flags.NESTED_ROOT)
_BIND_MOUNTPOINT = int(Flags.BIND_MOUNTPOINT)
_BUNDLE_TRIGGER = int(Flags.BUNDLE_TRIGGER)

HASH_ALGO_SHIFT = 8
HASH_ALGO_MASK = 0x700
COMPRESSION_SHIFT = 11
COMPRESSION_MASK = 0x3800


def md5path(path: str) -> tuple[int, int]:
    """MD5 of an absolute repository path split into two signed little-endian int64."""
    digest = hashlib.md5(path.encode("utf-8", "surrogateescape")).digest()
    a, b = struct.unpack("<qq", digest)
    return a, b


NAME_MAX_BYTES = 255  # the longest name the kernel takes in a directory entry


def name_problem(name: str) -> str | None:
    """Why `name` cannot be the name of a directory entry (None: it can): a hostile catalog
    could otherwise list `..`, a name with `/`, or names the kernel refuses."""
    if name in ("", ".", ".."):
        return f"the name {name!r} is reserved"
    if "/" in name or "\0" in name:
        return "the name contains '/' or NUL"
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX_BYTES:
        return f"the name is longer than {NAME_MAX_BYTES} bytes"
    return None


def parent_path(path: str) -> str:
    """'' for children of the root; the root itself has no parent path."""
    return path.rsplit("/", 1)[0]


def encode_hardlinks(group: int, linkcount: int) -> int:
    value = (group << 32) | (linkcount & 0xFFFFFFFF)
    return value - (1 << 64) if value >= (1 << 63) else value


def decode_hardlinks(value: int) -> tuple[int, int]:
    value &= (1 << 64) - 1
    return value >> 32, value & 0xFFFFFFFF


def _algorithm_from_flags(flags: int) -> Algorithm:
    return _ALGORITHMS.get(((flags & HASH_ALGO_MASK) >> HASH_ALGO_SHIFT) + 1) \
        or Algorithm(((flags & HASH_ALGO_MASK) >> HASH_ALGO_SHIFT) + 1)  # raises ValueError


# plain ints and lookup tables: entries are decoded by the hundred thousand, and IntFlag
# arithmetic or Enum(value) calls cost microseconds each
_ALGORITHMS = {a.value: a for a in Algorithm}
_COMPRESSIONS = {c.value: c for c in Compression}


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One catalog row as the rest of pycvmfs sees it."""

    name: str
    mode: int
    size: int
    mtime: int
    flags: int
    mtimens: int = 0
    uid: int = 0
    gid: int = 0
    linkcount: int = 1
    hardlink_group: int = 0
    content_hash: ContentHash | None = None
    symlink: str = ""
    xattrs: tuple[tuple[str, bytes], ...] = ()
    hash_algorithm: Algorithm = Algorithm.SHA1
    compression: Compression = Compression.ZLIB
    rowid: int = field(default=0, compare=False)  # where it was read (0: not read from one)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_regular(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_chunked(self) -> bool:
        return bool(self.flags & _CHUNKED)

    @property
    def is_external(self) -> bool:
        return bool(self.flags & _EXTERNAL)

    @property
    def is_hidden(self) -> bool:
        return bool(self.flags & _HIDDEN)

    @property
    def is_nested_mountpoint(self) -> bool:
        return bool(self.flags & _NESTED_MOUNTPOINT)

    @property
    def is_nested_root(self) -> bool:
        return bool(self.flags & _NESTED_ROOT)

    @property
    def is_bind_mountpoint(self) -> bool:
        return bool(self.flags & _BIND_MOUNTPOINT)

    @property
    def is_bundle_trigger(self) -> bool:
        return bool(self.flags & _BUNDLE_TRIGGER)

    @property
    def rdev(self) -> int:
        """Device number for char/block devices (stored in `size`)."""
        return self.size if stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode) else 0

    @property
    def xattr_dict(self) -> dict[str, bytes]:
        return dict(self.xattrs)


def type_flags(mode: int) -> Flags:
    """The type bits the publisher writes for a given st_mode."""
    if stat.S_ISDIR(mode):
        return Flags.DIR
    if stat.S_ISLNK(mode):
        return Flags.FILE | Flags.LINK
    if stat.S_ISREG(mode):
        return Flags.FILE
    return Flags.FILE | Flags.SPECIAL


def entry_flags(entry: DirEntry) -> int:
    """Full flags value: stored type bits plus hash-algorithm and compression bits."""
    flags = int(entry.flags)
    flags &= ~(HASH_ALGO_MASK | COMPRESSION_MASK)
    if entry.content_hash is not None or entry.is_chunked:
        flags |= (int(entry.hash_algorithm) - 1) << HASH_ALGO_SHIFT
    if entry.is_regular:
        flags |= int(entry.compression) << COMPRESSION_SHIFT
    return flags


def entry_to_row(entry: DirEntry, path: str) -> tuple[object, ...]:
    """Row values in ENTRY_COLUMNS order for the entry at absolute `path` ('' = root)."""
    p1, p2 = md5path(path)
    parent = ROOT_PARENT if path == "" else md5path(parent_path(path))
    digest = entry.content_hash.digest if entry.content_hash is not None else None
    return (
        p1, p2, parent[0], parent[1],
        encode_hardlinks(entry.hardlink_group, entry.linkcount),
        digest, entry.size, entry.mode, entry.mtime, entry.mtimens, entry_flags(entry),
        entry.name, entry.symlink, entry.uid, entry.gid, encode_xattrs(dict(entry.xattrs)),
    )


def _int(row: Mapping[str, object], key: str) -> int:
    """An INTEGER column; NULL or absent (old schema revisions) reads as 0."""
    value = row.get(key)
    if type(value) is int:  # the common case first: rows are decoded by the million
        return value
    return int(value) if isinstance(value, int | float | str) else 0


def row_to_entry(row: Mapping[str, object]) -> DirEntry:
    """Map a catalog row (by column name; `mtimens`/`xattr` may be absent) to a DirEntry.

    `row` may be a dict or an `sqlite3.Row` (which has `keys()` but no `get`)."""
    if not isinstance(row, dict):
        row = {key: row[key] for key in row.keys()}  # noqa: SIM118 - sqlite3.Row
    flags = _int(row, "flags")
    algorithm = _algorithm_from_flags(flags)
    raw_hash = row.get("hash")
    content_hash = None
    if isinstance(raw_hash, bytes | bytearray | memoryview) and len(raw_hash) > 0:
        content_hash = ContentHash(algorithm, bytes(raw_hash))
    group, linkcount = decode_hardlinks(_int(row, "hardlinks"))
    compression_value = (flags & COMPRESSION_MASK) >> COMPRESSION_SHIFT
    xattr_blob = row.get("xattr")
    return DirEntry(
        name=str(row.get("name") or ""),
        mode=_int(row, "mode"),
        size=_int(row, "size"),
        mtime=_int(row, "mtime"),
        mtimens=_int(row, "mtimens"),
        flags=flags,
        uid=_int(row, "uid"),
        gid=_int(row, "gid"),
        linkcount=linkcount,
        hardlink_group=group,
        content_hash=content_hash,
        symlink=str(row.get("symlink") or ""),
        xattrs=tuple(sorted(decode_xattrs(xattr_blob).items())) if xattr_blob else (),
        hash_algorithm=algorithm,
        compression=_COMPRESSIONS.get(compression_value, Compression.ZLIB),
        rowid=_int(row, "rowid"),
    )


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """One chunk of a chunked file, offsets and sizes in uncompressed bytes."""

    offset: int
    size: int
    content_hash: ContentHash


def chunk_to_row(path: str, chunk: ChunkRow) -> tuple[object, ...]:
    p1, p2 = md5path(path)
    return (p1, p2, chunk.offset, chunk.size, chunk.content_hash.digest)


# --- statistics (fact sheet 6.4) -------------------------------------------------

COUNTER_FIELDS = (
    "regular", "symlink", "special", "dir", "nested", "chunked", "chunks",
    "file_size", "chunked_size", "xattr", "external", "external_file_size",
)
COUNTER_NAMES = tuple(f"{scope}_{name}" for scope in ("self", "subtree") for name in COUNTER_FIELDS)


@dataclass(slots=True)
class Counters:
    """One scope (self or subtree) of a catalog's statistics."""

    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_FIELDS, 0))

    def add(self, other: Counters) -> None:
        for key in COUNTER_FIELDS:
            self.values[key] += other.values[key]

    def count_entry(self, entry: DirEntry, chunks: int = 0) -> None:
        """Account one entry written to this catalog."""
        v = self.values
        if entry.is_dir:
            v["dir"] += 1
        elif entry.is_symlink:
            v["symlink"] += 1
        elif entry.is_regular:
            v["regular"] += 1
            v["file_size"] += entry.size
            if entry.is_chunked:
                v["chunked"] += 1
                v["chunked_size"] += entry.size
                v["chunks"] += chunks
            if entry.is_external:
                v["external"] += 1
                v["external_file_size"] += entry.size
        else:
            v["special"] += 1
        if entry.xattrs:
            v["xattr"] += 1


def statistics_rows(self_counters: Counters, subtree: Counters) -> list[tuple[str, int]]:
    rows = [(f"self_{k}", v) for k, v in self_counters.values.items()]
    rows += [(f"subtree_{k}", v) for k, v in subtree.values.items()]
    return rows


def counters_from_rows(rows: Iterable[tuple[str, int]]) -> tuple[Counters, Counters]:
    """The inverse of `statistics_rows`: (self, subtree); other names are ignored."""
    own, subtree = Counters(), Counters()
    scopes = {"self": own, "subtree": subtree}
    for name, value in rows:
        scope, _, counter = str(name).partition("_")
        if scope in scopes and counter in COUNTER_FIELDS:
            scopes[scope].values[counter] = int(value)
    return own, subtree


def total_counters(rows: Iterable[tuple[str, int]]) -> dict[str, int]:
    """self + subtree per field, as `user.catalog_counters` and statfs show them."""
    values = dict(rows)
    return {k: values.get(f"self_{k}", 0) + values.get(f"subtree_{k}", 0) for k in COUNTER_FIELDS}


def parse_schema(schema: str | None, revision: str | None) -> tuple[int, int, int]:
    """('2.5', '7') -> (2, 5, 7) parsed once; no float comparisons."""
    major, _, minor = (schema or "2.5").partition(".")
    try:
        return int(major), int(minor or 0), int(revision or 0)
    except ValueError:
        raise ValueError(f"bad catalog schema {schema!r}/{revision!r}") from None
