"""mfusepy adapter: the path-based libfuse API (libfuse 3 or 2, ctypes), multi-threaded.

The portable fallback where neither the lowlevel binding nor pyfuse3 loads. Only
translation happens here: paths straight to the VFS's path methods (nothing is recorded per
inode), any exception to `FuseOSError(errno_of(exc))` (a bug, not an FsError, PycvmfsError
or OSError, logged with its traceback). A listing is answered whole (memory grows with the
directory; the inode-based adapters page it).

Limits of the path-based API, against the pyfuse3 adapter: libfuse, not we, numbers the
kernel's inodes, one per path. After a revision change the kernel learns of it only when
its entries and attributes expire (`CVMFS_KCACHE_TIMEOUT`), and a file kept open across
the change shares that inode with the new content, so it may see the new size and pages.
The page cache is dropped at every open (no `keep_cache`), so a fresh open never reads
stale pages.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import mfusepy

from pycvmfs.errors import PycvmfsError
from pycvmfs.fs.errors import errno_of
from pycvmfs.fs.vfs import Attr, FsError, RepositoryVFS

log = logging.getLogger(__name__)
_F = TypeVar("_F", bound=Callable[..., Any])
EXPECTED = (FsError, PycvmfsError, OSError)  # anything else a VFS call raises is a bug


def _boundary(func: _F) -> _F:
    """The one place errors become errno (`errno_of`); a bug is logged once."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, EXPECTED):
                log.exception("unexpected error in %s", func.__name__)
            raise mfusepy.FuseOSError(errno_of(exc)) from None

    return wrapper  # type: ignore[return-value]


def _canonical(path: str) -> str:
    """libfuse's `/a/b` (`/` for the root) as the VFS's `/a/b` ('' for the root)."""
    return "" if path == "/" else path.rstrip("/")


def _stat(attr: Attr) -> dict[str, int]:
    return {
        "st_ino": attr.ino, "st_mode": attr.mode, "st_nlink": attr.nlink,
        "st_uid": attr.uid, "st_gid": attr.gid, "st_size": attr.size,
        "st_atime": attr.mtime_ns, "st_mtime": attr.mtime_ns, "st_ctime": attr.mtime_ns,
        "st_blocks": attr.blocks, "st_blksize": 4096, "st_rdev": attr.rdev,
    }


class MfusepyOperations(mfusepy.Operations):  # type: ignore[misc]
    """Read-only operations; write calls are not implemented, so the kernel gets EROFS
    from the `ro` mount option."""

    use_ns = True

    def __init__(self, vfs: RepositoryVFS) -> None:
        self.vfs = vfs

    @_boundary
    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        return _stat(self.vfs.lookup_path(path))

    @_boundary
    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        """The whole listing at once (the path API has no use for offsets here)."""
        canonical = "" if path == "/" else path
        return [(name, _stat(attr), 0) for name, attr in self.vfs.listdir_path(canonical)]

    @_boundary
    def readlink(self, path: str) -> str:
        return self.vfs.readlink_path(_canonical(path)).decode("utf-8", "surrogateescape")

    @_boundary
    def open(self, path: str, flags: int) -> int:
        return self.vfs.open_path(_canonical(path), flags)

    @_boundary
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self.vfs.read(fh, offset, size)

    @_boundary
    def release(self, path: str, fh: int) -> int:
        self.vfs.release(fh)
        return 0

    @_boundary
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.vfs.getxattr_path(_canonical(path), name)

    @_boundary
    def listxattr(self, path: str) -> list[str]:
        return self.vfs.listxattr_path(_canonical(path))

    @_boundary
    def statfs(self, path: str) -> dict[str, int]:
        s = self.vfs.statfs()
        return {"f_bsize": s.block_size, "f_frsize": s.block_size, "f_blocks": s.blocks,
                "f_bfree": s.blocks_free, "f_bavail": s.blocks_free, "f_files": s.files,
                "f_ffree": s.files_free, "f_namemax": s.name_max}


def serve(vfs: RepositoryVFS, mountpoint: str, *, fsname: str, options: dict[str, Any]) -> None:
    """Mount and run until unmounted (blocks; libfuse's thread pool serves requests)."""
    mfusepy.FUSE(MfusepyOperations(vfs), mountpoint, foreground=True, ro=True, nothreads=False,
                 fsname=fsname, use_ino=True, **options)


