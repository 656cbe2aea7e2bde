"""Inode numbers for the kernel: derived from catalog rows, remembered only while handed out.

Numbering: every catalog, named by its mount point and content hash, gets a range of numbers
`[base, base + max rowid]` the first time it is met; an entry's number is `base + rowid`.
A plain READDIR can therefore report `d_ino` without remembering anything, and a later
LOOKUP of the same name answers the same number: listing a directory of a million entries
allocates nothing. The same catalog met again (a later revision that did not change it,
or a catalog detached and attached again) keeps its range, so its entries keep their
numbers. Ranges never overlap, so one number never names two different rows.

Handed out: numbers given to the kernel (LOOKUP, READDIRPLUS) are recorded with the path,
an identity (type, content hash, size, symlink target, chunking), a digest of the other
attributes the kernel caches, and the kernel's lookup count. A path keeps its number
across revisions while its identity stays the same (the page cache of an unchanged file
survives a new revision; changed attributes alone are invalidated); anything whose
content changed gets the number of its new row. FORGET takes counts back; at zero
the number and its paths go.

Hardlinks: members of one hardlink group share the number of the group's first row (the
lowest rowid), but only members of the same identity: a hostile catalog can put a file, a
symlink and another file in one group, and those must never share an inode (logged once).
A catalog's groups are read in one scan the first time one of its members is numbered,
so the shared number is known without remembering what was handed out (path-based
adapters and plain READDIRs agree with LOOKUP).

Thread-safety: every method may be called from any thread; one lock guards the tables.
Caveat: a catalog with more than `MAX_HARDLINKED_ROWS` rows in hardlink groups gives each
member its own number (logged once): correct bytes, only `st_ino` no longer shows the link.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import threading
from collections.abc import Iterable, Iterator

from pycvmfs.format.catalog import DirEntry
from pycvmfs.repository.catalog import Catalog
from pycvmfs.repository.integrity import report_once

ROOT_INODE = 1  # FUSE_ROOT_ID
_U64 = (1 << 64) - 1
FIRST_BASE = 2  # the root catalog's range starts here; the root itself is always 1
MAX_HARDLINKED_ROWS = 200_000  # hardlink members of one catalog read to number its groups
_IDENTITY_KEY = os.urandom(16)  # identities are keyed: a catalog cannot aim for a collision

CatalogKey = tuple[str, str]  # (mount point, catalog hash or file)
Leaders = dict[tuple[int, int], int]  # (hardlink group, identity) -> lowest member rowid


def _digest(*parts: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(b"".join(parts), key=_IDENTITY_KEY,
                                          digest_size=8).digest(), "little")


def identity(entry: DirEntry) -> int:
    """What must stay equal for a path to keep its inode (64-bit keyed digest): type,
    content hash, size, symlink target, chunking. A directory stays the same directory (a
    shell sitting in it keeps a valid cwd)."""
    if entry.is_dir:
        return stat.S_IFDIR
    digest = entry.content_hash.digest if entry.content_hash is not None else b""
    summary = struct.pack("<3Q", stat.S_IFMT(entry.mode), entry.size & _U64,
                          int(entry.is_chunked))
    return _digest(summary, digest, entry.symlink.encode("utf-8", "surrogateescape"))


def attributes(entry: DirEntry) -> int:
    """A digest of what the kernel caches with an inode besides its content (mode, owner,
    mtime, link count): when only these change, the inode is kept and its attributes are
    invalidated, its page cache is not. Unkeyed and cheap: a collision could only leave
    an attribute stale until the kernel's attribute timeout, never a wrong byte."""
    return hash((entry.mode, entry.uid, entry.gid, entry.mtime, entry.mtimens,
                 entry.linkcount, entry.size)) & _U64


