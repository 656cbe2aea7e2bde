"""Directories and files under the cache base, opened so that no other local user can
redirect them (issue 9, class 4: local attackers and the cache directory).

The threat: `CVMFS_CACHE_BASE` may be a world-writable sticky directory (`/tmp`, a scratch
file system), and any user can create names there first: a directory of their own (mode
0777, with planted objects), a symlink to a directory of theirs or to a system directory,
a symlink or hard link where we append a log. Following any of them makes a mount serve
their bytes, or create, write and delete where they point.

The mechanism, as a careful daemon does it:

* `open_directory` walks from the base down one component at a time, each opened with
  `O_DIRECTORY|O_NOFOLLOW` relative to its parent's descriptor and created with
  `mkdir(dir_fd=...)` when missing. Every later operation is relative to the descriptor in
  the returned `SafeDir`, so renaming a path component afterwards cannot move us elsewhere.
* The rules, checked with `fstat` on each opened descriptor (never on a path):
  - the base: a directory owned by root or the user; when group- or other-writable it
    must be sticky (nobody else can then rename or delete what we create in it). A
    symlink on the way to it that another user owns is refused;
  - every component below the base: a directory (never a symlink) owned by the user and
    writable by nobody else;
  - alien cache (`Trust.alien`, `CVMFS_ALIEN_CACHE`, shared by a group on purpose): its
    directory's own group may write, its owner may be root or any member of that group;
    never writable by others, never a symlink;
  - files (`SafeDir.open_file`): opened with `O_NOFOLLOW|O_NONBLOCK` (a planted FIFO does
    not block us) and never truncated before the check; then a regular file owned by the
    user (alien: a member of the group) with one link, writable by nobody else.
* A violation raises `CacheSecurityError` naming the path, what is wrong and the fix;
  there is no fallback to another directory. Plain OS failures (permission denied, a
  missing directory with `create=False`, a full disk) stay `OSError` for the caller to
  word.

Where a path must be handed out (SQLite opens files by name), `SafeDir.proc_path` gives
`/proc/self/fd/N/name`. SQLite resolves that link to the directory's *current* path before
opening, so a directory renamed away is still found; what remains is a race against an
attacker who owns a directory *above* the base. The path above the base is the
administrator's choice and is not checked beyond symlink ownership; root is trusted.

Thread-safety: a `SafeDir` may be used from any thread; `close` must not race with use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import logging
import os
import pwd
import stat
import weakref
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from types import TracebackType

from pycvmfs.errors import CacheSecurityError

log = logging.getLogger(__name__)

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
DIR_MODE = 0o700
FILE_MODE = 0o600
PROC_FD = "/proc/self/fd"
TEMP_NAME_BYTES = 6  # random bytes in a temporary name (12 hex digits; mkstemp has ~41 bits)
TEMP_ATTEMPTS = 100
WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
# open() of a symlink with O_NOFOLLOW, of a FIFO (no reader) or socket, of a dead device
NOT_A_FILE = (errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP)
FIX_REMOVE = ("remove it (its contents cannot be trusted; as root if you cannot) and "
              "pycvmfs creates it again, or set CVMFS_CACHE_BASE to a directory of your own")


@lru_cache(maxsize=256)
def _is_member(uid: int, gid: int) -> bool:
    """Whether user `uid` belongs to group `gid` (primary or supplementary)."""
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    if user.pw_gid == gid:
        return True
    try:
        return user.pw_name in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False


def who(uid: int) -> str:
    """`uid 1001 (name)` for messages."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    try:
        return f"group {gid} ({grp.getgrgid(gid).gr_name})"
    except KeyError:
        return f"group {gid}"


@dataclass(frozen=True, slots=True)
class Trust:
    """Whom a cache directory and its files may belong to."""

    uid: int = field(default_factory=os.geteuid)
    alien: bool = False
    gid: int | None = None  # alien: the group trusted with the cache (its directory's)

    def owner_ok(self, uid: int, gid: int) -> bool:
        if uid == self.uid:
            return True
        if not self.alien:
            return False
        return uid == 0 or (gid == self.gid and _is_member(uid, gid))

    def group_write_ok(self, gid: int) -> bool:
        return self.alien and gid == self.gid

    def you(self) -> str:
        return f"you ({who(self.uid)})"


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _kind(st: os.stat_result) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(st.st_mode):
            return name
    return "a special file"


