"""The backend-neutral, inode-based read-only filesystem over one `Repository`.

Adapters (lowlevel, pyfuse3, mfusepy) only translate calls into these methods and errors
into errno; no repository semantics live in them. Inodes are handed out on first lookup;
the members of a hardlink group (same catalog, same group id) share one inode, as in the
reference client. The root is inode 1 (FUSE_ROOT_ID). Numbers are never reused.

Inode lifetime: inode-based adapters call `track_lookups()` before serving; from then on
an inode lives while the kernel holds it or a cached directory listing names it:
  * the kernel's lookup count (nlookup): every answer that hands the kernel an inode
    counts one inside the call that builds the answer (`lookup`; `hand_out` for each
    READDIRPLUS entry), so the count is up before the reply can reach the kernel, which
    sends FORGET only for lookups it has seen; `forget` takes counts back;
  * pins: a cached listing pins its children, so the number a plain READDIR reported
    (d_ino) is the one a later lookup answers; released when the listing leaves the cache.
When the kernel forgets a directory its cached listing goes too (the kernel holds none of
its children any more). When neither count nor pin is left the inode's path, every path
mapping to it (hardlinks) and its hardlink group are dropped; a later lookup of the path
gives a fresh inode. Open handles hold what they read (path, entry, chunk list), so a
handle outlives its inode. Path-based adapters (mfusepy) never track: nothing is dropped.

Revisions: `set_repository` swaps in a newer revision while mounted. A path keeps its
inode as long as what it is stays the same (type, content hash, size, symlink target), so
the kernel's page cache of unchanged files survives; anything that changed gets a fresh
inode, so no stale page can ever be served for new content. Open handles keep the chunk
list they opened with: a file already open reads its old bytes to the end. (With tracking
this holds while the kernel keeps the inode: the adapters invalidate every name at a swap,
and FUSE evicts an inode, pages included, once nothing uses it; it then forgets it, and a
closed unchanged file comes back under a fresh number, as with the reference client,
whose inode numbers change with every catalog generation.)

Thread-safety: every method may be called from several threads at once; the inode
tables and open handles are guarded by one lock, repository calls run outside it.

Caveats: the inode tables are as large as what the kernel keeps in its dentry cache plus
what cached listings name; without tracking (mfusepy) a long-lived mount of a huge tree
keeps its whole path table.
"""

from __future__ import annotations

import errno
import io
import itertools
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from pycvmfs.errors import NotFoundError, PycvmfsError
from pycvmfs.format.catalog import DirEntry
from pycvmfs.format.symlinks import expand_symlink
from pycvmfs.fs import magic_xattrs
from pycvmfs.fs.magic_xattrs import CacheInfo, ClientStats, NetworkInfo, XattrContext
from pycvmfs.repository.repository import Piece, Repository, read_pieces

log = logging.getLogger(__name__)
ROOT_INODE = 1
BLOCK_SIZE = 4096
OPEN_PIECES_PER_HANDLE = 4  # cache files one handle keeps open (current chunk + read-ahead)
READ_AHEAD_PIECES = 2  # chunks fetched in the background ahead of a sequential reader
PREFETCH_THREADS = 2  # read-ahead downloads at once; more only fight over the GIL
LISTING_CACHE_ENTRIES = 50_000  # directory entries kept answered (~250 bytes each)
DRAIN_S = 2.0  # after a swap, entries go to the kernel with timeout 0 for this long
DIRECT_IO_FLAG = 0x10000  # catalog flag: serve this file with direct I/O
DOTS = (".", "..")


class FsError(Exception):
    """An errno for the adapter to return (ENOENT, ENOTDIR, EIO, ...)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or os.strerror(code))
        self.errno = code


@dataclass(frozen=True, slots=True)
class Attr:
    """stat values as the reference client reports them (fact sheet 13.3)."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    rdev: int = 0

    @property
    def blocks(self) -> int:
        return 1 + self.size // 512


