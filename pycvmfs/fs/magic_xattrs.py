"""Magic extended attributes (fact sheet section 11): a registry of small functions.

Each attribute declares which entries it applies to (its flavor, the reference's
MagicXattrFlavor); `get` on an entry it does not apply to is ENODATA, as in the
reference. Magic names shadow stored xattrs and are gettable on every path.

Listing (`listed`) follows the reference's MagicXattrManager::GetListString: nothing
with `never`; with `rootonly` (the default) the root only, with `always` every entry;
and of an entry only the attributes whose flavor applies to it, so every name listed
answers. One difference: the Linux kernel refuses `user.*` attributes on anything but
regular files and directories before asking the filesystem, so symlinks and special
files list none (the reference lists `user.rawlink`, which no caller can read there).
Hidden attributes (`user.pycvmfs_stats`, the document `pycvmfs status` reads) are
never listed.

Counters come from a `ClientStats` that the network and cache layers update; facts
about the network (host, proxies, timeouts) from a `NetworkInfo` that the mount wires
in. Both default to what a local, network-free mount can say truthfully.
"""

from __future__ import annotations

import enum
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from pycvmfs import __version__
from pycvmfs.format.catalog import COUNTER_FIELDS, DirEntry, total_counters
from pycvmfs.format.hashes import ContentHash, Hasher
from pycvmfs.fs import stats_document
from pycvmfs.fs.op_timing import OpTimings
from pycvmfs.fs.stats_document import STATS_XATTR
from pycvmfs.repository.repository import Repository


class Flavor(enum.Enum):
    """Which entries an attribute applies to."""

    ANY = "any"
    WITH_HASH = "with_hash"
    REGULAR = "regular"
    SYMLINK = "symlink"


@dataclass(slots=True)
class ClientStats:
    """Counters the filesystem core keeps (`user.nioerr`, `user.nopen`, `user.ndiropen`);
    transfer counters come from the downloader through `NetworkInfo.transfers`."""

    started: float = field(default_factory=time.monotonic)
    nioerr: int = 0
    last_ioerr: int = 0
    nopen: int = 0
    ndiropen: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    operations: OpTimings = field(default_factory=OpTimings)  # FUSE request latencies

    def io_error(self) -> None:
        with self.lock:
            self.nioerr += 1
            self.last_ioerr = int(time.time())


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    """What `user.host`, `user.proxy`, ... report; a local mount has one 'host'."""

    host: Callable[[], str] = lambda: ""
    host_list: Callable[[], list[str]] = list
    proxy: Callable[[], str] = lambda: "DIRECT"
    proxy_list: Callable[[], list[str]] = lambda: ["DIRECT"]
    timeout_s: int = 5
    timeout_direct_s: int = 10
    transfers: Callable[[], tuple[int, int, float]] = lambda: (0, 0, 0.0)  # bytes, n, seconds
    offline: Callable[[], tuple[bool, str]] = lambda: (False, "")  # serving offline, why
    details: Callable[[], dict[str, object]] = dict  # `stats_document`: routes, per host


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """What `user.hitrate` and `user.lhash` need from the local cache (none by default)."""

    hits_misses: Callable[[], tuple[int, int]] = lambda: (0, 0)
    open_object: Callable[[ContentHash], BinaryIO | None] = lambda content_hash: None
    details: Callable[[], dict[str, object]] = dict  # `stats_document`: usage, quota, pins


@dataclass(frozen=True, slots=True)
class XattrContext:
    repository: Repository
    stats: ClientStats
    network: NetworkInfo
    cache: CacheInfo
    path: str
    entry: DirEntry
    expires: Callable[[], str]  # minutes until the next TTL check, or "never (...)"
    inode_max: Callable[[], int]
    gauges: Callable[[], dict[str, int]] = dict  # the core's open files, directories, inodes


Getter = Callable[[XattrContext], str]
_REGISTRY: dict[str, tuple[Flavor, Getter]] = {}
_HIDDEN: set[str] = set()  # gettable, never listed
PAGE_CHARS = 40_000  # the reference's kMaxCharsPerPage: pages stay under 64 KiB
CHUNK_LIST_HEADER = "hash,offset,size\n"
_PAGERS: dict[str, Callable[[XattrContext], list[str]]] = {}  # long values, page by page


def magic_xattr(name: str, applies_to: Flavor = Flavor.ANY, *,
                hidden: bool = False) -> Callable[[Getter], Getter]:
    def register(func: Getter) -> Getter:
        if name in _REGISTRY:
            raise ValueError(f"magic xattr {name} registered twice")
        _REGISTRY[name] = (applies_to, func)
        if hidden:
            _HIDDEN.add(name)
        return func

    return register


