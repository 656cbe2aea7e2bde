"""Shrink a published directory of the source tree to a `.pycvmfs-kept` stub.

Why: a working tree the publisher walks on every publish (container images, for one)
would otherwise hold everything ever published fully unpacked: twice the disk, and a walk
and quick check of every file each time. Once a nested catalog's directory is published,
`keep_published` replaces it by a directory holding only KEPT_MARKER; later publishes graft
the previous revision's catalog there unchanged (tree_walk, catalog_writer).

Crash safety: the stub is built in `<parent>/.pycvmfs-kept-aside.<name>/stub`, a name the
walk never publishes, and swapped with the directory by one atomic rename exchange
(renameat2 RENAME_EXCHANGE, Linux); then the aside directory, now holding the old tree, is
removed. A crash leaves the full directory or the stub in place, never neither. Where the
file system has no rename exchange, two renames are used (the directory to `aside/old`, the
stub into place): a crash between them leaves the directory missing and its tree in
`aside/old`; the walk then refuses to publish instead of deleting the directory.
Leftovers are cleaned by the next `keep_published` in the same parent directory: an aside
directory whose target exists is removed, otherwise its `old` tree is moved back first.
The parent directory's mtime is restored, so its published entry does not change.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
from pathlib import Path

from pycvmfs.errors import PublishError
from pycvmfs.publisher.tree_walk import KEPT_ASIDE_PREFIX, KEPT_MARKER

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NAME_MAX = 255


def is_kept(path: Path) -> bool:
    """True when `path` is a directory (not a symlink) holding the kept marker file."""
    try:
        return (stat.S_ISDIR(os.lstat(path).st_mode)
                and stat.S_ISREG(os.lstat(path / KEPT_MARKER).st_mode))
    except (FileNotFoundError, NotADirectoryError):
        return False


def keep_published(source: Path, rel: str) -> None:
    """Replace the directory `source/rel` by a stub holding only KEPT_MARKER.

    Only for a directory that was the root of a nested catalog in the last publish
    from `source` (the next publish refuses any other), and not while a publish of
    `source` runs. A no-op when it is a stub already.
    """
    parts = [p for p in rel.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise PublishError(f"cannot keep {rel!r}: not a directory below the source tree")
    name = parts[-1]
    parent = Path(source, *parts[:-1])
    target = parent / name
    aside = parent / f"{KEPT_ASIDE_PREFIX}{name}"
    if len(os.fsencode(aside.name)) > _NAME_MAX:
        raise PublishError(f"cannot keep {target}: its name is too long for the stub swap")
    parent_st = os.stat(parent)
    clean_leftovers(parent)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        raise PublishError(f"cannot keep {target}: it does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PublishError(f"cannot keep {target}: not a directory")
    if is_kept(target):
        return
    stub = aside / "stub"
    os.makedirs(stub)
    with open(stub / KEPT_MARKER, "wb") as marker:
        os.fsync(marker.fileno())
    _fsync_dir(stub)
    _fsync_dir(aside)
    if not _exchange(stub, target):
        os.rename(target, aside / "old")
        os.rename(stub, target)
    _fsync_dir(parent)
    _remove_tree(aside)
    with contextlib.suppress(OSError):  # only cosmetic: the parent's published mtime
        os.utime(parent, ns=(parent_st.st_atime_ns, parent_st.st_mtime_ns))


def clean_leftovers(parent: Path) -> None:
    """Finish what interrupted `keep_published` calls left in `parent` (see module doc)."""
    for entry in os.scandir(parent):
        if not entry.name.startswith(KEPT_ASIDE_PREFIX):
            continue
        aside = Path(entry.path)
        target = parent / entry.name.removeprefix(KEPT_ASIDE_PREFIX)
        if not os.path.lexists(target) and os.path.isdir(aside / "old"):
            os.rename(aside / "old", target)
            _fsync_dir(parent)
        _remove_tree(aside)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False when the system cannot (then nothing happened)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _remove_tree(path: Path) -> None:
    """rmtree that also gets through directories without write permission (image trees)."""
    try:
        shutil.rmtree(path)
    except PermissionError:
        os.chmod(path, stat.S_IRWXU)
        for directory, subdirs, _files in os.walk(path):
            for name in subdirs:  # before os.walk lists them
                os.chmod(os.path.join(directory, name), stat.S_IRWXU, follow_symlinks=False)
        shutil.rmtree(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