@dataclass(frozen=True, slots=True)
class MountOptions:
    """How entries are presented; fixed for one mount."""

    uid: int = os.getuid()
    gid: int = os.getgid()
    claim_ownership: bool = True  # CVMFS_CLAIM_OWNERSHIP: show the mounting user as owner
    world_readable: bool = False  # CVMFS_WORLD_READABLE
    environment: Mapping[str, str] | None = None  # for $(VAR) symlinks; None: os.environ
    magic_xattrs_visibility: str = "rootonly"  # CVMFS_MAGIC_XATTRS_VISIBILITY


@dataclass(frozen=True, slots=True)
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    files: int
    files_free: int
    name_max: int = 255


Listing = list[tuple[str, Attr]]


class _WouldBlockError(Exception):
    """The non-blocking read path cannot answer without waiting."""


class _Slot:
    """One object of an open file: the cached file, and how many reads are using it."""

    __slots__ = ("file", "uses", "retired")

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.uses, self.retired = file, 0, False


class _OpenFile:
    """An open regular file: the chunk list fixed at open, and the last few of its objects
    held open as cache files (read with `pread`, never loaded whole into memory)."""

    def __init__(self, ino: int, path: str, entry: DirEntry, pieces: list[Piece]) -> None:
        self.ino, self.path, self.entry, self.pieces = ino, path, entry, pieces
        self._lock = threading.Lock()
        self._slots: dict[int, _Slot] = {}  # insertion order = age
        self.prefetched: set[int] = set()

    def _acquire(self, index: int, repository: Repository) -> _Slot:
        with self._lock:
            slot = self._slots.get(index)
            if slot is not None:
                slot.uses += 1
                return slot
        # open (and maybe download) outside the lock: other pieces stay readable meanwhile
        fresh = _Slot(repository.open_piece(self.path, self.entry, self.pieces[index]))
        with self._lock:
            slot = self._slots.setdefault(index, fresh)
            slot.uses += 1
            if slot is fresh:
                self._retire_old_locked(keep=index)
        if slot is not fresh:
            fresh.file.close()
        return slot

    def _retire_old_locked(self, keep: int) -> None:
        while len(self._slots) > OPEN_PIECES_PER_HANDLE:
            oldest = next(i for i in self._slots if i != keep)
            self._retire_locked(self._slots.pop(oldest))

    @staticmethod
    def _retire_locked(slot: _Slot) -> None:
        slot.retired = True
        if slot.uses == 0:
            slot.file.close()

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            slot.uses -= 1
            if slot.retired and slot.uses == 0:
                slot.file.close()

    def read_slice(self, index: int, start: int, stop: int, repository: Repository) -> bytes:
        slot = self._acquire(index, repository)
        try:
            if isinstance(slot.file, io.BytesIO):  # a loader without a cache (direct mounts)
                with slot.file.getbuffer() as view:
                    return bytes(view[start:stop])
            return os.pread(slot.file.fileno(), stop - start, start)
        finally:
            self._release(slot)

    def read_slice_nowait(self, index: int, start: int, stop: int) -> bytes:
        """Like `read_slice`, but only from an object already open whose bytes are in the
        page cache; `_WouldBlockError` otherwise (the caller then takes the blocking path)."""
        with self._lock:
            slot = self._slots.get(index)
            if slot is None or isinstance(slot.file, io.BytesIO):
                raise _WouldBlockError
            slot.uses += 1
        try:
            buffer = bytearray(stop - start)
            try:
                done = os.preadv(slot.file.fileno(), [buffer], start, os.RWF_NOWAIT)
            except (BlockingIOError, OSError):  # EAGAIN, or RWF_NOWAIT unsupported here
                raise _WouldBlockError from None
            if done != len(buffer):
                raise _WouldBlockError
            return bytes(buffer)
        finally:
            self._release(slot)

    def close(self) -> None:
        with self._lock:
            for slot in self._slots.values():
                self._retire_locked(slot)
            self._slots.clear()