def names() -> list[str]:
    """Every magic attribute that may be listed (hidden ones left out)."""
    return sorted(n for n in _REGISTRY if n not in _HIDDEN)


def listed(entry: DirEntry, *, root: bool, visibility: str) -> list[str]:
    """The magic names `listxattr` shows for `entry` (see the module docstring): each
    one answers a `get` on this entry."""
    if visibility == "never" or (visibility != "always" and not root):
        return []
    if not (entry.is_regular or entry.is_dir):
        return []  # the kernel answers user.* there itself (ENODATA)
    return [n for n in names() if applies(_REGISTRY[n][0], entry)]


def applies(flavor: Flavor, entry: DirEntry) -> bool:
    if flavor is Flavor.WITH_HASH:
        return entry.content_hash is not None
    if flavor is Flavor.REGULAR:
        return entry.is_regular
    if flavor is Flavor.SYMLINK:
        return entry.is_symlink
    return True


def get(name: str, context: XattrContext) -> bytes | None:
    """The value, or None when `name` is no magic attribute of this entry. As in the
    reference's machine mode, `NAME~N` is page N of a long value (`user.chunk_list`, whose
    plain name answers page 0, so no value reaches the kernel's 64 KiB limit) and
    `NAME~?` says `num_pages, COUNT`."""
    base, paged, page = name.partition("~")
    registered = _REGISTRY.get(base)
    if registered is None or not applies(registered[0], context.entry):
        return None
    if not paged:
        return registered[1](context).encode("utf-8", "surrogateescape")
    pager = _PAGERS.get(base)
    pages = pager(context) if pager is not None else [registered[1](context)]
    if page == "?":
        return f"num_pages, {len(pages)}".encode()
    if not page.isdigit() or int(page) >= len(pages):
        return None
    return pages[int(page)].encode("utf-8", "surrogateescape")


def is_magic(name: str) -> bool:
    return name.partition("~")[0] in _REGISTRY


def _counters_csv(values: dict[str, int]) -> str:
    return "".join(f"{key},{values.get(key, 0)}\n" for key in COUNTER_FIELDS)


@magic_xattr("user.fqrn")
def _fqrn(c: XattrContext) -> str:
    return c.repository.fqrn


@magic_xattr("user.revision")
def _revision(c: XattrContext) -> str:
    return str(c.repository.revision)


@magic_xattr("user.root_hash")
def _root_hash(c: XattrContext) -> str:
    return str(c.repository.root_hash)


@magic_xattr("user.hash", Flavor.WITH_HASH)
def _hash(c: XattrContext) -> str:
    return str(c.entry.content_hash)


@magic_xattr("user.lhash", Flavor.WITH_HASH)
def _lhash(c: XattrContext) -> str:
    """The hash of the object as it lies in the local cache (decompressed), computed."""
    content_hash = c.entry.content_hash
    assert content_hash is not None
    cached = c.cache.open_object(content_hash)
    if cached is None:
        return "Not in cache"
    hasher = Hasher(content_hash.algorithm)
    with cached:
        while block := cached.read(1 << 20):
            hasher.update(block)
    return str(hasher.finish())


@magic_xattr("user.chunks", Flavor.REGULAR)
def _chunks(c: XattrContext) -> str:
    return str(max(len(c.repository.pieces(c.path)[1]), 1))


def _chunk_list_pages(c: XattrContext) -> list[str]:
    """`hash,offset,size` lines in pages of about PAGE_CHARS, each with the header (the
    reference's ChunkListMagicXattr)."""
    _, pieces = c.repository.pieces(c.path)
    pages, page = [], CHUNK_LIST_HEADER
    for p in pieces:
        page += f"{p.hash},{p.offset},{p.size}\n"
        if len(page) > PAGE_CHARS:
            pages.append(page)
            page = CHUNK_LIST_HEADER
    if page != CHUNK_LIST_HEADER or not pages:
        pages.append(page)
    return pages


@magic_xattr("user.chunk_list", Flavor.REGULAR)
def _chunk_list(c: XattrContext) -> str:
    return _chunk_list_pages(c)[0]


_PAGERS["user.chunk_list"] = _chunk_list_pages


@magic_xattr("user.compression", Flavor.REGULAR)
def _compression(c: XattrContext) -> str:
    return c.entry.compression.name.lower()


@magic_xattr("user.external_file", Flavor.REGULAR)
def _external(c: XattrContext) -> str:
    return "1" if c.entry.is_external else "0"