class InodeTable:
    """See the module docstring. `tracking` (inode-based adapters): the kernel's lookup
    counts are kept and FORGET drops what it no longer holds; without it numbers handed
    out stay recorded (path-based adapters use the VFS's path methods, which record
    nothing)."""

    def __init__(self, tracking: bool = False) -> None:
        self.tracking = tracking
        self._lock = threading.Lock()
        self._bases: dict[CatalogKey, int] = {}  # catalog -> the start of its range
        self._leaders: dict[CatalogKey, Leaders | None] = {}  # None: too many to share
        self._next_base = FIRST_BASE
        self._paths: dict[int, str] = {ROOT_INODE: ""}  # handed out: number -> first path
        self._known: dict[str, int] = {}  # path -> number << 128 | attributes << 64 | identity
        self._counts: dict[int, int] = {}  # the kernel's lookup count of each number
        self._links: dict[int, set[str]] = {}  # shared (hardlink) numbers -> their paths

    # --- numbering ---------------------------------------------------------------------
    @staticmethod
    def _key(catalog: Catalog) -> CatalogKey:
        return catalog.root_prefix, str(catalog.content_hash or catalog.path)

    def base(self, catalog: Catalog) -> int:
        """The first number of `catalog`'s range (assigned when first met)."""
        key = self._key(catalog)
        with self._lock:
            found = self._bases.get(key)
        if found is not None:
            return found
        width = catalog.max_rowid() + 1  # a query: outside the lock
        with self._lock:
            found = self._bases.get(key)
            if found is None:
                found = self._bases[key] = self._next_base
                self._next_base += width
            return found

    def _group_leaders(self, catalog: Catalog) -> Leaders | None:
        """(group, identity) -> lowest rowid for `catalog`, read once (see the module
        docstring)."""
        key = self._key(catalog)
        with self._lock:
            if key in self._leaders:
                return self._leaders[key]
        rows = catalog.hardlinked(MAX_HARDLINKED_ROWS)  # one scan: outside the lock
        leaders: Leaders | None = None
        if rows is None:
            report_once(f"catalog {key[1]} at {key[0] or '/'} has more than "
                        f"{MAX_HARDLINKED_ROWS} hardlinked rows: its members get inodes "
                        "of their own")
        else:
            leaders = {}
            marks: dict[int, int] = {}
            for row in rows:
                if row.is_dir or not row.hardlink_group:
                    continue
                mark = identity(row)
                group = (row.hardlink_group, mark)
                leaders[group] = min(leaders.get(group, row.rowid), row.rowid)
                if marks.setdefault(row.hardlink_group, mark) != mark:
                    report_once(f"catalog {key[1]}: hardlink group {row.hardlink_group} mixes "
                                "entries of different type, content or size: they do not "
                                "share an inode")
        with self._lock:
            return self._leaders.setdefault(key, leaders)

    def number(self, path: str, entry: DirEntry, catalog: Catalog) -> int:
        """The inode `path` (as `entry`, a row of `catalog`) has or would get. Records
        nothing: for d_ino in a plain READDIR and for answers that hand nothing out."""
        return self._number(path, entry, catalog, None)

    def _number(self, path: str, entry: DirEntry, catalog: Catalog, mark: int | None) -> int:
        """See `number`; `mark` is `identity(entry)` if the caller has it (computed here
        only where it decides: a path handed out before, a hardlink member)."""
        if path == "":
            return ROOT_INODE
        base = self.base(catalog)
        with self._lock:
            packed = self._known.get(path)
        if packed is not None:
            mark = identity(entry) if mark is None else mark
            if packed & _U64 == mark:
                return packed >> 128
        rowid = entry.rowid
        if entry.hardlink_group and not entry.is_dir:
            leaders = self._group_leaders(catalog)
            if leaders is not None:
                mark = identity(entry) if mark is None else mark
                rowid = leaders.get((entry.hardlink_group, mark), rowid)
        if rowid < 1:  # only a forged catalog has such rows: a number of its own
            report_once(f"entry {path!r} has rowid {entry.rowid}: given a private inode")
            with self._lock:
                self._next_base += 1
                return self._next_base - 1
        return base + rowid

    def hand_out(self, path: str, entry: DirEntry, catalog: Catalog) -> int:
        """The inode of `path`, counted as one more lookup the kernel holds (LOOKUP,
        READDIRPLUS), in the same step: it cannot be dropped before the reply goes out."""
        if path == "":
            return ROOT_INODE
        mark = identity(entry)
        ino = self._number(path, entry, catalog, mark)
        with self._lock:
            first = self._paths.setdefault(ino, path)
            self._known[path] = ino << 128 | attributes(entry) << 64 | mark
            if self.tracking:
                self._counts[ino] = self._counts.get(ino, 0) + 1
            if first != path or ino in self._links:  # a number several paths share
                self._links.setdefault(ino, {first}).add(path)
            return ino

    # --- what the kernel holds ---------------------------------------------------------
    def path_of(self, ino: int) -> str | None:
        with self._lock:
            return self._paths.get(ino)

    def forget(self, items: Iterable[tuple[int, int]]) -> list[int]:
        """The kernel lets go of `nlookup` lookups of each inode; returns those it no longer
        holds at all (dropped here). Unknown numbers and the root are ignored."""
        forgotten = []
        with self._lock:
            for ino, nlookup in items:
                count = self._counts.get(ino)
                if count is None or ino == ROOT_INODE:
                    continue
                if count > nlookup:
                    self._counts[ino] = count - nlookup
                    continue
                del self._counts[ino]
                self._drop_locked(ino)
                forgotten.append(ino)
        return forgotten

    def _drop_locked(self, ino: int) -> None:
        path = self._paths.pop(ino, None)
        shared = self._links.pop(ino, None)
        for each in shared if shared is not None else () if path is None else (path,):
            packed = self._known.get(each)
            if packed is not None and packed >> 128 == ino:
                del self._known[each]

    def held_number(self, path: str) -> int | None:
        """The number `path` was handed out with (None: not handed out)."""
        with self._lock:
            packed = self._known.get(path)
        return None if packed is None else packed >> 128

    def refresh_attributes(self, path: str, entry: DirEntry) -> bool:
        """Record `entry`'s attributes for `path` (its number kept); True if they differ
        from those handed out (the kernel's copy must go)."""
        fresh = attributes(entry)
        with self._lock:
            packed = self._known.get(path)
            if packed is None or (packed >> 64) & _U64 == fresh:
                return False
            self._known[path] = (packed >> 128) << 128 | fresh << 64 | packed & _U64
            return True

    def lookup_count(self, ino: int) -> int:
        with self._lock:
            return self._counts.get(ino, 0)

    def count(self) -> int:
        """Numbers handed out and still held, the root included."""
        with self._lock:
            return len(self._paths)

    def highest(self) -> int:
        """The highest number any range reaches so far (`user.inode_max`)."""
        with self._lock:
            return self._next_base - 1

    def known_entries(self) -> Iterator[tuple[int, str]]:
        """(parent inode, name) of every name handed to the kernel, for invalidation."""
        with self._lock:
            known = dict(self._known)
        for path in known:
            parent, name = path.rsplit("/", 1)
            if parent == "":
                yield ROOT_INODE, name
                continue
            packed = known.get(parent)
            if packed is not None:
                yield packed >> 128, name