class _ListingCache:
    """Directory listings and symlink targets already answered, by inode, so a second walk
    of a tree costs no catalog query. Bounded by the number of entries held (LRU), dropped
    whole on a revision change; an answer computed from an older revision is not stored
    (`generation`). A listing larger than the bound is kept aside, alone (the last one), so
    that its entries stay pinned while the kernel pages through it.

    Every method that lets listings go returns them: the VFS releases their pins."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._listings: OrderedDict[int, Listing] = OrderedDict()
        self._oversized: tuple[int, Listing] | None = None  # (inode, listing)
        self._links: dict[int, bytes] = {}
        self._held = 0
        self.generation = 0

    def listing(self, ino: int) -> Listing | None:
        with self._lock:
            found = self._listings.get(ino)
            if found is not None:
                self._listings.move_to_end(ino)
                return found
            if self._oversized is not None and self._oversized[0] == ino:
                return self._oversized[1]
            return None

    def link(self, ino: int) -> bytes | None:
        return self._links.get(ino)

    def store(self, generation: int, ino: int, listing: Listing,
              links: dict[int, bytes]) -> list[Listing]:
        """Keep `listing` (one from an older revision is handed back at once); returns the
        listings let go."""
        released: list[Listing] = []
        with self._lock:
            if generation != self.generation:
                return [listing]
            old = self._listings.pop(ino, None)
            if old is not None:
                self._held -= len(old)
                released.append(old)
            if self._oversized is not None and self._oversized[0] == ino:
                released.append(self._oversized[1])
                self._oversized = None
            if len(listing) > self._max:
                if self._oversized is not None:
                    released.append(self._oversized[1])
                self._oversized = (ino, listing)
            else:
                self._held += len(listing)
                self._listings[ino] = listing
                while self._held > self._max:
                    _, evicted = self._listings.popitem(last=False)
                    self._held -= len(evicted)
                    released.append(evicted)
            if len(self._links) > self._max:
                self._links.clear()
            self._links.update(links)
        return released

    def holds(self, ino: int) -> bool:
        with self._lock:
            return ino in self._listings or (self._oversized is not None
                                             and self._oversized[0] == ino)

    def discard(self, ino: int) -> Listing | None:
        """Let the listing of `ino` go (its directory was forgotten)."""
        with self._lock:
            found = self._listings.pop(ino, None)
            if found is not None:
                self._held -= len(found)
                return found
            if self._oversized is not None and self._oversized[0] == ino:
                found, self._oversized = self._oversized[1], None
            return found

    def clear(self) -> list[Listing]:
        with self._lock:
            self.generation += 1
            released = list(self._listings.values())
            if self._oversized is not None:
                released.append(self._oversized[1])
            self._listings.clear()
            self._oversized = None
            self._links.clear()
            self._held = 0
        return released


def _prefetch(repository: Repository, entry: DirEntry, piece: Piece) -> None:
    try:
        repository.prefetch_piece(entry, piece)
    except Exception as exc:  # the reader fetches it again and reports the error
        log.debug("read-ahead of %s failed: %s", piece.hash, exc)


class _Hardlink:
    """The group and the paths of an inode that a hardlink group shares."""

    __slots__ = ("key", "paths")

    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self.paths: set[str] = set()


def _identity(entry: DirEntry) -> int:
    """What must stay equal for a path to keep its inode across revisions."""
    if entry.is_dir:
        return stat.S_IFDIR
    digest = entry.content_hash.digest if entry.content_hash is not None else b""
    return hash((stat.S_IFMT(entry.mode), digest, entry.size, entry.symlink, entry.is_chunked))


class RepositoryVFS:
    """Inode view of a repository. See the module docstring for the contract."""

    def __init__(self, repository: Repository, options: MountOptions | None = None,
                 capacity: Callable[[], tuple[int, int]] = lambda: (0, 0),
                 stats: ClientStats | None = None,
                 network: NetworkInfo | None = None,
                 expires: Callable[[], str] = lambda: "never (fixed root catalog)",
                 cache: CacheInfo | None = None) -> None:
        self.repository = repository
        self._announced = repository  # what magic xattrs report: swapped after invalidation
        self.options = options or MountOptions()
        self.stats = stats or ClientStats()
        self.network = network or NetworkInfo()
        self.cache = cache or CacheInfo()
        self._expires = expires
        self._capacity = capacity  # (bytes total, bytes used) of the cache, for statfs
        self._lock = threading.Lock()
        self._paths: dict[int, str] = {ROOT_INODE: ""}
        self._inodes: dict[str, tuple[int, int]] = {"": (ROOT_INODE, stat.S_IFDIR)}
        self._groups: dict[tuple[str, int], int] = {}
        self._hardlinks: dict[int, _Hardlink] = {}  # inodes of hardlink groups only
        self._last_inode = ROOT_INODE
        self._tracking = False  # see track_lookups
        self._nlookup: dict[int, int] = {}  # the kernel's lookup count of each inode
        self._handles: dict[int, _OpenFile] = {}
        self._next_handle = itertools.count(1)
        self._prefetcher: ThreadPoolExecutor | None = None
        self._drain_until = 0.0
        self._answered = _ListingCache(LISTING_CACHE_ENTRIES)
        self.revision_listeners: list[Callable[[], None]] = []  # adapters drop kernel caches
        self._revoked: str | None = None  # why the served revision is refused (`revoke`)

    # --- revisions -------------------------------------------------------------------
    def set_repository(self, repository: Repository) -> None:
        """Serve a newer revision from now on (see the module docstring)."""
        with self._lock:
            self.repository = repository
            self._groups.clear()  # group numbers are per catalog revision
            self._drain_until = time.monotonic() + DRAIN_S
            self._revoked = None
        self._drop_caches()
        # only now say so (`user.revision`): whoever polls it then sees no stale kernel entry
        self._announced = repository

    def revoke(self, reason: str | None) -> None:
        """Refuse (EIO, `reason`) every name, listing and read of the revision served: it
        can no longer be trusted (a blacklist names it). None serves it again; a newer
        revision (`set_repository`) ends it too. Cached answers and kernel entries go."""
        with self._lock:
            was, self._revoked = self._revoked, reason
        if reason is not None and was is None:
            self._drop_caches()

    def _check_revoked(self) -> None:
        reason = self._revoked
        if reason is not None:
            raise FsError(errno.EIO, reason)

    def _drop_caches(self) -> None:
        """Our answered listings, and the kernel's names and listings (adapters)."""
        self._release_listings(self._answered.clear())
        for listener in self.revision_listeners:
            try:
                listener()
            except Exception:
                log.exception("dropping kernel caches after the revision change failed")

    def entry_timeout(self, normal: float) -> float:
        """The kernel cache timeout to send now: 0 right after a revision change, so an
        answer computed from the old revision cannot outlive it."""
        return 0.0 if time.monotonic() < self._drain_until else normal

    def known_entries(self) -> Iterator[tuple[int, str]]:
        """(parent inode, name) of every name handed to the kernel, for invalidation."""
        with self._lock:
            items = list(self._inodes.items())
        for path, _ in items:
            if path:
                parent, name = path.rsplit("/", 1)
                known = self._inodes.get(parent)
                if known is not None:
                    yield known[0], name

    # --- lookup counts ---------------------------------------------------------------
    def track_lookups(self) -> None:
        """Count what the kernel holds and drop what it forgets (see the module docstring).
        Inode-based adapters call it once, before serving."""
        self._tracking = True

    def hand_out(self, ino: int) -> bool:
        """Count `ino` as handed to the kernel once more (a READDIRPLUS entry), before the
        reply goes out. False if it was dropped meanwhile (its listing let go, and
        forgotten, since the listing was read): the entry must then go out without an
        inode (it is looked up by name when needed)."""
        with self._lock:
            if ino not in self._paths:
                return False
            if self._tracking:
                self._nlookup[ino] = self._nlookup.get(ino, 0) + 1
            return True

    def forget(self, items: Iterable[tuple[int, int]]) -> list[int]:
        """FORGET/BATCH_FORGET: the kernel lets go of `nlookup` lookups of each inode.
        Returns the inodes it no longer holds at all. Unknown inodes and the root are
        ignored; without tracking nothing is counted, so nothing is dropped."""
        forgotten: list[int] = []
        with self._lock:
            for ino, nlookup in items:
                count = self._nlookup.get(ino)
                if count is None or ino == ROOT_INODE:
                    continue
                if count > nlookup:
                    self._nlookup[ino] = count - nlookup
                    continue
                del self._nlookup[ino]
                forgotten.append(ino)
                # the kernel holds none of its children any more: its listing can go
                discarded = self._answered.discard(ino)
                self._drop_locked(self._unheld_locked(self._children(discarded)))
                if not self._listed_locked(ino):
                    self._drop_locked([ino])
        return forgotten

    def lookup_count(self, ino: int) -> int:
        """How many lookups of `ino` the kernel holds (0: none, or not tracked)."""
        with self._lock:
            return self._nlookup.get(ino, 0)

    def inode_count(self) -> int:
        """Inodes currently known, the root included."""
        with self._lock:
            return len(self._paths)

    def _listed_locked(self, ino: int) -> bool:
        """Whether a cached listing pins `ino`: the one of its directory, if its path still
        maps to it (a cached listing names the inodes its children's paths map to)."""
        path = self._paths.get(ino)
        if not path:
            return path is not None  # the root
        known = self._inodes.get(path)
        if known is None or known[0] != ino:  # replaced in a newer revision
            return False
        parent = self._inodes.get(path.rsplit("/", 1)[0])
        return parent is not None and self._answered.holds(parent[0])

    def _unheld_locked(self, inodes: Iterable[int]) -> list[int]:
        """Those of `inodes` that neither the kernel nor a cached listing holds."""
        if not self._tracking:
            return []
        return [ino for ino in inodes if ino in self._paths and ino not in self._nlookup
                and not self._listed_locked(ino)]

    @staticmethod
    def _children(listing: Listing | None) -> Iterator[int]:
        return (attr.ino for name, attr in listing or () if name not in DOTS)

    def _release_listings(self, listings: Iterable[Listing]) -> None:
        """Drop what only the listings the cache let go held."""
        if not self._tracking:
            return
        with self._lock:
            for listing in listings:
                self._drop_locked(self._unheld_locked(self._children(listing)))

    def _drop_locked(self, inodes: list[int]) -> None:
        """Forget every table entry of `inodes`, then whatever only their cached listings
        held."""
        work = list(inodes)
        while work:
            ino = work.pop()
            path = self._paths.pop(ino, None)
            link = self._hardlinks.pop(ino, None)
            paths = link.paths if link is not None else () if path is None else (path,)
            for each in paths:
                known = self._inodes.get(each)
                if known is not None and known[0] == ino:
                    del self._inodes[each]
            if link is not None and self._groups.get(link.key) == ino:
                del self._groups[link.key]
            work += self._unheld_locked(self._children(self._answered.discard(ino)))

    # --- names and inodes ------------------------------------------------------------
    def path_of(self, ino: int) -> str:
        with self._lock:
            path = self._paths.get(ino)
        if path is None:
            raise FsError(errno.ESTALE, f"inode {ino} is not known")
        return path

    def _inode_for(self, path: str, resolved_catalog: str, entry: DirEntry,
                   counted: bool = False) -> int:
        """The inode of `path` as `entry`, allocated if new; `counted`: one more lookup
        the kernel holds, in the same step, so it cannot be dropped in between."""
        identity = _identity(entry)
        with self._lock:
            known = self._inodes.get(path)
            if known is not None and known[1] == identity:
                ino = known[0]
                if counted and self._tracking:
                    self._nlookup[ino] = self._nlookup.get(ino, 0) + 1
                return ino
            found = None
            group_key = (resolved_catalog, entry.hardlink_group)
            grouped = bool(entry.hardlink_group) and not entry.is_dir
            if grouped:
                found = self._groups.get(group_key)
            if found is None:
                self._last_inode += 1
                ino = self._last_inode
                if grouped:
                    self._groups[group_key] = ino
                    self._hardlinks[ino] = _Hardlink(group_key)
            else:
                ino = found
            self._inodes[path] = (ino, identity)
            self._paths.setdefault(ino, path)
            link = self._hardlinks.get(ino)
            if link is not None:
                link.paths.add(path)
            if counted and self._tracking:
                self._nlookup[ino] = self._nlookup.get(ino, 0) + 1
            return ino

    def _entry(self, path: str) -> tuple[DirEntry, str]:
        """The entry of `path` and the root prefix of the catalog holding it."""
        self._check_revoked()
        try:
            entry, catalog = self.repository.resolve(path)
        except NotFoundError:
            raise FsError(errno.ENOENT, f"{path or '/'}: no such entry") from None
        except PycvmfsError as exc:
            raise FsError(errno.EIO, str(exc)) from exc
        return entry, catalog.root_prefix

    def _resolve(self, path: str, counted: bool = False) -> tuple[int, DirEntry]:
        """`path` to its inode (allocated if new, see `_inode_for`) and entry."""
        entry, prefix = self._entry(path)
        if path == "":
            return ROOT_INODE, entry
        return self._inode_for(path, prefix, entry, counted), entry

    def _resolve_known(self, path: str) -> tuple[int | None, DirEntry]:
        """`path` to its entry and the inode it has now, None if it has none. Never
        allocates: what is not handed to the kernel must not enter the tables."""
        entry, _ = self._entry(path)
        if path == "":
            return ROOT_INODE, entry
        identity = _identity(entry)
        with self._lock:
            known = self._inodes.get(path)
        return (known[0] if known is not None and known[1] == identity else None), entry

    # --- metadata --------------------------------------------------------------------
    def attr(self, ino: int, entry: DirEntry, path: str) -> Attr:
        mode = entry.mode
        if self.options.world_readable:
            mode |= 0o555 if entry.is_dir else 0o444
        uid, gid = ((self.options.uid, self.options.gid) if self.options.claim_ownership
                    else (entry.uid, entry.gid))
        size = len(self.readlink_entry(entry)) if entry.is_symlink else entry.size
        rdev = entry.rdev
        return Attr(ino, mode, entry.linkcount, uid, gid, size,
                    entry.mtime * 10**9 + entry.mtimens, rdev)

    def lookup(self, parent: int, name: str) -> Attr:
        parent_path = self.path_of(parent)
        if name in (".", ".."):
            raise FsError(errno.ENOENT, "'.' and '..' are answered by the kernel")
        path = f"{parent_path}/{name}"
        ino, entry = self._resolve(path, counted=True)  # the reply hands it out
        try:
            return self.attr(ino, entry, path)
        except BaseException:
            self.forget([(ino, 1)])
            raise

    def lookup_path(self, path: str) -> Attr:
        """For path-based adapters: `/a/b` (or `/`) straight to its attributes. Counts
        nothing: not for adapters that `track_lookups`."""
        canonical = "" if path in ("", "/") else path.rstrip("/")
        ino, entry = self._resolve(canonical)
        return self.attr(ino, entry, canonical)

    def getattr(self, ino: int) -> Attr:
        path = self.path_of(ino)
        current, entry = self._resolve_known(path)
        if current != ino:  # the path changed in a newer revision; `ino` is the old one
            with self._lock:
                opened = next((h for h in self._handles.values() if h.ino == ino), None)
            if opened is None:  # the kernel re-looks the name up and gets the new inode
                raise FsError(errno.ESTALE, f"{path}: replaced in a newer revision")
            entry = opened.entry  # an open file: what it still reads
        return self.attr(ino, entry, path)

    def readdir(self, ino: int) -> list[tuple[str, Attr]]:
        """Children (without `.` and `..`), in a stable order."""
        return self.readdir_with_dots(ino)[2 if ino != ROOT_INODE else 1:]

    def cached_listing(self, ino: int) -> list[tuple[str, Attr]] | None:
        """`readdir_with_dots` if it is already answered (never blocks: adapters may call
        it on their event loop)."""
        return self._answered.listing(ino)

    def readdir_with_dots(self, ino: int, stale: Listing | None = None
                          ) -> list[tuple[str, Attr]]:
        """`.` and `..` (none for the repository root's parent) first, as the reference
        client lists them, then the children, pinned while the listing is cached.
        `stale`: a listing whose entries `hand_out` refused, to be listed afresh."""
        with self.stats.lock:
            self.stats.ndiropen += 1
        self._check_revoked()
        cached = self._answered.listing(ino)
        if cached is not None and cached is not stale:  # stale: replaced by `store` below
            return cached
        generation = self._answered.generation
        path = self.path_of(ino)
        dots = [(".", self.getattr(ino))]
        if path:
            parent = path.rsplit("/", 1)[0]
            if self._tracking:  # a d_ino only, never handed out: allocates nothing
                parent_ino, parent_entry = self._resolve_known(parent)
                dots.append(("..", self.attr(parent_ino or ino, parent_entry, parent)))
            else:
                dots.append(("..", self.lookup_path(parent or "/")))
        repository = self.repository
        try:
            resolved = repository.resolve(path)
            if not resolved.entry.is_dir:
                raise FsError(errno.ENOTDIR, f"{path}: not a directory")
            children = repository.listdir(path)
            # every child lives in the catalog that lists them (a mountpoint's entry too):
            # one catalog for all hardlink keys instead of one more lookup per child
            prefix = repository.tree.listing_catalog(path, resolved).root_prefix
        except PycvmfsError as exc:
            raise FsError(errno.EIO, str(exc)) from exc
        out = dots
        links = {}
        allocated: list[int] = []  # held by this listing once it is cached
        try:
            for name, child in children:
                child_path = f"{path}/{name}"
                child_ino = self._inode_for(child_path, prefix, child)
                allocated.append(child_ino)
                out.append((name, self.attr(child_ino, child, child_path)))
                if child.is_symlink:
                    links[child_ino] = self.readlink_entry(child)
        except BaseException:
            with self._lock:
                self._drop_locked(self._unheld_locked(allocated))
            raise
        self._release_listings(self._answered.store(generation, ino, out, links))
        return out

    def readlink_entry(self, entry: DirEntry) -> bytes:
        environment = self.options.environment
        target = expand_symlink(entry.symlink,
                                environment if environment is not None else os.environ)
        return target.encode("utf-8", "surrogateescape")

    def cached_link(self, ino: int) -> bytes | None:
        """A symlink target already answered in a listing (never blocks)."""
        return self._answered.link(ino)

    def readlink(self, ino: int) -> bytes:
        cached = self._answered.link(ino)
        if cached is not None:
            return cached
        _, entry = self._resolve_known(self.path_of(ino))
        if not entry.is_symlink:
            raise FsError(errno.EINVAL, "not a symbolic link")
        return self.readlink_entry(entry)

    # --- contents --------------------------------------------------------------------
    def open(self, ino: int, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT):
            raise FsError(errno.EROFS, "read-only file system")
        path = self.path_of(ino)
        _, entry = self._resolve_known(path)
        if entry.is_dir:
            raise FsError(errno.EISDIR)
        if not stat.S_ISREG(entry.mode):
            raise FsError(errno.EINVAL)
        try:
            _, pieces = self.repository.pieces(path)
        except PycvmfsError as exc:
            raise FsError(errno.EIO, str(exc)) from exc
        with self._lock:
            handle = next(self._next_handle)
            self._handles[handle] = _OpenFile(ino, path, entry, pieces)
        with self.stats.lock:
            self.stats.nopen += 1
        return handle

    def direct_io(self, handle: int) -> bool:
        """Whether the catalog asks for this file to bypass the page cache."""
        return bool(self._handle(handle).entry.flags & DIRECT_IO_FLAG)

    def _handle(self, handle: int) -> _OpenFile:
        with self._lock:
            opened = self._handles.get(handle)
        if opened is None:
            raise FsError(errno.EBADF)
        return opened

    def read_nowait(self, handle: int, offset: int, size: int) -> bytes | None:
        """`read` if it can be answered without waiting (objects open, bytes in the page
        cache), else None. Adapters call it on their event loop to skip the hop to a worker
        thread, which costs more than copying a cached MiB."""
        with self._lock:
            opened = self._handles.get(handle)
        if opened is None or self._revoked is not None:
            return None  # `read` answers
        try:
            return self._read(opened, offset, size, self.repository, opened.read_slice_nowait)
        except _WouldBlockError:
            return None

    def read(self, handle: int, offset: int, size: int) -> bytes:
        self._check_revoked()
        opened = self._handle(handle)
        repository = self.repository

        def read_slice(index: int, start: int, stop: int) -> bytes:
            return opened.read_slice(index, start, stop, repository)

        try:
            return self._read(opened, offset, size, repository, read_slice)
        except PycvmfsError as exc:  # hash mismatch, fetch failure: never wrong bytes
            self.stats.io_error()
            raise FsError(errno.EIO, str(exc)) from exc

    def _read(self, opened: _OpenFile, offset: int, size: int, repository: Repository,
              read_slice: Callable[[int, int, int], bytes]) -> bytes:
        """Bytes [offset, offset + size) of an open file through `read_slice`, then the
        read-ahead behind the last piece touched."""
        touched: list[int] = []

        def load(index: int, start: int, stop: int) -> bytes:
            touched.append(index)
            return read_slice(index, start, stop)

        data = read_pieces(opened.pieces, offset, min(offset + size, opened.entry.size), load)
        if touched:
            self._read_ahead(opened, touched[-1], repository)
        return data

    def _read_ahead(self, opened: _OpenFile, index: int, repository: Repository) -> None:
        """Fetch the next chunks of a chunked file in the background while this one is
        read; errors are left for the real read to report."""
        wanted = [i for i in range(index + 1, min(index + 1 + READ_AHEAD_PIECES,
                                                  len(opened.pieces)))
                  if i not in opened.prefetched]
        if not wanted:
            return
        with self._lock:
            if self._prefetcher is None:
                self._prefetcher = ThreadPoolExecutor(PREFETCH_THREADS,
                                                      thread_name_prefix="read-ahead")
            prefetcher = self._prefetcher
        for i in wanted:
            opened.prefetched.add(i)
            prefetcher.submit(_prefetch, repository, opened.entry, opened.pieces[i])

    def release(self, handle: int) -> None:
        with self._lock:
            opened = self._handles.pop(handle, None)
        if opened is not None:
            opened.close()

    def close(self) -> None:
        """Stop read-ahead and close every handle (at unmount)."""
        with self._lock:
            prefetcher, self._prefetcher = self._prefetcher, None
            handles, self._handles = list(self._handles.values()), {}
        if prefetcher is not None:
            prefetcher.shutdown(wait=True, cancel_futures=True)
        for opened in handles:
            opened.close()

    # --- extended attributes and statfs ----------------------------------------------
    def listxattr(self, ino: int) -> list[str]:
        """Stored xattrs, plus the magic names on the root (by default) or everywhere."""
        _, entry = self._resolve_known(self.path_of(ino))
        names = [name for name, _ in entry.xattrs]
        visibility = self.options.magic_xattrs_visibility
        if visibility == "always" or (visibility == "rootonly" and ino == ROOT_INODE):
            names += [n for n in magic_xattrs.names() if n not in names]
        return names

    def getxattr(self, ino: int, name: str) -> bytes:
        """Magic attributes shadow stored ones and are gettable on every entry."""
        path = self.path_of(ino)
        _, entry = self._resolve_known(path)
        if magic_xattrs.is_magic(name):
            context = XattrContext(self._announced, self.stats, self.network, self.cache,
                                   path, entry, self._expires, self.inode_max)
            try:
                value = magic_xattrs.get(name, context)
            except PycvmfsError as exc:
                raise FsError(errno.EIO, str(exc)) from exc
            if value is None:
                raise FsError(errno.ENODATA)
            return value
        for key, value in entry.xattrs:
            if key == name:
                return value
        raise FsError(errno.ENODATA)

    def inode_max(self) -> int:
        """The highest inode number handed out so far."""
        with self._lock:
            return self._last_inode

    def statfs(self) -> StatFs:
        total, used = self._capacity()
        counters = self.repository.statistics()
        files = sum(counters.get(k, 0) for k in ("regular", "symlink", "special", "dir"))
        return StatFs(512, total // 512, max(total - used, 0) // 512, files, 0)