@magic_xattr("user.direct_io", Flavor.REGULAR)
def _direct_io(c: XattrContext) -> str:
    return "1" if c.entry.flags & 0x10000 else "0"


@magic_xattr("user.bundle_trigger", Flavor.REGULAR)
def _bundle_trigger(c: XattrContext) -> str:
    return "1" if c.entry.is_bundle_trigger else "0"


@magic_xattr("user.rawlink", Flavor.SYMLINK)
def _rawlink(c: XattrContext) -> str:
    return c.entry.symlink


@magic_xattr("user.host")
def _host(c: XattrContext) -> str:
    return c.network.host()


@magic_xattr("user.host_list")
def _host_list(c: XattrContext) -> str:
    return ";".join(c.network.host_list())


@magic_xattr("user.proxy")
def _proxy(c: XattrContext) -> str:
    return c.network.proxy()


@magic_xattr("user.proxy_list")
def _proxy_list(c: XattrContext) -> str:
    return "".join(f"{p}\n" for p in c.network.proxy_list())


@magic_xattr("user.timeout")
def _timeout(c: XattrContext) -> str:
    return str(c.network.timeout_s)


@magic_xattr("user.timeout_direct")
def _timeout_direct(c: XattrContext) -> str:
    return str(c.network.timeout_direct_s)


@magic_xattr("user.expires")
def _expires(c: XattrContext) -> str:
    return c.expires()


@magic_xattr("user.nioerr")
def _nioerr(c: XattrContext) -> str:
    return str(c.stats.nioerr)


@magic_xattr("user.timestamp_last_ioerr")
def _last_ioerr(c: XattrContext) -> str:
    return str(c.stats.last_ioerr)


@magic_xattr("user.rx")
def _rx(c: XattrContext) -> str:
    return str(c.network.transfers()[0] // 1024)


@magic_xattr("user.speed")
def _speed(c: XattrContext) -> str:
    received, _, seconds = c.network.transfers()
    return f"{received / 1024 / seconds:.0f}" if seconds > 0 else "n/a"


@magic_xattr("user.ndownload")
def _ndownload(c: XattrContext) -> str:
    return str(c.network.transfers()[1])


@magic_xattr("user.nopen")
def _nopen(c: XattrContext) -> str:
    return str(c.stats.nopen)


@magic_xattr("user.ndiropen")
def _ndiropen(c: XattrContext) -> str:
    return str(c.stats.ndiropen)


@magic_xattr("user.nclg")
def _nclg(c: XattrContext) -> str:
    return str(len(c.repository.tree.attached()))


@magic_xattr("user.hitrate")
def _hitrate(c: XattrContext) -> str:
    hits, misses = c.cache.hits_misses()
    return f"{100.0 * hits / (hits + misses):.1f}" if hits + misses else "n/a"


@magic_xattr("user.usedfd")
def _usedfd(c: XattrContext) -> str:
    try:
        return str(len(os.listdir("/proc/self/fd")))
    except OSError:
        return "0"


@magic_xattr("user.maxfd")
def _maxfd(c: XattrContext) -> str:
    return str(resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 512)


@magic_xattr("user.pid")
def _pid(c: XattrContext) -> str:
    return str(os.getpid())


@magic_xattr("user.uptime")
def _uptime(c: XattrContext) -> str:
    return str(int((time.monotonic() - c.stats.started) // 60))


@magic_xattr("user.version")
def _version(c: XattrContext) -> str:
    return __version__


@magic_xattr("user.tag")
def _tag(c: XattrContext) -> str:
    tag = c.repository.tag
    return tag.name if tag is not None else ""


@magic_xattr("user.inode_max")
def _inode_max(c: XattrContext) -> str:
    return str(c.inode_max())


@magic_xattr("user.ncleanup24")
def _ncleanup24(c: XattrContext) -> str:
    return "-1"  # no managed cache yet (the reference's answer without a quota manager)


@magic_xattr("user.catalog_counters")
def _catalog_counters(c: XattrContext) -> str:
    _, catalog = c.repository.resolve(c.path)
    head = f"catalog_hash: {catalog.content_hash}\ncatalog_mountpoint: {catalog.root_prefix}\n"
    return head + _counters_csv(total_counters(catalog.statistics().items()))


@magic_xattr("user.repo_counters")
def _repo_counters(c: XattrContext) -> str:
    return _counters_csv(c.repository.statistics())


@magic_xattr(STATS_XATTR, hidden=True)
def _stats_document(c: XattrContext) -> str:
    return stats_document.encode(stats_document.document(c))
