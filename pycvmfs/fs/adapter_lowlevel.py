"""libfuse3 low-level adapter through ctypes: inode-based, multi-threaded, no compiler.

Binds the runtime `libfuse3.so.3` directly (no headers, no build step), so it is also the
inode-based backend for hosts that have libfuse3 but cannot build pyfuse3. Requests are
served by libfuse's own worker threads (`fuse_session_loop_mt`, WORKER_THREADS of them);
each callback takes the GIL and answers inline what needs no download: metadata from
attached catalogs (run with catalog loading forbidden) and reads already in the page cache
(`vfs.read_nowait`). Whatever has to wait for the network (a nested catalog, an object) is
handed to a pool of BLOCKING_THREADS and answered from there (the low-level API allows
replying from any thread), so slow downloads never hold the few libfuse workers. Few
workers on purpose: every thread that enters Python fights for the GIL, and with 16
workers a page-cache-hot sequential read ran at half the speed.

What it adds over the pyfuse3 adapter (pyfuse3 3.5 exposes neither):
  * directory listings cached by the kernel: OPENDIR opens a VFS directory handle (one
    revision from opendir to closedir, read page by page, `vfs.readdir`) and asks for
    FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE, so later opens are answered from the kernel's
    listing cache — except in the drain window after a revision change, when handles
    get no cache flag: they neither read nor fill the kernel's cache.
  * FUSE_CAP_CACHE_SYMLINKS: the kernel keeps symlink targets (no READLINK round trips).
  * FORGET/BATCH_FORGET go to `vfs.forget`, so the inode tables shrink as the kernel
    evicts inodes (the VFS counts every LOOKUP and READDIRPLUS entry it hands out, before
    the reply is sent, and takes back what did not fit). A plain READDIR hands nothing
    out: its d_ino is the number a LOOKUP would answer, nothing is recorded.

Kernel caches, as in the pyfuse3 adapter: entries, attributes and negative lookups are
cached for the `entry_timeout` the VFS hands out; the page cache is kept across opens
unless the catalog asks for direct I/O. After a revision change every name handed out
(negatives too) is invalidated and every directory whose listing the kernel may cache
gets `notify_inval_inode(ino, 0, 0)`, which drops that cached listing. A listing answered
in the drain window right after the swap is invalidated again once the window is over
(a reply computed before the swap may reach the kernel after the first invalidation).

ABI: the structures below are declared for libfuse 3.10-3.16 on little-endian x86_64 and
aarch64 Linux; `fuse_version()` is checked at import and anything else is refused with an
ImportError (`load_backend` reports it). 3.17 changed `fuse_file_info`, `fuse_conn_info`
(`want_ext`) and `fuse_session_new` (versioned) and is not supported yet.
`fuse_file_info` bit positions differ in 3.15-3.16 (`parallel_direct_writes` was inserted
after `keep_cache`, moving `cache_readdir` one bit up); that is handled.
tests/unit/test_lowlevel_abi.py checks the declarations against the C compiler.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import platform
import signal
import struct
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pycvmfs.fs.kernel_cache import KernelCache
from pycvmfs.fs.vfs import DOTS, Attr, FsError, RepositoryVFS
from pycvmfs.repository.catalog_tree import WouldLoadError, no_loading

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = range(310, 317)  # fuse_version(): 3.10 .. 3.16
# libfuse's worker threads answer what needs no waiting; few of them, since each request
# takes the GIL and many threads fighting for it halve the throughput of cached reads
# (3.12+: max_threads; before 3.12: idle threads kept, the pool grows as needed)
WORKER_THREADS = 4
BLOCKING_THREADS = 16  # reads that wait for a download run here and reply from here
REDRAIN_S = 2.5  # after a swap, listings answered meanwhile are invalidated again
BLOCK_SIZE = 4096

# fuse_common.h capability bits (stable across 3.x)
FUSE_CAP_READDIRPLUS = 1 << 13
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14
FUSE_CAP_CACHE_SYMLINKS = 1 << 23

# bits of the bitfield word of struct fuse_file_info (little-endian: first field = bit 0)
FI_DIRECT_IO = 1 << 1
FI_KEEP_CACHE = 1 << 2


def fi_cache_readdir_bit(version: int) -> int:
    """`cache_readdir` is bit 6, but bit 7 in 3.15-3.16 (`parallel_direct_writes`)."""
    return 1 << (7 if version in (315, 316) else 6)


class UnsupportedLibfuseError(ImportError):
    """The runtime libfuse3 (or platform) does not match the declared ABI."""


# --- C structures --------------------------------------------------------------------
class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_int64)]


class StatX8664(ctypes.Structure):
    """struct stat, glibc x86_64."""

    _fields_ = [
        ("st_dev", ctypes.c_uint64), ("st_ino", ctypes.c_uint64),
        ("st_nlink", ctypes.c_uint64), ("st_mode", ctypes.c_uint32),
        ("st_uid", ctypes.c_uint32), ("st_gid", ctypes.c_uint32), ("_pad0", ctypes.c_int32),
        ("st_rdev", ctypes.c_uint64), ("st_size", ctypes.c_int64),
        ("st_blksize", ctypes.c_int64), ("st_blocks", ctypes.c_int64),
        ("st_atim", Timespec), ("st_mtim", Timespec), ("st_ctim", Timespec),
        ("_reserved", ctypes.c_int64 * 3),
    ]


class StatAarch64(ctypes.Structure):
    """struct stat, glibc aarch64 (asm-generic layout)."""

    _fields_ = [
        ("st_dev", ctypes.c_uint64), ("st_ino", ctypes.c_uint64),
        ("st_mode", ctypes.c_uint32), ("st_nlink", ctypes.c_uint32),
        ("st_uid", ctypes.c_uint32), ("st_gid", ctypes.c_uint32),
        ("st_rdev", ctypes.c_uint64), ("_pad1", ctypes.c_uint64),
        ("st_size", ctypes.c_int64), ("st_blksize", ctypes.c_int32), ("_pad2", ctypes.c_int32),
        ("st_blocks", ctypes.c_int64),
        ("st_atim", Timespec), ("st_mtim", Timespec), ("st_ctim", Timespec),
        ("_reserved", ctypes.c_int32 * 2),
    ]


MACHINE = {"arm64": "aarch64"}.get(platform.machine(), platform.machine())
Stat: type[ctypes.Structure] = StatAarch64 if MACHINE == "aarch64" else StatX8664

# The same layouts as struct formats: one `pack` per entry instead of a dozen ctypes
# attribute stores (readdirplus answers hundreds of entries per request).
STAT_FORMATS = {
    "x86_64": "QQQIIIiQqqqqqqqqq24x",  # dev ino nlink mode uid gid pad rdev size blksize
    "aarch64": "QQIIIIQ8xqi4xqqqqqqq8x",  # blocks atim mtim ctim reserved / asm-generic
}


def _stat_values(attr: Attr) -> tuple[int, ...]:
    sec, nsec = divmod(attr.mtime_ns, 10**9)
    if MACHINE == "aarch64":
        return (0, attr.ino, attr.mode, attr.nlink, attr.uid, attr.gid, attr.rdev, attr.size,
                BLOCK_SIZE, attr.blocks, sec, nsec, sec, nsec, sec, nsec)
    return (0, attr.ino, attr.nlink, attr.mode, attr.uid, attr.gid, 0, attr.rdev, attr.size,
            BLOCK_SIZE, attr.blocks, sec, nsec, sec, nsec, sec, nsec)


class EntryParam(ctypes.Structure):
    _fields_ = [("ino", ctypes.c_uint64), ("generation", ctypes.c_uint64), ("attr", Stat),
                ("attr_timeout", ctypes.c_double), ("entry_timeout", ctypes.c_double)]


_STAT_FORMAT = STAT_FORMATS.get(MACHINE, STAT_FORMATS["x86_64"])
STAT_STRUCT = struct.Struct("<" + _STAT_FORMAT)
ENTRY_STRUCT = struct.Struct("<QQ" + _STAT_FORMAT + "dd")
NEGATIVE_STAT = (0,) * len(_stat_values(Attr(0, 0, 0, 0, 0, 0, 0)))


def pack_stat(attr: Attr) -> bytes:
    return STAT_STRUCT.pack(*_stat_values(attr))


def pack_entry(attr: Attr | None, timeout: float) -> bytes:
    """struct fuse_entry_param; None: a negative entry (ino 0) cached for `timeout`."""
    if attr is None:
        return ENTRY_STRUCT.pack(0, 0, *NEGATIVE_STAT, 0.0, timeout)
    return ENTRY_STRUCT.pack(attr.ino, 0, *_stat_values(attr), timeout, timeout)


class Statvfs(ctypes.Structure):
    """struct statvfs, glibc on 64-bit Linux (x86_64 and aarch64 alike)."""

    _fields_ = [
        ("f_bsize", ctypes.c_ulong), ("f_frsize", ctypes.c_ulong),
        ("f_blocks", ctypes.c_uint64), ("f_bfree", ctypes.c_uint64),
        ("f_bavail", ctypes.c_uint64), ("f_files", ctypes.c_uint64),
        ("f_ffree", ctypes.c_uint64), ("f_favail", ctypes.c_uint64),
        ("f_fsid", ctypes.c_ulong), ("f_flag", ctypes.c_ulong), ("f_namemax", ctypes.c_ulong),
        ("_spare", ctypes.c_int * 6),
    ]


class FileInfo(ctypes.Structure):
    """struct fuse_file_info (3.10-3.16); the bitfields as one word, see FI_* bits."""

    _fields_ = [("flags", ctypes.c_int), ("bits", ctypes.c_uint32),
                ("bits2", ctypes.c_uint32), ("fh", ctypes.c_uint64),
                ("lock_owner", ctypes.c_uint64), ("poll_events", ctypes.c_uint32)]


class ConnInfo(ctypes.Structure):
    """struct fuse_conn_info (3.0-3.16)."""

    _fields_ = [("proto_major", ctypes.c_uint), ("proto_minor", ctypes.c_uint),
                ("max_write", ctypes.c_uint), ("max_read", ctypes.c_uint),
                ("max_readahead", ctypes.c_uint), ("capable", ctypes.c_uint),
                ("want", ctypes.c_uint), ("max_background", ctypes.c_uint),
                ("congestion_threshold", ctypes.c_uint), ("time_gran", ctypes.c_uint),
                ("reserved", ctypes.c_uint * 22)]


class FuseArgs(ctypes.Structure):
    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)),
                ("allocated", ctypes.c_int)]


class ForgetData(ctypes.Structure):
    """struct fuse_forget_data: one entry of a BATCH_FORGET."""

    _fields_ = [("ino", ctypes.c_uint64), ("nlookup", ctypes.c_uint64)]


class LoopConfigV1(ctypes.Structure):
    """struct fuse_loop_config before 3.12 (`fuse_loop_config_v1` since)."""

    _fields_ = [("clone_fd", ctypes.c_int), ("max_idle_threads", ctypes.c_uint)]


_REQ = ctypes.c_void_p  # fuse_req_t
_INO = ctypes.c_uint64  # fuse_ino_t
_FI = ctypes.POINTER(FileInfo)
CALLBACK_TYPES: dict[str, Any] = {
    "init": ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ConnInfo)),
    "lookup": ctypes.CFUNCTYPE(None, _REQ, _INO, ctypes.c_char_p),
    "forget": ctypes.CFUNCTYPE(None, _REQ, _INO, ctypes.c_uint64),
    "forget_multi": ctypes.CFUNCTYPE(None, _REQ, ctypes.c_size_t, ctypes.POINTER(ForgetData)),
    "getattr": ctypes.CFUNCTYPE(None, _REQ, _INO, _FI),
    "readlink": ctypes.CFUNCTYPE(None, _REQ, _INO),
    "open": ctypes.CFUNCTYPE(None, _REQ, _INO, _FI),
    "read": ctypes.CFUNCTYPE(None, _REQ, _INO, ctypes.c_size_t, ctypes.c_int64, _FI),
    "release": ctypes.CFUNCTYPE(None, _REQ, _INO, _FI),
    "opendir": ctypes.CFUNCTYPE(None, _REQ, _INO, _FI),
    "readdir": ctypes.CFUNCTYPE(None, _REQ, _INO, ctypes.c_size_t, ctypes.c_int64, _FI),
    "releasedir": ctypes.CFUNCTYPE(None, _REQ, _INO, _FI),
    "statfs": ctypes.CFUNCTYPE(None, _REQ, _INO),
    "getxattr": ctypes.CFUNCTYPE(None, _REQ, _INO, ctypes.c_char_p, ctypes.c_size_t),
    "listxattr": ctypes.CFUNCTYPE(None, _REQ, _INO, ctypes.c_size_t),
    "readdirplus": ctypes.CFUNCTYPE(None, _REQ, _INO, ctypes.c_size_t, ctypes.c_int64, _FI),
}
# struct fuse_lowlevel_ops member order, unchanged from 3.0 to 3.16 (3.17 appends)
OPS_ORDER = (
    "init", "destroy", "lookup", "forget", "getattr", "setattr", "readlink", "mknod",
    "mkdir", "unlink", "rmdir", "symlink", "rename", "link", "open", "read", "write",
    "flush", "release", "fsync", "opendir", "readdir", "releasedir", "fsyncdir", "statfs",
    "setxattr", "getxattr", "listxattr", "removexattr", "access", "create", "getlk",
    "setlk", "bmap", "ioctl", "poll", "write_buf", "retrieve_reply", "forget_multi",
    "flock", "fallocate", "readdirplus", "copy_file_range", "lseek",
)


class LowlevelOps(ctypes.Structure):
    _fields_ = [(name, CALLBACK_TYPES.get(name, ctypes.c_void_p)) for name in OPS_ORDER]


# --- the library ---------------------------------------------------------------------
def _declare(lib: ctypes.CDLL) -> None:
    c_int, c_size_t, vp = ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "fuse_reply_err": (c_int, [vp, c_int]),
        "fuse_reply_none": (None, [vp]),
        "fuse_reply_entry": (c_int, [vp, vp]),
        "fuse_reply_attr": (c_int, [vp, vp, ctypes.c_double]),
        "fuse_reply_readlink": (c_int, [vp, ctypes.c_char_p]),
        "fuse_reply_open": (c_int, [vp, _FI]),
        "fuse_reply_buf": (c_int, [vp, vp, c_size_t]),
        "fuse_reply_xattr": (c_int, [vp, c_size_t]),
        "fuse_reply_statfs": (c_int, [vp, vp]),
        "fuse_add_direntry": (c_size_t, [vp, vp, c_size_t, ctypes.c_char_p, vp,
                                         ctypes.c_int64]),
        "fuse_add_direntry_plus": (c_size_t, [vp, vp, c_size_t, ctypes.c_char_p, vp,
                                              ctypes.c_int64]),
        "fuse_lowlevel_notify_inval_entry": (c_int, [vp, _INO, ctypes.c_char_p, c_size_t]),
        "fuse_lowlevel_notify_inval_inode": (c_int, [vp, _INO, ctypes.c_int64,
                                                     ctypes.c_int64]),
        "fuse_session_new": (vp, [ctypes.POINTER(FuseArgs), ctypes.POINTER(LowlevelOps),
                                  c_size_t, vp]),
        "fuse_opt_free_args": (None, [ctypes.POINTER(FuseArgs)]),
        "fuse_session_mount": (c_int, [vp, ctypes.c_char_p]),
        "fuse_session_unmount": (None, [vp]),
        "fuse_session_destroy": (None, [vp]),
        "fuse_session_exit": (None, [vp]),
        "fuse_set_signal_handlers": (c_int, [vp]),
        "fuse_remove_signal_handlers": (None, [vp]),
        "fuse_session_loop_mt_32": (c_int, [vp, ctypes.POINTER(LoopConfigV1)]),
        "fuse_session_loop_mt_312": (c_int, [vp, vp]),
        "fuse_loop_cfg_create": (vp, []),
        "fuse_loop_cfg_destroy": (None, [vp]),
        "fuse_loop_cfg_set_clone_fd": (None, [vp, ctypes.c_uint]),
        "fuse_loop_cfg_set_max_threads": (None, [vp, ctypes.c_uint]),
    }
    optional = {"fuse_session_loop_mt_312", "fuse_loop_cfg_create", "fuse_loop_cfg_destroy",
                "fuse_loop_cfg_set_clone_fd", "fuse_loop_cfg_set_max_threads",
                "fuse_session_loop_mt_32"}
    for name, (restype, argtypes) in signatures.items():
        try:
            func = getattr(lib, name)
        except AttributeError:
            if name in optional:
                continue
            raise UnsupportedLibfuseError(f"libfuse3 lacks {name}") from None
        func.restype, func.argtypes = restype, argtypes


def load_library() -> tuple[ctypes.CDLL, int]:
    """libfuse3.so.3 with its functions declared, and its `fuse_version()`; refuses
    platforms and versions whose structure layouts are not declared here."""
    if not sys.platform.startswith("linux") or sys.byteorder != "little":
        raise UnsupportedLibfuseError("the lowlevel backend needs little-endian Linux")
    if MACHINE not in STAT_FORMATS or ctypes.sizeof(ctypes.c_void_p) != 8:
        raise UnsupportedLibfuseError(f"the lowlevel backend has no struct layouts for "
                                      f"{MACHINE} (x86_64 and aarch64 only)")
    try:
        lib = ctypes.CDLL("libfuse3.so.3")
    except OSError as exc:
        raise UnsupportedLibfuseError(f"libfuse3.so.3 not found: {exc}") from None
    lib.fuse_version.restype, lib.fuse_version.argtypes = ctypes.c_int, []
    version = int(lib.fuse_version())
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedLibfuseError(
            f"libfuse {version // 100}.{version % 100} is not supported by the lowlevel "
            f"backend (3.10-3.16)")
    _declare(lib)
    if not (hasattr(lib, "fuse_session_loop_mt_312") and hasattr(lib, "fuse_loop_cfg_create")
            or hasattr(lib, "fuse_session_loop_mt_32")):
        raise UnsupportedLibfuseError("libfuse3 has no usable fuse_session_loop_mt")
    return lib, version


LIB, VERSION = load_library()  # at import: load_backend reports the ImportError
FI_CACHE_READDIR = fi_cache_readdir_bit(VERSION)


def _copy_file_info(arg: Any) -> Any:
    """A pointer to a private copy of a `fuse_file_info` argument; others unchanged."""
    if isinstance(arg, ctypes._Pointer) and arg and isinstance(arg.contents, FileInfo):
        return ctypes.pointer(FileInfo.from_buffer_copy(arg.contents))
    return arg


# --- the operations ------------------------------------------------------------------
UNGUARDED = ("init", "forget", "forget_multi")  # no reply / always reply none: no _guarded


class LowlevelOperations:
    """Request handlers. Each runs in a libfuse worker thread holding the GIL; every one
    replies exactly once (FsError -> its errno, anything else -> EIO, logged once)."""

    def __init__(self, vfs: RepositoryVFS, entry_timeout: float) -> None:
        self.vfs = vfs
        vfs.track_lookups()  # FORGET is answered: the VFS may drop what the kernel lets go
        self.entry_timeout = entry_timeout
        self.capable = 0
        self.session: int | None = None  # struct fuse_session *, while notifications work
        self.closing = False
        self.notify_lock = threading.Lock()
        self.kernel = KernelCache(vfs)  # what a revision change must make the kernel drop
        self._listed_draining: set[int] = set()  # ... answered in the drain window
        self._redrain: threading.Timer | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.ops = LowlevelOps()
        self._callbacks: list[Any] = []  # ctypes keeps no reference: we must
        for name in CALLBACK_TYPES:
            handler = getattr(self, f"_op_{name}")
            wrapped = handler if name in UNGUARDED else self._guarded(name, handler)
            callback = CALLBACK_TYPES[name](wrapped)
            self._callbacks.append(callback)
            setattr(self.ops, name, callback)

    # --- plumbing --------------------------------------------------------------------
    def _guarded(self, name: str, handler: Callable[..., None]) -> Callable[..., None]:
        """Run a handler on the libfuse worker with catalog loading forbidden (lookups in
        attached catalogs take microseconds); if it would have to download a catalog,
        answer from the blocking pool instead, so a slow download never ties up one of
        the few libfuse workers. Reply with an errno when the handler raised. A handler's
        reply is its last statement and replies never raise, so no request is answered
        twice."""

        def guarded(req: int, *args: Any) -> None:
            try:
                with no_loading():
                    handler(req, *args)
                return
            except WouldLoadError:
                pass
            except FsError as exc:
                LIB.fuse_reply_err(req, exc.errno)
                return
            except BaseException:
                log.exception("unexpected error in %s", name)
                LIB.fuse_reply_err(req, errno.EIO)
                return
            # libfuse's fuse_file_info lives on the worker's stack: keep a copy
            kept = tuple(_copy_file_info(arg) for arg in args)
            self._blocking().submit(self._unrestricted, name, handler, req, kept)

        return guarded

    @staticmethod
    def _unrestricted(name: str, handler: Callable[..., None], req: int,
                      args: tuple[Any, ...]) -> None:
        try:
            handler(req, *args)
        except FsError as exc:
            LIB.fuse_reply_err(req, exc.errno)
        except BaseException:
            log.exception("unexpected error in %s", name)
            LIB.fuse_reply_err(req, errno.EIO)

    def _timeout(self) -> float:
        return self.vfs.entry_timeout(self.entry_timeout)

    # --- requests --------------------------------------------------------------------
    def _op_init(self, userdata: int, conn: Any) -> None:
        try:
            info = conn.contents
            self.capable = int(info.capable)
            if info.capable & FUSE_CAP_CACHE_SYMLINKS:
                info.want |= FUSE_CAP_CACHE_SYMLINKS
            log.debug("FUSE init: capable %#x want %#x", info.capable, info.want)
        except BaseException:
            log.exception("unexpected error in init")

    def _op_lookup(self, req: int, parent: int, name: bytes) -> None:
        try:
            attr: Attr | None = self.vfs.lookup(parent, name.decode("utf-8", "surrogateescape"))
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            attr = None
            self.kernel.negative(parent, name)
        try:
            packed = pack_entry(attr, self._timeout())
        except BaseException:
            if attr is not None:
                self.vfs.forget([(attr.ino, 1)])  # counted by vfs.lookup, never sent
            raise
        if LIB.fuse_reply_entry(req, packed) != 0 and attr is not None:
            # not delivered (the request was interrupted): the kernel never counted it
            with contextlib.suppress(Exception):  # replied: must not raise into _guarded
                self.vfs.forget([(attr.ino, 1)])

    def _op_getattr(self, req: int, ino: int, fi: Any) -> None:
        attr = self.vfs.getattr(ino)
        LIB.fuse_reply_attr(req, pack_stat(attr), self._timeout())

    def _op_readlink(self, req: int, ino: int) -> None:
        LIB.fuse_reply_readlink(req, self.vfs.readlink(ino))

    def _op_open(self, req: int, ino: int, fi: Any) -> None:
        info = fi.contents
        handle = self.vfs.open(ino, info.flags)
        try:
            direct = self.vfs.direct_io(handle)
        except BaseException:
            self.vfs.release(handle)
            raise
        info.fh = handle
        info.bits |= FI_DIRECT_IO if direct else FI_KEEP_CACHE
        if LIB.fuse_reply_open(req, fi) != 0:  # the open was interrupted: nobody owns it
            with contextlib.suppress(Exception):  # replied: must not raise into _guarded
                self.vfs.release(handle)

    def _op_read(self, req: int, ino: int, size: int, off: int, fi: Any) -> None:
        handle = fi.contents.fh
        data = self.vfs.read_nowait(handle, off, size)
        if data is None:  # may wait for the network: reply later, from a pool thread
            self._blocking().submit(self._unrestricted, "read", self._read_blocking, req,
                                    (handle, off, size))
            return
        LIB.fuse_reply_buf(req, data, len(data))

    def _read_blocking(self, req: int, handle: int, off: int, size: int) -> None:
        data = self.vfs.read(handle, off, size)
        LIB.fuse_reply_buf(req, data, len(data))

    def _blocking(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(BLOCKING_THREADS,
                                                thread_name_prefix="fuse-blocking")
            return self._pool

    def _op_release(self, req: int, ino: int, fi: Any) -> None:
        self.vfs.release(fi.contents.fh)
        LIB.fuse_reply_err(req, 0)

    def _op_opendir(self, req: int, ino: int, fi: Any) -> None:
        info = fi.contents
        handle = self.vfs.opendir(ino)
        info.fh = handle
        if not self.vfs.draining():  # a listing that may be old must not be cached
            info.bits |= FI_CACHE_READDIR | FI_KEEP_CACHE
            self.kernel.listed(ino)
        if LIB.fuse_reply_open(req, fi) != 0:  # interrupted: nobody will release it
            with contextlib.suppress(Exception):  # replied: must not raise into _guarded
                self.vfs.releasedir(handle)

    def _op_releasedir(self, req: int, ino: int, fi: Any) -> None:
        self.vfs.releasedir(fi.contents.fh)
        LIB.fuse_reply_err(req, 0)

    def _readdir(self, req: int, ino: int, size: int, off: int, fi: Any, plus: bool) -> None:
        """One page of the handle's listing from `off`; READDIRPLUS hands out every entry
        but `.` and `..` (counted before the reply, taken back if it did not fit)."""
        timeout = self._timeout()
        buffer = ctypes.create_string_buffer(size)
        base, used = ctypes.addressof(buffer), 0
        add = LIB.fuse_add_direntry_plus if plus else LIB.fuse_add_direntry
        counted: list[tuple[int, int]] = []
        entries = self.vfs.readdir(fi.contents.fh, max(off, 0))
        try:
            for item in entries:
                handed = plus and item.name not in DOTS
                attr = self.vfs.listed_attr(item, hand_out=handed)
                if handed:
                    counted.append((attr.ino, 1))
                packed = pack_entry(attr, timeout) if plus else pack_stat(attr)
                needed = add(req, base + used, size - used,
                             item.name.encode("utf-8", "surrogateescape"), packed, item.offset)
                if needed > size - used:
                    if handed:
                        self.vfs.forget([counted.pop()])  # did not fit: not handed out
                    break
                used += needed
        except BaseException:
            self.vfs.forget(counted)
            raise
        finally:
            entries.close()
        if LIB.fuse_reply_buf(req, buffer, used) != 0:  # not delivered: nothing counted
            with contextlib.suppress(Exception):
                self.vfs.forget(counted)
        # replied: nothing below may raise into _guarded (a second reply)
        with contextlib.suppress(Exception):
            if off <= 0 and self.vfs.draining():  # may be computed before the swap
                self._listed_draining.add(ino)

    def _op_readdir(self, req: int, ino: int, size: int, off: int, fi: Any) -> None:
        self._readdir(req, ino, size, off, fi, plus=False)

    def _op_readdirplus(self, req: int, ino: int, size: int, off: int, fi: Any) -> None:
        self._readdir(req, ino, size, off, fi, plus=True)

    def _op_forget(self, req: int, ino: int, nlookup: int) -> None:
        self._forget([(ino, nlookup)], req)

    def _op_forget_multi(self, req: int, count: int, forgets: Any) -> None:
        try:
            items = [(forgets[i].ino, forgets[i].nlookup) for i in range(count)]
        except BaseException:
            log.exception("unexpected error in forget_multi")
            items = []
        self._forget(items, req)

    def _forget(self, items: list[tuple[int, int]], req: int) -> None:
        """Take the kernel's lookups back; always reply none (FORGET has no answer)."""
        try:
            forgotten = self.vfs.forget(items)
            if forgotten:  # the kernel dropped these inodes, and any listing cached on them
                self.kernel.forgotten(forgotten)
                self._listed_draining.difference_update(forgotten)
        except BaseException:
            log.exception("unexpected error in forget")
        LIB.fuse_reply_none(req)

    def _op_statfs(self, req: int, ino: int) -> None:
        s = self.vfs.statfs()
        out = Statvfs(f_bsize=s.block_size, f_frsize=s.block_size, f_blocks=s.blocks,
                      f_bfree=s.blocks_free, f_bavail=s.blocks_free, f_files=s.files,
                      f_ffree=s.files_free, f_favail=s.files_free, f_namemax=s.name_max)
        LIB.fuse_reply_statfs(req, ctypes.byref(out))

    @staticmethod
    def _reply_sized(req: int, value: bytes, size: int) -> None:
        """The xattr protocol: size 0 asks for the length, a short buffer is ERANGE."""
        if size == 0:
            LIB.fuse_reply_xattr(req, len(value))
        elif len(value) > size:
            LIB.fuse_reply_err(req, errno.ERANGE)
        else:
            LIB.fuse_reply_buf(req, value, len(value))

    def _op_getxattr(self, req: int, ino: int, name: bytes, size: int) -> None:
        value = self.vfs.getxattr(ino, name.decode("utf-8", "surrogateescape"))
        self._reply_sized(req, value, size)

    def _op_listxattr(self, req: int, ino: int, size: int) -> None:
        names = self.vfs.listxattr(ino)
        value = b"".join(n.encode("utf-8", "surrogateescape") + b"\0" for n in names)
        self._reply_sized(req, value, size)

    # --- revision changes ------------------------------------------------------------
    def invalidate_all(self) -> None:
        """Drop what the kernel caches from the old revision (`kernel_cache.KernelCache`).
        Runs in the revision watcher's thread, never in a request handler (a notification
        waits for requests on the same inodes). Listings answered in the drain window are
        dropped once more after it (a reply computed before the swap may arrive after)."""
        self._listed_draining.clear()
        self.kernel.invalidate(self._inval_inode, self._inval_entry, self.entry_timeout)
        if self._redrain is not None:
            self._redrain.cancel()
        self._redrain = threading.Timer(REDRAIN_S, self._invalidate_drained)
        self._redrain.daemon = True
        self._redrain.start()

    def _invalidate_drained(self) -> None:
        drained, self._listed_draining = self._listed_draining, set()
        for ino in drained:
            self._inval_inode(ino, False)

    def _inval_inode(self, ino: int, attributes_only: bool) -> None:
        with self.notify_lock:  # per call: unmounting never waits for a whole pass
            if not self.closing and self.session is not None:
                # ENOENT: the kernel had forgotten it; other errors: nothing to drop;
                # a negative offset drops the attributes only (the pages stay)
                LIB.fuse_lowlevel_notify_inval_inode(self.session, ino,
                                                     -1 if attributes_only else 0, 0)

    def _inval_entry(self, parent: int, name: bytes) -> None:
        with self.notify_lock:
            if not self.closing and self.session is not None:
                LIB.fuse_lowlevel_notify_inval_entry(self.session, parent, name, len(name))

    def stop(self) -> None:
        """After the session loop: no timer, no pool thread left behind."""
        if self._redrain is not None:
            self._redrain.cancel()
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# --- serving -------------------------------------------------------------------------
def _mount_options(fsname: str) -> str:
    """As the pyfuse3 adapter mounts: fsname, ro, nodev, no default_permissions."""
    escaped = fsname.replace("\\", "\\\\").replace(",", "\\,")
    return f"fsname={escaped},ro,nodev"


