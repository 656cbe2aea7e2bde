"""The libfuse3 ABI through ctypes, for the lowlevel adapter: structures, callback types,
the struct packers, loading the library and what its version decides. No headers, no
build step; nothing is loaded at import (`load`).

Which library: `PYCVMFS_LIBFUSE3` (a path such as
`/opt/libfuse/lib/x86_64-linux-gnu/libfuse3.so.4`, or a soname) if set, else the first of
`libfuse3.so.4` (3.17 and later) and `libfuse3.so.3` (3.10-3.16) that the dynamic loader
finds (`LD_LIBRARY_PATH` is honoured).

Declared for libfuse 3.10 to 3.19 on little-endian x86_64 and aarch64 Linux (3.19 as of
3.19.0-rc0); `fuse_version()` is checked and anything else is refused with
`UnsupportedLibfuseError`, an ImportError (`mount.load_backend` then skips the backend).
What differs between versions:
  * 3.15-3.16 inserted `parallel_direct_writes` after `keep_cache` in `fuse_file_info`,
    moving `cache_readdir` one bit up; 3.17 moved it back (the 3.10 ABI restored).
  * 3.17 grew `fuse_file_info` from 40 to 64 bytes (`backing_id`, `compat_flags`): a copy
    handed back to libfuse must have the new tail zeroed (a `backing_id` > 0 would ask
    for passthrough).
  * 3.17 added 64-bit `capable_ext`/`want_ext` to `fuse_conn_info` (same size): libfuse
    reads `want_ext`, so a capability is asked for in both words, which every 3.17+
    release takes as is (no want/want_ext conversion, which 3.17.1-3.17.2 got wrong).
  * 3.17 made `fuse_session_new` a header inline that passes the application's version
    to `fuse_session_new_versioned`; that symbol is used where it exists.
  * `fuse_lowlevel_ops` only grows at its end (tmpfile 3.17, statx 3.18, syncfs 3.19);
    the declared prefix is passed with its size, the rest stays unset.
  * the soname became `libfuse3.so.4` in 3.17.
tests/unit/test_lowlevel_abi.py checks the declarations against the C compiler and the
installed headers (or those next to `PYCVMFS_LIBFUSE3`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import struct
import sys
from dataclasses import dataclass
from typing import Any

from pycvmfs.fs.vfs import Attr

SUPPORTED_VERSIONS = range(310, 320)  # fuse_version(): 3.10 .. 3.19
LIBRARY_ENV = "PYCVMFS_LIBFUSE3"
SONAMES = ("libfuse3.so.4", "libfuse3.so.3")  # 3.17+, then 3.10-3.16
BLOCK_SIZE = 4096
FILE_INFO_SIZE_BEFORE_317 = 40  # up to `poll_events`, padded to 8 bytes

# fuse_common.h capability bits (stable across 3.x)
FUSE_CAP_READDIRPLUS = 1 << 13
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14
FUSE_CAP_CACHE_SYMLINKS = 1 << 23
FUSE_CAP_SPLICE_WRITE = 1 << 7  # read replies spliced from a file descriptor
FUSE_CAP_NO_OPEN_SUPPORT = 1 << 17  # OPEN may answer ENOSYS: no OPEN/RELEASE from then on

# struct fuse_buf flags: the data is in `fd` at `pos`
FUSE_BUF_IS_FD = 1 << 1
FUSE_BUF_FD_SEEK = 1 << 2

# bits of the bitfield word of struct fuse_file_info (little-endian: first field = bit 0)
FI_DIRECT_IO = 1 << 1
FI_KEEP_CACHE = 1 << 2


def fi_cache_readdir_bit(version: int) -> int:
    """`cache_readdir` is bit 6, but bit 7 in 3.15-3.16 (`parallel_direct_writes`)."""
    return 1 << (7 if version in (315, 316) else 6)


def file_info_size(version: int) -> int:
    """sizeof(struct fuse_file_info): 40 bytes before 3.17, 64 since."""
    return ctypes.sizeof(FileInfo) if version >= 317 else FILE_INFO_SIZE_BEFORE_317


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
    """struct fuse_file_info as of 3.17 (before: the first 40 bytes, `file_info_size`);
    the bitfields as one word, see the FI_* bits."""

    _fields_ = [("flags", ctypes.c_int), ("bits", ctypes.c_uint32),
                ("bits2", ctypes.c_uint32), ("bits3", ctypes.c_uint32),
                ("fh", ctypes.c_uint64), ("lock_owner", ctypes.c_uint64),
                ("poll_events", ctypes.c_uint32), ("backing_id", ctypes.c_int32),
                ("compat_flags", ctypes.c_uint64), ("reserved", ctypes.c_uint64 * 2)]


class ConnInfo(ctypes.Structure):
    """struct fuse_conn_info (3.0-3.16)."""

    _fields_ = [("proto_major", ctypes.c_uint), ("proto_minor", ctypes.c_uint),
                ("max_write", ctypes.c_uint), ("max_read", ctypes.c_uint),
                ("max_readahead", ctypes.c_uint), ("capable", ctypes.c_uint),
                ("want", ctypes.c_uint), ("max_background", ctypes.c_uint),
                ("congestion_threshold", ctypes.c_uint), ("time_gran", ctypes.c_uint),
                ("reserved", ctypes.c_uint * 22)]


class ConnInfo317(ctypes.Structure):
    """struct fuse_conn_info since 3.17 (same size; 3.18 split `reserved` into
    `request_timeout` and a shorter `reserved`)."""

    _fields_ = [("proto_major", ctypes.c_uint32), ("proto_minor", ctypes.c_uint32),
                ("max_write", ctypes.c_uint32), ("max_read", ctypes.c_uint32),
                ("max_readahead", ctypes.c_uint32), ("capable", ctypes.c_uint32),
                ("want", ctypes.c_uint32), ("max_background", ctypes.c_uint32),
                ("congestion_threshold", ctypes.c_uint32), ("time_gran", ctypes.c_uint32),
                ("max_backing_stack_depth", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("capable_ext", ctypes.c_uint64), ("want_ext", ctypes.c_uint64),
                ("reserved", ctypes.c_uint32 * 16)]


def conn_info_type(version: int) -> type[ConnInfo] | type[ConnInfo317]:
    return ConnInfo317 if version >= 317 else ConnInfo


class FuseBuf(ctypes.Structure):
    """struct fuse_buf as of 3.17 (`mem_size` appended, zero here; older versions read the
    prefix only: a vector of one buffer is never indexed past its first)."""

    _fields_ = [("size", ctypes.c_size_t), ("flags", ctypes.c_int), ("mem", ctypes.c_void_p),
                ("fd", ctypes.c_int), ("pos", ctypes.c_int64), ("mem_size", ctypes.c_size_t)]


class FuseBufvec(ctypes.Structure):
    """struct fuse_bufvec of one buffer."""

    _fields_ = [("count", ctypes.c_size_t), ("idx", ctypes.c_size_t),
                ("off", ctypes.c_size_t), ("buf", FuseBuf * 1)]


def fd_buffer(fd: int, position: int, size: int) -> FuseBufvec:
    """`size` bytes of file `fd` from `position`, for `fuse_reply_data`."""
    vector = FuseBufvec(count=1)
    vector.buf[0] = FuseBuf(size=size, flags=FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK, fd=fd,
                            pos=position)
    return vector


class FuseCtx(ctypes.Structure):
    """`struct fuse_ctx`, what `fuse_req_ctx` points at: who sent a request (`pid` is
    the calling thread's id, as the kernel's fuse_in_header has it)."""

    _fields_ = [("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32), ("pid", ctypes.c_int32),
                ("umask", ctypes.c_uint32)]


class FuseArgs(ctypes.Structure):
    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)),
                ("allocated", ctypes.c_int)]


class ForgetData(ctypes.Structure):
    """struct fuse_forget_data: one entry of a BATCH_FORGET."""

    _fields_ = [("ino", ctypes.c_uint64), ("nlookup", ctypes.c_uint64)]


class LoopConfigV1(ctypes.Structure):
    """struct fuse_loop_config before 3.12 (`fuse_loop_config_v1` since)."""

    _fields_ = [("clone_fd", ctypes.c_int), ("max_idle_threads", ctypes.c_uint)]


class LibfuseVersion(ctypes.Structure):
    """struct libfuse_version (3.17+): the version an application was built against."""

    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32),
                ("hotfix", ctypes.c_uint32), ("padding", ctypes.c_uint32)]


_REQ = ctypes.c_void_p  # fuse_req_t
_INO = ctypes.c_uint64  # fuse_ino_t
FileInfoPointer = ctypes.POINTER(FileInfo)
_FI = FileInfoPointer
CALLBACK_TYPES: dict[str, Any] = {
    "init": ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p),  # conn: conn_info_type
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
# struct fuse_lowlevel_ops member order, unchanged since 3.0 (later releases append)
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
_VP, _INT, _SIZE = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
_CTX_PID = FuseCtx.pid.offset
SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "fuse_reply_err": (_INT, [_VP, _INT]),
    "fuse_reply_none": (None, [_VP]),
    "fuse_reply_entry": (_INT, [_VP, _VP]),
    "fuse_reply_attr": (_INT, [_VP, _VP, ctypes.c_double]),
    "fuse_reply_readlink": (_INT, [_VP, ctypes.c_char_p]),
    "fuse_reply_open": (_INT, [_VP, _FI]),
    "fuse_reply_buf": (_INT, [_VP, _VP, _SIZE]),
    "fuse_reply_data": (_INT, [_VP, ctypes.POINTER(FuseBufvec), _INT]),
    "fuse_reply_xattr": (_INT, [_VP, _SIZE]),
    "fuse_reply_statfs": (_INT, [_VP, _VP]),
    "fuse_req_ctx": (_VP, [_VP]),
    "fuse_add_direntry": (_SIZE, [_VP, _VP, _SIZE, ctypes.c_char_p, _VP, ctypes.c_int64]),
    "fuse_add_direntry_plus": (_SIZE, [_VP, _VP, _SIZE, ctypes.c_char_p, _VP,
                                       ctypes.c_int64]),
    "fuse_lowlevel_notify_inval_entry": (_INT, [_VP, _INO, ctypes.c_char_p, _SIZE]),
    "fuse_lowlevel_notify_inval_inode": (_INT, [_VP, _INO, ctypes.c_int64, ctypes.c_int64]),
    "fuse_session_new": (_VP, [ctypes.POINTER(FuseArgs), ctypes.POINTER(LowlevelOps), _SIZE,
                               _VP]),
    "fuse_session_new_versioned": (_VP, [ctypes.POINTER(FuseArgs),
                                         ctypes.POINTER(LowlevelOps), _SIZE,
                                         ctypes.POINTER(LibfuseVersion), _VP]),
    "fuse_opt_free_args": (None, [ctypes.POINTER(FuseArgs)]),
    "fuse_session_mount": (_INT, [_VP, ctypes.c_char_p]),
    "fuse_session_unmount": (None, [_VP]),
    "fuse_session_destroy": (None, [_VP]),
    "fuse_session_exit": (None, [_VP]),
    "fuse_set_signal_handlers": (_INT, [_VP]),
    "fuse_remove_signal_handlers": (None, [_VP]),
    "fuse_session_loop_mt_32": (_INT, [_VP, ctypes.POINTER(LoopConfigV1)]),
    "fuse_session_loop_mt_312": (_INT, [_VP, _VP]),
    "fuse_loop_cfg_create": (_VP, []),
    "fuse_loop_cfg_destroy": (None, [_VP]),
    "fuse_loop_cfg_set_clone_fd": (None, [_VP, ctypes.c_uint]),
    "fuse_loop_cfg_set_max_threads": (None, [_VP, ctypes.c_uint]),
    "fuse_pkgversion": (ctypes.c_char_p, []),
}
OPTIONAL = {"fuse_session_new_versioned", "fuse_session_loop_mt_312", "fuse_loop_cfg_create",
            "fuse_loop_cfg_destroy", "fuse_loop_cfg_set_clone_fd",
            "fuse_loop_cfg_set_max_threads", "fuse_session_loop_mt_32"}


@dataclass(frozen=True)
class Libfuse3:
    """A loaded libfuse3: `cdll` with every function of SIGNATURES declared (tests pass
    a fake with the same functions) and what its version decides."""

    cdll: Any
    version: int  # fuse_version(): 317 for 3.17
    release: str = ""  # fuse_pkgversion(): "3.17.4"

    @property
    def cache_readdir_bit(self) -> int:
        return fi_cache_readdir_bit(self.version)

    def copy_file_info(self, fi: Any) -> Any:
        """A pointer to a private copy of libfuse's `fuse_file_info` (which lives on a
        worker's stack), the tail a shorter version lacks zeroed."""
        copy = FileInfo()
        ctypes.memmove(ctypes.byref(copy), fi, file_info_size(self.version))
        return ctypes.pointer(copy)

    def caller(self, req: int) -> int:
        """The id of the thread that sent request `req` (before its reply frees it)."""
        return int(ctypes.c_int32.from_address(self.cdll.fuse_req_ctx(req) + _CTX_PID).value)

    def want(self, conn: int, capability: int) -> bool:
        """In `init`: ask for `capability` (a bit below 32) if the kernel offers it."""
        info = conn_info_type(self.version).from_address(conn)
        if not info.capable & capability:
            return False
        info.want |= capability
        if isinstance(info, ConnInfo317):
            info.want_ext |= capability  # what 3.17+ reads; both words agree
        return True

    def session_new(self, args: FuseArgs, ops: LowlevelOps) -> int | None:
        """`fuse_session_new` as the headers of this version compile it."""
        new_versioned = getattr(self.cdll, "fuse_session_new_versioned", None)
        if new_versioned is None:
            return self.cdll.fuse_session_new(  # type: ignore[no-any-return]
                ctypes.byref(args), ctypes.byref(ops), ctypes.sizeof(ops), None)
        built = LibfuseVersion(major=self.version // 100, minor=self.version % 100)
        return new_versioned(  # type: ignore[no-any-return]
            ctypes.byref(args), ctypes.byref(ops), ctypes.sizeof(ops), ctypes.byref(built),
            None)

    @property
    def workers_persist(self) -> bool:
        """3.12+: the loop's worker threads live as long as the session (no idle thread is
        ended, at most `threads` of them), so state kept per worker thread stays bounded."""
        cdll = self.cdll
        return hasattr(cdll, "fuse_session_loop_mt_312") and hasattr(cdll, "fuse_loop_cfg_create")

    def loop(self, session: int, threads: int) -> int:
        """`fuse_session_loop_mt` with at most `threads` workers (3.12+: max_threads;
        before: idle threads kept, the pool grows as needed)."""
        cdll = self.cdll
        if self.workers_persist:
            config = cdll.fuse_loop_cfg_create()
            if not config:
                raise MemoryError("fuse_loop_cfg_create failed")
            try:
                cdll.fuse_loop_cfg_set_clone_fd(config, 0)
                cdll.fuse_loop_cfg_set_max_threads(config, threads)
                return int(cdll.fuse_session_loop_mt_312(session, config))
            finally:
                cdll.fuse_loop_cfg_destroy(config)
        legacy = LoopConfigV1(clone_fd=0, max_idle_threads=threads)
        return int(cdll.fuse_session_loop_mt_32(session, ctypes.byref(legacy)))


def _declare(cdll: ctypes.CDLL) -> None:
    for name, (restype, argtypes) in SIGNATURES.items():
        try:
            func = getattr(cdll, name)
        except AttributeError:
            if name in OPTIONAL:
                continue
            raise UnsupportedLibfuseError(f"libfuse3 lacks {name}") from None
        func.restype, func.argtypes = restype, argtypes


def load() -> Libfuse3:
    """The libfuse3 to serve with (module docstring), its functions declared; refuses
    platforms and versions whose structure layouts are not declared here. The same
    object for the same library."""
    name = os.environ.get(LIBRARY_ENV)
    return _load(name) if name else _load_default()


def _load_default() -> Libfuse3:
    reasons = []
    for soname in SONAMES:
        try:
            return _load(soname)
        except UnsupportedLibfuseError as exc:
            reasons.append(str(exc))
    raise UnsupportedLibfuseError("; ".join(reasons))


@functools.cache
def _load(name: str) -> Libfuse3:
    if not sys.platform.startswith("linux") or sys.byteorder != "little":
        raise UnsupportedLibfuseError("the lowlevel backend needs little-endian Linux")
    if MACHINE not in STAT_FORMATS or ctypes.sizeof(ctypes.c_void_p) != 8:
        raise UnsupportedLibfuseError(f"the lowlevel backend has no struct layouts for "
                                      f"{MACHINE} (x86_64 and aarch64 only)")
    try:
        cdll = ctypes.CDLL(name)
    except OSError as exc:
        raise UnsupportedLibfuseError(f"{name} not found: {exc}") from None
    cdll.fuse_version.restype, cdll.fuse_version.argtypes = ctypes.c_int, []
    version = int(cdll.fuse_version())
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedLibfuseError(
            f"libfuse {version // 100}.{version % 100} is not supported by the lowlevel "
            f"backend (3.10-3.19)")
    _declare(cdll)
    if not (hasattr(cdll, "fuse_session_loop_mt_312") and hasattr(cdll, "fuse_loop_cfg_create")
            or hasattr(cdll, "fuse_session_loop_mt_32")):
        raise UnsupportedLibfuseError("libfuse3 has no usable fuse_session_loop_mt")
    release = cdll.fuse_pkgversion()
    return Libfuse3(cdll, version, release.decode("ascii", "replace") if release else "")