def _writers_problem(st: os.stat_result, trust: Trust) -> str | None:
    if st.st_mode & stat.S_IWOTH:
        return f"is writable by every user (mode {_mode(st)})"
    if st.st_mode & stat.S_IWGRP and not trust.group_write_ok(st.st_gid):
        return f"is writable by {_group_name(st.st_gid)} (mode {_mode(st)})"
    return None


def directory_problem(st: os.stat_result, trust: Trust) -> str | None:
    """What is wrong with a directory below the base (None if it may be used)."""
    if not stat.S_ISDIR(st.st_mode):
        return f"is {_kind(st)}, not a directory"
    if not trust.owner_ok(st.st_uid, st.st_gid):
        return f"belongs to {who(st.st_uid)}, not to {trust.you()}"
    return _writers_problem(st, trust)


def file_problem(st: os.stat_result, trust: Trust, *, links: bool = True,
                 mode: bool = True) -> str | None:
    """What is wrong with a file we read or write (None if it may be used). `links`: a
    second hard link may be another file's name; `mode`: writable by others."""
    if not stat.S_ISREG(st.st_mode):
        return f"is {_kind(st)}, not a regular file"
    if not trust.owner_ok(st.st_uid, st.st_gid):
        return f"belongs to {who(st.st_uid)}, not to {trust.you()}"
    if links and st.st_nlink != 1:
        return f"has {st.st_nlink} hard links (it may be another file's second name)"
    return _writers_problem(st, trust) if mode else None


def base_problem(st: os.stat_result, trust: Trust) -> str | None:
    """What is wrong with the base (None if it may hold our directories)."""
    if st.st_uid not in (0, trust.uid):
        return f"belongs to {who(st.st_uid)}, neither to {trust.you()} nor to root"
    if st.st_mode & WRITABLE_BY_OTHERS and not st.st_mode & stat.S_ISVTX:
        whom = "every user" if st.st_mode & stat.S_IWOTH else _group_name(st.st_gid)
        return (f"is writable by {whom} but not sticky (mode {_mode(st)}), so others could "
                "rename or delete the cache in it; chmod +t or chmod go-w it")
    return None


def check_name(name: str) -> None:
    """One path component: never a way out of the directory."""
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(f"not a single file name: {name!r}")


def _clear_nonblock(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & os.O_NONBLOCK:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)