def _abort_connection(mountpoint: str) -> None:
    """Abort the kernel connection of `mountpoint` (unblocks a notification waiting for
    requests no thread will answer any more), via /sys/fs/fuse/connections."""
    from pycvmfs.fs.mount import abort_connection, mounted_device  # imports adapters lazily

    device = mounted_device(mountpoint)
    if device is not None:
        not_aborted = abort_connection(device)
        if not_aborted is not None:
            log.warning("cannot abort the FUSE connection of %s: %s", mountpoint, not_aborted)


def _run_loop(session: int) -> int:
    if hasattr(LIB, "fuse_session_loop_mt_312") and hasattr(LIB, "fuse_loop_cfg_create"):
        config = LIB.fuse_loop_cfg_create()
        if not config:
            raise MemoryError("fuse_loop_cfg_create failed")
        try:
            LIB.fuse_loop_cfg_set_clone_fd(config, 0)
            LIB.fuse_loop_cfg_set_max_threads(config, WORKER_THREADS)
            return int(LIB.fuse_session_loop_mt_312(session, config))
        finally:
            LIB.fuse_loop_cfg_destroy(config)
    legacy = LoopConfigV1(clone_fd=0, max_idle_threads=WORKER_THREADS)
    return int(LIB.fuse_session_loop_mt_32(session, ctypes.byref(legacy)))


