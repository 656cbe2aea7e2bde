"""Path resolution below one root directory fd, never through the kernel's symlinks.

Every path is walked component by component from a directory fd of the root
(`openat(O_PATH|O_DIRECTORY|O_NOFOLLOW)`); symlinks met on the way are interpreted as if the
root were `/` (like umoci's `securejoin`), so nothing outside the root can be reached.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# Linux gives up after 40 symlinks in one lookup (MAXSYMLINKS); a legitimate image never
# needs more, and a loop is detected after that many hops.
MAX_SYMLINK_HOPS = 40
DIR_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_READ_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnresolvableError(Exception):
    """A loop, or a component that is neither a directory nor a symlink."""


@dataclass(slots=True)
class Resolved:
    fd: int                  # O_PATH fd of the directory (caller closes)
    parts: list[str]         # its real path below the root, no symlinks
    crossed: bool = False    # a symlink was followed on the way
    rescoped: list[str] = field(default_factory=list)  # absolute/escaping links followed
    created: list[str] = field(default_factory=list)   # directories made on the way

    @property
    def rel(self) -> str:
        return "/".join(self.parts)


class RootTree:
    """Path resolution and removal below one root directory fd."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd

    def resolve_dir(self, parts: list[str], *, create: bool) -> Resolved | None:
        """Walk `parts` from the root; symlinks are expanded as if the root were `/`.

        None when a component is missing and `create` is false; `UnresolvableError` on loops
        and non-directories.
        """
        remaining = deque(parts)
        names: list[str] = []
        fds = [os.dup(self.root_fd)]
        result = Resolved(-1, names)
        hops = 0
        try:
            while remaining:
                comp = remaining.popleft()
                if comp in ("", "."):
                    continue
                if comp == "..":
                    if names:
                        names.pop()
                        os.close(fds.pop())
                    else:
                        result.rescoped.append("'..' above the root")
                    continue
                try:
                    fd = os.open(comp, DIR_PATH_FLAGS, dir_fd=fds[-1])
                except FileNotFoundError:
                    if not create:
                        return None
                    os.mkdir(comp, 0o755, dir_fd=fds[-1])
                    os.chmod(comp, 0o755, dir_fd=fds[-1])  # whatever the umask
                    result.created.append("/".join([*names, comp]))
                    fd = os.open(comp, DIR_PATH_FLAGS, dir_fd=fds[-1])
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    where = "/".join([*names, comp])
                    st = os.stat(comp, dir_fd=fds[-1], follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise UnresolvableError(f"{where!r} is not a directory") from None
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise UnresolvableError(f"symlink loop at {where!r}") from None
                    target = os.readlink(comp, dir_fd=fds[-1])
                    result.crossed = True
                    if target.startswith("/"):
                        result.rescoped.append(f"{where} -> {target}")
                        for extra in fds[1:]:
                            os.close(extra)
                        del fds[1:]
                        names.clear()
                    remaining.extendleft(reversed(target.split("/")))
                    continue
                names.append(comp)
                fds.append(fd)
            result.fd = fds.pop()
            return result
        finally:
            for fd in fds:
                os.close(fd)

    def open_real_dir(self, parts: list[str]) -> int | None:
        """O_RDONLY fd of the directory at exactly `parts` (no symlink anywhere), or None."""
        fd = os.dup(self.root_fd)
        try:
            for comp in parts:
                nxt = os.open(comp, DIR_PATH_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
            return os.open(".", DIR_READ_FLAGS, dir_fd=fd)
        except OSError:
            return None
        finally:
            os.close(fd)


def lstat_at(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def remove_at(name: str, dir_fd: int, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)  # the fd-based, symlink-safe variant
    else:
        os.unlink(name, dir_fd=dir_fd)


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


@contextmanager
def read_fd(path_fd: int) -> Iterator[int]:
    """An O_RDONLY fd of the directory behind an O_PATH fd (fsetxattr, listdir need one)."""
    fd = os.open(".", DIR_READ_FLAGS, dir_fd=path_fd)
    try:
        yield fd
    finally:
        os.close(fd)