def describe_entry(dir_fd: int, name: str) -> str:
    """`is a symbolic link to '...' (owned by ...)` or `is a regular file`, for messages."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        return f"cannot be examined ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            target = "?"
        return f"is a symbolic link to {target!r} (owned by {who(st.st_uid)})"
    return f"is {_kind(st)}"


class SafeDir:
    """An open, checked directory: every operation is relative to its descriptor."""

    def __init__(self, fd: int, path: Path, trust: Trust, st: os.stat_result,
                 *, created: bool = False) -> None:
        self.fd = fd
        self.path = path  # for messages: where it was when opened
        self.trust = trust
        self.device = st.st_dev
        self.created = created  # this open created it (so nothing in it predates us)
        self._finalizer = weakref.finalize(self, os.close, fd)

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> SafeDir:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SafeDir {self.path} fd={self.fd}>"

    def proc_path(self, relative: str = "") -> str:
        """A name for this directory (or `relative` in it) that goes through the descriptor,
        for APIs that only take paths (SQLite); the plain path where /proc is missing."""
        base = f"{PROC_FD}/{self.fd}" if os.path.isdir(PROC_FD) else str(self.path)
        return f"{base}/{relative}" if relative else base

    # -- directories ----------------------------------------------------------------------

    def subdir(self, name: str, *, create: bool, mode: int = DIR_MODE) -> SafeDir:
        """The checked subdirectory `name`, created (mode exactly `mode`) when missing and
        `create`; FileNotFoundError when missing and not `create`."""
        return _open_component(self, name, create=create, mode=mode)

    # -- files ----------------------------------------------------------------------------

    def open_file(self, name: str, flags: int, mode: int = FILE_MODE, *,
                  replace_bad: bool = False, links: bool = True,
                  check_mode: bool = True) -> int:
        """A descriptor for file `name` after the checks of `file_problem`. `flags` must not
        hold O_TRUNC (truncate after the check). A file that fails the check is refused,
        or with `replace_bad` (only for our own files in our own directory) removed and
        created afresh."""
        check_name(name)
        if flags & os.O_TRUNC:
            raise ValueError("open_file: truncate after the check, not with O_TRUNC")
        problem: str | None
        try:
            fd = os.open(name, flags | FILE_FLAGS, mode, dir_fd=self.fd)
        except OSError as exc:
            problem = self._entry_problem(name, links=links, check_mode=check_mode)
            if exc.errno not in NOT_A_FILE and problem is None:
                raise  # EACCES, ENOENT ... of an entry that is all right
            problem = problem or describe_entry(self.fd, name)
        else:
            problem = "could not be examined"
            try:
                problem = file_problem(os.fstat(fd), self.trust, links=links, mode=check_mode)
                if problem is None:
                    _clear_nonblock(fd)
                    return fd
            finally:
                if problem is not None:
                    os.close(fd)
        path = self.path / name
        if replace_bad and flags & os.O_CREAT and not flags & os.O_EXCL:
            log.warning("%s %s: removed, pycvmfs creates its own", path, problem)
            self.unlink(name)
            return self.open_file(name, flags | os.O_EXCL, mode, links=links,
                                  check_mode=check_mode)
        raise CacheSecurityError(f"{path} {problem}: pycvmfs does not read or write through "
                                 f"it; {FIX_REMOVE}")

    def _entry_problem(self, name: str, *, links: bool, check_mode: bool) -> str | None:
        """What is wrong with entry `name` as it lies there (an open refused by the kernel,
        e.g. O_CREAT on another user's link in a sticky directory, is explained by it)."""
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return describe_entry(self.fd, name)
        return file_problem(st, self.trust, links=links, mode=check_mode)

    def read_file(self, name: str, limit: int) -> bytes | None:
        """Up to `limit` + 1 bytes of file `name` (checked), None if it does not exist."""
        try:
            fd = self.open_file(name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as fh:
            return fh.read(limit + 1)

    def create_temp(self, prefix: str, mode: int = FILE_MODE) -> tuple[int, str]:
        """A new file `prefix` + random characters, created exclusively: (fd, name)."""
        for _ in range(TEMP_ATTEMPTS):
            name = prefix + os.urandom(TEMP_NAME_BYTES).hex()  # one getrandom call
            try:
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, mode, dir_fd=self.fd)
            except FileExistsError:
                continue
            return fd, name
        raise FileExistsError(errno.EEXIST, f"no free temporary name {prefix}* in {self.path}")

    def write_file(self, name: str, data: bytes, mode: int = FILE_MODE) -> None:
        """Replace file `name` atomically (a temporary file renamed over it: a planted
        link there is replaced, never written through)."""
        check_name(name)
        fd, temp = self.create_temp(f".{name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), mode)
                fh.write(data)
            os.rename(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            self.unlink(temp)
            raise

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def unlink(self, name: str) -> bool:
        """Remove entry `name` (never what a link points to); True if it existed."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        return True

    def names(self) -> list[str]:
        return os.listdir(self.fd)


def _open_component(parent: SafeDir, name: str, *, create: bool, mode: int) -> SafeDir:
    check_name(name)
    path = parent.path / name
    created = False
    if create:
        try:
            os.mkdir(name, mode, dir_fd=parent.fd)
            created = True
        except FileExistsError:
            pass
        except OSError as exc:
            exc.filename = str(path)
            raise
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent.fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise CacheSecurityError(f"{path} {describe_entry(parent.fd, name)}: pycvmfs "
                                     f"does not follow it; {FIX_REMOVE}") from None
        exc.filename = str(path)
        raise
    try:
        st = os.fstat(fd)
        if created and st.st_uid == parent.trust.uid:
            os.fchmod(fd, mode)  # mkdir's mode went through the umask
            st = os.fstat(fd)
        trust = parent.trust
        if trust.alien and trust.gid is None:
            trust = replace(trust, gid=st.st_gid)  # the alien cache's own group
        elif created and trust.alien and st.st_gid != trust.gid and trust.gid is not None:
            with contextlib.suppress(PermissionError):  # else the check below says why
                os.fchown(fd, -1, trust.gid)  # our new subdirectory: the cache's group
            st = os.fstat(fd)
        problem = directory_problem(st, trust)
        if problem is not None and st.st_mode & stat.S_ISVTX and st.st_uid == 0:
            raise CacheSecurityError(f"{path} {problem}: a shared directory such as /tmp "
                                     "can be CVMFS_CACHE_BASE, never the cache directory "
                                     "itself; pycvmfs creates the cache below the base")
        if problem is not None:
            raise CacheSecurityError(f"{path} {problem}: other users could plant or change "
                                     f"what the cache serves; {FIX_REMOVE}")
    except BaseException:
        os.close(fd)
        raise
    return SafeDir(fd, path, trust, st, created=created)


def _symlink_owned_by_others(path: Path, trust: Trust) -> tuple[Path, os.stat_result] | None:
    """The first symlink on the way to `path` that neither root nor the user owns."""
    for probe in [*reversed(path.parents), path]:
        try:
            st = os.lstat(probe)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (0, trust.uid):
            return probe, st
    return None


def open_base(base: Path | str, trust: Trust | None = None, *, create: bool,
              check: bool = True) -> SafeDir:
    """The base directory itself (see the module docstring for its rule; `check=False`
    skips it for a directory the administrator named for files that are checked one by
    one, e.g. a log file's); missing components are created as ours (mode 0700) when
    `create`."""
    trust = trust or Trust()
    base = Path(os.path.abspath(base))
    planted = _symlink_owned_by_others(base, trust)
    if planted is not None:
        link, st = planted
        raise CacheSecurityError(
            f"cache base {base}: {link} is a symbolic link owned by {who(st.st_uid)}, "
            f"neither {trust.you()} nor root; set CVMFS_CACHE_BASE to a directory of your own")
    missing: list[str] = []
    probe = base
    while True:
        try:
            fd = os.open(probe, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            break
        except FileNotFoundError:
            if not create or probe.parent == probe:
                raise
            missing.append(probe.name)
            probe = probe.parent
    try:
        st = os.fstat(fd)
        problem = base_problem(st, trust) if check else None
    except BaseException:
        os.close(fd)
        raise
    if problem is not None:
        os.close(fd)
        what = "cache base" if not missing else "directory holding the cache base"
        raise CacheSecurityError(f"{what} {probe} {problem}")
    current = SafeDir(fd, probe, trust, st)
    for name in reversed(missing):
        with current:
            current = current.subdir(name, create=True)
    return current


def open_directory(path: Path | str, trust: Trust | None = None, *,
                   base: Path | str | None = None, create: bool,
                   mode: int = DIR_MODE) -> SafeDir:
    """The checked directory `path`: the base (default: its parent) under the base rule,
    every component from there down to `path` under the rule for our own directories
    (created with `mode` when missing and `create`)."""
    trust = trust or Trust()
    path = Path(os.path.abspath(path))
    base = Path(os.path.abspath(base)) if base is not None else path.parent
    if base == path:
        base = path.parent
    try:
        parts = path.relative_to(base).parts
    except ValueError:
        raise ValueError(f"{path} is not below {base}") from None
    if not parts:
        raise CacheSecurityError(f"{path}: the root directory cannot be a cache directory")
    current = open_base(base, trust, create=create)
    for name in parts:
        with current:
            current = current.subdir(name, create=create, mode=mode)
    return current