class _SignalsToLibfuse:
    """SIGINT/SIGTERM/SIGHUP end the session loop (libfuse's handlers; Python's own
    SIGINT handler could not run while the main thread waits inside libfuse)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, session: int) -> None:
        self.session = session
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:  # libfuse only replaces default handlers
                self.saved[signum] = signal.signal(signum, signal.SIG_DFL)
        if LIB.fuse_set_signal_handlers(self.session) != 0:
            log.warning("cannot install signal handlers: Ctrl-C will not unmount")

    def __exit__(self, *exc: object) -> None:
        LIB.fuse_remove_signal_handlers(self.session)
        for signum, handler in self.saved.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def serve(vfs: RepositoryVFS, mountpoint: str, *, fsname: str, entry_timeout: float) -> None:
    """Mount and serve with libfuse's worker threads until unmounted or signalled
    (blocks); always unmounts and destroys the session."""
    operations = LowlevelOperations(vfs, entry_timeout)
    argv_list = [b"pycvmfs", b"-o", _mount_options(fsname).encode("utf-8", "surrogateescape")]
    argv = (ctypes.c_char_p * (len(argv_list) + 1))(*argv_list, None)
    args = FuseArgs(argc=len(argv_list), argv=argv, allocated=0)
    session = LIB.fuse_session_new(ctypes.byref(args), ctypes.byref(operations.ops),
                                   ctypes.sizeof(LowlevelOps), None)
    LIB.fuse_opt_free_args(ctypes.byref(args))  # what option parsing left (never our argv)
    if not session:
        raise OSError(errno.EINVAL, "fuse_session_new failed (see the message above)")
    vfs.subscribe(operations.invalidate_all)
    mounted = False
    try:
        with _SignalsToLibfuse(session):
            if LIB.fuse_session_mount(session, os.fsencode(mountpoint)) != 0:
                raise OSError(errno.EIO, f"cannot mount {mountpoint} (see the message above)")
            mounted = True
            operations.session = session
            result = _run_loop(session)
            if result < 0:
                log.error("FUSE session loop ended: %s", os.strerror(-result))
            elif result > 0:
                log.info("FUSE session loop ended by signal %d", result)
    finally:
        operations.closing = True
        operations.stop()
        with contextlib.suppress(ValueError):
            vfs.unsubscribe(operations.invalidate_all)
        if not operations.notify_lock.acquire(timeout=5.0):  # a notification is stuck
            _abort_connection(mountpoint)
            operations.notify_lock.acquire()
        try:
            operations.session = None
            if mounted:
                LIB.fuse_session_unmount(session)
            LIB.fuse_session_destroy(session)
        finally:
            operations.notify_lock.release()


__all__ = ["serve", "LowlevelOperations", "UnsupportedLibfuseError", "VERSION"]
