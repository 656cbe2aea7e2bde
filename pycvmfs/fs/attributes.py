"""How repository entries are presented to the kernel: stat values, ownership, symlink
targets and statfs, as the reference client reports them (fact sheet 13.3). Pure: no I/O,
no state beyond the mount's fixed options."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from pycvmfs.format.catalog import DirEntry
from pycvmfs.format.symlinks import expand_symlink


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


def symlink_target(entry: DirEntry, options: MountOptions) -> bytes:
    """The target with `$(VAR)` and `$(VAR:-default)` expanded from the mount's environment."""
    environment = options.environment
    target = expand_symlink(entry.symlink, environment if environment is not None else os.environ)
    return target.encode("utf-8", "surrogateescape")


def attributes(ino: int, entry: DirEntry, options: MountOptions) -> Attr:
    """The stat of `entry` as inode `ino` (a symlink's size is its expanded target's)."""
    mode = entry.mode
    if options.world_readable:
        mode |= 0o555 if entry.is_dir else 0o444
    uid, gid = ((options.uid, options.gid) if options.claim_ownership
                else (entry.uid, entry.gid))
    size = len(symlink_target(entry, options)) if entry.is_symlink else entry.size
    return Attr(ino, mode, entry.linkcount, uid, gid, size,
                entry.mtime * 10**9 + entry.mtimens, entry.rdev)


def statfs(capacity: tuple[int, int], counters: Mapping[str, int]) -> StatFs:
    """statfs from the cache's (total, used) bytes and the repository's entry counters."""
    total, used = capacity
    files = sum(counters.get(k, 0) for k in ("regular", "symlink", "special", "dir"))
    return StatFs(512, total // 512, max(total - used, 0) // 512, files, 0)
